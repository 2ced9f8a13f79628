// STREAM "add" (McCalpin): c = a + b over arrays far larger than the caches. The bench divides
// the bytes it moves (two reads, one write) by its time to get this machine's memory bandwidth,
// measured with the same threads and compiler as every other kernel.
#include "fasttrain/cpu.h"

namespace ft::cpu {

void stream_add(const float* __restrict a, const float* __restrict b, float* __restrict c, int64_t n) {
#pragma omp parallel for simd num_threads(num_threads()) schedule(static)
  for (int64_t i = 0; i < n; ++i) c[i] = a[i] + b[i];
}

}  // namespace ft::cpu
