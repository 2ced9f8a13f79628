// The direct-convolution micro-kernels for AVX2 + FMA: a 16-channel block is two ymm registers.
#include "conv2d_direct.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

#include "conv2d_direct_kernels.h"

namespace ft::cpu::direct {
namespace {

struct V256x2 {
  struct T {
    __m256 lo, hi;
  };
  static constexpr int kWgradC = 4;  // 8 accumulator ymm + 2 for dy + 1 broadcast, of 16
  static constexpr int kWgradKV = 1;
  static constexpr int kStemTaps = 6;  // 12 accumulator ymm + 2 for dy + 1 broadcast
  static T zero() { return {_mm256_setzero_ps(), _mm256_setzero_ps()}; }
  static T load(const float* p) { return {_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)}; }
  static void store(float* p, T v) {
    _mm256_storeu_ps(p, v.lo);
    _mm256_storeu_ps(p + 8, v.hi);
  }
  static T fma(T acc, T w, const float* s) {
    const __m256 b = _mm256_broadcast_ss(s);
    return {_mm256_fmadd_ps(w.lo, b, acc.lo), _mm256_fmadd_ps(w.hi, b, acc.hi)};
  }
  static T relu(T v) {
    return {_mm256_max_ps(v.lo, _mm256_setzero_ps()), _mm256_max_ps(v.hi, _mm256_setzero_ps())};
  }
  static T add(T a, T b) { return {_mm256_add_ps(a.lo, b.lo), _mm256_add_ps(a.hi, b.hi)}; }
  static T madd(T acc, T a, T b) {
    return {_mm256_fmadd_ps(a.lo, b.lo, acc.lo), _mm256_fmadd_ps(a.hi, b.hi, acc.hi)};
  }
  static T sub(T a, T b) { return {_mm256_sub_ps(a.lo, b.lo), _mm256_sub_ps(a.hi, b.hi)}; }
  static T positive(T c, T d) {
    const __m256 z = _mm256_setzero_ps();
    return {_mm256_and_ps(_mm256_cmp_ps(c.lo, z, _CMP_GT_OQ), d.lo), _mm256_and_ps(_mm256_cmp_ps(c.hi, z, _CMP_GT_OQ), d.hi)};
  }
};

// 16 ymm: 6 pixels x 2 halves = 12 accumulators, 2 for the weights, 1 broadcast.
const Isa kIsa{"avx2", 1, {0, 6, 0}, &pick_conv<V256x2, 6, 0, kBlock>,
               &pick_conv<V256x2, 6, 0, 1>, &wgrad_tile<V256x2>, &wgrad_stem<V256x2>, V256x2::kStemTaps,
               V256x2::kWgradKV,
               &pack_row<V256x2>, &unpack_row<V256x2>, &pick_conv<V256x2, 6, 0, kBlock, true>,
               &pw_rows<V256x2, 6, 1>, &pw_dots<V256x2, 2, 2>};

}  // namespace

const Isa* isa_avx2() { return &kIsa; }

}  // namespace ft::cpu::direct

#else

namespace ft::cpu::direct {
const Isa* isa_avx2() { return nullptr; }
}  // namespace ft::cpu::direct

#endif
