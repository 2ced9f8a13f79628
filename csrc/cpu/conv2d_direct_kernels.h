// The direct-convolution micro-kernels, written once over a "16 floats" vector type V and compiled
// once per instruction set (see conv2d_direct.h for the tile contracts). Each including file
// defines V inside an anonymous namespace, so every instantiation here has internal linkage: the
// AVX-512 code can never be picked by the linker for the AVX2 or portable path.
//
// V provides: type T (16 floats), zero(), load(p), store(p, v), fma(acc, w, s) = acc + w * s[0]
// (s a pointer: with AVX-512 the broadcast folds into the FMA as a memory operand), relu(v),
// add(a, b), madd(acc, a, b) = acc + a * b (the statistics epilogue), sub(a, b) and positive(c, d)
// = d where c > 0, else 0 (the batchnorm sums epilogue), and kWgradC, the input channels one weight-gradient pass keeps in registers.
//
// Register blocking (Georganas et al., SC18): the accumulators of a tile (QT output pixels x KV
// vectors of 16 output channels) stay in registers over the whole reduction (input channel blocks
// x kernel taps x 16 channels); each weight vector loaded is used QT times, each input value once
// per output vector, from a broadcast.
#pragma once
#include <algorithm>
#include <utility>

#include "conv2d_direct.h"

