// Elementwise activations and their gradients (docs/KERNELS.md; reference:
// fasttrain/kernels/activations.py). Branch-free selects so each loop vectorizes; exp, expm1 and
// tanh come from fasttrain/vmath.h, which vectorize where the libm calls stay scalar.
#include <omp.h>

#include <cmath>
#include <vector>

#include "fasttrain/cpu.h"
#include "fasttrain/vmath.h"

namespace ft::cpu {

#define FT_EW_LOOP _Pragma("omp parallel for simd num_threads(num_threads()) schedule(static)")

namespace {

// body(i0, i1) on one contiguous share of [0, n) per thread: the exp-based loops live in
// functions of their own (FT_VMATH_CLONES applies to a function, not to an OpenMP region).
template <class Body>
void over_ranges(int64_t n, Body body) {
#pragma omp parallel num_threads(num_threads())
  {
    const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
    body(n * t / nt, n * (t + 1) / nt);
  }
}

}  // namespace

void relu_fwd(const float* x, float* y, int64_t n) {
  FT_EW_LOOP
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] <= 0.f ? 0.f : x[i];  // NaN stays NaN, like max(x, 0)
}

void relu_bwd(const float* x, const float* dy, float* dx, int64_t n) {
  FT_EW_LOOP
  for (int64_t i = 0; i < n; ++i) dx[i] = x[i] > 0.f ? dy[i] : 0.f;  // subgradient 0 at x == 0
}

// Maas, Hannun, Ng 2013.
void leaky_relu_fwd(const float* x, float* y, int64_t n, float alpha) {
  FT_EW_LOOP
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] > 0.f ? x[i] : alpha * x[i];
}

void leaky_relu_bwd(const float* x, const float* dy, float* dx, int64_t n, float alpha) {
  FT_EW_LOOP
  for (int64_t i = 0; i < n; ++i) dx[i] = x[i] > 0.f ? dy[i] : alpha * dy[i];
}

// Clevert, Unterthiner, Hochreiter 2016. expm1 of min(x, 0): accurate near 0, and the discarded
// branch never overflows. min written as a select that keeps NaN (std::fmin(NaN, 0) is 0), so NaN
// propagates as in the reference.
namespace {
inline float nonpositive_part(float x) { return x > 0.f ? 0.f : x; }

FT_VMATH_CLONES void elu_fwd_range(const float* x, float* y, int64_t i0, int64_t i1, float alpha) {
#pragma omp simd
  for (int64_t i = i0; i < i1; ++i) {
    const float xi = x[i];
    y[i] = xi > 0.f ? xi : alpha * vmath::expm1f_approx(nonpositive_part(xi));
  }
}

FT_VMATH_CLONES void elu_bwd_range(const float* x, const float* dy, float* dx, int64_t i0,
                                   int64_t i1, float alpha) {
#pragma omp simd
  for (int64_t i = i0; i < i1; ++i) {
    const float xi = x[i];
    dx[i] = xi > 0.f ? dy[i] : dy[i] * (alpha * vmath::expf_approx(nonpositive_part(xi)));
  }
}

// Stable for any x: only e = exp(-|x|) in (0, 1] is computed; x >= 0: 1/(1+e), else e/(1+e).
// One division with the numerator selected: e * (1/(1+e)) would add a rounding (2.8 -> 2.4 ulp).
FT_VMATH_CLONES void sigmoid_range(const float* x, float* y, int64_t i0, int64_t i1) {
#pragma omp simd
  for (int64_t i = i0; i < i1; ++i) {
    const float xi = x[i];
    const float e = vmath::expf_approx(-std::fabs(xi));
    y[i] = (xi >= 0.f ? 1.f : e) / (1.f + e);
  }
}

FT_VMATH_CLONES void tanh_range(const float* x, float* y, int64_t i0, int64_t i1) {
#pragma omp simd
  for (int64_t i = i0; i < i1; ++i) y[i] = vmath::tanhf_approx(x[i]);
}

FT_VMATH_CLONES void exp_range(const float* x, float* y, int64_t i0, int64_t i1) {
#pragma omp simd
  for (int64_t i = i0; i < i1; ++i) y[i] = vmath::expf_approx(x[i]);
}

FT_VMATH_CLONES void expm1_range(const float* x, float* y, int64_t i0, int64_t i1) {
#pragma omp simd
  for (int64_t i = i0; i < i1; ++i) y[i] = vmath::expm1f_approx(x[i]);
}

}  // namespace

