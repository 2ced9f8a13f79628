// Depthwise convolution on NCHW planes, vectorised along the row (conv2d_depthwise.cpp's fast path):
// the interface between the driver (threads, plans, instruction-set choice) and the plane kernels,
// compiled once per instruction set (depthwise_nchw_{avx512,avx2}.cpp from the template in
// depthwise_nchw_kernels.h; CPUs without AVX2 and non-x86 hosts keep the plain C++ kernels of
// conv2d_depthwise.cpp).
//
// Every load is a masked load straight from the caller's plane: lanes whose tap falls in the
// padding (or past the row, or past the plane) are masked off, read as zero and never fault, so a
// plane is not copied into a padded scratch buffer first (that copy was a third of the old
// kernel's time) and odd widths need no scalar tails.
#pragma once
#include <cstdint>
#include <vector>

namespace ft::cpu::dwn {

// One plane correlation: out[p, q] (Ho x Wo) = [out +] bias + sum_rs taps[r*S + s] *
// in[p*sh + r*dh - ph, q*sw + s*dw - pw], with in (Hi x Wi) read as zero outside.
struct Plan {
  int64_t Hi, Wi, Ho, Wo, R, S, sh, sw, ph, pw, dh, dw;
  int lanes;       // the vector width the masks below are for
  bool flat;       // sh == sw == 1 and Wo == Wi: the plane is one flat row, chunks run across rows
  int64_t chunks;  // flat: ceil(Ho*Wo / lanes) per plane; else: ceil(Wo / lanes) per output row
  // flat: [chunk][tap] the lanes whose tap lies inside in; rows, sw 1: [chunk][s] the lanes whose
  // column lies in the row; rows, sw 2: [chunk][s][2] the same for the two loads of 2*lanes columns
  std::vector<uint32_t> masks;
  std::vector<int64_t> offs;  // flat: per tap, the offset of its input from the output index
  uint32_t tail;              // the lanes of the last chunk inside the output (plane or row)
};

// Builds the plan of a correlation (flat where it can be). Returns false for what the kernels do
// not handle (column stride other than 1 or 2, more than kMaxTaps taps).
constexpr int64_t kMaxTaps = 49;
bool make_plan(Plan& g, int lanes, int64_t Hi, int64_t Wi, int64_t Ho, int64_t Wo, int64_t R, int64_t S, int64_t sh,
               int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw);

// The data gradient of a correlation with column stride 2 (g describes the forward: in = x, out =
// y): dx[h, v] = sum over (r, s) with h + ph - r*dh = p*sh and v + pw - s*dw = 2q (0 <= p < Ho,
// 0 <= q < Wo) of w[r, s] * dy[p, q]. Per [dx column chunk][s]: masks[2i] the lanes of the dy load
// (lanes/2 + 1 dy columns from base[i]), masks[2i + 1] the parity of the chunk's first column's dy
// coordinate (which lanes receive a value).
struct GatherPlan {
  Plan g;
  int64_t chunks;  // ceil(Wi / lanes) per dx row
  std::vector<uint32_t> masks;
  std::vector<int64_t> base;
  uint32_t tail;  // lanes of the last chunk inside the dx row
};
bool make_gather_plan(GatherPlan& gp, const Plan& fwd);

// out = [out +] bias + the correlation g of in with taps (R*S floats), ReLU'd if relu.
using CorrFn = void (*)(const Plan& g, const float* in, const float* taps, float bias, float* out, bool relu,
                        bool accumulate);
// sums[t] = sum_pq dy[p, q] * in[tap t of (p, q)] for t < R*S, sums[R*S] = sum_pq dy[p, q]: one
// plane's weight and bias gradient, in a fixed order.
using WgradFn = void (*)(const Plan& g, const float* in, const float* dy, float* sums);
// The same sums left as lane vectors: sums[t*lanes + l] += lane l's share of tap t (t < 9: the 3x3
// taps, 9: dy), for 3x3 filters without row dilation at row stride 1 or 2 in rows mode; false, with
// nothing done, for any other plan.
using WgradVecFn = bool (*)(const Plan& g, const float* in, const float* dy, float* sums);
// dx [+]= the gathered data gradient of one plane (see GatherPlan).
using GatherFn = void (*)(const GatherPlan& gp, const float* dy, const float* taps, float* dx, bool accumulate);

// The narrow maps' channel interleave (conv2d_depthwise.cpp): dst[((h + top)*ld + v + left)*16 + j] =
// src[j*plane_stride + h*cols + v] for the nch <= 16 planes j (dst's other lanes left alone), and
// back: dst[j*plane_stride + h*cols + v] = src[((h + top)*ld + v + left)*16 + j].
using ToLanesFn = void (*)(const float* src, int64_t plane_stride, int64_t nch, int64_t rows, int64_t cols, float* dst,
                           int64_t ld, int64_t top, int64_t left);
using FromLanesFn = void (*)(const float* src, int64_t ld, int64_t top, int64_t left, float* dst, int64_t plane_stride,
                             int64_t nch, int64_t rows, int64_t cols);

// On interleaved pixels of 16 channels (16 floats each): the geometry of the narrow maps' plane
// group, x padded (Hp x Wp pixels, the padding already placed), y / dy P x Q pixels.
struct LanesGeo {
  int64_t Wp, P, Q, R, S, sh, sw, dh, dw;
};
// out[p, q] = bias + sum_rs taps[r*S + s] * x[p*sh + r*dh, q*sw + s*dw] (ReLU'd if relu)
using LanesCorrFn = void (*)(const LanesGeo& g, const float* x, const float* taps, const float* bias, float* out,
                             bool relu);
// sums[t] += sum_pq dy[p, q] * x[tap t of (p, q)], sums[R*S] += sum_pq dy[p, q]
using LanesWgradFn = void (*)(const LanesGeo& g, const float* x, const float* dy, float* sums);
// dx[p*sh + r*dh, q*sw + s*dw] += taps[r*S + s] * dy[p, q] (dx padded as x, zeroed by the caller)
using LanesScatterFn = void (*)(const LanesGeo& g, const float* dy, const float* taps, float* dx);

// The strided data gradient gathered per dx pixel (H x W pixels, no padding): row_taps[h*(2R + 1)]
// = n, then n pairs (r, p) of the filter rows and dy rows reaching dx row h; col_taps likewise per
// column with (s, q). Each dx pixel is written once: no zeroed buffer, no read-modify-write.
using LanesGatherFn = void (*)(const LanesGeo& g, int64_t H, int64_t W, const int64_t* row_taps,
                               const int64_t* col_taps, const float* dy, const float* taps, float* dx);

// 8 x 8 planes, 3 x 3 filter, stride 2, padding 1, multiplier 1 (MobileNet's last downsampling):
// a plane is 64 floats, so one plane is four vectors of two rows each and its 4 x 4 output one
// vector; every tap is one lane permute of the plane's even/odd columns, no interleave. Planes are
// taken in NCHW order, plane i of channel i % C.
// y[i] = b + conv(x[i]) (ReLU'd if relu) for planes i in [lo, hi); b may be null.
using S2P8FwdFn = void (*)(const float* x, const float* w, const float* b, float* y, int64_t lo, int64_t hi, int64_t C,
                           bool relu);
// dx[i] = the data gradient of dy[i] for planes i in [lo, hi), overwritten.
using S2P8BwdDataFn = void (*)(const float* dy, const float* w, float* dx, int64_t lo, int64_t hi, int64_t C);
// dw[c] += sum over the N images in order of the plane's tap sums, db[c] += sum of dy, c in [c_lo, c_hi).
using S2P8WgradFn = void (*)(const float* x, const float* dy, float* dw, float* db, int64_t N, int64_t C, int64_t c_lo,
                             int64_t c_hi);

struct Isa {
  const char* name;
  int lanes;
  CorrFn corr;
  WgradFn wgrad;
  GatherFn gather;
  WgradVecFn wgrad_vec = nullptr;
  ToLanesFn to_lanes = nullptr;      // 16x16 register transposes; null: the scalar loops
  FromLanesFn from_lanes = nullptr;
  LanesCorrFn lanes_corr = nullptr;  // the narrow maps' arithmetic on 16-lane pixels; null: plain C++
  LanesWgradFn lanes_wgrad = nullptr;
  LanesScatterFn lanes_scatter = nullptr;
  LanesGatherFn lanes_gather = nullptr;
  S2P8FwdFn s2p8_fwd = nullptr;  // the 8 x 8 stride-2 planes (AVX-512 only); null: the narrow path
  S2P8BwdDataFn s2p8_bwd_data = nullptr;
  S2P8WgradFn s2p8_wgrad = nullptr;
};

// Null where the compiler could not build that instruction set (non-x86 hosts).
const Isa* isa_avx512();
const Isa* isa_avx2();

}  // namespace ft::cpu::dwn