namespace ft::cpu::direct {

// CI: the input channels one pixel holds, 16 in the blocked layout; 1 for the stem, whose input
// is a zero-bordered NCHW image and whose "taps" run over (channel, r, s): a 3-channel input then
// multiplies no padding lanes (16-channel blocks would waste 13 of every 16 multiplies).
// BN: with the batchnorm sums epilogue (ConvTile::bn_sums), a variant of its own: a run-time
// branch for it in the one kernel cost the plain 16-channel data gradient ~10% (1 thread,
// 128 x 16 x 32 x 32: 2.71 -> 2.99 ms), the compiler scheduling the main loop around it.
template <class V, int KV, int QT, int SW, int CI, bool BN = false>
void conv_tile(const ConvTile& a) {
  using T = typename V::T;
  T acc[QT][KV];
#pragma GCC unroll 16
  for (int j = 0; j < KV; ++j) {
    const T b = a.bias ? V::load(a.bias + j * kBlock) : V::zero();
#pragma GCC unroll 32
    for (int t = 0; t < QT; ++t)
      acc[t][j] = a.accumulate ? V::load(a.out + t * a.out_px + j * a.out_kb) : b;
  }
  for (int cb = 0; cb < a.Cb; ++cb) {
    const float* xin = a.in + cb * a.in_cb;
    const float* win = a.w + cb * a.w_cb;
    for (int tap = 0; tap < a.ntaps; ++tap) {
      const float* xi = xin + a.tap_in[tap];
      const float* wi = win + a.tap_w[tap];
#pragma GCC unroll 16
      for (int c = 0; c < CI; ++c) {
        T wv[KV];
#pragma GCC unroll 16
        for (int j = 0; j < KV; ++j) wv[j] = V::load(wi + j * a.w_kb + c * kBlock);
#pragma GCC unroll 32
        for (int t = 0; t < QT; ++t)
#pragma GCC unroll 16
          for (int j = 0; j < KV; ++j) acc[t][j] = V::fma(acc[t][j], wv[j], xi + t * SW * CI + c);
      }
    }
  }
  if (a.relu) {
#pragma GCC unroll 32
    for (int t = 0; t < QT; ++t)
#pragma GCC unroll 16
      for (int j = 0; j < KV; ++j) acc[t][j] = V::relu(acc[t][j]);
  }
  // Batchnorm statistics while the tile is in registers: the following BN then needs no pass of
  // its own over the output. Sums of at most 16 terms in float32; the caller adds the tiles in
  // double.
  if (a.stats) {
#pragma GCC unroll 16
    for (int j = 0; j < KV; ++j) {
      T s = acc[0][j], q = V::madd(V::zero(), acc[0][j], acc[0][j]);
#pragma GCC unroll 32
      for (int t = 1; t < QT; ++t) {
        s = V::add(s, acc[t][j]);
        q = V::madd(q, acc[t][j], acc[t][j]);
      }
      V::store(a.stats + j * 2 * kBlock, s);
      V::store(a.stats + j * 2 * kBlock + kBlock, q);
    }
  }
  // The batchnorm backward's two sums while the tile (the final gradient of the batchnorm's
  // output) is in registers: one read of x instead of the batchnorm's own pass over x and dy.
  if constexpr (BN) {
#pragma GCC unroll 16
    for (int j = 0; j < KV; ++j) {
      const float* c = a.bn_c + j * 3 * kBlock;
      const T mu = V::load(c), ma = V::load(c + kBlock), mb = V::load(c + 2 * kBlock);
      // two chains each (even and odd pixels): one chain of QT dependent adds outlasted the tile
      T s[2] = {V::zero(), V::zero()}, q[2] = {V::zero(), V::zero()};
#pragma GCC unroll 32
      for (int t = 0; t < QT; ++t) {
        const T x = V::load(a.bn_x + t * a.out_px + j * a.bn_x_kb);
        const T g = a.bn_relu ? V::positive(V::madd(mb, x, ma), acc[t][j]) : acc[t][j];
        s[t & 1] = V::add(s[t & 1], g);
        q[t & 1] = V::madd(q[t & 1], g, V::sub(x, mu));
      }
      V::store(a.bn_sums + j * 2 * kBlock, V::add(s[0], s[1]));
      V::store(a.bn_sums + j * 2 * kBlock + kBlock, V::add(q[0], q[1]));
    }
  }
#pragma GCC unroll 32
  for (int t = 0; t < QT; ++t)
#pragma GCC unroll 16
    for (int j = 0; j < KV; ++j) V::store(a.out + t * a.out_px + j * a.out_kb, acc[t][j]);
}

// Input channels [c0, c0 + CN) of KV weight-gradient blocks (output blocks KV apart by dw_kb);
// the blocks' rows stay in registers over the whole pixel sweep. DB: also the bias gradient
// (a.db += the sums of the dy vectors), from the dy already in registers: no pass of its own.
template <class V, int CN, int KV, bool DB, int QF>
void wgrad_channels(const WgradTile& a, int c0) {
  using T = typename V::T;
  T acc[CN][KV], bsum[KV];
#pragma GCC unroll 16
  for (int i = 0; i < CN; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < KV; ++j) acc[i][j] = V::load(a.dw + j * a.dw_kb + (c0 + i) * kBlock);
  if constexpr (DB) {
#pragma GCC unroll 4
    for (int j = 0; j < KV; ++j) bsum[j] = V::load(a.db + j * kBlock);
  }
  // nested image and row loops: on 8 x 8 maps a division per row (8 pixels, 128 FMAs) cost
  // about a third as much as the row's multiplies
  for (int64_t n = 0; n < a.images; ++n)
    for (int64_t p = 0; p < a.P; ++p) {
      const float* xr = a.x + n * a.x_img + p * a.sh * a.x_row + c0;
      const float* dr = a.dy + n * a.dy_img + p * a.dy_row;
      const int64_t Q = QF ? QF : a.Q;
#pragma GCC unroll 16
      for (int64_t q = 0; q < Q; ++q) {
        T d[KV];
#pragma GCC unroll 4
        for (int j = 0; j < KV; ++j) d[j] = V::load(dr + j * a.dy_kb + q * kBlock);
        const float* xq = xr + q * a.sw * kBlock;
#pragma GCC unroll 16
        for (int c = 0; c < CN; ++c)
#pragma GCC unroll 4
          for (int j = 0; j < KV; ++j) acc[c][j] = V::fma(acc[c][j], d[j], xq + c);
        if constexpr (DB) {
#pragma GCC unroll 4
          for (int j = 0; j < KV; ++j) bsum[j] = V::add(bsum[j], d[j]);
        }
      }
    }
#pragma GCC unroll 16
  for (int i = 0; i < CN; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < KV; ++j) V::store(a.dw + j * a.dw_kb + (c0 + i) * kBlock, acc[i][j]);
  if constexpr (DB) {
#pragma GCC unroll 4
    for (int j = 0; j < KV; ++j) V::store(a.db + j * kBlock, bsum[j]);
  }
}

// All 16 input channels of a.kv output blocks, CN channels per pass; the first pass also sums
// the bias gradient when a.db is set. QF > 0: every row has QF pixels (a.Q == QF), known to the
// compiler.
template <class V, int CN, int KV, int QF>
void wgrad_passes_q(const WgradTile& a) {
  static_assert(kBlock % CN == 0, "a weight-gradient pass must divide the block");
  if (a.db) wgrad_channels<V, CN, KV, true, QF>(a, 0);
  else wgrad_channels<V, CN, KV, false, QF>(a, 0);
  for (int c0 = CN; c0 < kBlock; c0 += CN) wgrad_channels<V, CN, KV, false, QF>(a, c0);
}

// Rows of 8 and 16 pixels (ResNet's 8 x 8 and 16 x 16 maps) with the pixel loop unrolled at
// compile time: with a run-time trip count the row's loop control and exit cost 12-15% of an
// 8-pixel row (1 thread: 64 channels 8 x 8 181 -> 215 GFLOP/s, 3x3 stride 2 to 8 x 8 167 -> 204-223).
// Rows of 4: a 2 x 2 map's pointwise layer, run as one 4-pixel row per image.
template <class V, int CN, int KV>
void wgrad_passes(const WgradTile& a) {
  if (a.Q == 4) return wgrad_passes_q<V, CN, KV, 4>(a);
  if (a.Q == 8) return wgrad_passes_q<V, CN, KV, 8>(a);
  if (a.Q == 16) return wgrad_passes_q<V, CN, KV, 16>(a);
  wgrad_passes_q<V, CN, KV, 0>(a);
}

template <class V>
void wgrad_tile(const WgradTile& a) {
  if constexpr (V::kWgradKV == 2) {
    if (a.kv == 2) return wgrad_passes<V, V::kWgradC2, 2>(a);
  }
  wgrad_passes<V, V::kWgradC, 1>(a);
}

// The layout conversion of one row, written plainly (the AVX-512 build has its own, by 16 x 16
// register transposes); V only gives each instruction set its own copy.
template <class V>
void pack_row(const float* in, int64_t plane, int nc, int64_t W, float* out) {
  for (int64_t w = 0; w < W; ++w)
    for (int c = nc; c < kBlock; ++c) out[w * kBlock + c] = 0.f;
  for (int c = 0; c < nc; ++c)
    for (int64_t w = 0; w < W; ++w) out[w * kBlock + c] = in[c * plane + w];
}

template <class V>
void unpack_row(const float* in, int nc, int64_t W, float* out, int64_t plane) {
  for (int c = 0; c < nc; ++c)
    for (int64_t w = 0; w < W; ++w) out[c * plane + w] = in[w * kBlock + c];
}

// The stem's weight gradient: `ntaps` (<= V::kStemTaps; (channel, r, s) triples of a
// zero-bordered NCHW image) accumulators of 16 output channels over the pixels of one output row:
//   dw[tap][k] += sum_q x[tap_x[tap] + q*sw] * dy[q*16 + k]   (and db[k] += sum_q dy[q*16 + k] if DB).
// Missing taps up to kStemTaps repeat tap 0 and are dropped, so the loop is always fully unrolled.
template <class V, bool DB>
void wgrad_stem_row(const float* x, const int64_t* tap_x, int ntaps, int64_t sw, const float* dy,
                    int64_t Q, float* dw, float* db) {
  using T = typename V::T;
  constexpr int G = V::kStemTaps;
  T acc[G], bsum = V::zero();
  const float* xt[G];
#pragma GCC unroll 32
  for (int i = 0; i < G; ++i) {
    acc[i] = i < ntaps ? V::load(dw + i * kBlock) : V::zero();
    xt[i] = x + tap_x[i < ntaps ? i : 0];
  }
  if constexpr (DB) bsum = V::load(db);
  for (int64_t q = 0; q < Q; ++q) {
    const T d = V::load(dy + q * kBlock);
#pragma GCC unroll 32
    for (int i = 0; i < G; ++i) acc[i] = V::fma(acc[i], d, xt[i] + q * sw);
    if constexpr (DB) bsum = V::add(bsum, d);
  }
#pragma GCC unroll 32
  for (int i = 0; i < G; ++i)
    if (i < ntaps) V::store(dw + i * kBlock, acc[i]);
  if constexpr (DB) V::store(db, bsum);
}

// db (or nullptr): the bias gradient's 16 sums, accumulated from the row's dy in registers.
template <class V>
void wgrad_stem(const float* x, const int64_t* tap_x, int ntaps, int64_t sw, const float* dy,
                int64_t Q, float* dw, float* db) {
  if (db) wgrad_stem_row<V, true>(x, tap_x, ntaps, sw, dy, Q, dw, db);
  else wgrad_stem_row<V, false>(x, tap_x, ntaps, sw, dy, Q, dw, db);
}

// ---- 1x1 convolutions in the NCHW layout (conv2d.cpp's strided pointwise path) ----
// A 1x1 convolution on NCHW planes is a product over the pixels of one image, pixels along the
// vectors: no layout conversion, whose cost outweighs a 1x1 layer's multiplies (docs/KERNELS.md).

// c[m*ldc + 16v + l] = sum_{j<J} a[m*lda + j] * b[j*ldb + 16v + l], m < MR, v < NV: MR rows of a
// broadcast against NV vectors of each row of b, the MR x NV accumulators held over all of J.
template <class V, int MR, int NV>
void pw_rows_tile(const float* a, int64_t lda, int64_t J, const float* b, int64_t ldb, float* c, int64_t ldc) {
  using T = typename V::T;
  T acc[MR][NV];
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[m][v] = V::zero();
  for (int64_t j = 0; j < J; ++j) {
    T bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) bv[v] = V::load(b + j * ldb + v * kBlock);
#pragma GCC unroll 8
    for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[m][v] = V::fma(acc[m][v], bv[v], a + m * lda + j);
  }
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) V::store(c + m * ldc + v * kBlock, acc[m][v]);
}