void elu_fwd(const float* x, float* y, int64_t n, float alpha) {
  over_ranges(n, [=](int64_t i0, int64_t i1) { elu_fwd_range(x, y, i0, i1, alpha); });
}

void elu_bwd(const float* x, const float* dy, float* dx, int64_t n, float alpha) {
  over_ranges(n, [=](int64_t i0, int64_t i1) { elu_bwd_range(x, dy, dx, i0, i1, alpha); });
}

void sigmoid_fwd(const float* x, float* y, int64_t n) {
  over_ranges(n, [=](int64_t i0, int64_t i1) { sigmoid_range(x, y, i0, i1); });
}

void sigmoid_bwd(const float* y, const float* dy, float* dx, int64_t n) {
  FT_EW_LOOP
  for (int64_t i = 0; i < n; ++i) dx[i] = dy[i] * (y[i] * (1.f - y[i]));
}

void tanh_fwd(const float* x, float* y, int64_t n) {
  over_ranges(n, [=](int64_t i0, int64_t i1) { tanh_range(x, y, i0, i1); });
}

void tanh_bwd(const float* y, const float* dy, float* dx, int64_t n) {
  FT_EW_LOOP
  for (int64_t i = 0; i < n; ++i) dx[i] = dy[i] * (1.f - y[i] * y[i]);
}

void vmath_exp(const float* x, float* y, int64_t n) {
  over_ranges(n, [=](int64_t i0, int64_t i1) { exp_range(x, y, i0, i1); });
}

void vmath_expm1(const float* x, float* y, int64_t n) {
  over_ranges(n, [=](int64_t i0, int64_t i1) { expm1_range(x, y, i0, i1); });
}

#undef FT_EW_LOOP

// PReLU (He et al. 2015): x viewed as (N, C, S), one slope per channel.
void prelu_fwd(const float* x, const float* alpha, float* y, int64_t N, int64_t C, int64_t S) {
#pragma omp parallel for collapse(2) num_threads(num_threads()) schedule(static)
  for (int64_t nn = 0; nn < N; ++nn)
    for (int64_t c = 0; c < C; ++c) {
      const float a = alpha[c];
      const float* xr = x + (nn * C + c) * S;
      float* yr = y + (nn * C + c) * S;
#pragma omp simd
      for (int64_t s = 0; s < S; ++s) yr[s] = xr[s] > 0.f ? xr[s] : a * xr[s];
    }
}

// dx overwritten; dalpha_c += sum over x <= 0 of dy * x. Each (n, c) row's partial sum goes to
// its own slot and the slots are added in a fixed order afterwards, so the result does not depend
// on the thread count (and rows balance well even when C is small).
void prelu_bwd(const float* x, const float* alpha, const float* dy, float* dx, float* dalpha,
               int64_t N, int64_t C, int64_t S) {
  std::vector<double> part(static_cast<size_t>(N * C));
#pragma omp parallel for collapse(2) num_threads(num_threads()) schedule(static)
  for (int64_t nn = 0; nn < N; ++nn)
    for (int64_t c = 0; c < C; ++c) {
      const float a = alpha[c];
      const int64_t off = (nn * C + c) * S;
      const float *xr = x + off, *dyr = dy + off;
      float* dxr = dx + off;
      double acc = 0.0;
#pragma omp simd reduction(+ : acc)
      for (int64_t s = 0; s < S; ++s) {
        const bool neg = xr[s] <= 0.f;
        dxr[s] = neg ? a * dyr[s] : dyr[s];
        acc += neg ? static_cast<double>(dyr[s]) * xr[s] : 0.0;
      }
      part[nn * C + c] = acc;
    }
  for (int64_t c = 0; c < C; ++c) {
    double sum = 0.0;
    for (int64_t nn = 0; nn < N; ++nn) sum += part[nn * C + c];
    dalpha[c] += static_cast<float>(sum);
  }
}

}  // namespace ft::cpu
