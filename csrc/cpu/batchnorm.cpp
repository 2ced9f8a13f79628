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

// The gradient reaching the normalization: dy, or with the fused ReLU dy where its output y > 0.
template <bool kRelu>
inline float grad_in(const float* dy, const float* y, int64_t i) {
  const float d = dy[i];  // loaded unconditionally: a conditional load would block vectorization
  if constexpr (kRelu)
    return y[i] > 0.f ? d : 0.f;
  else
    return d;
}

// The backward (the two passes of the header comment); with kRes the second pass also writes the
// gradient reaching the sum (the residual's) to dres.
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
      float s = 0.f, s2 = 0.f;
#pragma omp simd reduction(+ : s, s2)
      for (int64_t i = 0; i < S; ++i) {
        const float g = grad_in<kRelu>(dys, ys, i);
        s += g;
        s2 += g * (xs[i] - mu);
      }
      pp[2 * r] = s;
      pp[2 * r + 1] = s2;
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
      float* __restrict drs = kRes ? dres + r * S : nullptr;
#pragma omp simd
      for (int64_t i = 0; i < S; ++i) {
        const float g = grad_in<kRelu>(dys, ys, i);
        if constexpr (kRes) drs[i] = g;
        dxs[i] = k * (g - m1 - (xs[i] - mu) * m2);
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
      const float* xs = x + r * S;
      float s = 0.f, s2 = 0.f;
#pragma omp simd reduction(+ : s, s2)
      for (int64_t i = 0; i < S; ++i) {
        const float d = xs[i] - k;
        s += d;
        s2 += d * d;
      }
      pp[2 * r] = s;
      pp[2 * r + 1] = s2;
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