template <class V, int MR, int NV, int... I>
PwRowsTileFn pw_rows_pick(int mr, int nv, std::integer_sequence<int, I...>) {
  static constexpr PwRowsTileFn fns[] = {&pw_rows_tile<V, I / NV + 1, I % NV + 1>...};
  return fns[(mr - 1) * NV + (nv - 1)];
}

// The whole product, M rows by L vectors, in tiles of up to MR x NV: for each column panel (NV
// vectors of every row of b, J * NV * 64 bytes, stays in L1) every row tile of a in turn.
template <class V, int MR, int NV>
void pw_rows(const float* a, int64_t lda, int64_t M, int64_t J, const float* b, int64_t ldb, int64_t L, float* c,
             int64_t ldc) {
  for (int64_t v0 = 0; v0 < L; v0 += NV) {
    const int nv = static_cast<int>(std::min<int64_t>(NV, L - v0));
    for (int64_t m0 = 0; m0 < M; m0 += MR) {
      const int mr = static_cast<int>(std::min<int64_t>(MR, M - m0));
      pw_rows_pick<V, MR, NV>(mr, nv, std::make_integer_sequence<int, MR * NV>{})(
          a + m0 * lda, lda, J, b + v0 * kBlock, ldb, c + m0 * ldc + v0 * kBlock, ldc);
    }
  }
}

