// Experiment, not built: AVX-512 rows for the NCHW tap-form 2x2 max pool (was csrc/cpu/pooling_avx512.cpp
// behind pooling.h's TapsRows, picked when set_conv2d_isa was avx512; the take rule came from the blocked
// kernel's take_greater_m). Dropped: with NumPy's 16-byte alignment every 64-byte load and store splits a
// cache line, and the forward ran 1.47x the plain row's time (1.116 vs 0.760 ms, 128x32x32x32, 1 thread, CPU
// time, medians of 11 interleaved rounds, loaded 12.9); on 64-byte aligned x and y it ran 0.78x (0.594 ms).
// The backward was 0.95-0.98x of the plain row either way. Worth another look only with line-aligned loads
// (three aligned lines per row joined by valignd) or where the producer of x aligns its output.
// The NCHW max pool's 2x2 stride-2 rows in tap form with AVX-512 (pooling.h), 16 outputs a step.
// Built with AVX-512 flags (CMakeLists.txt) and run only when set_conv2d_isa's choice is avx512.
//
// Forward: two 16-float loads per input row, split into even and odd columns by one two-source
// permute each, so the four taps of 16 windows are four vectors; the take rule is the blocked
// kernel's (max_taps_avx512.h) and the taps leave as 16 bytes. Backward: each dy is duplicated
// into the two columns of its cell by a one-source permute, and the taps, widened to 16-bit pairs
// (t, t), meet the byte patterns (0, 1) and (2, 3) in one compare per row, whose 32-bit mask
// zeroes the lanes that are not the window's maximum. A row's last Q % 16 outputs take the same
// step with masked loads and stores, so no access passes the row's end.
#include "pooling.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#include "max_taps_avx512.h"

