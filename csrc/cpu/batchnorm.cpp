// Batch normalization (Ioffe & Szegedy 2015) over x viewed as (N, C, S): statistics per channel
// over the N*S values. Training forward is two passes over x: (1) sums of d = x - K and d^2 with
// the shift K = the channel's first value ("shifted data" variance, Chan, Golub & LeVeque 1983,
// "Algorithms for computing the sample variance"): without the shift, E[x^2] - E[x]^2 cancels
// catastrophically when |mean| >> std; with it the cancellation is bounded by (mean - K)^2 / var.
// Row partials are float (vectorized), rows are combined in double.
// (2) y = x * a + c with a = gamma * invstd, c = beta - mean * a.
// Backward is two passes too: (1) sum dy and sum dy*xhat, (2) the closed-form dx
//   dx = gamma * invstd / M * (M dy - sum(dy) - xhat * sum(dy xhat)),  M = N*S.
// Rows of x are split across threads, see the comment above the passes.
// Fused ReLU (relu = true): the forward's affine pass writes max(0, y), and the backward takes
// that output and zeroes dy where it is <= 0 as it reads dy, so BN + ReLU costs no pass of its
// own, and the gradient is bit-identical to relu_bwd followed by batchnorm_bwd.
// Fused residual add (a ResNet block's y = relu(bn(x) + shortcut)): the affine pass adds the
// residual before the ReLU, and the backward's dx pass also writes the masked dy, which is the
// residual's gradient, so the block's add, its ReLU and their backward cost one extra stream each
// inside BN's passes instead of four passes of their own.
#include <algorithm>
#include <cmath>
#include <vector>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

#include "fasttrain/cpu.h"