// acc[(k*ldacc + i)*16 + l] += sum_{n<images, v<L} d[n*dimg + k*ldd + 16v + l] * x[n*ximg + i*ldx + 16v + l]
// for k < KR, i < CR: lane-wise dot products (the weight gradient of a 1x1 convolution, pixels
// along the lanes; the caller sums the 16 lanes once at the end).
template <class V, int KR, int CR>
void pw_dots_tile(const float* d, int64_t ldd, int64_t dimg, const float* x, int64_t ldx, int64_t ximg, int64_t L,
                  int64_t images, float* acc, int64_t ldacc) {
  using T = typename V::T;
  T s[KR][CR];
#pragma GCC unroll 8
  for (int k = 0; k < KR; ++k)
#pragma GCC unroll 8
    for (int i = 0; i < CR; ++i) s[k][i] = V::load(acc + (k * ldacc + i) * kBlock);
  for (int64_t n = 0; n < images; ++n)
    for (int64_t v = 0; v < L; ++v) {
      T dv[KR];
#pragma GCC unroll 8
      for (int k = 0; k < KR; ++k) dv[k] = V::load(d + n * dimg + k * ldd + v * kBlock);
#pragma GCC unroll 8
      for (int i = 0; i < CR; ++i) {
        const T xv = V::load(x + n * ximg + i * ldx + v * kBlock);
#pragma GCC unroll 8
        for (int k = 0; k < KR; ++k) s[k][i] = V::madd(s[k][i], dv[k], xv);
      }
    }
#pragma GCC unroll 8
  for (int k = 0; k < KR; ++k)
#pragma GCC unroll 8
    for (int i = 0; i < CR; ++i) V::store(acc + (k * ldacc + i) * kBlock, s[k][i]);
}