namespace ft::cpu::pool {
namespace {

// lanes [0, n) of 16, and of 32 (n < 16 in a tail step)
inline __mmask16 first16(int64_t n) { return static_cast<__mmask16>((1u << n) - 1); }
inline __mmask32 first32(int64_t n) { return static_cast<__mmask32>((uint64_t{1} << n) - 1); }

template <bool kTail>
__attribute__((always_inline)) inline void fwd_step(const float* r0, const float* r1, float* y, uint8_t* t,
                                                    int64_t n) {
  __m512 a0, a1, b0, b1;
  if constexpr (kTail) {
    const __mmask32 m = first32(2 * n);
    const __mmask16 lo = static_cast<__mmask16>(m), hi = static_cast<__mmask16>(m >> 16);
    a0 = _mm512_maskz_loadu_ps(lo, r0);
    a1 = _mm512_maskz_loadu_ps(hi, r0 + 16);
    b0 = _mm512_maskz_loadu_ps(lo, r1);
    b1 = _mm512_maskz_loadu_ps(hi, r1 + 16);
  } else {
    a0 = _mm512_loadu_ps(r0);
    a1 = _mm512_loadu_ps(r0 + 16);
    b0 = _mm512_loadu_ps(r1);
    b1 = _mm512_loadu_ps(r1 + 16);
  }
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  __m512 best = _mm512_permutex2var_ps(a0, even, a1);  // tap 0 (top left) of each window
  __m128i at = _mm_setzero_si128();
  take_greater_m(best, at, _mm512_permutex2var_ps(a0, odd, a1), 1);
  take_greater_m(best, at, _mm512_permutex2var_ps(b0, even, b1), 2);
  take_greater_m(best, at, _mm512_permutex2var_ps(b0, odd, b1), 3);
  if constexpr (kTail) {
    _mm512_mask_storeu_ps(y, first16(n), best);
    _mm_mask_storeu_epi8(t, first16(n), at);
  } else {
    _mm512_storeu_ps(y, best);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(t), at);
  }
}

void fwd_row(const float* r0, const float* r1, float* y, uint8_t* t, int64_t Q) {
  int64_t q = 0;
  for (; q + 16 <= Q; q += 16) fwd_step<false>(r0 + 2 * q, r1 + 2 * q, y + q, t + q, 16);
  if (q < Q) fwd_step<true>(r0 + 2 * q, r1 + 2 * q, y + q, t + q, Q - q);
}

template <bool kTail>
__attribute__((always_inline)) inline __m128i bwd_step(const float* dy, const uint8_t* t, float* r0, float* r1,
                                                       int64_t n) {
  __m512 g;
  __m128i tt;
  if constexpr (kTail) {
    g = _mm512_maskz_loadu_ps(first16(n), dy);
    tt = _mm_maskz_loadu_epi8(first16(n), t);
  } else {
    g = _mm512_loadu_ps(dy);
    tt = _mm_loadu_si128(reinterpret_cast<const __m128i*>(t));
  }
  __m256i pairs = _mm256_cvtepu8_epi16(tt);               // 16-bit lanes (t, 0)
  pairs = _mm256_or_si256(pairs, _mm256_slli_epi16(pairs, 8));  // bytes (t, t): one per output column
  const __mmask32 top = _mm256_cmpeq_epi8_mask(pairs, _mm256_set1_epi16(0x0100));     // taps 0, 1
  const __mmask32 bottom = _mm256_cmpeq_epi8_mask(pairs, _mm256_set1_epi16(0x0302));  // taps 2, 3
  const __m512 lo = _mm512_permutexvar_ps(_mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7), g);
  const __m512 hi =
      _mm512_permutexvar_ps(_mm512_setr_epi32(8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15), g);
  const __m512 t0 = _mm512_maskz_mov_ps(static_cast<__mmask16>(top), lo);
  const __m512 t1 = _mm512_maskz_mov_ps(static_cast<__mmask16>(top >> 16), hi);
  const __m512 b0 = _mm512_maskz_mov_ps(static_cast<__mmask16>(bottom), lo);
  const __m512 b1 = _mm512_maskz_mov_ps(static_cast<__mmask16>(bottom >> 16), hi);
  if constexpr (kTail) {
    const __mmask32 m = first32(2 * n);
    const __mmask16 mlo = static_cast<__mmask16>(m), mhi = static_cast<__mmask16>(m >> 16);
    _mm512_mask_storeu_ps(r0, mlo, t0);
    _mm512_mask_storeu_ps(r0 + 16, mhi, t1);
    _mm512_mask_storeu_ps(r1, mlo, b0);
    _mm512_mask_storeu_ps(r1 + 16, mhi, b1);
  } else {
    _mm512_storeu_ps(r0, t0);
    _mm512_storeu_ps(r0 + 16, t1);
    _mm512_storeu_ps(r1, b0);
    _mm512_storeu_ps(r1 + 16, b1);
  }
  return tt;
}

uint8_t bwd_row(const float* dy, const uint8_t* t, float* r0, float* r1, int64_t Q) {
  __m128i seen = _mm_setzero_si128();
  int64_t q = 0;
  for (; q + 16 <= Q; q += 16) seen = _mm_or_si128(seen, bwd_step<false>(dy + q, t + q, r0 + 2 * q, r1 + 2 * q, 16));
  if (q < Q) seen = _mm_or_si128(seen, bwd_step<true>(dy + q, t + q, r0 + 2 * q, r1 + 2 * q, Q - q));
  // OR of the 16 bytes: a bit above 3 anywhere marks a tap no 2x2 window has
  seen = _mm_or_si128(seen, _mm_srli_si128(seen, 8));
  seen = _mm_or_si128(seen, _mm_srli_si128(seen, 4));
  seen = _mm_or_si128(seen, _mm_srli_si128(seen, 2));
  seen = _mm_or_si128(seen, _mm_srli_si128(seen, 1));
  return static_cast<uint8_t>(_mm_cvtsi128_si32(seen));
}

constexpr TapsRows kRows{fwd_row, bwd_row};

}  // namespace

const TapsRows* taps_rows_avx512() { return &kRows; }

}  // namespace ft::cpu::pool

#else

namespace ft::cpu::pool {
const TapsRows* taps_rows_avx512() { return nullptr; }
}  // namespace ft::cpu::pool

#endif