namespace ft::cpu {
namespace {

// The passes walk x as N*C rows of S values in memory order, split evenly over the threads:
// statistics per row first (float, vectorized), then each channel's rows combined in double in
// image order, then the elementwise pass with the channel's coefficients. A row's partial and the
// order of the combination depend only on the shape, so the results do not depend on the thread
// count. (Walking one channel's rows per task strides a whole image between rows: on 8x8 maps,
// rows of 64 values, that ran 2-3x slower, and 1.3-1.9x slower on 32x32 maps.)

// y = x * a + b (+ res when kRes), then max(0, .) when kRelu (NaN kept, like relu_fwd's reference).
template <bool kRelu, bool kRes>
inline void affine_row(const float* __restrict xs, const float* __restrict rs, float* __restrict ys,
                       int64_t S, float a, float b) {
#pragma omp simd
  for (int64_t i = 0; i < S; ++i) {
    float v = xs[i] * a + b;
    if constexpr (kRes) v += rs[i];
    ys[i] = kRelu && v < 0.f ? 0.f : v;
  }
}

// Every row of x through affine_row with its channel's ab[2c], ab[2c + 1]; inside a parallel region.
template <bool kRelu, bool kRes>
void affine_rows(const float* x, const float* res, float* y, int64_t N, int64_t C, int64_t S,
                 const float* ab) {
#pragma omp for schedule(static)
  for (int64_t r = 0; r < N * C; ++r) {
    const int64_t c = r % C;
    affine_row<kRelu, kRes>(x + r * S, kRes ? res + r * S : nullptr, y + r * S, S, ab[2 * c],
                            ab[2 * c + 1]);
  }
}

void affine_rows(const float* x, const float* res, float* y, int64_t N, int64_t C, int64_t S,
                 const float* ab, bool relu) {
  if (relu && res)
    affine_rows<true, true>(x, res, y, N, C, S, ab);
  else if (relu)
    affine_rows<true, false>(x, res, y, N, C, S, ab);
  else if (res)
    affine_rows<false, true>(x, res, y, N, C, S, ab);
  else
    affine_rows<false, false>(x, res, y, N, C, S, ab);
}

// sums[2c], sums[2c + 1] = the channel's row partials part[2r], part[2r + 1] added in double, in
// image order; inside a parallel region. No barrier after it: both callers go on with a
// schedule(static) loop over the same C channels, which OpenMP deals to the same threads, so each
// thread reads only the sums it wrote itself (the next loop's own barrier then covers both).
inline void combine_rows(const float* part, double* sums, int64_t N, int64_t C) {
#pragma omp for schedule(static) nowait
  for (int64_t c = 0; c < C; ++c) {
    double s = 0.0, s2 = 0.0;
    for (int64_t n = 0; n < N; ++n) {
      s += part[2 * (n * C + c)];
      s2 += part[2 * (n * C + c) + 1];
    }
    sums[2 * c] = s;
    sums[2 * c + 1] = s2;
  }
}

// The row sums of the two reduction passes: s = sum d, s2 = sum d * e over one row, with
//   forward:  d = e = x - k (k the channel's shift);
//   backward: d = the gradient reaching the normalization (grad_in), e = x - mu.
// GCC's `omp simd reduction` over a row spills its lanes and adds them one at a time at the end of
// every row: on short rows (8x8 maps, 64 values) that, not memory, bounded the pass (the forward's
// statistics pass ran at half a copy's speed there). Four accumulator pairs of 8 lanes take 32
// values a step, 8 at a time after that, then the rest one by one; the order depends only on S,
// so the results still do not depend on the thread count. Measured (1 thread, CPU time, loaded
// machine) at 128 x 64 x 8 x 8: forward 96 -> 81 us, backward 156 -> 115 us (fused add + ReLU 120
// -> 104, 176 -> 149 us); the 32x32 maps, memory-bound, 1.0-1.07x.
#if defined(__AVX2__) && defined(__FMA__)
inline float hsum8(__m256 v) {
  __m128 a = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  a = _mm_add_ps(a, _mm_movehl_ps(a, a));
  a = _mm_add_ss(a, _mm_movehdup_ps(a));
  return _mm_cvtss_f32(a);
}

// the 8 values of d at xs[i..i+8) (see row_sums)
template <bool kBwd, bool kRelu>
inline __m256 row_d(const float* xs, const float* dys, const float* ys, int64_t i, __m256 k) {
  if constexpr (!kBwd) return _mm256_sub_ps(_mm256_loadu_ps(xs + i), k);
  const __m256 d = _mm256_loadu_ps(dys + i);
  if constexpr (kRelu)
    return _mm256_and_ps(_mm256_cmp_ps(_mm256_loadu_ps(ys + i), _mm256_setzero_ps(), _CMP_GT_OQ), d);
  return d;
}
#endif

template <bool kBwd, bool kRelu>
inline void row_sums(const float* xs, const float* dys, const float* ys, int64_t S, float k, float& s_out,
                     float& s2_out) {
  int64_t i = 0;
  float s = 0.f, s2 = 0.f;
#if defined(__AVX2__) && defined(__FMA__)
  const __m256 kv = _mm256_set1_ps(k);
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
  auto step = [&](int64_t j, __m256& a, __m256& b) {
    const __m256 d = row_d<kBwd, kRelu>(xs, dys, ys, j, kv);
    const __m256 e = kBwd ? _mm256_sub_ps(_mm256_loadu_ps(xs + j), kv) : d;
    a = _mm256_add_ps(a, d);
    b = _mm256_fmadd_ps(d, e, b);
  };
  for (; i + 32 <= S; i += 32) {
    step(i, a0, b0);
    step(i + 8, a1, b1);
    step(i + 16, a2, b2);
    step(i + 24, a3, b3);
  }
  for (; i + 8 <= S; i += 8) step(i, a0, b0);
  s = hsum8(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
  s2 = hsum8(_mm256_add_ps(_mm256_add_ps(b0, b1), _mm256_add_ps(b2, b3)));
  // (under 8 values left: no `omp simd` here, whose lane spill and serial lane sum ran on every
  // row even with no values left, and cost more than the vector steps on 64-value rows)
#else
#pragma omp simd reduction(+ : s, s2)
#endif
  for (int64_t j = i; j < S; ++j) {
    const float e = xs[j] - k;
    const float d = !kBwd ? e : kRelu ? (ys[j] > 0.f ? dys[j] : 0.f) : dys[j];
    s += d;
#if defined(__AVX2__) && defined(__FMA__)
    // an explicit fused multiply-add, as in the vector steps: left to contraction, the masked (fused
    // ReLU) instantiation was compiled as a select of d * e and an add, and its sums lost the same
    // bits as relu_bwd then the plain backward
    s2 = std::fma(d, e, s2);
#else
    s2 += d * e;
#endif
  }
  s_out = s;
  s2_out = s2;
}

// The gradient reaching the normalization: dy, or with the fused ReLU dy where its output y > 0.
template <bool kRelu>
inline float grad_in(const float* dy, const float* y, int64_t i) {
  const float d = dy[i];  // loaded unconditionally: a conditional load would block vectorization
  if constexpr (kRelu)
    return y[i] > 0.f ? d : 0.f;
  else
    return d;
}

// The backward (the two passes of the header comment); with kRes the first pass also writes the
// gradient reaching the sum (the residual's, dy masked by y > 0) to dres, and the second reads it back
// instead of dy and y: the residual's gradient has to be written anyway, and reading one stream in its
// place saves one of the backward's ten moved arrays (x, dy, y; x, dy, y, dx and dres with their reads for
// ownership), the layout the blocked backward has (bn_bwd_sums' g).
template <bool kRelu, bool kRes>
void bwd_rows(const float* x, const float* dy, const float* y, const float* gamma, const float* mean,
              const float* invstd, float* dx, float* dres, float* dgamma, float* dbeta, int64_t N,
              int64_t C, int64_t S) {
  const double M = static_cast<double>(N) * S;
  std::vector<float> part(2 * N * C), coef(3 * C);
  std::vector<double> sums(2 * C);
  float* pp = part.data();
  float* pc = coef.data();
  double* ps = sums.data();
#pragma omp parallel num_threads(num_threads())
  {
#pragma omp for schedule(static)
    for (int64_t r = 0; r < N * C; ++r) {   // sum dy, sum dy * (x - mean) per row
      const float mu = mean[r % C];
      const float *xs = x + r * S, *dys = dy + r * S, *ys = kRelu ? y + r * S : nullptr;
      row_sums<true, kRelu>(xs, dys, ys, S, mu, pp[2 * r], pp[2 * r + 1]);
      if constexpr (kRes) {   // the residual's gradient, written here so that the dx pass reads it alone
        float* __restrict drs = dres + r * S;
#pragma omp simd
        for (int64_t i = 0; i < S; ++i) drs[i] = grad_in<kRelu>(dys, ys, i);
      }
    }
    combine_rows(pp, ps, N, C);
#pragma omp for schedule(static)
    for (int64_t c = 0; c < C; ++c) {
      const double is = invstd[c], sdy = ps[2 * c], sdyxhat = ps[2 * c + 1] * is;
      dbeta[c] += static_cast<float>(sdy);
      dgamma[c] += static_cast<float>(sdyxhat);
      // dx = k * (dy - sdy/M - xhat * sdyxhat/M), k = gamma * invstd; xhat = (x - mu) * is
      pc[3 * c] = static_cast<float>(gamma[c] * is);
      pc[3 * c + 1] = static_cast<float>(sdy / M);
      pc[3 * c + 2] = static_cast<float>(sdyxhat / M * is);  // multiplies (x - mu)
    }
#pragma omp for schedule(static)
    for (int64_t r = 0; r < N * C; ++r) {
      const int64_t c = r % C;
      const float mu = mean[c], k = pc[3 * c], m1 = pc[3 * c + 1], m2 = pc[3 * c + 2];
      const float *xs = x + r * S, *dys = dy + r * S, *ys = kRelu ? y + r * S : nullptr;
      float* __restrict dxs = dx + r * S;
      if constexpr (kRes) {   // the gradient reaching the sum is dres (the sums pass wrote it): one stream, not dy and y
        const float* drs = dres + r * S;
#pragma omp simd
        for (int64_t i = 0; i < S; ++i) dxs[i] = k * (drs[i] - m1 - (xs[i] - mu) * m2);
      } else {
#pragma omp simd
        for (int64_t i = 0; i < S; ++i) dxs[i] = k * (grad_in<kRelu>(dys, ys, i) - m1 - (xs[i] - mu) * m2);
      }
    }
  }
}

}  // namespace

void batchnorm_fwd_train(const float* x, const float* gamma, const float* beta, float eps, float* y,
                         float* mean, float* invstd, int64_t N, int64_t C, int64_t S, bool relu,
                         const float* residual) {
  const double M = static_cast<double>(N) * S;
  std::vector<float> part(2 * N * C), ab(2 * C);
  std::vector<double> sums(2 * C);
  float* pp = part.data();
  float* pab = ab.data();
  double* ps = sums.data();
  // sums of d = x - shift, shift = the channel's first value (empty: 0/0 gives NaN statistics)
  auto shift = [&](int64_t c) { return N * S > 0 ? x[c * S] : 0.f; };
#pragma omp parallel num_threads(num_threads())
  {
#pragma omp for schedule(static)
    for (int64_t r = 0; r < N * C; ++r) {
      const float k = shift(r % C);
      row_sums<false, false>(x + r * S, nullptr, nullptr, S, k, pp[2 * r], pp[2 * r + 1]);
    }
    combine_rows(pp, ps, N, C);
#pragma omp for schedule(static)
    for (int64_t c = 0; c < C; ++c) {
      const double dmean = ps[2 * c] / M;
      const double mu = shift(c) + dmean;
      const double var = std::max(ps[2 * c + 1] / M - dmean * dmean, 0.0);
      const double is = 1.0 / std::sqrt(var + eps);
      mean[c] = static_cast<float>(mu);
      invstd[c] = static_cast<float>(is);
      const double a = gamma[c] * is;
      pab[2 * c] = static_cast<float>(a);
      pab[2 * c + 1] = static_cast<float>(beta[c] - mu * a);
    }
    affine_rows(x, residual, y, N, C, S, pab, relu);
  }
}

void batchnorm_fwd_eval(const float* x, const float* gamma, const float* beta,
                        const float* running_mean, const float* running_var, float eps, float* y,
                        int64_t N, int64_t C, int64_t S, bool relu, const float* residual) {
  std::vector<float> ab(2 * C);
  for (int64_t c = 0; c < C; ++c) {
    const double a = gamma[c] / std::sqrt(static_cast<double>(running_var[c]) + eps);
    ab[2 * c] = static_cast<float>(a);
    ab[2 * c + 1] = static_cast<float>(beta[c] - running_mean[c] * a);
  }
#pragma omp parallel num_threads(num_threads())
  affine_rows(x, residual, y, N, C, S, ab.data(), relu);
}

void batchnorm_bwd(const float* x, const float* dy, const float* gamma, const float* mean,
                   const float* invstd, float* dx, float* dgamma, float* dbeta, int64_t N,
                   int64_t C, int64_t S, const float* y, float* dres) {
  if (y && dres)
    bwd_rows<true, true>(x, dy, y, gamma, mean, invstd, dx, dres, dgamma, dbeta, N, C, S);
  else if (y)
    bwd_rows<true, false>(x, dy, y, gamma, mean, invstd, dx, dres, dgamma, dbeta, N, C, S);
  else if (dres)
    bwd_rows<false, true>(x, dy, y, gamma, mean, invstd, dx, dres, dgamma, dbeta, N, C, S);
  else
    bwd_rows<false, false>(x, dy, y, gamma, mean, invstd, dx, dres, dgamma, dbeta, N, C, S);
}

// One call instead of a dozen NumPy operations on C-element arrays per layer and step. Each
// operation rounds as NumPy's does (no fused multiply-adds: the build contracts by default), so
// the running statistics are bit-identical to the NumPy formulation's.
#if defined(__GNUC__) && !defined(__clang__)
__attribute__((optimize("fp-contract=off")))
#endif
void batchnorm_update_running(float* running_mean, float* running_var, const float* mean,
                              const float* invstd, int64_t C, double eps, double momentum,
                              double unbias) {
#if defined(__clang__)
#pragma clang fp contract(off)
#endif
  const float keep = static_cast<float>(1.0 - momentum), mom = static_cast<float>(momentum);
  for (int64_t c = 0; c < C; ++c) {
    double v = static_cast<double>(invstd[c]);
    v = 1.0 / (v * v) - eps;
    v = v > 0.0 || std::isnan(v) ? v : 0.0;
    v = v * unbias * momentum;
    const float kept = keep * running_var[c];
    running_var[c] = static_cast<float>(v + static_cast<double>(kept));
    const float m = running_mean[c] * keep;
    const float add = mom * mean[c];
    running_mean[c] = m + add;
  }
}

}  // namespace ft::cpu
