// Batch normalization (Ioffe & Szegedy 2015) over x viewed as (N, C, S): statistics per channel
// over the N*S values. Training forward is two passes over x: (1) sums of d = x - K and d^2 with
// the shift K = the channel's first value ("shifted data" variance, Chan, Golub & LeVeque 1983,
// "Algorithms for computing the sample variance"): without the shift, E[x^2] - E[x]^2 cancels
// catastrophically when |mean| >> std; with it the cancellation is bounded by (mean - K)^2 / var.
// Row partials are float (vectorized), rows are combined in double.
// (2) y = x * a + c with a = gamma * invstd, c = beta - mean * a.
// Backward is two passes too: (1) sum dy and sum dy*xhat, (2) the closed-form dx
//   dx = gamma * invstd / M * (M dy - sum(dy) - xhat * sum(dy xhat)),  M = N*S.
// Channels are split across threads (each channel's sums in one thread, so results do not
// depend on the thread count).
// Fused ReLU (relu = true): the forward's affine pass writes max(0, y), and the backward takes
// that output and zeroes dy where it is <= 0 as it reads dy, so BN + ReLU costs no pass of its
// own, and the gradient is bit-identical to relu_bwd followed by batchnorm_bwd.
// Fused residual add (a ResNet block's y = relu(bn(x) + shortcut)): the affine pass adds the
// residual before the ReLU, and the backward's dx pass also writes the masked dy, which is the
// residual's gradient, so the block's add, its ReLU and their backward cost one extra stream each
// inside BN's passes instead of four passes of their own.
#include <algorithm>
#include <cmath>

#include "fasttrain/cpu.h"

