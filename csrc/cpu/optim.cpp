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

// dampening scales the new gradient's share of the velocity (torch.optim.SGD's dampening).
void momentum_step(float* __restrict p, const float* __restrict g, float* __restrict v, int64_t n,
                   float lr, float mu, float dampening, float l2, float l1) {
  const float keep = 1.f - dampening;
  FT_OPT_LOOP
  for (int64_t i = 0; i < n; ++i) {
    const float vi = mu * v[i] + keep * eff_grad(g[i], p[i], l2, l1);
    v[i] = vi;
    p[i] -= lr * vi;
  }
}

// Nesterov in the form of Sutskever et al. 2013 / torch.optim.SGD(nesterov=True):
// the step uses the look-ahead g' + mu v.
void nesterov_step(float* __restrict p, const float* __restrict g, float* __restrict v, int64_t n,
                   float lr, float mu, float dampening, float l2, float l1) {
  const float keep = 1.f - dampening;
  FT_OPT_LOOP
  for (int64_t i = 0; i < n; ++i) {
    const float ge = eff_grad(g[i], p[i], l2, l1);
    const float vi = mu * v[i] + keep * ge;
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

// Tieleman & Hinton 2012 (lecture 6.5). Centered (Graves 2013, "Generating sequences with
// recurrent neural networks", eq. 38-40) divides by an estimate of the gradient's standard
// deviation instead of its RMS; with momentum (torch.optim.RMSprop(momentum=)) the normalised step
// goes through a velocity b. One template, so each of the four variants is its own branch-free
// loop (the unused state pointers are never touched).
template <bool kCentered, bool kMomentum>
void rmsprop_impl(float* __restrict p, const float* __restrict g, float* __restrict s,
                  float* __restrict mg, float* __restrict b, int64_t n, float lr, float rho,
                  float eps, float mu, float l2, float l1) {
  const float one_m_rho = 1.f - rho;
  FT_OPT_LOOP
  for (int64_t i = 0; i < n; ++i) {
    const float ge = eff_grad(g[i], p[i], l2, l1);
    const float si = rho * s[i] + one_m_rho * ge * ge;
    s[i] = si;
    float ms = si;
    if constexpr (kCentered) {
      const float mi = rho * mg[i] + one_m_rho * ge;
      mg[i] = mi;
      ms = si - mi * mi;
    }
    const float step = ge / (std::sqrt(ms) + eps);
    if constexpr (kMomentum) {
      const float bi = mu * b[i] + step;
      b[i] = bi;
      p[i] -= lr * bi;
    } else {
      p[i] -= lr * step;
    }
  }
}

void rmsprop_step(float* p, const float* g, float* s, int64_t n, float lr, float rho, float eps,
                  float l2, float l1) {
  rmsprop_impl<false, false>(p, g, s, nullptr, nullptr, n, lr, rho, eps, 0.f, l2, l1);
}

void rmsprop_centered_step(float* p, const float* g, float* s, float* mg, int64_t n, float lr,
                           float rho, float eps, float l2, float l1) {
  rmsprop_impl<true, false>(p, g, s, mg, nullptr, n, lr, rho, eps, 0.f, l2, l1);
}

void rmsprop_momentum_step(float* p, const float* g, float* s, float* b, int64_t n, float lr,
                           float rho, float eps, float mu, float l2, float l1) {
  rmsprop_impl<false, true>(p, g, s, nullptr, b, n, lr, rho, eps, mu, l2, l1);
}

void rmsprop_centered_momentum_step(float* p, const float* g, float* s, float* mg, float* b,
                                    int64_t n, float lr, float rho, float eps, float mu, float l2,
                                    float l1) {
  rmsprop_impl<true, true>(p, g, s, mg, b, n, lr, rho, eps, mu, l2, l1);
}

// Adam (Kingma & Ba 2015, Algorithm 1) with decoupled weight decay (AdamW, Loshchilov & Hutter
// 2019): p *= 1 - lr wd, then the Adam step; g' uses p from before the decay. The bias
// corrections are folded into two scalars: lr (m/bc1) / (sqrt(v/bc2) + eps)
// = (lr/bc1) m / (sqrt(v) / sqrt(bc2) + eps). AMSGrad (Reddi, Kale & Kumar 2018) divides by the
// running maximum of v instead, kept in vmax.
template <bool kAmsgrad>
void adam_impl(float* __restrict p, const float* __restrict g, float* __restrict m,
               float* __restrict v, float* __restrict vmax, int64_t n, float lr, float beta1,
               float beta2, float eps, float bc1, float bc2, float l2, float l1,
               float decoupled_wd) {
  const float shrink = 1.f - lr * decoupled_wd;
  const float step = lr / bc1;
  const float inv_sqrt_bc2 = 1.f / std::sqrt(bc2);
  const float one_m_b1 = 1.f - beta1, one_m_b2 = 1.f - beta2;
  FT_OPT_LOOP
  for (int64_t i = 0; i < n; ++i) {
    const float pi = p[i];
    const float ge = eff_grad(g[i], pi, l2, l1);
    const float mi = beta1 * m[i] + one_m_b1 * ge;
    float vi = beta2 * v[i] + one_m_b2 * ge * ge;
    m[i] = mi;
    v[i] = vi;
    if constexpr (kAmsgrad) {
      vi = vmax[i] > vi ? vmax[i] : vi;  // a NaN in v propagates, as in torch.maximum
      vmax[i] = vi;
    }
    p[i] = pi * shrink - step * mi / (std::sqrt(vi) * inv_sqrt_bc2 + eps);
  }
}

void adam_step(float* p, const float* g, float* m, float* v, int64_t n, float lr, float beta1,
               float beta2, float eps, float bc1, float bc2, float l2, float l1,
               float decoupled_wd) {
  adam_impl<false>(p, g, m, v, nullptr, n, lr, beta1, beta2, eps, bc1, bc2, l2, l1, decoupled_wd);
}

void adam_amsgrad_step(float* p, const float* g, float* m, float* v, float* vmax, int64_t n,
                       float lr, float beta1, float beta2, float eps, float bc1, float bc2,
                       float l2, float l1, float decoupled_wd) {
  adam_impl<true>(p, g, m, v, vmax, n, lr, beta1, beta2, eps, bc1, bc2, l2, l1, decoupled_wd);
}

#undef FT_OPT_LOOP

}  // namespace ft::cpu
