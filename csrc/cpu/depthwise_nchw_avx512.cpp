// The NCHW depthwise plane kernels for AVX-512 (F + FMA): 16 floats of a row per zmm, masks as
// k-registers. Built with AVX-512 flags (CMakeLists.txt) and run only when the CPU reports them.
#include "depthwise_nchw.h"

#if defined(__AVX512F__) && defined(__FMA__)
#include <immintrin.h>

#include "depthwise_nchw_kernels.h"

namespace ft::cpu::dwn {
namespace {

struct V512 {
  using T = __m512;
  static constexpr int kW = 16;
  static constexpr int kRowBlock = 4;  // output rows per block: 4 accumulators + 9 weights + taps
  static T zero() { return _mm512_setzero_ps(); }
  static T set1(float v) { return _mm512_set1_ps(v); }
  static T loadm(const float* p, uint32_t m) { return _mm512_maskz_loadu_ps(static_cast<__mmask16>(m), p); }
  static void store(float* p, T v) { _mm512_storeu_ps(p, v); }
  static void storem(float* p, T v, uint32_t m) { _mm512_mask_storeu_ps(p, static_cast<__mmask16>(m), v); }
  static T fma(T acc, T a, T b) { return _mm512_fmadd_ps(a, b, acc); }
  static T add(T a, T b) { return _mm512_add_ps(a, b); }
  static T relu(T v) { return _mm512_max_ps(_mm512_setzero_ps(), v); }  // max(0, NaN) = NaN
  static float reduce(T v) { return _mm512_reduce_add_ps(v); }
  static T evens(T a, T b) {
    const __m512i idx = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    return _mm512_permutex2var_ps(a, idx, b);
  }
  static T expand(T d, uint32_t parity) {
    const __m512i idx0 = _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
    const __m512i idx1 = _mm512_setr_epi32(0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8);
    return parity ? _mm512_maskz_permutexvar_ps(0xAAAA, idx1, d) : _mm512_maskz_permutexvar_ps(0x5555, idx0, d);
  }
};

// r[0..15] (rows) transposed in registers: unpack pairs of floats, then of doubles, then two rounds
// of 128-bit lane shuffles.
inline void transpose16(__m512 (&r)[16]) {
  __m512 t[16];
  for (int k = 0; k < 8; ++k) {
    t[2 * k] = _mm512_unpacklo_ps(r[2 * k], r[2 * k + 1]);
    t[2 * k + 1] = _mm512_unpackhi_ps(r[2 * k], r[2 * k + 1]);
  }
  for (int k = 0; k < 4; ++k) {
    const __m512d a = _mm512_castps_pd(t[4 * k]), b = _mm512_castps_pd(t[4 * k + 2]);
    const __m512d c = _mm512_castps_pd(t[4 * k + 1]), d = _mm512_castps_pd(t[4 * k + 3]);
    r[4 * k] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
    r[4 * k + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
    r[4 * k + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(c, d));
    r[4 * k + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(c, d));
  }
  for (int h = 0; h < 2; ++h)
    for (int k = 0; k < 4; ++k) {
      t[8 * h + k] = _mm512_shuffle_f32x4(r[8 * h + k], r[8 * h + 4 + k], 0x88);
      t[8 * h + 4 + k] = _mm512_shuffle_f32x4(r[8 * h + k], r[8 * h + 4 + k], 0xdd);
    }
  for (int k = 0; k < 8; ++k) {
    r[k] = _mm512_shuffle_f32x4(t[k], t[8 + k], 0x88);
    r[8 + k] = _mm512_shuffle_f32x4(t[k], t[8 + k], 0xdd);
  }
}

// Both directions take the planes' pixels 16 at a time in plane order (rows run on across the
// block), so maps narrower than 16 fill whole vectors; (h, v) follows pixel by pixel.
void to_lanes(const float* src, int64_t ps, int64_t nch, int64_t rows, int64_t cols, float* dst, int64_t ld,
              int64_t top, int64_t left) {
  const int64_t n = rows * cols;
  int64_t h = 0, v = 0;
  for (int64_t i0 = 0; i0 < n; i0 += 16) {
    const int64_t cnt = std::min<int64_t>(16, n - i0);
    const __mmask16 m = static_cast<__mmask16>((1u << cnt) - 1);
    __m512 r[16];
    for (int j = 0; j < 16; ++j) r[j] = j < nch ? _mm512_maskz_loadu_ps(m, src + j * ps + i0) : _mm512_setzero_ps();
    transpose16(r);
    for (int64_t i = 0; i < cnt; ++i) {
      _mm512_storeu_ps(dst + ((h + top) * ld + v + left) * 16, r[i]);
      if (++v == cols) v = 0, ++h;
    }
  }
}

void from_lanes(const float* src, int64_t ld, int64_t top, int64_t left, float* dst, int64_t ps, int64_t nch,
                int64_t rows, int64_t cols) {
  const int64_t n = rows * cols;
  int64_t h = 0, v = 0;
  for (int64_t i0 = 0; i0 < n; i0 += 16) {
    const int64_t cnt = std::min<int64_t>(16, n - i0);
    const __mmask16 m = static_cast<__mmask16>((1u << cnt) - 1);
    __m512 r[16];
    for (int64_t i = 0; i < 16; ++i) {
      if (i < cnt) {
        r[i] = _mm512_loadu_ps(src + ((h + top) * ld + v + left) * 16);
        if (++v == cols) v = 0, ++h;
      } else {
        r[i] = _mm512_setzero_ps();
      }
    }
    transpose16(r);
    for (int64_t j = 0; j < nch; ++j) _mm512_mask_storeu_ps(dst + j * ps + i0, m, r[j]);
  }
}

// The narrow maps' arithmetic, one zmm per pixel of 16 channels; 3x3 unrolled with its nine weight
// vectors in registers.
template <int KR, int KS>
void lanes_corr_impl(const LanesGeo& g, const float* x, const float* taps, const float* bias, float* out, bool relu) {
  const int64_t R = KR ? KR : g.R, S = KS ? KS : g.S;
  __m512 w[KR && KS ? KR * KS : kMaxTaps];
  for (int64_t t = 0; t < R * S; ++t) w[t] = _mm512_loadu_ps(taps + t * 16);
  const __m512 b = _mm512_loadu_ps(bias);
  for (int64_t p = 0; p < g.P; ++p)
    for (int64_t q = 0; q < g.Q; ++q) {
      __m512 acc = b;
      const float* base = x + (p * g.sh * g.Wp + q * g.sw) * 16;
      for (int64_t r = 0; r < R; ++r)
        for (int64_t s = 0; s < S; ++s)
          acc = _mm512_fmadd_ps(w[r * S + s], _mm512_loadu_ps(base + (r * g.dh * g.Wp + s * g.dw) * 16), acc);
      if (relu) acc = _mm512_max_ps(_mm512_setzero_ps(), acc);
      _mm512_storeu_ps(out + (p * g.Q + q) * 16, acc);
    }
}

template <int KR, int KS>
void lanes_wgrad_impl(const LanesGeo& g, const float* x, const float* dy, float* sums) {
  const int64_t R = KR ? KR : g.R, S = KS ? KS : g.S, RS = R * S;
  __m512 a[KR && KS ? KR * KS : kMaxTaps];
  for (int64_t t = 0; t < RS; ++t) a[t] = _mm512_setzero_ps();
  __m512 sb = _mm512_setzero_ps();
  for (int64_t p = 0; p < g.P; ++p)
    for (int64_t q = 0; q < g.Q; ++q) {
      const __m512 d = _mm512_loadu_ps(dy + (p * g.Q + q) * 16);
      sb = _mm512_add_ps(sb, d);
      const float* base = x + (p * g.sh * g.Wp + q * g.sw) * 16;
      for (int64_t r = 0; r < R; ++r)
        for (int64_t s = 0; s < S; ++s)
          a[r * S + s] = _mm512_fmadd_ps(d, _mm512_loadu_ps(base + (r * g.dh * g.Wp + s * g.dw) * 16), a[r * S + s]);
    }
  for (int64_t t = 0; t < RS; ++t) _mm512_storeu_ps(sums + t * 16, _mm512_add_ps(_mm512_loadu_ps(sums + t * 16), a[t]));
  _mm512_storeu_ps(sums + RS * 16, _mm512_add_ps(_mm512_loadu_ps(sums + RS * 16), sb));
}

template <int KR, int KS>
void lanes_scatter_impl(const LanesGeo& g, const float* dy, const float* taps, float* dx) {
  const int64_t R = KR ? KR : g.R, S = KS ? KS : g.S;
  __m512 w[KR && KS ? KR * KS : kMaxTaps];
  for (int64_t t = 0; t < R * S; ++t) w[t] = _mm512_loadu_ps(taps + t * 16);
  for (int64_t p = 0; p < g.P; ++p)
    for (int64_t q = 0; q < g.Q; ++q) {
      const __m512 d = _mm512_loadu_ps(dy + (p * g.Q + q) * 16);
      float* base = dx + (p * g.sh * g.Wp + q * g.sw) * 16;
      for (int64_t r = 0; r < R; ++r)
        for (int64_t s = 0; s < S; ++s) {
          float* o = base + (r * g.dh * g.Wp + s * g.dw) * 16;
          _mm512_storeu_ps(o, _mm512_fmadd_ps(w[r * S + s], d, _mm512_loadu_ps(o)));
        }
    }
}

// separate functions per filter size: one shared array indexed at run time stayed in memory
__attribute__((noinline)) void lanes_corr(const LanesGeo& g, const float* x, const float* taps, const float* bias,
                                          float* out, bool relu) {
  (g.R == 3 && g.S == 3 ? lanes_corr_impl<3, 3> : lanes_corr_impl<0, 0>)(g, x, taps, bias, out, relu);
}
__attribute__((noinline)) void lanes_wgrad(const LanesGeo& g, const float* x, const float* dy, float* sums) {
  (g.R == 3 && g.S == 3 ? lanes_wgrad_impl<3, 3> : lanes_wgrad_impl<0, 0>)(g, x, dy, sums);
}
__attribute__((noinline)) void lanes_scatter(const LanesGeo& g, const float* dy, const float* taps, float* dx) {
  (g.R == 3 && g.S == 3 ? lanes_scatter_impl<3, 3> : lanes_scatter_impl<0, 0>)(g, dy, taps, dx);
}

__attribute__((noinline)) void lanes_gather(const LanesGeo& g, int64_t H, int64_t W, const int64_t* row_taps,
                                            const int64_t* col_taps, const float* dy, const float* taps, float* dx) {
  for (int64_t h = 0; h < H; ++h) {
    const int64_t* a = row_taps + h * (2 * g.R + 1);
    for (int64_t v = 0; v < W; ++v) {
      const int64_t* b = col_taps + v * (2 * g.S + 1);
      __m512 acc = _mm512_setzero_ps();
      for (int64_t i = 0; i < a[0]; ++i) {
        const float* wr = taps + a[1 + 2 * i] * g.S * 16;
        const float* dr = dy + a[2 + 2 * i] * g.Q * 16;
        for (int64_t j = 0; j < b[0]; ++j)
          acc = _mm512_fmadd_ps(_mm512_loadu_ps(wr + b[1 + 2 * j] * 16), _mm512_loadu_ps(dr + b[2 + 2 * j] * 16), acc);
      }
      _mm512_storeu_ps(dx + (h * W + v) * 16, acc);
    }
  }
}

// ---- 8 x 8 planes, 3 x 3, stride 2, padding 1 (depthwise_nchw.h: S2P8FwdFn) -------------------
// A plane is 64 floats; its 4 x 4 output one zmm (lane 4p + q). Output row p reads rows 2p - 1, 2p and
// 2p + 1, output column q columns 2q - 1, 2q and 2q + 1; so the plane is split into its even and odd
// rows and columns (s2p8_rows: 4 row-pair loads, 4 permutes, 2 lane shifts), where every tap of
// filter rows 1 and 2 is one vector as it stands, and filter row 0 (odd row 2p - 1) is the odd rows'
// sums moved up one output row (the weight gradient moves dy down instead). The channel-interleaved
// narrow path spent 20 shuffles per plane in its transposes plus a padded buffer's stores and
// reloads (1 thread, 128x256x8x8: fwd 0.36 ms, torch 0.18); a first version here took each of the 9
// taps as one masked permute of the even/odd columns (13 permutes a plane; 1 thread, interleaved, min
// of 41-61: fwd 1.11-1.19x and weight gradient 1.22-1.35x slower than this one at full size).
inline void prefetch_lines(const float* p, int n) {
  for (int i = 0; i < n; ++i) _mm_prefetch(reinterpret_cast<const char*>(p + 16 * i), _MM_HINT_T0);
  asm volatile("");  // a body of prefetches alone is "const" to GCC, which may delete the call (conv2d_direct.cpp)
}

constexpr int64_t kS2P8Ahead = 16;  // planes (4 KiB of x) ahead

// A plane's even and odd rows (256-bit row loads paired into zmm), then each one's even and odd
// columns (4 permutes), and the column 2q - 1 of each as one lane shift: lane 4p + q of ee / eo / es is
// row 2p's column 2q / 2q + 1 / 2q - 1, of oe / oo / os row 2p + 1's.
struct S2P8Rows {
  __m512 ee, eo, es, oe, oo, os;
};
inline __attribute__((always_inline)) S2P8Rows s2p8_rows(const float* xp) {
  const __m512i ev = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i od = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  const __m512i zero = _mm512_setzero_si512();
  const auto pair = [&](int a, int b) {
    return _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_loadu_ps(xp + 8 * a)), _mm256_loadu_ps(xp + 8 * b), 1);
  };
  const __m512 r02 = pair(0, 2), r46 = pair(4, 6), r13 = pair(1, 3), r57 = pair(5, 7);
  S2P8Rows v;
  v.ee = _mm512_permutex2var_ps(r02, ev, r46), v.eo = _mm512_permutex2var_ps(r02, od, r46);
  v.oe = _mm512_permutex2var_ps(r13, ev, r57), v.oo = _mm512_permutex2var_ps(r13, od, r57);
  v.es = _mm512_castsi512_ps(_mm512_maskz_alignr_epi32(0xEEEE, _mm512_castps_si512(v.eo), zero, 15));
  v.os = _mm512_castsi512_ps(_mm512_maskz_alignr_epi32(0xEEEE, _mm512_castps_si512(v.oo), zero, 15));
  return v;
}

// lane l of v moved to lane l + 4 (up one output row), zeros in row 0; and back (down one row)
inline __m512 s2p8_row_up(__m512 v) {
  return _mm512_castsi512_ps(_mm512_alignr_epi32(_mm512_castps_si512(v), _mm512_setzero_si512(), 12));
}
inline __m512 s2p8_row_down(__m512 v) {
  return _mm512_castsi512_ps(_mm512_alignr_epi32(_mm512_setzero_si512(), _mm512_castps_si512(v), 4));
}

__attribute__((noinline)) void s2p8_fwd(const float* x, const float* w, const float* b, float* y, int64_t lo,
                                        int64_t hi, int64_t C, bool relu) {
  for (int64_t i = lo; i < hi; ++i) {
    const int64_t c = i % C;
    if (i + kS2P8Ahead < hi) prefetch_lines(x + (i + kS2P8Ahead) * 64, 4);
    const S2P8Rows v = s2p8_rows(x + i * 64);
    const float* wc = w + c * 9;
    const auto wv = [&](int k) { return _mm512_set1_ps(wc[k]); };
    // filter row 0 reads odd row 2p - 1: the odd rows' row-0 sums moved up one output row
    const __m512 top = s2p8_row_up(_mm512_fmadd_ps(wv(2), v.oo, _mm512_fmadd_ps(wv(1), v.oe, _mm512_mul_ps(wv(0), v.os))));
    const __m512 mid = _mm512_fmadd_ps(wv(5), v.eo, _mm512_fmadd_ps(wv(4), v.ee,
                                       _mm512_fmadd_ps(wv(3), v.es, _mm512_set1_ps(b ? b[c] : 0.f))));
    __m512 acc = _mm512_add_ps(mid, _mm512_fmadd_ps(wv(8), v.oo, _mm512_fmadd_ps(wv(7), v.oe, _mm512_fmadd_ps(wv(6), v.os, top))));
    if (relu) acc = _mm512_max_ps(_mm512_setzero_ps(), acc);
    _mm512_storeu_ps(y + i * 16, acc);
  }
}

// dx row 2p (h even) takes filter row 1 of dy row p; dx row 2p + 1 rows 2 (dy row p) and 0 (dy row
// p + 1); columns likewise. So with dy (lane 4p + q) shifted to q + 1, p + 1 and both (zero past the
// edge) the four parity classes of dx are 1, 2, 2 and 4 FMAs, and two rounds of permutes interleave
// them into rows: [row 2k | row 2k + 2] of the even (or odd) rows, then 128-bit blocks into row pairs.
__attribute__((noinline)) void s2p8_bwd_data(const float* dy, const float* w, float* dx, int64_t lo, int64_t hi,
                                             int64_t C) {
  const __m512i up1 = _mm512_setr_epi32(1, 2, 3, 0, 5, 6, 7, 0, 9, 10, 11, 0, 13, 14, 15, 0);
  const __m512i up4 = _mm512_setr_epi32(4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 0, 0, 0, 0);
  const __m512i up5 = _mm512_setr_epi32(5, 6, 7, 0, 9, 10, 11, 0, 13, 14, 15, 0, 0, 0, 0, 0);
  const __mmask16 mq = 0x7777, mp = 0x0FFF, mpq = 0x0777;
  // row 2k: column v from the even-column class (lane 4k + v/2) or the odd one (16 + 4k + v/2)
  const __m512i rows01 = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i rows23 = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
  for (int64_t i = lo; i < hi; ++i) {
    const float* wc = w + i % C * 9;
    if (i + 4 * kS2P8Ahead < hi) _mm_prefetch(reinterpret_cast<const char*>(dy + (i + 4 * kS2P8Ahead) * 16), _MM_HINT_T0);
    const __m512 d = _mm512_loadu_ps(dy + i * 16);
    const __m512 dq = _mm512_maskz_permutexvar_ps(mq, up1, d), dp = _mm512_maskz_permutexvar_ps(mp, up4, d);
    const __m512 dpq = _mm512_maskz_permutexvar_ps(mpq, up5, d);
    auto wv = [&](int k) { return _mm512_set1_ps(wc[k]); };
    const __m512 ee = _mm512_mul_ps(wv(4), d);
    const __m512 eo = _mm512_fmadd_ps(wv(3), dq, _mm512_mul_ps(wv(5), d));
    const __m512 oe = _mm512_fmadd_ps(wv(1), dp, _mm512_mul_ps(wv(7), d));
    const __m512 oo = _mm512_fmadd_ps(wv(0), dpq, _mm512_fmadd_ps(wv(2), dp,
                                      _mm512_fmadd_ps(wv(6), dq, _mm512_mul_ps(wv(8), d))));
    const __m512 e01 = _mm512_permutex2var_ps(ee, rows01, eo), e23 = _mm512_permutex2var_ps(ee, rows23, eo);
    const __m512 o01 = _mm512_permutex2var_ps(oe, rows01, oo), o23 = _mm512_permutex2var_ps(oe, rows23, oo);
    float* out = dx + i * 64;
    _mm512_storeu_ps(out, _mm512_shuffle_f32x4(e01, o01, 0x44));
    _mm512_storeu_ps(out + 16, _mm512_shuffle_f32x4(e01, o01, 0xEE));
    _mm512_storeu_ps(out + 32, _mm512_shuffle_f32x4(e23, o23, 0x44));
    _mm512_storeu_ps(out + 48, _mm512_shuffle_f32x4(e23, o23, 0xEE));
  }
}

template <int G>
void s2p8_wgrad_impl(const float* x, const float* dy, float* dw, float* db, int64_t N, int64_t C, int64_t c_lo,
                     int64_t c_hi) {
  constexpr int64_t kAhead = 6;  // images
  int64_t c = c_lo;
  for (; c + G <= c_hi; c += G) {
    __m512 acc[G][9], sb[G];
    for (int j = 0; j < G; ++j) {
      sb[j] = _mm512_setzero_ps();
      for (int k = 0; k < 9; ++k) acc[j][k] = _mm512_setzero_ps();
    }
    for (int64_t n = 0; n < N; ++n) {
      if (n + kAhead < N) {
        prefetch_lines(x + ((n + kAhead) * C + c) * 64, 4 * G);
        prefetch_lines(dy + ((n + kAhead) * C + c) * 16, G);
      }
#pragma GCC unroll 2
      for (int j = 0; j < G; ++j) {
        const __m512 d = _mm512_loadu_ps(dy + (n * C + c + j) * 16);
        sb[j] = _mm512_add_ps(sb[j], d);
        // filter row 0 pairs odd row 2p - 1 with dy row p: dy moved down one row instead
        const S2P8Rows v = s2p8_rows(x + (n * C + c + j) * 64);
        const __m512 dd = s2p8_row_down(d);
        acc[j][0] = _mm512_fmadd_ps(dd, v.os, acc[j][0]);
        acc[j][1] = _mm512_fmadd_ps(dd, v.oe, acc[j][1]);
        acc[j][2] = _mm512_fmadd_ps(dd, v.oo, acc[j][2]);
        acc[j][3] = _mm512_fmadd_ps(d, v.es, acc[j][3]);
        acc[j][4] = _mm512_fmadd_ps(d, v.ee, acc[j][4]);
        acc[j][5] = _mm512_fmadd_ps(d, v.eo, acc[j][5]);
        acc[j][6] = _mm512_fmadd_ps(d, v.os, acc[j][6]);
        acc[j][7] = _mm512_fmadd_ps(d, v.oe, acc[j][7]);
        acc[j][8] = _mm512_fmadd_ps(d, v.oo, acc[j][8]);
      }
    }
    for (int j = 0; j < G; ++j) {
      for (int k = 0; k < 9; ++k) dw[(c + j) * 9 + k] += _mm512_reduce_add_ps(acc[j][k]);
      db[c + j] += _mm512_reduce_add_ps(sb[j]);
    }
  }
  if constexpr (G > 1)
    if (c < c_hi) s2p8_wgrad_impl<1>(x, dy, dw, db, N, C, c, c_hi);  // an odd channel left
}

// Channels two at a time (two neighbouring planes: 512 contiguous bytes of x per image) over the images
// in order, each one's nine tap sums and the bias sum in registers (lane 4p + q), reduced across lanes
// once per channel; a channel's planes sit C*64 floats apart, so the images 6 on are prefetched (1 thread,
// loaded, 128x256x8x8 fwd + bwd: one channel at a time 1.01-1.36x slower).
__attribute__((noinline)) void s2p8_wgrad(const float* x, const float* dy, float* dw, float* db, int64_t N, int64_t C,
                                          int64_t c_lo, int64_t c_hi) {
  s2p8_wgrad_impl<2>(x, dy, dw, db, N, C, c_lo, c_hi);
}

Isa with_transposes(Isa isa) {
  isa.lanes_gather = lanes_gather;
  isa.to_lanes = to_lanes;
  isa.from_lanes = from_lanes;
  isa.lanes_corr = lanes_corr;
  isa.lanes_wgrad = lanes_wgrad;
  isa.lanes_scatter = lanes_scatter;
  isa.s2p8_fwd = s2p8_fwd;
  isa.s2p8_bwd_data = s2p8_bwd_data;
  isa.s2p8_wgrad = s2p8_wgrad;
  return isa;
}

const Isa kIsa = with_transposes(make_isa<V512>("avx512"));

}  // namespace

const Isa* isa_avx512() { return &kIsa; }

}  // namespace ft::cpu::dwn

#else

namespace ft::cpu::dwn {
const Isa* isa_avx512() { return nullptr; }
}  // namespace ft::cpu::dwn

#endif
