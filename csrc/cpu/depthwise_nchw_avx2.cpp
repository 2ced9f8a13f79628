// The NCHW depthwise plane kernels for AVX2 + FMA: 8 floats of a row per ymm, masks as vectors
// (vmaskmovps loads never fault on masked-off lanes; full chunks store unmasked, since AMD's masked
// stores are slow).
#include "depthwise_nchw.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

#include "depthwise_nchw_kernels.h"

namespace ft::cpu::dwn {
namespace {

struct V256 {
  using T = __m256;
  static constexpr int kW = 8;
  static constexpr int kRowBlock = 2;  // 16 registers: 9 weights, 2 accumulators, taps
  static __m256i lanes(uint32_t m) {
    const __m256i bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    return _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32(static_cast<int>(m)), bit), bit);
  }
  static T zero() { return _mm256_setzero_ps(); }
  static T set1(float v) { return _mm256_set1_ps(v); }
  static T loadm(const float* p, uint32_t m) {
    return m == 0xFF ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, lanes(m));
  }
  static void store(float* p, T v) { _mm256_storeu_ps(p, v); }
  static void storem(float* p, T v, uint32_t m) { _mm256_maskstore_ps(p, lanes(m), v); }
  static T fma(T acc, T a, T b) { return _mm256_fmadd_ps(a, b, acc); }
  static T add(T a, T b) { return _mm256_add_ps(a, b); }
  static T relu(T v) { return _mm256_max_ps(_mm256_setzero_ps(), v); }  // max(0, NaN) = NaN
  static float reduce(T v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  static T evens(T a, T b) {
    // [a0 a2 b0 b2 | a4 a6 b4 b6] -> 64-bit pairs in the order 0, 2, 1, 3
    const __m256 t = _mm256_shuffle_ps(a, b, 0x88);
    return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(t), 0xD8));
  }
  static T expand(T d, uint32_t parity) {
    const __m256i idx0 = _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3), idx1 = _mm256_setr_epi32(0, 1, 1, 2, 2, 3, 3, 4);
    const __m256 keep0 = _mm256_castsi256_ps(_mm256_setr_epi32(-1, 0, -1, 0, -1, 0, -1, 0));
    const __m256 keep1 = _mm256_castsi256_ps(_mm256_setr_epi32(0, -1, 0, -1, 0, -1, 0, -1));
    return parity ? _mm256_and_ps(_mm256_permutevar8x32_ps(d, idx1), keep1)
                  : _mm256_and_ps(_mm256_permutevar8x32_ps(d, idx0), keep0);
  }
};

const Isa kIsa = make_isa<V256>("avx2");

}  // namespace

const Isa* isa_avx2() { return &kIsa; }

}  // namespace ft::cpu::dwn

#else

namespace ft::cpu::dwn {
const Isa* isa_avx2() { return nullptr; }
}  // namespace ft::cpu::dwn

#endif
