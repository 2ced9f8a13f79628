#include <cuda_runtime.h>
#include <cstdint>

#include "fasttrain/cuda.h"

namespace ft::cuda {

__global__ void relu_fwd_kernel(const float* __restrict__ x, float* __restrict__ y, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x)
    y[i] = x[i] > 0.f ? x[i] : 0.f;
}

void relu_fwd(const float* x, float* y, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  relu_fwd_kernel<<<grid_for(n), kBlock, 0, stream>>>(x, y, n);
  CUDA_CHECK(cudaGetLastError());
}

}  // namespace ft::cuda
