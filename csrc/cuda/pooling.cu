// Max and average pooling on the GPU, NCHW (docs/KERNELS.md). Every kernel is a grid-stride loop
// with one thread per element of the side that has no write conflicts:
// - forward (max and avg): one thread per output element, scanning its kh*kw window;
// - maxpool backward: dx is zeroed, then one thread per dy element scatters with atomicAdd
//   (overlapping windows, stride < kernel, may pick the same input element);
// - avgpool backward: one thread per input element gathers every window that covers it, so no
//   atomics and a deterministic sum.
// Output sizes come from the binding (ceil mode included). Max pooling's taps lie dh, dw apart;
// the average's divisor follows count_include_pad, or is divisor_override when that is nonzero
// (fasttrain/kernels/pooling.py).
#include "fasttrain/cuda.h"

#include <cfloat>

namespace ft::cuda {

__global__ void maxpool_fwd_kernel(const float* __restrict__ x, float* __restrict__ y, int64_t* __restrict__ argmax,
                                   int64_t total, int64_t H, int64_t W, int64_t P, int64_t Q, int kh, int kw, int sh,
                                   int sw, int ph, int pw, int dh, int dw) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    int64_t q = i % Q, p = (i / Q) % P, nc = i / (P * Q);
    const float* plane = x + nc * H * W;
    int64_t h0 = p * sh - ph, w0 = q * sw - pw;
    float best = -INFINITY;
    int64_t best_idx = -1;
    // row-major window scan with strict >: the first maximum wins, as in the reference; a NaN is
    // always taken (propagated, the last one wins, as in PyTorch); the first real element is taken
    // even if it is -inf so that argmax is always a valid index
    for (int r = 0; r < kh; ++r) {
      int64_t h = h0 + (int64_t)r * dh;
      if (h < 0 || h >= H) continue;
      for (int s = 0; s < kw; ++s) {
        int64_t w = w0 + (int64_t)s * dw;
        if (w < 0 || w >= W) continue;
        float v = plane[h * W + w];
        if (v > best || isnan(v) || best_idx < 0) {
          best = v;
          best_idx = h * W + w;
        }
      }
    }
    y[i] = best;
    argmax[i] = best_idx;
  }
}

__global__ void maxpool_bwd_kernel(const float* __restrict__ dy, const int64_t* __restrict__ argmax,
                                   float* __restrict__ dx, int64_t total, int64_t PQ, int64_t HW) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    int64_t a = argmax[i];
    // argmax comes from maxpool2d_fwd; the bound check only keeps a corrupt index from writing
    // outside dx (the C++ binding validates on the host; here that would cost a device sync)
    if (a >= 0 && a < HW) atomicAdd(dx + (i / PQ) * HW + a, dy[i]);
  }
}

__device__ __forceinline__ float avg_divisor(int64_t h0, int64_t w0, int64_t H, int64_t W, int kh, int kw, int ph,
                                             int pw, bool include_pad, int64_t divisor_override) {
  if (divisor_override != 0) return (float)divisor_override;
  if (include_pad) return (float)((min(h0 + kh, H + ph) - h0) * (min(w0 + kw, W + pw) - w0));
  return (float)((min(h0 + kh, H) - max(h0, (int64_t)0)) * (min(w0 + kw, W) - max(w0, (int64_t)0)));
}

__global__ void avgpool_fwd_kernel(const float* __restrict__ x, float* __restrict__ y, int64_t total, int64_t H,
                                   int64_t W, int64_t P, int64_t Q, int kh, int kw, int sh, int sw, int ph, int pw,
                                   bool include_pad, int64_t divisor_override) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    int64_t q = i % Q, p = (i / Q) % P, nc = i / (P * Q);
    const float* plane = x + nc * H * W;
    int64_t h0 = p * sh - ph, w0 = q * sw - pw;
    float acc = 0.f;
    for (int r = 0; r < kh; ++r) {
      int64_t h = h0 + r;
      if (h < 0 || h >= H) continue;
      for (int s = 0; s < kw; ++s) {
        int64_t w = w0 + s;
        if (w >= 0 && w < W) acc += plane[h * W + w];
      }
    }
    y[i] = acc / avg_divisor(h0, w0, H, W, kh, kw, ph, pw, include_pad, divisor_override);
  }
}

