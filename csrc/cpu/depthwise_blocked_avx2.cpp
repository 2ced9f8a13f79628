// The blocked depthwise row kernels for AVX2 + FMA: a 16-channel pixel is two ymm, swept as two
// 8-lane slices (nine weights + four accumulators fit the 16 registers).
#include "depthwise_blocked.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

#include "depthwise_blocked_kernels.h"

namespace ft::cpu::dwb {
namespace {

struct V256 {
  using T = __m256;
  static constexpr int kW = 8;
  static T zero() { return _mm256_setzero_ps(); }
  static constexpr bool kSmallRows = true;
  static constexpr int kCols = 4;
  static T load(const float* p) { return _mm256_loadu_ps(p); }
  static T load_if(const float* p, bool ok) { return ok ? load(p) : zero(); }
  static void store(float* p, T v) { _mm256_storeu_ps(p, v); }
  static void stream(float* p, T v) { _mm256_stream_ps(p, v); }  // p on a 32-byte boundary
  static void fence() { _mm_sfence(); }
  static T fma(T acc, T a, T b) { return _mm256_fmadd_ps(a, b, acc); }
  static T add(T a, T b) { return _mm256_add_ps(a, b); }
  static T relu(T v) { return _mm256_max_ps(_mm256_setzero_ps(), v); }  // max(0, NaN) = NaN
};

const Isa kIsa = make_isa<V256>("avx2");

}  // namespace

const Isa* isa_avx2() { return &kIsa; }

}  // namespace ft::cpu::dwb

#else

namespace ft::cpu::dwb {
const Isa* isa_avx2() { return nullptr; }
}  // namespace ft::cpu::dwb

#endif
