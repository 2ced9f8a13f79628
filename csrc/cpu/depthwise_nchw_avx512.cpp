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

const Isa kIsa = make_isa<V512>("avx512");

}  // namespace

const Isa* isa_avx512() { return &kIsa; }

}  // namespace ft::cpu::dwn

#else

namespace ft::cpu::dwn {
const Isa* isa_avx512() { return nullptr; }
}  // namespace ft::cpu::dwn

#endif
