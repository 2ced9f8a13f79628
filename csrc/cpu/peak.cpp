// The FMA peak of this CPU per instruction set: a loop of fused multiply-adds on independent
// accumulators that never leave the registers (no loads, no stores), run by every thread at once.
// It is the ceiling of the bench's roofline and the denominator of its model-FLOP utilization.
// Each function is compiled for its instruction set with a target attribute, so the extension
// (built for a portable x86-64 floor) still measures AVX-512 where the CPU has it, and the caller
// asks __builtin_cpu_supports before calling. Twelve accumulators cover the FMA latency times the
// FMA ports of current cores (4 cycles x 2 ports = 8 in flight), with margin; more would not fit
// beside the two operands on AVX2's 16 registers.
#include <chrono>
#include <string>

#include "fasttrain/cpu.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define FT_X86 1
#endif

namespace ft::cpu {
namespace {

#if FT_X86
// Returns a value depending on every accumulator, so the compiler cannot drop the loop.
__attribute__((target("avx512f"))) float fma_loop_avx512(int64_t iters) {
  // distinct starting values: identical accumulators would let the compiler merge them into one chain
  __m512 a0 = _mm512_set1_ps(0.f), a1 = _mm512_set1_ps(1.f), a2 = _mm512_set1_ps(2.f),
         a3 = _mm512_set1_ps(3.f), a4 = _mm512_set1_ps(4.f), a5 = _mm512_set1_ps(5.f),
         a6 = _mm512_set1_ps(6.f), a7 = _mm512_set1_ps(7.f), a8 = _mm512_set1_ps(8.f),
         a9 = _mm512_set1_ps(9.f), a10 = _mm512_set1_ps(10.f), a11 = _mm512_set1_ps(11.f);
  const __m512 b = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-7f);
  for (int64_t i = 0; i < iters; ++i) {
    a0 = _mm512_fmadd_ps(a0, b, c); a1 = _mm512_fmadd_ps(a1, b, c); a2 = _mm512_fmadd_ps(a2, b, c);
    a3 = _mm512_fmadd_ps(a3, b, c); a4 = _mm512_fmadd_ps(a4, b, c); a5 = _mm512_fmadd_ps(a5, b, c);
    a6 = _mm512_fmadd_ps(a6, b, c); a7 = _mm512_fmadd_ps(a7, b, c); a8 = _mm512_fmadd_ps(a8, b, c);
    a9 = _mm512_fmadd_ps(a9, b, c); a10 = _mm512_fmadd_ps(a10, b, c); a11 = _mm512_fmadd_ps(a11, b, c);
  }
  const __m512 s = _mm512_add_ps(
      _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)),
                    _mm512_add_ps(_mm512_add_ps(a4, a5), _mm512_add_ps(a6, a7))),
      _mm512_add_ps(_mm512_add_ps(a8, a9), _mm512_add_ps(a10, a11)));
  return _mm512_reduce_add_ps(s);
}

__attribute__((target("avx2,fma"))) float fma_loop_avx2(int64_t iters) {
  __m256 a0 = _mm256_set1_ps(0.f), a1 = _mm256_set1_ps(1.f), a2 = _mm256_set1_ps(2.f),
         a3 = _mm256_set1_ps(3.f), a4 = _mm256_set1_ps(4.f), a5 = _mm256_set1_ps(5.f),
         a6 = _mm256_set1_ps(6.f), a7 = _mm256_set1_ps(7.f), a8 = _mm256_set1_ps(8.f),
         a9 = _mm256_set1_ps(9.f), a10 = _mm256_set1_ps(10.f), a11 = _mm256_set1_ps(11.f);
  const __m256 b = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
  for (int64_t i = 0; i < iters; ++i) {
    a0 = _mm256_fmadd_ps(a0, b, c); a1 = _mm256_fmadd_ps(a1, b, c); a2 = _mm256_fmadd_ps(a2, b, c);
    a3 = _mm256_fmadd_ps(a3, b, c); a4 = _mm256_fmadd_ps(a4, b, c); a5 = _mm256_fmadd_ps(a5, b, c);
    a6 = _mm256_fmadd_ps(a6, b, c); a7 = _mm256_fmadd_ps(a7, b, c); a8 = _mm256_fmadd_ps(a8, b, c);
    a9 = _mm256_fmadd_ps(a9, b, c); a10 = _mm256_fmadd_ps(a10, b, c); a11 = _mm256_fmadd_ps(a11, b, c);
  }
  const __m256 s = _mm256_add_ps(
      _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)),
                    _mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7))),
      _mm256_add_ps(_mm256_add_ps(a8, a9), _mm256_add_ps(a10, a11)));
  const __m128 h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
  float out[4];
  _mm_storeu_ps(out, h);
  return out[0] + out[1] + out[2] + out[3];
}
#endif

}  // namespace

bool fma_isa_supported(const std::string& isa) {
#if FT_X86
  if (isa == "avx512") return __builtin_cpu_supports("avx512f");
  if (isa == "avx2") return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
  (void)isa;
  return false;
}

double fma_peak_flops(const std::string& isa, int64_t iters) {
  const int lanes = isa == "avx512" ? 16 : 8;
  const int nt = num_threads();
  volatile float sink = 0.f;
  const auto t0 = std::chrono::steady_clock::now();
#if FT_X86
#pragma omp parallel num_threads(nt)
  {
    const float r = isa == "avx512" ? fma_loop_avx512(iters) : fma_loop_avx2(iters);
#pragma omp atomic
    sink += r;
  }
#endif
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  (void)sink;
  // 12 accumulators x lanes x 2 FLOPs (a multiply and an add) per iteration, on every thread
  return 2.0 * 12 * lanes * static_cast<double>(iters) * nt / s;
}

}  // namespace ft::cpu
