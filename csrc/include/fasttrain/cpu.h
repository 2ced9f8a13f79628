// Declarations of the CPU kernels. Kernels trust their inputs: shapes, dtypes and contiguity are
// checked in bindings.cpp (and at the Python API boundary) before a kernel is called.
#pragma once
#include <cstdint>

namespace ft::cpu {

// Thread count handed to every OpenMP region explicitly (Numba resets the shared runtime's
// default, so relying on omp_get_max_threads() would silently change our thread count).
void set_num_threads(int n);
int num_threads();

// activations.cpp
void relu_fwd(const float* x, float* y, int64_t n);
void relu_bwd(const float* x, const float* dy, float* dx, int64_t n);

}  // namespace ft::cpu
