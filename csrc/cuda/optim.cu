// Optimizer updates on the GPU: each is ONE launch over a flat range of the arena, one
// read-modify-write pass over p, g and the state (docs/KERNELS.md). Grid-stride loops so one
// launch covers any size with a bounded grid.
#include "fasttrain/cuda.h"

namespace ft::cuda {

__device__ __forceinline__ float eff_grad(float g, float p, float l2, float l1) {
  return g + l2 * p + l1 * (float)((p > 0.f) - (p < 0.f));
}

#define FT_GRID_LOOP(i, n) \
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < (n); i += (int64_t)gridDim.x * blockDim.x)

__global__ void sgd_kernel(float* __restrict__ p, const float* __restrict__ g, int64_t n, float lr, float l2, float l1) {
  FT_GRID_LOOP(i, n) p[i] -= lr * eff_grad(g[i], p[i], l2, l1);
}

__global__ void momentum_kernel(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ v, int64_t n,
                                float lr, float mu, float keep, float l2, float l1, bool nesterov) {
  FT_GRID_LOOP(i, n) {
    float ge = eff_grad(g[i], p[i], l2, l1);
    float vi = mu * v[i] + keep * ge;  // keep = 1 - dampening
    v[i] = vi;
    p[i] -= lr * (nesterov ? ge + mu * vi : vi);
  }
}

__global__ void adagrad_kernel(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ h, int64_t n,
                               float lr, float eps, float l2, float l1) {
  FT_GRID_LOOP(i, n) {
    float ge = eff_grad(g[i], p[i], l2, l1);
    float hi = h[i] + ge * ge;
    h[i] = hi;
    p[i] -= lr * ge / (sqrtf(hi) + eps);
  }
}

// mg (centered, Graves 2013) and b (momentum on the normalised step) are null when unused: the
// same branch for every thread of the launch, so no divergence.
__global__ void rmsprop_kernel(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ s,
                               float* __restrict__ mg, float* __restrict__ b, int64_t n, float lr, float rho,
                               float eps, float mu, float l2, float l1) {
  FT_GRID_LOOP(i, n) {
    float ge = eff_grad(g[i], p[i], l2, l1);
    float si = rho * s[i] + (1.f - rho) * ge * ge;
    s[i] = si;
    float denom = si;
    if (mg != nullptr) {  // centered variant (Graves 2013)
      float mi = rho * mg[i] + (1.f - rho) * ge;
      mg[i] = mi;
      denom = si - mi * mi;
    }
    float step = ge / (sqrtf(denom) + eps);
    if (b != nullptr) {
      step = mu * b[i] + step;
      b[i] = step;
    }
    p[i] -= lr * step;
  }
}

// vmax is null for plain Adam; AMSGrad (Reddi et al. 2018) divides by the running maximum of v
__global__ void adam_kernel(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ m,
                            float* __restrict__ v, float* __restrict__ vmax, int64_t n, float lr, float b1, float b2, float eps, float step_size,
                            float inv_sqrt_bc2, float l2, float l1, float shrink) {
  FT_GRID_LOOP(i, n) {
    float pi = p[i];
    float ge = eff_grad(g[i], pi, l2, l1);
    float mi = b1 * m[i] + (1.f - b1) * ge;
    float vi = b2 * v[i] + (1.f - b2) * ge * ge;
    m[i] = mi;
    v[i] = vi;
    if (vmax != nullptr) {
      vi = vmax[i] > vi ? vmax[i] : vi;
      vmax[i] = vi;
    }
    p[i] = pi * shrink - step_size * mi / (sqrtf(vi) * inv_sqrt_bc2 + eps);
  }
}

void sgd_step(float* p, const float* g, int64_t n, float lr, float l2, float l1, cudaStream_t st) {
  if (n == 0) return;
  sgd_kernel<<<grid_for(n), kBlock, 0, st>>>(p, g, n, lr, l2, l1);
  CUDA_CHECK(cudaGetLastError());
}

void momentum_step(float* p, const float* g, float* v, int64_t n, float lr, float mu, float dampening, float l2,
                   float l1, bool nesterov, cudaStream_t st) {
  if (n == 0) return;
  momentum_kernel<<<grid_for(n), kBlock, 0, st>>>(p, g, v, n, lr, mu, 1.f - dampening, l2, l1, nesterov);
  CUDA_CHECK(cudaGetLastError());
}

void adagrad_step(float* p, const float* g, float* h, int64_t n, float lr, float eps, float l2, float l1,
                  cudaStream_t st) {
  if (n == 0) return;
  adagrad_kernel<<<grid_for(n), kBlock, 0, st>>>(p, g, h, n, lr, eps, l2, l1);
  CUDA_CHECK(cudaGetLastError());
}

void rmsprop_step(float* p, const float* g, float* s, float* mg, float* b, int64_t n, float lr, float rho, float eps,
                  float mu, float l2, float l1, cudaStream_t st) {
  if (n == 0) return;
  rmsprop_kernel<<<grid_for(n), kBlock, 0, st>>>(p, g, s, mg, b, n, lr, rho, eps, mu, l2, l1);
  CUDA_CHECK(cudaGetLastError());
}

void adam_step(float* p, const float* g, float* m, float* v, float* vmax, int64_t n, float lr, float b1, float b2, float eps,
               float bc1, float bc2, float l2, float l1, float decoupled_wd, cudaStream_t st) {
  if (n == 0) return;
  // bias corrections folded into two scalars once per step, on the host
  adam_kernel<<<grid_for(n), kBlock, 0, st>>>(p, g, m, v, vmax, n, lr, b1, b2, eps, lr / bc1, 1.f / sqrtf(bc2), l2, l1,
                                              1.f - lr * decoupled_wd);
  CUDA_CHECK(cudaGetLastError());
}

}  // namespace ft::cuda