namespace ft::cpu {
namespace {

// y[n, c, :] = x[n, c, :] * a + b (+ res[n, c, :] when kRes) for every n, then max(0, .) when
// kRelu (NaN kept, like relu_fwd's reference).
template <bool kRelu, bool kRes>
void affine_channel(const float* __restrict x, const float* __restrict res, float* __restrict y,
                    int64_t N, int64_t C, int64_t S, int64_t c, float a, float b) {
  for (int64_t n = 0; n < N; ++n) {
    const int64_t off = (n * C + c) * S;
    const float* xs = x + off;
    const float* rs = kRes ? res + off : nullptr;
    float* ys = y + off;
#pragma omp simd
    for (int64_t i = 0; i < S; ++i) {
      float v = xs[i] * a + b;
      if constexpr (kRes) v += rs[i];
      ys[i] = kRelu && v < 0.f ? 0.f : v;
    }
  }
}

void affine_channel(const float* x, const float* res, float* y, int64_t N, int64_t C, int64_t S,
                    int64_t c, float a, float b, bool relu) {
  if (relu && res)
    affine_channel<true, true>(x, res, y, N, C, S, c, a, b);
  else if (relu)
    affine_channel<true, false>(x, res, y, N, C, S, c, a, b);
  else if (res)
    affine_channel<false, true>(x, res, y, N, C, S, c, a, b);
  else
    affine_channel<false, false>(x, res, y, N, C, S, c, a, b);
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

// One channel of the backward (the two passes of the header comment); with kRes the second
// pass also writes the gradient reaching the sum (the residual's) to dres.
template <bool kRelu, bool kRes>
void bwd_channel(const float* x, const float* dy, const float* y, const float* gamma,
                 const float* mean, const float* invstd, float* dx, float* dres, float* dgamma,
                 float* dbeta, int64_t N, int64_t C, int64_t S, int64_t c) {
  const double M = static_cast<double>(N) * S;
  const float mu = mean[c], is = invstd[c];
  double sdy = 0.0, sdyx = 0.0;  // sum dy, sum dy * (x - mean)
  for (int64_t n = 0; n < N; ++n) {
    const int64_t off = (n * C + c) * S;
    const float *xs = x + off, *dys = dy + off, *ys = kRelu ? y + off : nullptr;
    float s = 0.f, s2 = 0.f;
#pragma omp simd reduction(+ : s, s2)
    for (int64_t i = 0; i < S; ++i) {
      const float g = grad_in<kRelu>(dys, ys, i);
      s += g;
      s2 += g * (xs[i] - mu);
    }
    sdy += s;
    sdyx += s2;
  }
  const double sdyxhat = sdyx * is;
  dbeta[c] += static_cast<float>(sdy);
  dgamma[c] += static_cast<float>(sdyxhat);
  // dx = k * (dy - sdy/M - xhat * sdyxhat/M), k = gamma * invstd; xhat = (x - mu) * is
  const float k = static_cast<float>(gamma[c] * static_cast<double>(is));
  const float m1 = static_cast<float>(sdy / M);
  const float m2 = static_cast<float>(sdyxhat / M * is);  // multiplies (x - mu)
  for (int64_t n = 0; n < N; ++n) {
    const int64_t off = (n * C + c) * S;
    const float *xs = x + off, *dys = dy + off, *ys = kRelu ? y + off : nullptr;
    float* __restrict dxs = dx + off;
    float* __restrict drs = kRes ? dres + off : nullptr;
#pragma omp simd
    for (int64_t i = 0; i < S; ++i) {
      const float g = grad_in<kRelu>(dys, ys, i);
      if constexpr (kRes) drs[i] = g;
      dxs[i] = k * (g - m1 - (xs[i] - mu) * m2);
    }
  }
}

}  // namespace

void batchnorm_fwd_train(const float* x, const float* gamma, const float* beta, float eps, float* y,
                         float* mean, float* invstd, int64_t N, int64_t C, int64_t S, bool relu,
                         const float* residual) {
  const double M = static_cast<double>(N) * S;
#pragma omp parallel for num_threads(num_threads()) schedule(dynamic, 1)
  for (int64_t c = 0; c < C; ++c) {
    const float shift = N * S > 0 ? x[c * S] : 0.f;  // empty: 0/0 gives NaN statistics
    double sum = 0.0, sumsq = 0.0;  // of d = x - shift
    for (int64_t n = 0; n < N; ++n) {
      const float* xs = x + (n * C + c) * S;
      float s = 0.f, s2 = 0.f;
#pragma omp simd reduction(+ : s, s2)
      for (int64_t i = 0; i < S; ++i) {
        const float d = xs[i] - shift;
        s += d;
        s2 += d * d;
      }
      sum += s;
      sumsq += s2;
    }
    const double dmean = sum / M;
    const double mu = shift + dmean;
    const double var = std::max(sumsq / M - dmean * dmean, 0.0);
    const double is = 1.0 / std::sqrt(var + eps);
    mean[c] = static_cast<float>(mu);
    invstd[c] = static_cast<float>(is);
    const double a = gamma[c] * is;
    affine_channel(x, residual, y, N, C, S, c, static_cast<float>(a),
                   static_cast<float>(beta[c] - mu * a), relu);
  }
}

void batchnorm_fwd_eval(const float* x, const float* gamma, const float* beta,
                        const float* running_mean, const float* running_var, float eps, float* y,
                        int64_t N, int64_t C, int64_t S, bool relu, const float* residual) {
#pragma omp parallel for num_threads(num_threads()) schedule(static)
  for (int64_t c = 0; c < C; ++c) {
    const double a = gamma[c] / std::sqrt(static_cast<double>(running_var[c]) + eps);
    affine_channel(x, residual, y, N, C, S, c, static_cast<float>(a),
                   static_cast<float>(beta[c] - running_mean[c] * a), relu);
  }
}

void batchnorm_bwd(const float* x, const float* dy, const float* gamma, const float* mean,
                   const float* invstd, float* dx, float* dgamma, float* dbeta, int64_t N,
                   int64_t C, int64_t S, const float* y, float* dres) {
#pragma omp parallel for num_threads(num_threads()) schedule(dynamic, 1)
  for (int64_t c = 0; c < C; ++c) {
    if (y && dres)
      bwd_channel<true, true>(x, dy, y, gamma, mean, invstd, dx, dres, dgamma, dbeta, N, C, S, c);
    else if (y)
      bwd_channel<true, false>(x, dy, y, gamma, mean, invstd, dx, dres, dgamma, dbeta, N, C, S, c);
    else if (dres)
      bwd_channel<false, true>(x, dy, y, gamma, mean, invstd, dx, dres, dgamma, dbeta, N, C, S, c);
    else
      bwd_channel<false, false>(x, dy, y, gamma, mean, invstd, dx, dres, dgamma, dbeta, N, C, S, c);
  }
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
