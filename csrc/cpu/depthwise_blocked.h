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
  int64_t qlo = 0, qhi = 0;  // output columns whose S taps all lie inside the input array (interior_cols)
  // strided data gradient only: per input row h, at h * (2R + 1): the count n of taps reaching it,
  // then n pairs (r, p) of filter row and dy row (built once per call: the divisions stay out of the rows)
  const int64_t* row_taps = nullptr;
  // and per input column v, at v * (2S + 1): the count of taps reaching it, then pairs (s, q) of filter
  // column and dy column (the border columns' taps without a division per tap)
  const int64_t* col_taps = nullptr;
  // weight gradient of planes larger than kPrefetchPlaneFloats: floats from a dy line to the line it
  // prefetches (0: the line kAheadRows rows below; the fused backward: the next plane's, which its data
  // gradient reads next, this plane's dy being in cache already)
  int64_t dy_ahead = 0;
  // weight gradient of planes up to kPrefetchPlaneFloats: the plane after the call's last one (an image
  // on) is read next, so the last plane prefetches it too (else only the call's own planes are)
  bool next_plane = false;
  // the register-block forward rows (fwd_cols) of a large plane: each block asks for its lines of the
  // input rows that output row p + fwd_ahead adds (0: none; past the plane's end, the next plane in
  // memory: the next task's). Set for the stride-1 data gradient of large planes, whose dy nothing
  // else prefetches
  int64_t fwd_ahead = 0;
  // fwd_cols writes its outputs with non-temporal stores (output on a 64-byte line; see
  // stream_output in depthwise_blocked.cpp for when)
  bool nt = false;
};

// Planes up to this many floats (a 16 x 16 map with a halo of 1) are prefetched a plane ahead where a
// kernel walks the planes of one block (a whole image apart).
constexpr int64_t kPrefetchPlaneFloats = 18 * 18 * kBlock;

inline int64_t floordiv(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }
inline int64_t ceildiv(int64_t a, int64_t b) { return -floordiv(-a, b); }

// Sets g.qlo, g.qhi: once per call, since the divisions cost more than a short row's taps.
inline Corr interior_cols(Corr g) {
  const auto clamp = [](int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : v > hi ? hi : v; };
  g.qlo = clamp(ceildiv(g.pw - g.hin, g.sw), 0, g.Q);
  g.qhi = clamp(floordiv(g.W + g.hin - 1 - (g.S - 1) * g.dw + g.pw, g.sw) + 1, g.qlo, g.Q);
  return g;
}

// Output rows [p0, p1) of one channel block: `in` points at the input's interior pixel (0, 0), `ld`
// floats per input row; `w` is [R*S][16], `bias` 16 floats or null; `out` at output pixel (p0, 0),
// `out_ld` floats per output row.
using FwdRowsFn = void (*)(const Corr& g, const float* in, int64_t ld, const float* w, const float* bias,
                           float* out, int64_t out_ld, int64_t p0, int64_t p1, bool relu);
// Rows [h0, h1) of the data gradient of a strided depthwise convolution (g describes the forward:
// in = x, out = y), gathered: dx[h, v] = sum over taps with (h + ph - r*dh) = p*sh and (v + pw - s*dw)
// = q*sw, 0 <= p < P, 0 <= q < Q, of w[r, s] * dy[p, q]. `dy` at its interior (0, 0), `dx` at
// (h0, 0), `dx_ld` floats per dx row.
using BwdDataRowsFn = void (*)(const Corr& g, const float* dy, int64_t dy_ld, const float* w, float* dx,
                               int64_t dx_ld, int64_t h0, int64_t h1);
// The weight gradient of `count` images' planes of one channel block: acc[t][16] += sum_pq dy[p, q] *
// x[tap t of (p, q)], and acc[R*S][16] += sum_pq dy[p, q] (the bias gradient). `x` and `dy` at
// their first plane's interior pixel (0, 0), `ld` / `dy_ld` floats per row, the next image's plane
// `x_step` / `dy_step` floats on.
using WgradPlanesFn = void (*)(const Corr& g, const float* x, int64_t ld, int64_t x_step, const float* dy,
                               int64_t dy_ld, int64_t dy_step, int64_t count, float* acc);

struct Isa {
  const char* name;
  FwdRowsFn fwd_rows;
  BwdDataRowsFn bwd_data_rows;
  WgradPlanesFn wgrad_planes;
};

// Null where the compiler could not build that instruction set (non-x86 hosts).
const Isa* isa_avx512();
const Isa* isa_avx2();
const Isa* isa_portable();

}  // namespace ft::cpu::dwb
