// The blocked depthwise row kernels, written once over a vector type V and compiled once per
// instruction set (see depthwise_blocked.h for the contracts). Each including file defines V inside
// an anonymous namespace, so every instantiation has internal linkage (the AVX-512 code can never be
// picked by the linker for another path).
//
// V provides: T (V::kW floats, kW dividing 16), zero(), load(p), store(p, v), stream(p, v) (a
// non-temporal store, p aligned to the vector; a plain store where there is none), fence() (orders
// the streamed stores before the task ends), fma(acc, a, b) =
// acc + a*b lane by lane, add(a, b), relu(v) (NaN stays NaN, as std::max(v, 0.f)), load_if(p, ok)
// (load(p) if ok, else zeros without touching p), kSmallRows (whether the register-block kernels
// run) and kCols (their widest block, in output columns: 8, or 4 for AVX2's 16 registers). A 16-channel
// pixel is 16 / kW vectors; the kernels sweep a row once per vector slice (lane offset l), so the
// AVX2 build keeps 3x3 weights + accumulators inside its 16 registers.
//
// Every row has interior columns [qlo, qhi) whose taps all lie inside the input array (halo
// included): there a 3x3 filter at stride 1 or 2 without dilation runs fully unrolled, four output
// pixels at a time, with the nine weight vectors in registers; the few border columns (and other
// filters) loop over their valid taps.
#pragma once
#include <algorithm>

#include "depthwise_blocked.h"

