// Declarations and helpers of the CUDA kernels. Launches go to the caller's stream (CuPy's
// current stream, passed as an integer handle from Python).
#pragma once
#include <cuda_runtime.h>
#include <cstdint>
#include <sstream>
#include <stdexcept>

#define CUDA_CHECK(expr)                                                                 \
  do {                                                                                   \
    cudaError_t ft_err_ = (expr);                                                        \
    if (ft_err_ != cudaSuccess) {                                                        \
      std::ostringstream ft_os_;                                                         \
      ft_os_ << #expr << " failed: " << cudaGetErrorString(ft_err_);                     \
      throw std::runtime_error(ft_os_.str());                                            \
    }                                                                                    \
  } while (0)

namespace ft::cuda {
constexpr int kBlock = 256;
inline int grid_for(int64_t n) {
  int64_t blocks = (n + kBlock - 1) / kBlock;
  return static_cast<int>(blocks < 65535 * 8 ? blocks : 65535 * 8);
}
void relu_fwd(const float* x, float* y, int64_t n, cudaStream_t stream);
}  // namespace ft::cuda
