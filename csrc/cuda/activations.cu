// Element-wise activations on the GPU (docs/KERNELS.md): one grid-stride kernel per op.
#include "fasttrain/cuda.h"

namespace ft::cuda {

enum class Act { Relu, Leaky, Elu, Sigmoid, Tanh };

template <Act A>
__global__ void act_fwd_kernel(const float* __restrict__ x, float* __restrict__ y, int64_t n, float alpha) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    float v = x[i];
    if constexpr (A == Act::Relu) y[i] = v <= 0.f ? 0.f : v;  // NaN stays NaN
    if constexpr (A == Act::Leaky) y[i] = v > 0.f ? v : alpha * v;
    if constexpr (A == Act::Elu) y[i] = v > 0.f ? v : alpha * expm1f(v);
    if constexpr (A == Act::Sigmoid) y[i] = v >= 0.f ? 1.f / (1.f + __expf(-v)) : __expf(v) / (1.f + __expf(v));
    if constexpr (A == Act::Tanh) y[i] = tanhf(v);
  }
}

// a: the forward input x for relu/leaky/elu, the forward output y for sigmoid/tanh
template <Act A>
__global__ void act_bwd_kernel(const float* __restrict__ a, const float* __restrict__ dy, float* __restrict__ dx,
                               int64_t n, float alpha) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
    float v = a[i], d = dy[i];
    if constexpr (A == Act::Relu) dx[i] = v > 0.f ? d : 0.f;
    if constexpr (A == Act::Leaky) dx[i] = v > 0.f ? d : alpha * d;
    if constexpr (A == Act::Elu) dx[i] = v > 0.f ? d : d * alpha * __expf(v);
    if constexpr (A == Act::Sigmoid) dx[i] = d * v * (1.f - v);
    if constexpr (A == Act::Tanh) dx[i] = d * (1.f - v * v);
  }
}

template <Act A>
static void launch_fwd(const float* x, float* y, int64_t n, float alpha, cudaStream_t st) {
  if (n == 0) return;
  act_fwd_kernel<A><<<grid_for(n), kBlock, 0, st>>>(x, y, n, alpha);
  CUDA_CHECK(cudaGetLastError());
}

template <Act A>
static void launch_bwd(const float* a, const float* dy, float* dx, int64_t n, float alpha, cudaStream_t st) {
  if (n == 0) return;
  act_bwd_kernel<A><<<grid_for(n), kBlock, 0, st>>>(a, dy, dx, n, alpha);
  CUDA_CHECK(cudaGetLastError());
}

void activation_fwd(const char* op, const float* x, float* y, int64_t n, float alpha, cudaStream_t st) {
  switch (op[0]) {
    case 'r': return launch_fwd<Act::Relu>(x, y, n, alpha, st);
    case 'l': return launch_fwd<Act::Leaky>(x, y, n, alpha, st);
    case 'e': return launch_fwd<Act::Elu>(x, y, n, alpha, st);
    case 's': return launch_fwd<Act::Sigmoid>(x, y, n, alpha, st);
    case 't': return launch_fwd<Act::Tanh>(x, y, n, alpha, st);
  }
  throw std::invalid_argument("activation_fwd: unknown op");
}

void activation_bwd(const char* op, const float* a, const float* dy, float* dx, int64_t n, float alpha,
                    cudaStream_t st) {
  switch (op[0]) {
    case 'r': return launch_bwd<Act::Relu>(a, dy, dx, n, alpha, st);
    case 'l': return launch_bwd<Act::Leaky>(a, dy, dx, n, alpha, st);
    case 'e': return launch_bwd<Act::Elu>(a, dy, dx, n, alpha, st);
    case 's': return launch_bwd<Act::Sigmoid>(a, dy, dx, n, alpha, st);
    case 't': return launch_bwd<Act::Tanh>(a, dy, dx, n, alpha, st);
  }
  throw std::invalid_argument("activation_bwd: unknown op");
}

}  // namespace ft::cuda