namespace ft::cpu::dwb {

// Taps k in [k0, k1) with -halo <= i0 + k*d < n + halo (a contiguous range: the coordinate grows
// with k); all K without a division in the common case.
inline void tap_range(int64_t i0, int64_t d, int64_t K, int64_t n, int64_t halo, int64_t& k0, int64_t& k1) {
  if (i0 >= -halo && i0 + (K - 1) * d < n + halo) {
    k0 = 0;
    k1 = K;
    return;
  }
  k0 = std::max<int64_t>(0, ceildiv(-halo - i0, d));
  k1 = std::max(k0, std::min<int64_t>(K, floordiv(n + halo - 1 - i0, d) + 1));
}

template <class V, int SW, int QT>
inline void fwd3x3(const float* base, int64_t ld, const typename V::T* wv, typename V::T b, float* out, bool relu) {
  using T = typename V::T;
  T acc[QT];
#pragma GCC unroll 8
  for (int i = 0; i < QT; ++i) acc[i] = b;
#pragma GCC unroll 3
  for (int r = 0; r < 3; ++r)
#pragma GCC unroll 3
    for (int s = 0; s < 3; ++s)
#pragma GCC unroll 8
      for (int i = 0; i < QT; ++i) acc[i] = V::fma(acc[i], wv[r * 3 + s], V::load(base + r * ld + (i * SW + s) * kBlock));
#pragma GCC unroll 8
  for (int i = 0; i < QT; ++i) V::store(out + i * kBlock, relu ? V::relu(acc[i]) : acc[i]);
}

template <class V, int SW>
void fwd_row_3x3(const float* in, int64_t ld, const typename V::T* wv, typename V::T b, float* out, int64_t q0,
                 int64_t q1, int64_t ih0, int64_t pw, int l, bool relu) {
  const float* base = in + ih0 * ld + (q0 * SW - pw) * kBlock + l;
  float* o = out + q0 * kBlock + l;
  int64_t q = q0;
  for (; q + 4 <= q1; q += 4, base += 4 * SW * kBlock, o += 4 * kBlock) fwd3x3<V, SW, 4>(base, ld, wv, b, o, relu);
  for (; q < q1; ++q, base += SW * kBlock, o += kBlock) fwd3x3<V, SW, 1>(base, ld, wv, b, o, relu);
}

// The small-map kernels below (3x3 taps, no dilation, column padding 0 or 1, any row padding)
// take a row's outputs in blocks of QB <= 8 columns, the whole block's accumulators in registers
// over the three filter rows, so a row costs its FMAs and little else: no per-pixel tap search, no
// border pass. Taps on the input's halo are skipped (it is zero), not read: on a 4 x 4 map with a
// halo of 1 that is 20 of every 36 pixels' traffic. Of a block's NK input columns only the first
// and the last can lie outside the interior (pw <= 1), and those are read as zero there.
constexpr int64_t kSmallMapCols = 1 << 30;

template <int QB, int SW>
constexpr int kBlockCols = (QB - 1) * SW + 3;  // input columns QB outputs read

// Input columns [q0*SW - pw, ... + NK) of one row into registers (the outside ones as zeros).
template <class V, int NK, int SW>
inline void load_block_cols(const Corr& g, const float* in_row, int64_t q0, typename V::T (&x)[NK]) {
  const int64_t c0 = q0 * SW - g.pw;
  const float* row = in_row + c0 * kBlock;
  x[0] = V::load_if(row, c0 >= 0);
#pragma GCC unroll 16
  for (int k = 1; k < NK - 1; ++k) x[k] = V::load(row + k * kBlock);
  x[NK - 1] = V::load_if(row + (NK - 1) * kBlock, c0 + NK - 1 < g.W);
}

// Forward rows [p0, p1), columns [q0, q1) in blocks of QB (q1 - q0 a multiple of QB). `in` and
// `out` (at row p0) point at lane l of pixel (0, 0).
template <class V, int QB, int SW>
void fwd_cols(const Corr& g, const float* in, int64_t ld, const typename V::T* wv, typename V::T b, float* out,
              int64_t out_ld, int64_t p0, int64_t p1, int64_t q0, int64_t q1, bool relu) {
  using T = typename V::T;
  constexpr int NK = kBlockCols<QB, SW>;
  for (int64_t p = p0; p < p1; ++p)
    for (int64_t qb = q0; qb < q1; qb += QB) {
      T acc[QB];
      if (g.fwd_ahead) {  // this block's lines of the sh input rows output row p + fwd_ahead adds
        const float* pf = in + ((p + g.fwd_ahead) * g.sh - g.ph + 3 - g.sh) * ld + (qb * SW - g.pw + 1) * kBlock;
        for (int64_t i = 0; i < g.sh; ++i)
#pragma GCC unroll 16
          for (int k = 0; k < QB * SW; ++k) __builtin_prefetch(pf + i * ld + k * kBlock);
      }
#pragma GCC unroll 8
      for (int q = 0; q < QB; ++q) acc[q] = b;
#pragma GCC unroll 3
      for (int r = 0; r < 3; ++r) {
        const int64_t ih = p * g.sh - g.ph + r;
        if (ih < 0 || ih >= g.H) continue;
        T x[NK];
        load_block_cols<V, NK, SW>(g, in + ih * ld, qb, x);
#pragma GCC unroll 3
        for (int s = 0; s < 3; ++s)
#pragma GCC unroll 8
          for (int q = 0; q < QB; ++q) acc[q] = V::fma(acc[q], wv[r * 3 + s], x[q * SW + s]);
      }
      float* o = out + (p - p0) * out_ld + qb * kBlock;
      if (g.nt) {
#pragma GCC unroll 8
        for (int q = 0; q < QB; ++q) V::stream(o + q * kBlock, relu ? V::relu(acc[q]) : acc[q]);
      } else {
#pragma GCC unroll 8
        for (int q = 0; q < QB; ++q) V::store(o + q * kBlock, relu ? V::relu(acc[q]) : acc[q]);
      }
    }
  if (g.nt) V::fence();
}

// Calls F<QB>::run(q0, q1, a...) for the columns [0, Q): a row of at most 8 as one block (a row
// split in two would load its overlapping input columns twice), wider ones in blocks of B (8, or 4
// where 8 blocks overflow the registers), then one block of the rest.
template <int B, template <int> class F, class... A>
inline void by_column_blocks(int64_t Q, A&&... a) {
  static_assert(B == 4 || B == 8);
  const int64_t full = Q <= 8 ? 0 : Q / B * B;
  if (full) F<B>::run(0, full, a...);
  switch (Q - full) {
    case 1: F<1>::run(full, Q, a...); break;
    case 2: F<2>::run(full, Q, a...); break;
    case 3: F<3>::run(full, Q, a...); break;
    case 4: F<4>::run(full, Q, a...); break;
    case 5: F<5>::run(full, Q, a...); break;
    case 6: F<6>::run(full, Q, a...); break;
    case 7: F<7>::run(full, Q, a...); break;
    case 8: F<8>::run(full, Q, a...); break;
    default: break;
  }
}

template <class V, int SW>
struct FwdCols {
  template <int QB>
  struct F {
    static void run(int64_t q0, int64_t q1, const Corr& g, const float* in, int64_t ld, const typename V::T* wv,
                    typename V::T b, float* out, int64_t out_ld, int64_t p0, int64_t p1, bool relu) {
      fwd_cols<V, QB, SW>(g, in, ld, wv, b, out, out_ld, p0, p1, q0, q1, relu);
    }
  };
};

inline bool small_map_shape(const Corr& g, int64_t max_q) {
  return g.R == 3 && g.S == 3 && g.dh == 1 && g.dw == 1 && (g.sw == 1 || g.sw == 2) && (g.pw == 0 || g.pw == 1) &&
         g.Q <= max_q;
}

// Rows [p0, p1) of one plane (a task takes several rows of a small map: the weights are loaded
// once for all of them).
template <class V>
void fwd_rows(const Corr& g, const float* in, int64_t ld, const float* w, const float* bias, float* out,
              int64_t out_ld, int64_t p0, int64_t p1, bool relu) {
  using T = typename V::T;
  const bool fast_shape = g.R == 3 && g.S == 3 && g.dh == 1 && g.dw == 1 && (g.sw == 1 || g.sw == 2);
  for (int l = 0; l < kBlock; l += V::kW) {
    const T b = bias ? V::load(bias + l) : V::zero();
    T wv[9];
    if (fast_shape) {
#pragma GCC unroll 9
      for (int t = 0; t < 9; ++t) wv[t] = V::load(w + t * kBlock + l);
      if constexpr (V::kSmallRows) {
        if (small_map_shape(g, kSmallMapCols)) {
          if (g.sw == 1)
            by_column_blocks<V::kCols, FwdCols<V, 1>::template F>(g.Q, g, in + l, ld, wv, b, out + l, out_ld, p0, p1,
                                                                  relu);
          else
            by_column_blocks<V::kCols, FwdCols<V, 2>::template F>(g.Q, g, in + l, ld, wv, b, out + l, out_ld, p0, p1,
                                                                  relu);
          continue;
        }
      }
    }
    for (int64_t p = p0; p < p1; ++p) {
      float* orow = out + (p - p0) * out_ld;
      const int64_t ih0 = p * g.sh - g.ph;
      int64_t r0, r1;
      tap_range(ih0, g.dh, g.R, g.H, g.hin, r0, r1);
      auto one = [&](int64_t q) {
        const int64_t iw0 = q * g.sw - g.pw;
        int64_t s0, s1;
        tap_range(iw0, g.dw, g.S, g.W, g.hin, s0, s1);
        T acc = b;
        for (int64_t r = r0; r < r1; ++r) {
          const float* row = in + (ih0 + r * g.dh) * ld + l;
          for (int64_t s = s0; s < s1; ++s)
            acc = V::fma(acc, V::load(w + (r * g.S + s) * kBlock + l), V::load(row + (iw0 + s * g.dw) * kBlock));
        }
        V::store(orow + q * kBlock + l, relu ? V::relu(acc) : acc);
      };
      if (!(fast_shape && r0 == 0 && r1 == 3)) {
        for (int64_t q = 0; q < g.Q; ++q) one(q);
        continue;
      }
      for (int64_t q = 0; q < g.qlo; ++q) one(q);
      if (g.sw == 1)
        fwd_row_3x3<V, 1>(in, ld, wv, b, orow, g.qlo, g.qhi, ih0, g.pw, l, relu);
      else
        fwd_row_3x3<V, 2>(in, ld, wv, b, orow, g.qlo, g.qhi, ih0, g.pw, l, relu);
      for (int64_t q = g.qhi; q < g.Q; ++q) one(q);
    }
  }
}

// Whether a kernel sweeping a row once per vector slice may stream its stores: only where one vector
// is a whole 16-channel pixel, a whole 64-byte line (with narrower vectors a line's halves are written
// in different sweeps, and a write-combining buffer flushed half full costs a read of the line anyway).
template <class V>
constexpr bool kStreamWhole = V::kW == kBlock;

// The strided data gradient of a 3x3 filter at column stride 2 (padding 0 or 1, any row stride),
// one dx row, in blocks of QB column pairs: with t = v + pw, dx[t = 2m] = w0*dy[m] + w2*dy[m - 1] and
// dx[t = 2m + 1] = w1*dy[m] per filter row reaching the row (g.row_taps), the block's QB + 1 dy
// pixels loaded once per filter row and its 2 QB sums in registers. Pairs [m0, m1) (a multiple of QB);
// only the block's first and last dy pixel can lie outside dy (read as zero), and only the first and
// last dx column outside dx (not stored).
template <class V, int QB>
void dgrad_s2_cols(const Corr& g, const float* dy, int64_t dy_ld, const float* w, float* dx, int64_t dx_ld,
                   int64_t h0, int64_t h1, int64_t m0, int64_t m1) {
  using T = typename V::T;
  for (int64_t h = h0; h < h1; ++h) {
    const int64_t* taps = g.row_taps + h * (2 * g.R + 1);
    const int64_t nr = taps[0];
    for (int64_t mb = m0; mb < m1; mb += QB) {
      T ae[QB], ao[QB];
#pragma GCC unroll 8
      for (int j = 0; j < QB; ++j) ae[j] = ao[j] = V::zero();
      for (int64_t i = 0; i < nr; ++i) {
        const float* drow = dy + taps[2 + 2 * i] * dy_ld + (mb - 1) * kBlock;
        const float* wr = w + taps[1 + 2 * i] * 3 * kBlock;
        const T w0 = V::load(wr), w1 = V::load(wr + kBlock), w2 = V::load(wr + 2 * kBlock);
        T d[QB + 1];
        d[0] = V::load_if(drow, mb >= 1);
#pragma GCC unroll 8
        for (int j = 1; j < QB; ++j) d[j] = V::load(drow + j * kBlock);
        d[QB] = V::load_if(drow + QB * kBlock, mb + QB - 1 < g.Q);
#pragma GCC unroll 8
        for (int j = 0; j < QB; ++j) {
          ae[j] = V::fma(V::fma(ae[j], w0, d[j + 1]), w2, d[j]);
          ao[j] = V::fma(ao[j], w1, d[j + 1]);
        }
      }
      const int64_t v0 = 2 * mb - g.pw;
      float* o = dx + (h - h0) * dx_ld + v0 * kBlock;
      if (kStreamWhole<V> && g.nt && v0 >= 0 && v0 + 2 * QB <= g.W) {
#pragma GCC unroll 8
        for (int j = 0; j < QB; ++j) {
          V::stream(o + 2 * j * kBlock, ae[j]);
          V::stream(o + (2 * j + 1) * kBlock, ao[j]);
        }
      } else if (v0 >= 0 && v0 + 2 * QB <= g.W) {
#pragma GCC unroll 8
        for (int j = 0; j < QB; ++j) {
          V::store(o + 2 * j * kBlock, ae[j]);
          V::store(o + (2 * j + 1) * kBlock, ao[j]);
        }
      } else {
#pragma GCC unroll 8
        for (int j = 0; j < QB; ++j) {
          if (v0 + 2 * j >= 0 && v0 + 2 * j < g.W) V::store(o + 2 * j * kBlock, ae[j]);
          if (v0 + 2 * j + 1 < g.W) V::store(o + (2 * j + 1) * kBlock, ao[j]);
        }
      }
    }
  }
  if (kStreamWhole<V> && g.nt) V::fence();
}

template <class V>
struct DgradS2Cols {
  template <int QB>
  struct F {
    static void run(int64_t m0, int64_t m1, const Corr& g, const float* dy, int64_t dy_ld, const float* w, float* dx,
                    int64_t dx_ld, int64_t h0, int64_t h1) {
      dgrad_s2_cols<V, QB>(g, dy, dy_ld, w, dx, dx_ld, h0, h1, m0, m1);
    }
  };
};

// Strided data gradient, gathered: each dx pixel sums the few (dy pixel, tap) pairs that reach it
// (at stride 2 and 3x3: 1, 2 or 4), kept in a register, and is written once; no scatter into a
// zeroed buffer. A 3x3 filter at column stride 2 runs its interior as pairs of dx columns: with
// t = v + pw even, dx[v] = w0*dy[t/2] + w2*dy[t/2 - 1] and dx[v+1] = w1*dy[t/2] per filter row, the
// weights in registers; the border columns (and other filters) look their taps up in g.col_taps.
template <class V>
void bwd_data_row(const Corr& g, const float* dy, int64_t dy_ld, const float* w, float* dx, int64_t h) {
  using T = typename V::T;
  const int64_t* taps = g.row_taps + h * (2 * g.R + 1);
  const int64_t nr = taps[0];
  const bool pairs = g.S == 3 && g.sw == 2 && g.dw == 1 && nr <= 3;
  // the pairs: t = v + pw even with 2 <= t and t + 1 <= 2Q - 1, and v + 1 < W
  int64_t v0 = std::max<int64_t>(0, 2 - g.pw), v1 = std::min<int64_t>(g.W - 1, 2 * g.Q - 2 - g.pw + 1);
  if ((v0 + g.pw) % 2) ++v0;
  if (!pairs || v1 <= v0) v0 = v1 = 0;
  for (int l = 0; l < kBlock; l += V::kW) {
    auto one = [&](int64_t v) {
      const int64_t* ct = g.col_taps + v * (2 * g.S + 1);
      T acc = V::zero();
      for (int64_t i = 0; i < nr; ++i) {
        const float* drow = dy + taps[2 + 2 * i] * dy_ld + l;
        const float* wr = w + taps[1 + 2 * i] * g.S * kBlock + l;
        for (int64_t j = 0; j < ct[0]; ++j)
          acc = V::fma(acc, V::load(wr + ct[1 + 2 * j] * kBlock), V::load(drow + ct[2 + 2 * j] * kBlock));
      }
      V::store(dx + v * kBlock + l, acc);
    };
    for (int64_t v = 0; v < v0; ++v) one(v);
    if (v1 > v0) {
      T wv[3][3];
      const float* drow[3];
      for (int64_t i = 0; i < nr; ++i) {
        drow[i] = dy + taps[2 + 2 * i] * dy_ld + l;
        for (int s = 0; s < 3; ++s) wv[i][s] = V::load(w + (taps[1 + 2 * i] * 3 + s) * kBlock + l);
      }
      int64_t v = v0;
      for (; v + 1 <= v1; v += 2) {
        const int64_t m = (v + g.pw) / 2;
        T a0 = V::zero(), a1 = V::zero();
        for (int64_t i = 0; i < nr; ++i) {
          const T d = V::load(drow[i] + m * kBlock), dm = V::load(drow[i] + (m - 1) * kBlock);
          a0 = V::fma(V::fma(a0, wv[i][0], d), wv[i][2], dm);
          a1 = V::fma(a1, wv[i][1], d);
        }
        V::store(dx + v * kBlock + l, a0);
        V::store(dx + (v + 1) * kBlock + l, a1);
      }
      for (; v < g.W; ++v) one(v);
    } else {
      for (int64_t v = v0; v < g.W; ++v) one(v);
    }
  }
}

template <class V>
void bwd_data_rows(const Corr& g, const float* dy, int64_t dy_ld, const float* w, float* dx, int64_t dx_ld,
                   int64_t h0, int64_t h1) {
  if constexpr (V::kSmallRows) {
    if (g.R == 3 && g.S == 3 && g.dh == 1 && g.dw == 1 && g.sw == 2 && (g.pw == 0 || g.pw == 1)) {
      const int64_t pairs = (g.W - 1 + g.pw) / 2 + 1;  // m of the dx columns t = v + pw in [pw, W + pw)
      for (int l = 0; l < kBlock; l += V::kW)
        by_column_blocks<V::kCols, DgradS2Cols<V>::template F>(pairs, g, dy + l, dy_ld, w + l, dx + l, dx_ld, h0, h1);
      return;
    }
  }
  for (int64_t h = h0; h < h1; ++h) bwd_data_row<V>(g, dy, dy_ld, w, dx + (h - h0) * dx_ld, h);
}

// Interior rows [p0, p1) x columns [qlo, qhi) of a 3x3 filter without dilation: the nine tap sums
// and the bias sum stay in registers over the whole block of rows, added into acc once.
template <class V, int SW>
void wgrad_3x3_block(const Corr& g, const float* x, int64_t ld, const float* dy, int64_t dy_ld, float* acc,
                     int64_t p0, int64_t p1, int l) {
  using T = typename V::T;
  T a[9], bs = V::zero();
#pragma GCC unroll 9
  for (int t = 0; t < 9; ++t) a[t] = V::zero();
  for (int64_t p = p0; p < p1; ++p) {
    const float* base = x + (p * g.sh - g.ph) * ld + (g.qlo * SW - g.pw) * kBlock + l;
    const float* d = dy + p * dy_ld + l;
    for (int64_t q = g.qlo; q < g.qhi; ++q, base += SW * kBlock) {
      const T dv = V::load(d + q * kBlock);
      bs = V::add(bs, dv);
#pragma GCC unroll 3
      for (int r = 0; r < 3; ++r)
#pragma GCC unroll 3
        for (int s = 0; s < 3; ++s) a[r * 3 + s] = V::fma(a[r * 3 + s], dv, V::load(base + r * ld + s * kBlock));
    }
  }
#pragma GCC unroll 9
  for (int t = 0; t < 9; ++t) V::store(acc + t * kBlock + l, V::add(V::load(acc + t * kBlock + l), a[t]));
  V::store(acc + 9 * kBlock + l, V::add(V::load(acc + 9 * kBlock + l), bs));
}

// Weight gradient over `count` planes of one channel block (x_step / dy_step floats apart), columns
// [q0, q1) in blocks of QB: the nine tap sums and the bias sum stay in registers over all of them,
// each block's dy pixels loaded once for its three filter rows; added into acc at the end. `x` and
// `dy` point at lane l of their interiors' pixel (0, 0). Same shapes as fwd_cols.
// Small planes (SMALL, kPrefetchPlaneFloats): the planes of one block are a whole image apart, each
// a short stream the hardware prefetcher finds late, so the next plane's lines are asked for while
// this one is summed. Larger planes: the lines kAheadRows output rows below (the hardware prefetcher
// alone left one thread at half the bandwidth of summing from L2: 64x64x32x32, 1 thread, 17 cycles a
// pixel against 7.7 from L2; with these prefetches 2 threads went 0.75 -> 0.41 ms).
constexpr int64_t kAheadRows = 4;

// SMALL planes with more than kSmallAheadRows output rows (HALF: 16 x 16 maps at stride 1) prefetch
// kSmallAheadRows output rows ahead, past the plane's end into the next one, rather than a whole plane
// ahead: a 16 x 16 plane's x and dy are ~36 KB of lines, asked for into a 48 KB L1 beside the ~36 KB
// being summed (128x64x16x16, 1 thread: 0.77-0.80x). On smaller planes the row-ahead form ran
// 1.10-1.13x slower than this whole-plane one.
constexpr int64_t kSmallAheadRows = 8;

template <class V, int QB, int SW, bool SMALL, bool HALF = false>
void wgrad_cols(const Corr& g, const float* x, int64_t ld, int64_t x_step, const float* dy, int64_t dy_ld,
                int64_t dy_step, int64_t count, int64_t q0, int64_t q1, float* acc) {
  using T = typename V::T;
  constexpr int NK = kBlockCols<QB, SW>;
  T a[9], bs = V::zero();
#pragma GCC unroll 9
  for (int t = 0; t < 9; ++t) a[t] = V::zero();
  for (int64_t n = 0; n < count; ++n) {
    const bool more = n + 1 < count || g.next_plane;  // another plane of the block follows
    const bool ahead = SMALL && !HALF && more;
    for (int64_t p = 0; p < g.P; ++p)
      for (int64_t qb = q0; qb < q1; qb += QB) {
        T d[QB];
        const float* drow = dy + n * dy_step + p * dy_ld + qb * kBlock;
        if (ahead)
          for (int q = 0; q < QB; ++q) __builtin_prefetch(drow + dy_step + q * kBlock);
        if constexpr (HALF) {  // output row t of plane m: dy, and the input rows that row t is first to read
          int64_t t = p + kSmallAheadRows, m = n;
          if (t >= g.P) t -= g.P, ++m;
          if (m == n || more) {
            const float* dpf = dy + m * dy_step + t * dy_ld + qb * kBlock;
            for (int q = 0; q < QB; ++q) __builtin_prefetch(dpf + q * kBlock);
            for (int64_t r = t == 0 ? 0 : 3 - g.sh; r < 3; ++r) {
              const int64_t it = t * g.sh - g.ph + r;
              if (it < 0 || it >= g.H) continue;
              const float* xr = x + m * x_step + it * ld + (qb * SW - g.pw) * kBlock;
              for (int k = 0; k < NK; ++k) __builtin_prefetch(xr + k * kBlock);
            }
          }
        }
        if constexpr (!SMALL) {  // the sh input rows output row p + kAheadRows adds, and its dy row
          const float* dpf = drow + (g.dy_ahead ? g.dy_ahead : kAheadRows * dy_ld);
          for (int q = 0; q < QB; ++q) __builtin_prefetch(dpf + q * kBlock);
          const float* xr = x + n * x_step + ((p + kAheadRows) * g.sh - g.ph + 2) * ld + (qb * SW - g.pw) * kBlock;
          for (int i = 0; i < g.sh; ++i)
            for (int k = 0; k < NK; ++k) __builtin_prefetch(xr - i * ld + k * kBlock);
        }
#pragma GCC unroll 8
        for (int q = 0; q < QB; ++q) d[q] = V::load(drow + q * kBlock);
        T dsum = d[0];
#pragma GCC unroll 8
        for (int q = 1; q < QB; ++q) dsum = V::add(dsum, d[q]);
        bs = V::add(bs, dsum);
#pragma GCC unroll 3
        for (int r = 0; r < 3; ++r) {
          const int64_t ih = p * g.sh - g.ph + r;
          if (ih < 0 || ih >= g.H) continue;
          T xv[NK];
          load_block_cols<V, NK, SW>(g, x + n * x_step + ih * ld, qb, xv);
          if (ahead && (p == 0 || r >= 3 - g.sh)) {  // each of the next plane's rows once: where it is new
            const float* next = x + (n + 1) * x_step + ih * ld + (qb * SW - g.pw) * kBlock;
            for (int k = 0; k < NK; ++k) __builtin_prefetch(next + k * kBlock);
          }
#pragma GCC unroll 3
          for (int s = 0; s < 3; ++s)
#pragma GCC unroll 8
            for (int q = 0; q < QB; ++q) a[r * 3 + s] = V::fma(a[r * 3 + s], d[q], xv[q * SW + s]);
        }
      }
  }
#pragma GCC unroll 9
  for (int t = 0; t < 9; ++t) V::store(acc + t * kBlock, V::add(V::load(acc + t * kBlock), a[t]));
  V::store(acc + 9 * kBlock, V::add(V::load(acc + 9 * kBlock), bs));
}

template <class V, int SW>
struct WgradCols {
  template <int QB>
  struct F {
    static void run(int64_t q0, int64_t q1, const Corr& g, const float* x, int64_t ld, int64_t x_step,
                    const float* dy, int64_t dy_ld, int64_t dy_step, int64_t count, float* acc) {
      if ((g.H + 2 * g.hin) * ld <= kPrefetchPlaneFloats && g.sh == 1 && g.P > kSmallAheadRows)
        wgrad_cols<V, QB, SW, true, true>(g, x, ld, x_step, dy, dy_ld, dy_step, count, q0, q1, acc);
      else if ((g.H + 2 * g.hin) * ld <= kPrefetchPlaneFloats)
        wgrad_cols<V, QB, SW, true>(g, x, ld, x_step, dy, dy_ld, dy_step, count, q0, q1, acc);
      else
        wgrad_cols<V, QB, SW, false>(g, x, ld, x_step, dy, dy_ld, dy_step, count, q0, q1, acc);
    }
  };
};

template <class V>
void wgrad_plane(const Corr& g, const float* x, int64_t ld, const float* dy, int64_t dy_ld, float* acc) {
  using T = typename V::T;
  const int64_t RS = g.R * g.S;
  const bool fast_shape = g.R == 3 && g.S == 3 && g.dh == 1 && g.dw == 1 && (g.sw == 1 || g.sw == 2);
  // rows whose R taps all lie inside the input array
  const int64_t pa = std::clamp<int64_t>(ceildiv(g.ph - g.hin, g.sh), 0, g.P);
  const int64_t pb = fast_shape ? std::clamp<int64_t>(floordiv(g.H + g.hin - 1 - 2 + g.ph, g.sh) + 1, pa, g.P) : pa;
  for (int l = 0; l < kBlock; l += V::kW) {
    for (int64_t p = 0; p < g.P; ++p) {
      const int64_t ih0 = p * g.sh - g.ph;
      int64_t r0, r1;
      tap_range(ih0, g.dh, g.R, g.H, g.hin, r0, r1);
      const float* d = dy + p * dy_ld + l;
      T bsum = V::zero();
      auto one = [&](int64_t q) {
        const int64_t iw0 = q * g.sw - g.pw;
        int64_t s0, s1;
        tap_range(iw0, g.dw, g.S, g.W, g.hin, s0, s1);
        const T dv = V::load(d + q * kBlock);
        bsum = V::add(bsum, dv);
        for (int64_t r = r0; r < r1; ++r) {
          const float* row = x + (ih0 + r * g.dh) * ld + l;
          for (int64_t s = s0; s < s1; ++s) {
            float* a = acc + (r * g.S + s) * kBlock + l;
            V::store(a, V::fma(V::load(a), dv, V::load(row + (iw0 + s * g.dw) * kBlock)));
          }
        }
      };
      if (p >= pa && p < pb) {  // the interior columns go to wgrad_3x3_block
        for (int64_t q = 0; q < g.qlo; ++q) one(q);
        for (int64_t q = g.qhi; q < g.Q; ++q) one(q);
      } else {
        for (int64_t q = 0; q < g.Q; ++q) one(q);
      }
      V::store(acc + RS * kBlock + l, V::add(V::load(acc + RS * kBlock + l), bsum));
    }
    if (pb > pa) {
      if (g.sw == 1)
        wgrad_3x3_block<V, 1>(g, x, ld, dy, dy_ld, acc, pa, pb, l);
      else
        wgrad_3x3_block<V, 2>(g, x, ld, dy, dy_ld, acc, pa, pb, l);
    }
  }
}

template <class V>
void wgrad_planes(const Corr& g, const float* x, int64_t ld, int64_t x_step, const float* dy, int64_t dy_ld,
                  int64_t dy_step, int64_t count, float* acc) {
  if constexpr (V::kSmallRows) {
    if (small_map_shape(g, kSmallMapCols)) {
      for (int l = 0; l < kBlock; l += V::kW) {
        if (g.sw == 1)
          by_column_blocks<V::kCols, WgradCols<V, 1>::template F>(g.Q, g, x + l, ld, x_step, dy + l, dy_ld,
                                                                    dy_step, count, acc + l);
        else
          by_column_blocks<V::kCols, WgradCols<V, 2>::template F>(g.Q, g, x + l, ld, x_step, dy + l, dy_ld,
                                                                    dy_step, count, acc + l);
      }
      return;
    }
  }
  for (int64_t n = 0; n < count; ++n) wgrad_plane<V>(g, x + n * x_step, ld, dy + n * dy_step, dy_ld, acc);
}

template <class V>
Isa make_isa(const char* name) {
  return Isa{name, &fwd_rows<V>, &bwd_data_rows<V>, &wgrad_planes<V>};
}

}  // namespace ft::cpu::dwb
