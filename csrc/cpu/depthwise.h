// Depthwise convolution (every group reads one input channel: groups == C, K = C * M) as a direct
// kernel, see conv2d_depthwise.cpp; conv2d.cpp chooses it over im2col.
#pragma once
#include <cstdint>
#include <vector>

namespace ft::cpu::depthwise {

// x (N,C,H,W), w (C*M,1,R,S), y (N,C*M,P,Q); output channel c*M + j reads input channel c.
struct Shape {
  int64_t N, C, H, W, M, R, S, P, Q, sh, sw, ph, pw, dilh, dilw;
};

// y = conv(x, w) + b (ReLU if relu), overwritten.
void fwd(const float* x, const float* w, const float* b, float* y, const Shape& g, bool relu);
// dx overwritten with the data gradient of dy.
void bwd_data(const float* dy, const float* w, float* dx, const Shape& g);
// dw += weight gradient, db += sum of dy over N, P, Q.
void bwd_weight(const float* x, const float* dy, float* dw, float* db, const Shape& g);

// Per input coordinate i in [0, n): the taps k of a K-tap filter (stride st, padding pad, dilation d)
// whose output coordinate o = (i + pad - k*d) / st is whole and in [0, m): [count, (k, o) pairs...] at
// i * (2K + 1). Built once per call (NCHW and blocked data gradients), so the rows and columns look
// their taps up without dividing.
std::vector<int64_t> strided_taps(int64_t n, int64_t K, int64_t st, int64_t pad, int64_t d, int64_t m);

}  // namespace ft::cpu::depthwise
