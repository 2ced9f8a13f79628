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

Isa with_transposes(Isa isa) {
  isa.lanes_gather = lanes_gather;
  isa.to_lanes = to_lanes;
  isa.from_lanes = from_lanes;
  isa.lanes_corr = lanes_corr;
  isa.lanes_wgrad = lanes_wgrad;
  isa.lanes_scatter = lanes_scatter;
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
