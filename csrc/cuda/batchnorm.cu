// Batch normalization on the GPU, x viewed as (N, C, S): one block per channel reduces the
// statistics in one pass (sums of x - K and its square, K a value of the channel), normalize +
// affine is a second pass; backward is a per-channel reduction then an element-wise pass (docs/KERNELS.md). Fused ReLU: the affine
// pass writes max(0, y) when relu is set; the backward passes read dy masked by the forward's
// output y > 0 when y is given (nullptr: no ReLU).
#include "fasttrain/cuda.h"

namespace ft::cuda {


__device__ __forceinline__ double block_sum_d(double v, double* smem) {
  smem[threadIdx.x] = v;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) smem[threadIdx.x] += smem[threadIdx.x + s];
    __syncthreads();
  }
  double r = smem[0];
  __syncthreads();
  return r;
}

constexpr int kBnBlock = 256;

__global__ void bn_stats_kernel(const float* __restrict__ x, int64_t n, int64_t c, int64_t s, float eps,
                                float* __restrict__ mean, float* __restrict__ invstd) {
  __shared__ double smem[kBnBlock];
  int64_t ch = blockIdx.x, m = n * s;
  // sums of d = x - K, K = the channel's first value (the "shifted data" variance of Chan, Golub &
  // LeVeque 1983): E[d^2] - E[d]^2 cancels only as much as (mean - K)^2 / var, not mean^2 / var
  const double shift = m > 0 ? (double)x[ch * s] : 0.0;
  double acc = 0, acc2 = 0;
  for (int64_t k = threadIdx.x; k < m; k += blockDim.x) {
    double d = (double)x[(k / s) * c * s + ch * s + k % s] - shift;
    acc += d;
    acc2 += d * d;
  }
  acc = block_sum_d(acc, smem);
  acc2 = block_sum_d(acc2, smem);
  if (threadIdx.x == 0) {
    double dmu = acc / m, mu = shift + dmu, var = fmax(acc2 / m - dmu * dmu, 0.0);
    mean[ch] = (float)mu;
    invstd[ch] = (float)(1.0 / sqrt(var + eps));
  }
}

// res (or nullptr): a ResNet block's shortcut, added before the ReLU
__global__ void bn_affine_kernel(const float* __restrict__ x, const float* __restrict__ res, float* __restrict__ y,
                                 int64_t total, int64_t c, int64_t s, const float* __restrict__ scale,
                                 const float* __restrict__ shift, bool relu) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    int64_t ch = (i / s) % c;
    float v = x[i] * scale[ch] + shift[ch];
    if (res != nullptr) v += res[i];
    y[i] = relu && v < 0.f ? 0.f : v;  // NaN kept, like the reference's maximum
  }
}

// dy, or with the fused ReLU dy where the forward's output y > 0
__device__ __forceinline__ float bn_grad_in(const float* __restrict__ dy, const float* __restrict__ y, int64_t i) {
  float d = dy[i];
  return y == nullptr || y[i] > 0.f ? d : 0.f;
}

__global__ void bn_scale_shift_kernel(const float* gamma, const float* beta, const float* mean, const float* invstd,
                                      int64_t c, float* scale, float* shift) {
  int64_t ch = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (ch < c) {
    scale[ch] = gamma[ch] * invstd[ch];
    shift[ch] = beta[ch] - mean[ch] * scale[ch];
  }
}

__global__ void bn_eval_invstd_kernel(const float* rvar, float eps, int64_t c, float* invstd) {
  int64_t ch = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (ch < c) invstd[ch] = rsqrtf(rvar[ch] + eps);
}

__global__ void bn_bwd_reduce_kernel(const float* __restrict__ x, const float* __restrict__ dy,
                                     const float* __restrict__ y, int64_t n, int64_t c,
                                     int64_t s, const float* __restrict__ mean, const float* __restrict__ invstd,
                                     float* __restrict__ sdy_out, float* __restrict__ sdyx_out,
                                     float* __restrict__ dgamma, float* __restrict__ dbeta) {
  __shared__ double smem[kBnBlock];
  int64_t ch = blockIdx.x, m = n * s;
  float mu = mean[ch], inv = invstd[ch];
  double sdy = 0, sdyx = 0;
  for (int64_t k = threadIdx.x; k < m; k += blockDim.x) {
    int64_t idx = (k / s) * c * s + ch * s + k % s;
    float d = bn_grad_in(dy, y, idx);
    sdy += d;
    sdyx += (double)d * (x[idx] - mu) * inv;
  }
  sdy = block_sum_d(sdy, smem);
  sdyx = block_sum_d(sdyx, smem);
  if (threadIdx.x == 0) {
    sdy_out[ch] = (float)sdy;
    sdyx_out[ch] = (float)sdyx;
    dgamma[ch] += (float)sdyx;
    dbeta[ch] += (float)sdy;
  }
}

