// Optimizer updates (docs/KERNELS.md): each is ONE read-modify-write pass over p, g and the state,
// streamed once from memory, so a step runs at memory bandwidth. Scalars (bias corrections,
// decay factors) are folded once per call, outside the loop. restrict: p, g and the state are
// distinct ranges of different arenas, which lets the compiler vectorize without alias checks.
// The loops with a square root vectorize only without errno semantics: CMakeLists.txt compiles
// this file with -fno-math-errno (IEEE sqrt is correctly rounded, so results are unchanged).
#include <cmath>

#include "fasttrain/cpu.h"

namespace ft::cpu {

namespace {
// g' = g + l2 p + l1 sign(p)   (L2 penalty (l2/2)|p|^2, L1 penalty l1|p|; sign(0) = 0)
inline float eff_grad(float g, float p, float l2, float l1) {
  const float sign = static_cast<float>((p > 0.f) - (p < 0.f));
  return g + l2 * p + l1 * sign;
}
}  // namespace

#define FT_OPT_LOOP _Pragma("omp parallel for simd num_threads(num_threads()) schedule(static)")

void sgd_step(float* __restrict p, const float* __restrict g, int64_t n, float lr, float l2,
              float l1) {
  FT_OPT_LOOP
  for (int64_t i = 0; i < n; ++i) p[i] -= lr * eff_grad(g[i], p[i], l2, l1);
}

void momentum_step(float* __restrict p, const float* __restrict g, float* __restrict v, int64_t n,
                   float lr, float mu, float l2, float l1) {
  FT_OPT_LOOP
  for (int64_t i = 0; i < n; ++i) {
    const float vi = mu * v[i] + eff_grad(g[i], p[i], l2, l1);
    v[i] = vi;
    p[i] -= lr * vi;
  }
}

// Nesterov in the form of Sutskever et al. 2013 / torch.optim.SGD(nesterov=True):
// the step uses the look-ahead g' + mu v.
void nesterov_step(float* __restrict p, const float* __restrict g, float* __restrict v, int64_t n,
                   float lr, float mu, float l2, float l1) {
  FT_OPT_LOOP
  for (int64_t i = 0; i < n; ++i) {
    const float ge = eff_grad(g[i], p[i], l2, l1);
    const float vi = mu * v[i] + ge;
    v[i] = vi;
    p[i] -= lr * (ge + mu * vi);
  }
}

// Duchi, Hazan, Singer 2011.
void adagrad_step(float* __restrict p, const float* __restrict g, float* __restrict h, int64_t n,
                  float lr, float eps, float l2, float l1) {
  FT_OPT_LOOP
  for (int64_t i = 0; i < n; ++i) {
    const float ge = eff_grad(g[i], p[i], l2, l1);
    const float hi = h[i] + ge * ge;
    h[i] = hi;
    p[i] -= lr * ge / (std::sqrt(hi) + eps);
  }
}

// Tieleman & Hinton 2012 (lecture 6.5).
void rmsprop_step(float* __restrict p, const float* __restrict g, float* __restrict s, int64_t n,
                  float lr, float rho, float eps, float l2, float l1) {
  const float one_m_rho = 1.f - rho;
  FT_OPT_LOOP
  for (int64_t i = 0; i < n; ++i) {
    const float ge = eff_grad(g[i], p[i], l2, l1);
    const float si = rho * s[i] + one_m_rho * ge * ge;
    s[i] = si;
    p[i] -= lr * ge / (std::sqrt(si) + eps);
  }
}

// Centered variant (Graves 2013, "Generating sequences with recurrent neural networks", eq. 38-40):
// divides by an estimate of the gradient's standard deviation instead of its RMS.
void rmsprop_centered_step(float* __restrict p, const float* __restrict g, float* __restrict s,
                           float* __restrict mg, int64_t n, float lr, float rho, float eps,
                           float l2, float l1) {
  const float one_m_rho = 1.f - rho;
  FT_OPT_LOOP
  for (int64_t i = 0; i < n; ++i) {
    const float ge = eff_grad(g[i], p[i], l2, l1);
    const float si = rho * s[i] + one_m_rho * ge * ge;
    const float mi = rho * mg[i] + one_m_rho * ge;
    s[i] = si;
    mg[i] = mi;
    p[i] -= lr * ge / (std::sqrt(si - mi * mi) + eps);
  }
}

// Adam (Kingma & Ba 2015, Algorithm 1) with decoupled weight decay (AdamW, Loshchilov & Hutter
// 2019): p *= 1 - lr wd, then the Adam step; g' uses p from before the decay. The bias
// corrections are folded into two scalars: lr (m/bc1) / (sqrt(v/bc2) + eps)
// = (lr/bc1) m / (sqrt(v) / sqrt(bc2) + eps).
void adam_step(float* __restrict p, const float* __restrict g, float* __restrict m,
               float* __restrict v, int64_t n, float lr, float beta1, float beta2, float eps,
               float bc1, float bc2, float l2, float l1, float decoupled_wd) {
  const float shrink = 1.f - lr * decoupled_wd;
  const float step = lr / bc1;
  const float inv_sqrt_bc2 = 1.f / std::sqrt(bc2);
  const float one_m_b1 = 1.f - beta1, one_m_b2 = 1.f - beta2;
  FT_OPT_LOOP
  for (int64_t i = 0; i < n; ++i) {
    const float pi = p[i];
    const float ge = eff_grad(g[i], pi, l2, l1);
    const float mi = beta1 * m[i] + one_m_b1 * ge;
    const float vi = beta2 * v[i] + one_m_b2 * ge * ge;
    m[i] = mi;
    v[i] = vi;
    p[i] = pi * shrink - step * mi / (std::sqrt(vi) * inv_sqrt_bc2 + eps);
  }
}

#undef FT_OPT_LOOP

}  // namespace ft::cpu
