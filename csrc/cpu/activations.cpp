#include "fasttrain/cpu.h"

namespace ft::cpu {

void relu_fwd(const float* x, float* y, int64_t n) {
#pragma omp parallel for simd num_threads(num_threads()) schedule(static)
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] > 0.f ? x[i] : 0.f;
}

void relu_bwd(const float* x, const float* dy, float* dx, int64_t n) {
#pragma omp parallel for simd num_threads(num_threads()) schedule(static)
  for (int64_t i = 0; i < n; ++i) dx[i] = x[i] > 0.f ? dy[i] : 0.f;
}

}  // namespace ft::cpu
