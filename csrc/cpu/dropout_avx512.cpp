// Dropout's Philox-4x32-10 for AVX-512 (F + BW + BMI2): 16 blocks (64 elements) per pass, one
// block per 32-bit lane, the four counter words as four vectors. GCC's autovectorized loop over
// philox.h's scalar rounds ran at 0.7x Numba's; the products' high and low halves come here from
// two vpmuludq (even and odd lanes) per multiply and two blends, and the keep bits of the four
// words are interleaved into element order with pdep, so the 64 outputs are four masked multiplies.
// The same bits as the scalar code (and the NumPy reference). Built with AVX-512 flags
// (CMakeLists.txt) and run only when set_conv2d_isa's choice is "avx512".
#include "dropout.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__BMI2__)
#include <immintrin.h>

#include "fasttrain/philox.h"

namespace ft::cpu::dropout {
namespace {

// (hi, lo) of the 32x32->64 products of each lane of a with the constant m
inline void mulhilo16(__m512i a, __m512i m, __m512i& hi, __m512i& lo) {
  const __m512i even = _mm512_mul_epu32(a, m);                          // lanes 0, 2, ...: 64-bit products
  const __m512i odd = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), m);    // lanes 1, 3, ...
  hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd);
  lo = _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
}

}  // namespace

int64_t scale_blocks_avx512(const float* x, float* y, int64_t b0, int64_t b1, float scale, uint32_t k0,
                            uint32_t k1, uint32_t step, uint32_t layer, uint32_t t) {
  namespace ph = ft::philox;
  const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i m0 = _mm512_set1_epi32(static_cast<int>(ph::kM0));
  const __m512i m1 = _mm512_set1_epi32(static_cast<int>(ph::kM1));
  const __m512i thr = _mm512_set1_epi32(static_cast<int>(t));
  const __m512 vscale = _mm512_set1_ps(scale);
  __m512i key0[ph::kRounds], key1[ph::kRounds];   // the Weyl schedule, the same for every lane
  for (int r = 0; r < ph::kRounds; ++r) {
    key0[r] = _mm512_set1_epi32(static_cast<int>(k0 + static_cast<uint32_t>(r) * ph::kW0));
    key1[r] = _mm512_set1_epi32(static_cast<int>(k1 + static_cast<uint32_t>(r) * ph::kW1));
  }
  int64_t b = b0;
  for (; b + 16 <= b1; b += 16) {
    if ((static_cast<uint64_t>(b) >> 32) != (static_cast<uint64_t>(b + 15) >> 32)) break;  // c1 not uniform
    __m512i c0 = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(b))), iota);
    __m512i c1 = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(static_cast<uint64_t>(b) >> 32)));
    __m512i c2 = _mm512_set1_epi32(static_cast<int>(step));
    __m512i c3 = _mm512_set1_epi32(static_cast<int>(layer));
    for (int r = 0; r < ph::kRounds; ++r) {
      __m512i hi0, lo0, hi1, lo1;
      mulhilo16(c0, m0, hi0, lo0);
      mulhilo16(c2, m1, hi1, lo1);
      c0 = _mm512_ternarylogic_epi32(hi1, c1, key0[r], 0x96);   // a ^ b ^ c
      c2 = _mm512_ternarylogic_epi32(hi0, c3, key1[r], 0x96);
      c1 = lo1;
      c3 = lo0;
    }
    // element 4i + j (block i of the 16, word j) is kept iff word j of lane i >= t
    const uint64_t keep = _pdep_u64(_mm512_cmpge_epu32_mask(c0, thr), 0x1111111111111111ull) |
                          _pdep_u64(_mm512_cmpge_epu32_mask(c1, thr), 0x2222222222222222ull) |
                          _pdep_u64(_mm512_cmpge_epu32_mask(c2, thr), 0x4444444444444444ull) |
                          _pdep_u64(_mm512_cmpge_epu32_mask(c3, thr), 0x8888888888888888ull);
    const float* xb = x + 4 * b;
    float* yb = y + 4 * b;
    for (int q = 0; q < 4; ++q) {
      const __mmask16 k = static_cast<__mmask16>(keep >> (16 * q));
      _mm512_storeu_ps(yb + 16 * q, _mm512_maskz_mul_ps(k, _mm512_loadu_ps(xb + 16 * q), vscale));
    }
  }
  return b - b0;
}

}  // namespace ft::cpu::dropout

#else

namespace ft::cpu::dropout {
int64_t scale_blocks_avx512(const float*, float*, int64_t, int64_t, float, uint32_t, uint32_t, uint32_t, uint32_t,
                            uint32_t) {
  return 0;
}
}  // namespace ft::cpu::dropout

#endif
