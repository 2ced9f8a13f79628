// STREAM "add" (McCalpin): c = a + b over arrays far larger than the caches. The bench divides
// the bytes it moves (two reads, one write) by its time to get this machine's memory bandwidth,
// measured with the same threads and compiler as every other kernel. c may be a (in place, the
// access pattern of the optimizer updates: no write-allocate read), so c is not restrict.
#include "fasttrain/cpu.h"

namespace ft::cpu {

void stream_add(const float* a, const float* __restrict b, float* c, int64_t n) {
#pragma omp parallel for simd num_threads(num_threads()) schedule(static)
  for (int64_t i = 0; i < n; ++i) c[i] = a[i] + b[i];
}

}  // namespace ft::cpu
