// Single-precision exp, expm1 and tanh written as plain branch-free scalar code, so that GCC
// vectorizes the loops that call them (inside `#pragma omp simd`) without -ffast-math. The libm
// calls do not vectorize: std::exp stays one scalar call per element, and glibc's vector variants
// (libmvec) are only used under -ffast-math, which would also license reassociation in every
// other loop of the translation unit. The selects below need -fno-trapping-math to become vector
// blends (CMakeLists.txt sets it for the files that include this header).
//
// Method (the classic Cody-Waite scheme): x = n ln2 + r with n = nearest integer to x / ln2, so
// |r| <= ln2 / 2; ln2 is split into a 16-bit head (n * head is exact for |n| <= 255) and a tail.
// expm1(r) ~ r + r^2 q(r), q of degree 4 fitted for minimax relative error of expm1 on
// [-ln2/2, ln2/2] with the coefficients rounded to float one at a time and the rest refitted
// (max relative error of the polynomial itself 1.4e-8 = 0.23 * 2^-24). The result is scaled by
// 2^n, built by writing n + 127 into the exponent bits.
//
// Accuracy, measured over every float32 input against libm in double (bench/dev/vmath_sweep.cpp;
// tests/test_vmath.py re-checks a dense subset): max error 1.04 ulp for expf_approx, 1.53 ulp for
// expm1f_approx, 2.50 ulp for tanhf_approx, 2.40 ulp for the sigmoid of activations.cpp (wherever
// the result is a normal float).
// Special values: exp(+inf) = +inf, exp(-inf) = 0, NaN -> NaN, overflow to +inf exactly above
// ln(FLT_MAX) ~ 88.72, 0 below ~-103.97. Subnormal results are rounded once (2^n is applied as
// two normal factors; error <= 0.75 of the smallest subnormal), unless the process runs with
// flush-to-zero (FTZ/DAZ) set, when they flush to 0.
#pragma once
#include <cstdint>

// Loops over these functions are compute-bound (relu over the same arrays takes half the time),
// so functions holding them can carry FT_VMATH_CLONES: an AVX-512 (16-lane) clone picked at load
// time where the CPU has it (GCC function multiversioning, as in dropout.cpp). Both clones run
// the same IEEE operations (no approximate reciprocals without -ffast-math): the same bits.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FT_VMATH_CLONES __attribute__((target_clones("arch=x86-64-v4", "default")))
#else
#define FT_VMATH_CLONES
#endif

namespace ft::vmath {
namespace detail {

inline uint32_t bits(float f) { return __builtin_bit_cast(uint32_t, f); }
inline float from_bits(uint32_t u) { return __builtin_bit_cast(float, u); }

// Adding 1.5 * 2^23 rounds a float of magnitude < 2^22 to the nearest integer (ties to even) and
// leaves that integer in the low mantissa bits: no float -> int conversion, which would be
// undefined for NaN and is not needed to vectorize.
constexpr float kRoundShift = 0x1.8p23f;
constexpr float kLog2e = 0x1.715476p+0f;
constexpr float kLn2Hi = 0x1.62e4p-1f;     // 16 significant bits
constexpr float kLn2Lo = 0x1.7f7d1cp-20f;  // ln 2 - kLn2Hi

// q(r) with expm1(r) ~ r + r^2 q(r) on |r| <= ln2 / 2 (see the header comment for the fit).
constexpr float kQ0 = 0x1.fffffep-2f;
constexpr float kQ1 = 0x1.5554b4p-3f;
constexpr float kQ2 = 0x1.5556f4p-5f;
constexpr float kQ3 = 0x1.122548p-7f;
constexpr float kQ4 = 0x1.6b9a4cp-10f;

// x = n ln2 + r. n comes back as an integer (two's complement in the uint32) and as a float.
struct Reduced {
  float r;
  int32_t n;
};

inline Reduced reduce(float x) {
  const float kn = x * kLog2e + kRoundShift;
  const float n = kn - kRoundShift;
  float r = x - n * kLn2Hi;  // exact: n * kLn2Hi is exact and cancels against x
  r = r - n * kLn2Lo;
  // uint32 subtraction: defined for every bit pattern, including the NaN that x may carry
  return {r, static_cast<int32_t>(bits(kn) - bits(kRoundShift))};
}

// expm1(r) for |r| <= ln2 / 2: the polynomial, accurate in relative terms down to r -> 0.
inline float expm1_reduced(float r) {
  const float q = (((kQ4 * r + kQ3) * r + kQ2) * r + kQ1) * r + kQ0;
  return r + (r * r) * q;
}

// 2^n for -126 <= n <= 127.
inline float pow2(int32_t n) { return from_bits(static_cast<uint32_t>(n + 127) << 23); }

}  // namespace detail

// exp(x); see the header comment for accuracy and special values.
inline float expf_approx(float x) {
  // Beyond these bounds the result is already +inf / 0; clamping keeps n in [-150, 128].
  // Comparisons rather than fmin/fmax, so NaN passes through.
  x = x > 89.f ? 89.f : x;
  x = x < -104.f ? -104.f : x;
  const detail::Reduced red = detail::reduce(x);
  const float p = 1.f + detail::expm1_reduced(red.r);
  // 2^n as two factors that are both normal for every n in [-150, 128]: the product overflows
  // and underflows (with one rounding into the subnormal range) exactly where exp does.
  const int32_t n1 = red.n >> 1;
  return p * detail::pow2(n1) * detail::pow2(red.n - n1);
}

// expm1(x) = exp(x) - 1, accurate in relative terms near 0 (the plain polynomial when n == 0).
// expm1(+inf) = +inf, expm1(-inf) = -1, NaN -> NaN.
inline float expm1f_approx(float x) {
  x = x > 89.f ? 89.f : x;
  x = x < -30.f ? -30.f : x;  // exp(-30) is below half an ulp of 1: the result is -1 from here on
  const detail::Reduced red = detail::reduce(x);
  const float p = detail::expm1_reduced(red.r);
  // 2^n (p + 1) - 1 = 2 (h p + (h - 1/2)) with h = 2^(n-1): h stays normal for n in [-43, 128]
  // and h - 1/2 is exact while it matters (|n| <= 24); the final doubling overflows like expm1.
  const float h = detail::pow2(red.n - 1);
  const float scaled = 2.f * (h * p + (h - 0.5f));
  return red.n == 0 ? p : scaled;
}

// tanh(x) = sign(x) * -u / (2 + u) with u = expm1(-2|x|) in (-1, 0]: no cancellation near 0
// (u ~ -2|x| in relative terms), and u = -1 exactly for |x| >= ~9 gives +-1.
inline float tanhf_approx(float x) {
  const float ax = __builtin_fabsf(x);
  const float u = expm1f_approx(-2.f * ax);
  const float t = -u / (2.f + u);
  return __builtin_copysignf(t, x);
}

}  // namespace ft::vmath
