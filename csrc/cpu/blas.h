// The one place the C++ kernels touch BLAS: OpenBLAS from the `scipy-openblas32` wheel (32-bit
// ints, every symbol prefixed with `scipy_`, so it never clashes with NumPy's own OpenBLAS).
// Row-major sgemm only; the kernels express every product as C = alpha * op(A) op(B) + beta * C.
#pragma once
#include <cstdint>

#include <cblas.h>  // scipy_openblas32/include/cblas.h, found by CMakeLists.txt

namespace ft::blas {

// C (M x N, ldc) = alpha * op(A) (M x K) * op(B) (K x N) + beta * C, all row-major.
inline void sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                  const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
                  int64_t ldc) {
  if (M == 0 || N == 0) return;
  if (K == 0) {  // BLAS leaves C untouched for K == 0 only when beta == 1: make beta explicit
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) C[i * ldc + j] = beta == 0.f ? 0.f : beta * C[i * ldc + j];
    return;
  }
  scipy_cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                    trans_b ? CblasTrans : CblasNoTrans, static_cast<blasint>(M),
                    static_cast<blasint>(N), static_cast<blasint>(K), alpha, A,
                    static_cast<blasint>(lda), B, static_cast<blasint>(ldb), beta, C,
                    static_cast<blasint>(ldc));
}

// OpenBLAS keeps its own pthread pool; it follows fasttrain's thread setting.
inline void set_num_threads(int n) { scipy_openblas_set_num_threads(n); }

// While our own OpenMP threads each run whole single-threaded GEMMs, OpenBLAS must not start
// its pool from inside them (on 2 cores two pools oversubscribe). This wheel is a pthreads build
// that does not export openblas_set_num_threads_local, so the guard sets the process-wide count
// to 1 around the region and restores it afterwards (a concurrent foreign GEMM from another
// thread would run single-threaded meanwhile: slower, never wrong).
class SingleThreaded {
 public:
  SingleThreaded() : prev_(scipy_openblas_get_num_threads()) { scipy_openblas_set_num_threads(1); }
  ~SingleThreaded() { scipy_openblas_set_num_threads(prev_); }
  SingleThreaded(const SingleThreaded&) = delete;
  SingleThreaded& operator=(const SingleThreaded&) = delete;

 private:
  int prev_;
};

}  // namespace ft::blas
