// Fully connected layer, y = x W^T + b, as single GEMMs (OpenBLAS threads over the whole product).
#include <vector>

#include "blas.h"
#include "fasttrain/cpu.h"

namespace ft::cpu {

// x (N x I), w (O x I), b (O), y (N x O)
void linear_fwd(const float* x, const float* w, const float* b, float* y, int64_t N, int64_t I,
                int64_t O) {
  // Start y at the bias and let the GEMM accumulate onto it (beta = 1): the bias costs no pass.
#pragma omp parallel for num_threads(num_threads()) schedule(static)
  for (int64_t n = 0; n < N; ++n)
    for (int64_t o = 0; o < O; ++o) y[n * O + o] = b[o];
  blas::sgemm(false, true, N, O, I, 1.f, x, I, w, I, 1.f, y, O);
}

// dx (N x I) = dy W;  dw (O x I) += dy^T x;  db (O) += column sums of dy.
void linear_bwd(const float* x, const float* w, const float* dy, float* dx, float* dw, float* db,
                int64_t N, int64_t I, int64_t O) {
  blas::sgemm(false, false, N, I, O, 1.f, dy, O, w, I, 0.f, dx, I);
  blas::sgemm(true, false, O, I, N, 1.f, dy, O, x, I, 1.f, dw, I);
  // Column sums: threads own disjoint column ranges, rows summed in order (in double).
#pragma omp parallel for num_threads(num_threads()) schedule(static)
  for (int64_t o = 0; o < O; ++o) {
    double s = 0.0;
    for (int64_t n = 0; n < N; ++n) s += dy[n * O + o];
    db[o] += static_cast<float>(s);
  }
}

}  // namespace ft::cpu
