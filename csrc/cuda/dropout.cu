// Dropout on the GPU with Philox-4x32-10 from the shared header: one thread per 4-element block,
// the same (seed, step, layer, index) -> bits mapping as the NumPy reference, so masks match it
// bit for bit and backward regenerates them instead of reading a stored mask (docs/KERNELS.md).
#include "fasttrain/cuda.h"
#include "fasttrain/philox.h"

namespace ft::cuda {

// mode 0: y = x * keep * scale; mode 1: mask (uint8) = keep
template <int Mode>
__global__ void dropout_kernel(const float* __restrict__ x, void* __restrict__ out, int64_t n, uint32_t threshold,
                               float scale, uint32_t k0, uint32_t k1, uint32_t step, uint32_t layer) {
  int64_t nblocks = (n + 3) / 4;
  for (int64_t b = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; b < nblocks; b += (int64_t)gridDim.x * blockDim.x) {
    philox::Words w = philox::dropout_block((uint64_t)b, step, layer, k0, k1);
    uint32_t words[4] = {w.w0, w.w1, w.w2, w.w3};
#pragma unroll
    for (int lane = 0; lane < 4; ++lane) {
      int64_t i = b * 4 + lane;
      if (i >= n) break;
      bool keep = words[lane] >= threshold;
      if constexpr (Mode == 0) static_cast<float*>(out)[i] = keep ? x[i] * scale : 0.f;
      else static_cast<uint8_t*>(out)[i] = keep ? 1 : 0;
    }
  }
}

static void launch(int mode, const float* x, void* out, int64_t n, double p, uint64_t seed, uint32_t step,
                   uint32_t layer, cudaStream_t st) {
  if (n == 0) return;
  int64_t nblocks = (n + 3) / 4;
  uint32_t t = philox::dropout_threshold(p);
  float scale = (float)(1.0 / (1.0 - p));
  uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
  if (mode == 0)
    dropout_kernel<0><<<grid_for(nblocks), kBlock, 0, st>>>(x, out, n, t, scale, k0, k1, step, layer);
  else
    dropout_kernel<1><<<grid_for(nblocks), kBlock, 0, st>>>(x, out, n, t, scale, k0, k1, step, layer);
  CUDA_CHECK(cudaGetLastError());
}

void dropout_apply(const float* x, float* y, int64_t n, double p, uint64_t seed, uint32_t step, uint32_t layer,
                   cudaStream_t st) {
  launch(0, x, y, n, p, seed, step, layer, st);
}

void dropout_mask(uint8_t* mask, int64_t n, double p, uint64_t seed, uint32_t step, uint32_t layer, cudaStream_t st) {
  launch(1, nullptr, mask, n, p, seed, step, layer, st);
}

}  // namespace ft::cuda