// Output rows p whose window [p*s - pad, p*s - pad + k) covers input row h: lo <= p <= hi.
__device__ __forceinline__ void covering(int64_t h, int k, int s, int pad, int64_t P, int64_t& lo, int64_t& hi) {
  int64_t hp = h + pad;                        // row in the padded input
  lo = hp - k + 1 <= 0 ? 0 : (hp - k + 1 + s - 1) / s;  // ceil((hp - k + 1) / s), clamped at 0
  hi = hp / s;
  if (hi > P - 1) hi = P - 1;
}

__global__ void avgpool_bwd_kernel(const float* __restrict__ dy, float* __restrict__ dx, int64_t total, int64_t H,
                                   int64_t W, int64_t P, int64_t Q, int kh, int kw, int sh, int sw, int ph, int pw,
                                   bool include_pad, int64_t divisor_override) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    int64_t w = i % W, h = (i / W) % H, nc = i / (H * W);
    const float* g = dy + nc * P * Q;
    int64_t p0, p1, q0, q1;
    covering(h, kh, sh, ph, P, p0, p1);
    covering(w, kw, sw, pw, Q, q0, q1);
    float acc = 0.f;
    for (int64_t p = p0; p <= p1; ++p)
      for (int64_t q = q0; q <= q1; ++q)
        acc += g[p * Q + q] / avg_divisor(p * sh - ph, q * sw - pw, H, W, kh, kw, ph, pw, include_pad, divisor_override);
    dx[i] = acc;
  }
}

void maxpool2d_fwd(const float* x, float* y, int64_t* argmax, int64_t nc, int64_t H, int64_t W, int64_t P, int64_t Q,
                   int kh, int kw, int sh, int sw, int ph, int pw, int dh, int dw, cudaStream_t st) {
  int64_t total = nc * P * Q;
  if (total == 0) return;
  maxpool_fwd_kernel<<<grid_for(total), kBlock, 0, st>>>(x, y, argmax, total, H, W, P, Q, kh, kw, sh, sw, ph, pw, dh,
                                                         dw);
  CUDA_CHECK(cudaGetLastError());
}

void maxpool2d_bwd(const float* dy, const int64_t* argmax, float* dx, int64_t nc, int64_t HW, int64_t PQ,
                   cudaStream_t st) {
  if (nc * HW == 0) return;
  CUDA_CHECK(cudaMemsetAsync(dx, 0, sizeof(float) * nc * HW, st));
  int64_t total = nc * PQ;
  if (total == 0) return;
  maxpool_bwd_kernel<<<grid_for(total), kBlock, 0, st>>>(dy, argmax, dx, total, PQ, HW);
  CUDA_CHECK(cudaGetLastError());
}

void avgpool2d_fwd(const float* x, float* y, int64_t nc, int64_t H, int64_t W, int64_t P, int64_t Q, int kh, int kw,
                   int sh, int sw, int ph, int pw, bool include_pad, int64_t divisor_override, cudaStream_t st) {
  int64_t total = nc * P * Q;
  if (total == 0) return;
  avgpool_fwd_kernel<<<grid_for(total), kBlock, 0, st>>>(x, y, total, H, W, P, Q, kh, kw, sh, sw, ph, pw, include_pad, divisor_override);
  CUDA_CHECK(cudaGetLastError());
}

void avgpool2d_bwd(const float* dy, float* dx, int64_t nc, int64_t H, int64_t W, int64_t P, int64_t Q, int kh, int kw,
                   int sh, int sw, int ph, int pw, bool include_pad, int64_t divisor_override, cudaStream_t st) {
  int64_t total = nc * H * W;
  if (total == 0) return;
  avgpool_bwd_kernel<<<grid_for(total), kBlock, 0, st>>>(dy, dx, total, H, W, P, Q, kh, kw, sh, sw, ph, pw,
                                                         include_pad, divisor_override);
  CUDA_CHECK(cudaGetLastError());
}

}  // namespace ft::cuda
