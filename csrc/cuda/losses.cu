// Fused softmax cross-entropy on the GPU: one block per row computes the max, the sum of
// exponentials, the row loss and the gradient; a second tiny kernel sums the row losses.
#include "fasttrain/cuda.h"

namespace ft::cuda {

__device__ float block_reduce(float v, float* smem, bool is_max) {
  for (int off = 16; off > 0; off >>= 1) {
    float o = __shfl_down_sync(0xffffffffu, v, off);
    v = is_max ? fmaxf(v, o) : v + o;
  }
  int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  int nwarps = (blockDim.x + 31) >> 5;
  v = threadIdx.x < nwarps ? smem[threadIdx.x] : (is_max ? -INFINITY : 0.f);
  if (warp == 0)
    for (int off = 16; off > 0; off >>= 1) {
      float o = __shfl_down_sync(0xffffffffu, v, off);
      v = is_max ? fmaxf(v, o) : v + o;
    }
  if (threadIdx.x == 0) smem[0] = v;
  __syncthreads();
  v = smem[0];
  __syncthreads();
  return v;
}

__global__ void softmax_xent_kernel(const float* __restrict__ logits, const int64_t* __restrict__ labels,
                                    float* __restrict__ dlogits, float* __restrict__ row_loss, int64_t c, float inv_n) {
  __shared__ float smem[32];
  const float* row = logits + blockIdx.x * c;
  float* drow = dlogits + blockIdx.x * c;
  float m = -INFINITY;
  for (int64_t j = threadIdx.x; j < c; j += blockDim.x) m = fmaxf(m, row[j]);
  m = block_reduce(m, smem, true);
  float s = 0.f;
  for (int64_t j = threadIdx.x; j < c; j += blockDim.x) s += __expf(row[j] - m);
  s = block_reduce(s, smem, false);
  float inv_s = 1.f / s;
  int64_t label = labels[blockIdx.x];
  for (int64_t j = threadIdx.x; j < c; j += blockDim.x)
    drow[j] = (__expf(row[j] - m) * inv_s - (j == label ? 1.f : 0.f)) * inv_n;
  if (threadIdx.x == 0) row_loss[blockIdx.x] = logf(s) + m - row[label];
}

// With class weights w, label smoothing eps and an ignored label (torch's cross_entropy, formulas in
// fasttrain/kernels/losses.py): row losses unscaled to row_loss (double), dlogits scaled.
__global__ void softmax_xent_weighted_kernel(const float* __restrict__ logits, const int64_t* __restrict__ labels,
                                             const float* __restrict__ w, float eps, int64_t ignore_index,
                                             float scale, float big_w, float* __restrict__ dlogits,
                                             double* __restrict__ row_loss, int64_t c) {
  __shared__ float smem[32];
  const float* row = logits + blockIdx.x * c;
  float* drow = dlogits + blockIdx.x * c;
  const int64_t label = labels[blockIdx.x];
  if (label == ignore_index) {  // the whole block takes this branch
    for (int64_t j = threadIdx.x; j < c; j += blockDim.x) drow[j] = 0.f;
    if (threadIdx.x == 0) row_loss[blockIdx.x] = 0.0;
    return;
  }
  float m = -INFINITY;
  for (int64_t j = threadIdx.x; j < c; j += blockDim.x) m = fmaxf(m, row[j]);
  m = block_reduce(m, smem, true);
  float s = 0.f, wz = 0.f;
  for (int64_t j = threadIdx.x; j < c; j += blockDim.x) {
    s += __expf(row[j] - m);
    wz += w[j] * (row[j] - m);
  }
  s = block_reduce(s, smem, false);
  wz = block_reduce(wz, smem, false);
  const float wy = w[label], eps_c = eps / (float)c;
  const float pa = scale * ((1.f - eps) * wy + eps * big_w / (float)c) / s, pw = scale * eps_c;
  for (int64_t j = threadIdx.x; j < c; j += blockDim.x)
    drow[j] = pa * __expf(row[j] - m) - pw * w[j] - (j == label ? scale * (1.f - eps) * wy : 0.f);
  if (threadIdx.x == 0) {
    const double log_s = log((double)s);
    row_loss[blockIdx.x] = (1.0 - eps) * wy * (log_s - (double)(row[label] - m)) + (double)eps_c * (big_w * log_s - wz);
  }
}

void softmax_xent_weighted(const float* logits, const int64_t* labels, const float* weight, float label_smoothing,
                           int64_t ignore_index, float scale, float big_w, float* dlogits, double* row_loss,
                           int64_t n, int64_t c, cudaStream_t st) {
  if (n == 0) return;
  softmax_xent_weighted_kernel<<<(unsigned)n, 256, 0, st>>>(logits, labels, weight, label_smoothing, ignore_index,
                                                            scale, big_w, dlogits, row_loss, c);
  CUDA_CHECK(cudaGetLastError());
}

void softmax_xent(const float* logits, const int64_t* labels, float* dlogits, float* row_loss, int64_t n, int64_t c,
                  cudaStream_t st) {
  if (n == 0) return;
  softmax_xent_kernel<<<(unsigned)n, 256, 0, st>>>(logits, labels, dlogits, row_loss, c, 1.f / (float)n);
  CUDA_CHECK(cudaGetLastError());
}

}  // namespace ft::cuda
