// Winograd F(2x2, 3x3) convolution for 3x3 stride-1 kernels (see conv2d_winograd.cpp); conv2d.cpp
// chooses between it and im2col + GEMM.
#pragma once
#include <cstdint>

namespace ft::cpu::winograd {

// y = conv(x, w) + b (ReLU if relu): x (N,C,H,W), w (K,C,3,3), y (N,K,H+2ph-2,W+2pw-2).
void fwd(const float* x, const float* w, const float* b, float* y, int64_t N, int64_t C, int64_t H,
         int64_t W, int64_t K, int64_t ph, int64_t pw, bool relu);

// dx (N,C,H,W) from dy (N,K,P,Q): a 3x3 convolution of dy with the flipped, transposed weights
// and padding 2 - p, so it needs ph, pw <= 2.
void bwd_data(const float* dy, const float* w, float* dx, int64_t N, int64_t C, int64_t H,
              int64_t W, int64_t K, int64_t ph, int64_t pw);

// dw (K,C,3,3) += weight gradient, db (K) += sum of dy over N, P, Q.
void bwd_weight(const float* x, const float* dy, float* dw, float* db, int64_t N, int64_t C,
                int64_t H, int64_t W, int64_t K, int64_t ph, int64_t pw);

}  // namespace ft::cpu::winograd
