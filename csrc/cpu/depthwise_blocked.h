// Depthwise convolution (groups == C == K) on the 16-channel-blocked layout that flows between
// layers ([N][ceil(C/16)][H + 2*halo][W + 2*halo][16], see conv2d_direct.h). Sixteen channels of one
// pixel are one vector and every channel has its own filter, so each kernel tap is one lane-wise FMA
// of a pixel vector with the tap's vector of 16 weights: no shuffles, no transposes, and each
// activation is read once from memory. The interface between the driver (depthwise_blocked.cpp:
// threads, weights, instruction-set choice) and the row kernels, compiled once per instruction set
// (depthwise_blocked_{avx512,avx2,portable}.cpp from the template in depthwise_blocked_kernels.h).
#pragma once
#include <cstdint>

namespace ft::cpu::dwb {

constexpr int kBlock = 16;

// One correlation between blocked planes: out[p, q] = bias + sum_rs w[r, s] * in[p*sh - ph + r*dh,
// q*sw - pw + s*dw] (pixel coordinates relative to the interior). The input array has a zero border
// of `hin` pixels; taps that fall outside it read zero (so ph/pw may exceed hin, or be negative).
struct Corr {
  int64_t H, W;    // input interior
  int64_t hin;     // input halo
  int64_t P, Q;    // output interior
  int64_t R, S, sh, sw, ph, pw, dh, dw;
};

// One output row p of one channel block: `in` points at the input's interior pixel (0, 0), `ld`
// floats per input row; `w` is [R*S][16], `bias` 16 floats or null; `out` at output pixel (p, 0).
using FwdRowFn = void (*)(const Corr& g, const float* in, int64_t ld, const float* w, const float* bias,
                          float* out, int64_t p, bool relu);
// One row h of the data gradient of a strided depthwise convolution (g describes the forward: in =
// x, out = y), gathered: dx[h, v] = sum over taps with (h + ph - r*dh) = p*sh and (v + pw - s*dw) =
// q*sw, 0 <= p < P, 0 <= q < Q, of w[r, s] * dy[p, q]. `dy` at its interior (0, 0), `dx` at (h, 0).
using BwdDataRowFn = void (*)(const Corr& g, const float* dy, int64_t dy_ld, const float* w, float* dx,
                              int64_t h);
// The weight gradient of output row p of one image: acc[t][16] += sum_q dy[p, q] * x[tap t of (p, q)],
// acc[R*S][16] += sum_q dy[p, q] (the bias gradient). `x` at its interior (0, 0), `dy` at (p, 0).
using WgradRowFn = void (*)(const Corr& g, const float* x, int64_t ld, const float* dy, float* acc, int64_t p);

struct Isa {
  const char* name;
  FwdRowFn fwd_row;
  BwdDataRowFn bwd_data_row;
  WgradRowFn wgrad_row;
};

// Null where the compiler could not build that instruction set (non-x86 hosts).
const Isa* isa_avx512();
const Isa* isa_avx2();
const Isa* isa_portable();

}  // namespace ft::cpu::dwb