// dres (or nullptr): receives the masked dy, the fused residual's gradient
__global__ void bn_bwd_dx_kernel(const float* __restrict__ x, const float* __restrict__ dy,
                                 const float* __restrict__ y, float* __restrict__ dx, float* __restrict__ dres,
                                 int64_t total, int64_t c, int64_t s, float m, const float* __restrict__ gamma,
                                 const float* __restrict__ mean, const float* __restrict__ invstd,
                                 const float* __restrict__ sdy, const float* __restrict__ sdyx) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    int64_t ch = (i / s) % c;
    float inv = invstd[ch], xhat = (x[i] - mean[ch]) * inv;
    float g = bn_grad_in(dy, y, i);
    if (dres != nullptr) dres[i] = g;
    dx[i] = gamma[ch] * inv / m * (m * g - sdy[ch] - xhat * sdyx[ch]);
  }
}

// workspace: 2*C floats owned by the caller's stream-ordered allocation (we use cudaMallocAsync)
void batchnorm_fwd_train(const float* x, const float* gamma, const float* beta, float eps, float* y, float* mean,
                         float* invstd, int64_t n, int64_t c, int64_t s, bool relu, const float* residual,
                         cudaStream_t st) {
  if (n * c * s == 0) return;
  bn_stats_kernel<<<(unsigned)c, kBnBlock, 0, st>>>(x, n, c, s, eps, mean, invstd);
  float* ws = nullptr;
  CUDA_CHECK(cudaMallocAsync(&ws, 2 * c * sizeof(float), st));
  bn_scale_shift_kernel<<<(unsigned)((c + 255) / 256), 256, 0, st>>>(gamma, beta, mean, invstd, c, ws, ws + c);
  bn_affine_kernel<<<grid_for(n * c * s), kBlock, 0, st>>>(x, residual, y, n * c * s, c, s, ws, ws + c, relu);
  CUDA_CHECK(cudaFreeAsync(ws, st));
  CUDA_CHECK(cudaGetLastError());
}

void batchnorm_fwd_eval(const float* x, const float* gamma, const float* beta, const float* rmean, const float* rvar,
                        float eps, float* y, int64_t n, int64_t c, int64_t s, bool relu, const float* residual,
                        cudaStream_t st) {
  if (n * c * s == 0) return;
  float* ws = nullptr;
  CUDA_CHECK(cudaMallocAsync(&ws, 3 * c * sizeof(float), st));
  unsigned cb = (unsigned)((c + 255) / 256);
  bn_eval_invstd_kernel<<<cb, 256, 0, st>>>(rvar, eps, c, ws + 2 * c);
  bn_scale_shift_kernel<<<cb, 256, 0, st>>>(gamma, beta, rmean, ws + 2 * c, c, ws, ws + c);
  bn_affine_kernel<<<grid_for(n * c * s), kBlock, 0, st>>>(x, residual, y, n * c * s, c, s, ws, ws + c, relu);
  CUDA_CHECK(cudaFreeAsync(ws, st));
  CUDA_CHECK(cudaGetLastError());
}

void batchnorm_bwd(const float* x, const float* dy, const float* gamma, const float* mean, const float* invstd,
                   float* dx, float* dgamma, float* dbeta, int64_t n, int64_t c, int64_t s, const float* y,
                   float* dres, cudaStream_t st) {
  if (n * c * s == 0) return;
  float* ws = nullptr;
  CUDA_CHECK(cudaMallocAsync(&ws, 2 * c * sizeof(float), st));
  bn_bwd_reduce_kernel<<<(unsigned)c, kBnBlock, 0, st>>>(x, dy, y, n, c, s, mean, invstd, ws, ws + c, dgamma,
                                                         dbeta);
  bn_bwd_dx_kernel<<<grid_for(n * c * s), kBlock, 0, st>>>(x, dy, y, dx, dres, n * c * s, c, s, (float)(n * s), gamma,
                                                           mean, invstd, ws, ws + c);
  CUDA_CHECK(cudaFreeAsync(ws, st));
  CUDA_CHECK(cudaGetLastError());
}

}  // namespace ft::cuda
