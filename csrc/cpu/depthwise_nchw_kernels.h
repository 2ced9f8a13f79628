// The NCHW depthwise plane kernels (see depthwise_nchw.h) as one template over a vector type V
// (depthwise_nchw_avx512.cpp, depthwise_nchw_avx2.cpp). V supplies: T, kW (lanes), set1, zero,
// loadm (masked load: lanes off read zero and never fault), store, storem (masked store), fma(acc,
// a, b) = acc + a*b, add, relu, reduce (sum of the lanes), evens(a, b) (the even lanes of a then b:
// a stride-2 row), expand(d, parity) (lane i gets d[(i + parity) / 2] where i + parity is even,
// zero elsewhere: a dy row spread over a stride-2 dx row).
#pragma once
#include <algorithm>

#include "depthwise_nchw.h"

namespace ft::cpu::dwn {

template <class V>
constexpr uint32_t full_mask() {
  return V::kW >= 32 ? ~0u : (1u << V::kW) - 1;
}

// The rows of in that output row p's filter rows reach: their pointers and filter rows.
template <int KR>
inline int gather_rows(const Plan& g, const float* in, int64_t p, const float** rows, int* rr) {
  const int64_t R = KR ? KR : g.R;
  int n = 0;
  for (int64_t r = 0; r < R; ++r) {
    const int64_t h = p * g.sh + r * g.dh - g.ph;
    if (h < 0 || h >= g.Hi) continue;
    rows[n] = in + h * g.Wi;
    rr[n++] = static_cast<int>(r);
  }
  return n;
}

// The input vector of tap s of output chunk k (columns from q0) on one input row.
template <class V, int SW>
inline typename V::T row_tap(const Plan& g, const float* row, const uint32_t* m, int64_t q0, int64_t s) {
  const int64_t col = q0 * SW + s * g.dw - g.pw;
  if constexpr (SW == 1) {
    return V::loadm(row + col, m[s]);
  } else {
    return V::evens(V::loadm(row + col, m[2 * s]), V::loadm(row + col + V::kW, m[2 * s + 1]));
  }
}

// A 3x3 filter without row dilation, PB output rows of one column chunk at a time (rows mode): each
// input row's three tap vectors are loaded once and used by every output row of the block that
// reads them, so a block of PB rows costs ((PB - 1)*SH + 3) * 3 loads for 9 * PB FMAs (the plain
// per-row loop loads 9 vectors per output vector, and the loads, not the FMAs, were its limit).
// The unrolled loops leave `r` a constant per FMA, so the accumulators stay in registers.
template <class V, int SH, int SW, int PB>
inline __attribute__((always_inline)) void corr_block3(const Plan& g, const float* in, const typename V::T* w, float bias,
                                                      float* out, bool accumulate, int64_t q0, int64_t p0,
                                                      const uint32_t* m, uint32_t om, bool relu) {
  using T = typename V::T;
  constexpr int NIH = (PB - 1) * SH + 3;
  constexpr uint32_t kFull = full_mask<V>();
  T acc[PB];
#pragma GCC unroll 8
  for (int i = 0; i < PB; ++i) acc[i] = accumulate ? V::loadm(out + (p0 + i) * g.Wo + q0, om) : V::set1(bias);
#pragma GCC unroll 16
  for (int ih = 0; ih < NIH; ++ih) {
    const int64_t h = p0 * SH + ih - g.ph;
    if (h < 0 || h >= g.Hi) continue;
    const float* row = in + h * g.Wi;
#pragma GCC unroll 3
    for (int s = 0; s < 3; ++s) {
      const T x = row_tap<V, SW>(g, row, m, q0, s);
#pragma GCC unroll 8
      for (int i = 0; i < PB; ++i) {
        const int r = ih - i * SH;
        if (r >= 0 && r < 3) acc[i] = V::fma(acc[i], w[r * 3 + s], x);
      }
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < PB; ++i) {
    T v = relu ? V::relu(acc[i]) : acc[i];
    float* o = out + (p0 + i) * g.Wo + q0;
    if (om == kFull)
      V::store(o, v);
    else
      V::storem(o, v, om);
  }
}

template <class V, int SH, int SW>
void corr_rows3(const Plan& g, const float* in, const typename V::T* w, float bias, float* out, bool relu,
                bool accumulate) {
  constexpr int L = V::kW, PB = V::kRowBlock;
  constexpr uint32_t kFull = full_mask<V>();
  const int64_t mstride = SW == 1 ? 3 : 6;
  // row blocks outer, column chunks inner: the plane is read front to back, the order the hardware
  // prefetcher follows (chunks outer read every row's first lines, then every row's next ones, and
  // ran slower than the plain kernel from memory although 2.5x faster in cache)
  int64_t p = 0;
  for (; p + PB <= g.Ho; p += PB)
    for (int64_t k = 0; k < g.chunks; ++k)
      corr_block3<V, SH, SW, PB>(g, in, w, bias, out, accumulate, k * L, p, g.masks.data() + k * mstride,
                                 k + 1 == g.chunks ? g.tail : kFull, relu);
  for (; p < g.Ho; ++p)
    for (int64_t k = 0; k < g.chunks; ++k)
      corr_block3<V, SH, SW, 1>(g, in, w, bias, out, accumulate, k * L, p, g.masks.data() + k * mstride,
                                k + 1 == g.chunks ? g.tail : kFull, relu);
}

// The weight gradient's counterpart: PB dy row vectors loaded once, every input tap vector once per
// block, the nine tap sums in registers.
template <class V, int SH, int SW, int PB>
inline __attribute__((always_inline)) void wgrad_block3(const Plan& g, const float* in, const float* dy,
                                                       typename V::T (&acc)[9], typename V::T& accb, int64_t q0,
                                                       int64_t p0, const uint32_t* m, uint32_t om) {
  using T = typename V::T;
  constexpr int NIH = (PB - 1) * SH + 3;
  // a local copy: summed through the reference itself, GCC kept the sums in memory
  T a[9];
#pragma GCC unroll 9
  for (int t = 0; t < 9; ++t) a[t] = acc[t];
  T d[PB];
#pragma GCC unroll 8
  for (int i = 0; i < PB; ++i) {
    d[i] = V::loadm(dy + (p0 + i) * g.Wo + q0, om);
    accb = V::add(accb, d[i]);
  }
#pragma GCC unroll 16
  for (int ih = 0; ih < NIH; ++ih) {
    const int64_t h = p0 * SH + ih - g.ph;
    if (h < 0 || h >= g.Hi) continue;
    const float* row = in + h * g.Wi;
#pragma GCC unroll 3
    for (int s = 0; s < 3; ++s) {
      const T x = row_tap<V, SW>(g, row, m, q0, s);
#pragma GCC unroll 8
      for (int i = 0; i < PB; ++i) {
        const int r = ih - i * SH;
        if (r >= 0 && r < 3) a[r * 3 + s] = V::fma(a[r * 3 + s], d[i], x);
      }
    }
  }
#pragma GCC unroll 9
  for (int t = 0; t < 9; ++t) acc[t] = a[t];
}

// VEC: sums holds 10 vectors (kW floats each) that the lane sums are added into, not reduced (the
// caller reduces them once for several planes).
template <class V, int SH, int SW, bool VEC = false>
__attribute__((noinline)) void wgrad_rows3(const Plan& g, const float* in, const float* dy, float* sums) {
  using T = typename V::T;
  constexpr int L = V::kW, PB = V::kRowBlock;
  constexpr uint32_t kFull = full_mask<V>();
  const int64_t mstride = SW == 1 ? 3 : 6;
  T acc[9], accb = V::zero();
#pragma GCC unroll 9
  for (int t = 0; t < 9; ++t) acc[t] = V::zero();
  int64_t p = 0;  // row blocks outer, as corr_rows3
  for (; p + PB <= g.Ho; p += PB)
    for (int64_t k = 0; k < g.chunks; ++k)
      wgrad_block3<V, SH, SW, PB>(g, in, dy, acc, accb, k * L, p, g.masks.data() + k * mstride,
                                  k + 1 == g.chunks ? g.tail : kFull);
  for (; p < g.Ho; ++p)
    for (int64_t k = 0; k < g.chunks; ++k)
      wgrad_block3<V, SH, SW, 1>(g, in, dy, acc, accb, k * L, p, g.masks.data() + k * mstride,
                                 k + 1 == g.chunks ? g.tail : kFull);
  if constexpr (VEC) {
    for (int t = 0; t < 9; ++t) V::store(sums + t * L, V::add(V::loadm(sums + t * L, kFull), acc[t]));
    V::store(sums + 9 * L, V::add(V::loadm(sums + 9 * L, kFull), accb));
    return;
  }
  for (int t = 0; t < 9; ++t) sums[t] = V::reduce(acc[t]);
  sums[9] = V::reduce(accb);
}

template <class V, int KR, int KS, int SW>
void corr_impl(const Plan& g, const float* in, const float* taps, float bias, float* out, bool relu, bool accumulate) {
  using T = typename V::T;
  constexpr int L = V::kW;
  constexpr uint32_t kFull = full_mask<V>();
  const int64_t R = KR ? KR : g.R, S = KS ? KS : g.S, RS = R * S;
  T w[KR && KS ? KR * KS : kMaxTaps];
  for (int64_t t = 0; t < RS; ++t) w[t] = V::set1(taps[t]);
  const auto finish = [&](float* o, T acc, uint32_t om) {
    if (relu) acc = V::relu(acc);
    if (om == kFull)
      V::store(o, acc);
    else
      V::storem(o, acc, om);
  };
  if (g.flat) {
    // one chunk of L outputs across row ends: every tap is one masked load at a fixed offset
    const int64_t* off = g.offs.data();
    const uint32_t* m = g.masks.data();
    for (int64_t k = 0; k < g.chunks; ++k, m += RS) {
      const int64_t o = k * L;
      const uint32_t om = k + 1 == g.chunks ? g.tail : kFull;
      T acc = accumulate ? V::loadm(out + o, om) : V::set1(bias);
      for (int64_t t = 0; t < RS; ++t) acc = V::fma(acc, w[t], V::loadm(in + o + off[t], m[t]));
      finish(out + o, acc, om);
    }
    return;
  }
  if constexpr (KR == 3 && KS == 3) {
    if (g.dh == 1 && g.sh == 1) return corr_rows3<V, 1, SW>(g, in, w, bias, out, relu, accumulate);
    if (g.dh == 1 && g.sh == 2) return corr_rows3<V, 2, SW>(g, in, w, bias, out, relu, accumulate);
  }
  const float* rows[KR ? KR : kMaxTaps];
  int rr[KR ? KR : kMaxTaps];
  const int64_t mstride = SW == 1 ? S : 2 * S;
  for (int64_t p = 0; p < g.Ho; ++p) {
    const int nr = gather_rows<KR>(g, in, p, rows, rr);
    float* orow = out + p * g.Wo;
    for (int64_t k = 0; k < g.chunks; ++k) {
      const int64_t q0 = k * L;
      const uint32_t om = k + 1 == g.chunks ? g.tail : kFull;
      const uint32_t* m = g.masks.data() + k * mstride;
      T acc = accumulate ? V::loadm(orow + q0, om) : V::set1(bias);
      for (int i = 0; i < nr; ++i)
        for (int64_t s = 0; s < S; ++s) acc = V::fma(acc, w[rr[i] * S + s], row_tap<V, SW>(g, rows[i], m, q0, s));
      finish(orow + q0, acc, om);
    }
  }
}

// Each shape of the weight gradient in a function of its own: the tap sums are an array indexed by
// constants in the unrolled loops (registers) but by run-time values in the generic loop (memory), and
// one array shared by both stayed in memory for all.
template <class V, int KR, int KS>
__attribute__((noinline)) void wgrad_flat(const Plan& g, const float* in, const float* dy, float* sums) {
  using T = typename V::T;
  constexpr int L = V::kW;
  constexpr uint32_t kFull = full_mask<V>();
  const int64_t RS = KR && KS ? KR * KS : g.R * g.S;
  T acc[KR && KS ? KR * KS : kMaxTaps];
  for (int64_t t = 0; t < RS; ++t) acc[t] = V::zero();
  T accb = V::zero();
  const int64_t* off = g.offs.data();
  const uint32_t* m = g.masks.data();
  for (int64_t k = 0; k < g.chunks; ++k, m += RS) {
    const int64_t o = k * L;
    const T d = V::loadm(dy + o, k + 1 == g.chunks ? g.tail : kFull);
    accb = V::add(accb, d);
    for (int64_t t = 0; t < RS; ++t) acc[t] = V::fma(acc[t], d, V::loadm(in + o + off[t], m[t]));
  }
  for (int64_t t = 0; t < RS; ++t) sums[t] = V::reduce(acc[t]);
  sums[RS] = V::reduce(accb);
}

template <class V, int SW>
__attribute__((noinline)) void wgrad_rows_any(const Plan& g, const float* in, const float* dy, float* sums) {
  using T = typename V::T;
  constexpr int L = V::kW;
  constexpr uint32_t kFull = full_mask<V>();
  const int64_t S = g.S, RS = g.R * g.S;
  T acc[kMaxTaps];
  for (int64_t t = 0; t < RS; ++t) acc[t] = V::zero();
  T accb = V::zero();
  const float* rows[kMaxTaps];
  int rr[kMaxTaps];
  const int64_t mstride = SW == 1 ? S : 2 * S;
  for (int64_t p = 0; p < g.Ho; ++p) {
    const int nr = gather_rows<0>(g, in, p, rows, rr);
    for (int64_t k = 0; k < g.chunks; ++k) {
      const int64_t q0 = k * L;
      const uint32_t* m = g.masks.data() + k * mstride;
      const T d = V::loadm(dy + p * g.Wo + q0, k + 1 == g.chunks ? g.tail : kFull);
      accb = V::add(accb, d);
      for (int i = 0; i < nr; ++i)
        for (int64_t s = 0; s < S; ++s)
          acc[rr[i] * S + s] = V::fma(acc[rr[i] * S + s], d, row_tap<V, SW>(g, rows[i], m, q0, s));
    }
  }
  for (int64_t t = 0; t < RS; ++t) sums[t] = V::reduce(acc[t]);
  sums[RS] = V::reduce(accb);
}

template <class V, int KR, int KS, int SW>
void wgrad_impl(const Plan& g, const float* in, const float* dy, float* sums) {
  if (g.flat) return wgrad_flat<V, KR, KS>(g, in, dy, sums);
  if constexpr (KR == 3 && KS == 3) {
    if (g.dh == 1 && g.sh == 1) return wgrad_rows3<V, 1, SW>(g, in, dy, sums);
    if (g.dh == 1 && g.sh == 2) return wgrad_rows3<V, 2, SW>(g, in, dy, sums);
  }
  wgrad_rows_any<V, SW>(g, in, dy, sums);
}

template <class V, int KR, int KS>
void gather_impl(const GatherPlan& gp, const float* dy, const float* taps, float* dx, bool accumulate) {
  using T = typename V::T;
  constexpr int L = V::kW;
  constexpr uint32_t kFull = full_mask<V>();
  const Plan& g = gp.g;
  const int64_t R = KR ? KR : g.R, S = KS ? KS : g.S, RS = R * S;
  T w[KR && KS ? KR * KS : kMaxTaps];
  for (int64_t t = 0; t < RS; ++t) w[t] = V::set1(taps[t]);
  const float* rows[KR ? KR : kMaxTaps];
  int rr[KR ? KR : kMaxTaps];
  for (int64_t h = 0; h < g.Hi; ++h) {
    // the dy rows p with h + ph - r*dh = p*sh
    int nr = 0;
    for (int64_t r = 0; r < R; ++r) {
      const int64_t v = h + g.ph - r * g.dh;
      if (v < 0 || v % g.sh || v / g.sh >= g.Ho) continue;
      rows[nr] = dy + v / g.sh * g.Wo;
      rr[nr++] = static_cast<int>(r);
    }
    float* drow = dx + h * g.Wi;
    for (int64_t k = 0; k < gp.chunks; ++k) {
      const int64_t v0 = k * L;
      const uint32_t om = k + 1 == gp.chunks ? gp.tail : kFull;
      const uint32_t* m = gp.masks.data() + k * 2 * S;
      const int64_t* base = gp.base.data() + k * S;
      T acc = accumulate ? V::loadm(drow + v0, om) : V::zero();
      for (int i = 0; i < nr; ++i)
        for (int64_t s = 0; s < S; ++s)
          acc = V::fma(acc, w[rr[i] * S + s], V::expand(V::loadm(rows[i] + base[s], m[2 * s]), m[2 * s + 1]));
      if (om == kFull)
        V::store(drow + v0, acc);
      else
        V::storem(drow + v0, acc, om);
    }
  }
}

// Per-call choice of the specialisations: 3x3 filters (MobileNet's) unrolled, anything else looped.
template <class V>
void corr_any(const Plan& g, const float* in, const float* taps, float bias, float* out, bool relu, bool accumulate) {
  const bool k3 = g.R == 3 && g.S == 3;
  if (g.flat || g.sw == 1)
    (k3 ? corr_impl<V, 3, 3, 1> : corr_impl<V, 0, 0, 1>)(g, in, taps, bias, out, relu, accumulate);
  else
    (k3 ? corr_impl<V, 3, 3, 2> : corr_impl<V, 0, 0, 2>)(g, in, taps, bias, out, relu, accumulate);
}

template <class V>
void wgrad_any(const Plan& g, const float* in, const float* dy, float* sums) {
  const bool k3 = g.R == 3 && g.S == 3;
  if (g.flat || g.sw == 1)
    (k3 ? wgrad_impl<V, 3, 3, 1> : wgrad_impl<V, 0, 0, 1>)(g, in, dy, sums);
  else
    (k3 ? wgrad_impl<V, 3, 3, 2> : wgrad_impl<V, 0, 0, 2>)(g, in, dy, sums);
}

template <class V>
void gather_any(const GatherPlan& gp, const float* dy, const float* taps, float* dx, bool accumulate) {
  (gp.g.R == 3 && gp.g.S == 3 ? gather_impl<V, 3, 3> : gather_impl<V, 0, 0>)(gp, dy, taps, dx, accumulate);
}

// The 3x3 weight gradient without row dilation at row stride 1 or 2 (rows mode), lane sums added into
// sums[10][kW]; false (nothing done) for any other plan.
template <class V>
bool wgrad_vec_any(const Plan& g, const float* in, const float* dy, float* sums) {
  if (g.flat || g.R != 3 || g.S != 3 || g.dh != 1 || (g.sh != 1 && g.sh != 2)) return false;
  if (g.sw == 1)
    (g.sh == 1 ? wgrad_rows3<V, 1, 1, true> : wgrad_rows3<V, 2, 1, true>)(g, in, dy, sums);
  else
    (g.sh == 1 ? wgrad_rows3<V, 1, 2, true> : wgrad_rows3<V, 2, 2, true>)(g, in, dy, sums);
  return true;
}

template <class V>
Isa make_isa(const char* name) {
  Isa isa{name, V::kW, corr_any<V>, wgrad_any<V>, gather_any<V>};
  isa.wgrad_vec = wgrad_vec_any<V>;
  return isa;
}

}  // namespace ft::cpu::dwn