template <class V, int KR, int CR, int... I>
PwDotsTileFn pw_dots_pick(int kr, int cr, std::integer_sequence<int, I...>) {
  static constexpr PwDotsTileFn fns[] = {&pw_dots_tile<V, I / CR + 1, I % CR + 1>...};
  return fns[(kr - 1) * CR + (cr - 1)];
}

// Every (k, i) pair of K x CI, in tiles of up to KR x CR.
template <class V, int KR, int CR>
void pw_dots(const float* d, int64_t ldd, int64_t dimg, int64_t K, const float* x, int64_t ldx, int64_t ximg,
             int64_t CI, int64_t L, int64_t images, float* acc) {
  for (int64_t k0 = 0; k0 < K; k0 += KR) {
    const int kr = static_cast<int>(std::min<int64_t>(KR, K - k0));
    for (int64_t i0 = 0; i0 < CI; i0 += CR) {
      const int cr = static_cast<int>(std::min<int64_t>(CR, CI - i0));
      pw_dots_pick<V, KR, CR>(kr, cr, std::make_integer_sequence<int, KR * CR>{})(
          d + k0 * ldd, ldd, dimg, x + i0 * ldx, ldx, ximg, L, images, acc + (k0 * CI + i0) * kBlock, CI);
    }
  }
}

template <class V, int KV, int SW, int CI, bool BN, int... Q>
ConvTileFn pick_qt(int qt, std::integer_sequence<int, Q...>) {
  static constexpr ConvTileFn fns[] = {&conv_tile<V, KV, Q + 1, SW, CI, BN>...};
  return fns[qt - 1];
}

// The table behind Isa::conv (CI = 16), Isa::conv_stem (CI = 1) and Isa::conv_bn (CI = 16, BN) for
// micro-kernels up to MAXQ1 pixels (KV = 1) and MAXQ2 (KV = 2).
template <class V, int MAXQ1, int MAXQ2, int CI, bool BN = false>
ConvTileFn pick_conv(int kv, int qt, int sw) {
  if (kv == 1)
    return sw == 2 ? pick_qt<V, 1, 2, CI, BN>(qt, std::make_integer_sequence<int, MAXQ1>{})
                   : pick_qt<V, 1, 1, CI, BN>(qt, std::make_integer_sequence<int, MAXQ1>{});
  if constexpr (MAXQ2 > 0) {
    return sw == 2 ? pick_qt<V, 2, 2, CI, BN>(qt, std::make_integer_sequence<int, MAXQ2>{})
                   : pick_qt<V, 2, 1, CI, BN>(qt, std::make_integer_sequence<int, MAXQ2>{});
  }
  return nullptr;
}

}  // namespace ft::cpu::direct
