#include "fasttrain/cpu.h"
#include "blas.h"
#include <omp.h>

namespace ft::cpu {
static int g_threads = 0;  // 0: not set yet, use the OpenMP default at first use

void set_num_threads(int n) {
  g_threads = n;
  blas::set_num_threads(n);  // OpenBLAS's own pool follows the same setting
}
int num_threads() {
  if (g_threads <= 0) g_threads = omp_get_max_threads();
  return g_threads;
}
}  // namespace ft::cpu
