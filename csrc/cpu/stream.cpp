// STREAM "add" (McCalpin): c = a + b over arrays far larger than the caches. The bench divides
// the bytes it moves (two reads, one write) by its time to get this machine's memory bandwidth,
// measured with the same threads and compiler as every other kernel. c may be a (in place, the
// access pattern of the optimizer updates: no write-allocate read), so c is not restrict.
//
// stream_update3 is the third probe: three arrays updated in place from a fourth (4 reads,
// 3 writes, the traffic of an Adam step without its arithmetic). A core reaches more of the
// memory system's bandwidth when it has more streams in flight (more outstanding misses for the
// prefetchers to cover), so a two-stream add alone understates what a seven-stream kernel can get.
//
// stream_scale is STREAM's "scale", b = s * a (1 read, 1 write), the out-of-place probe for kernels
// with one input stream per output (ReLU, pooling, BN's apply): a kernel writing a fresh output
// line pays a read for ownership of it, which the in-place probes never pay, so kernels with
// distinct outputs are held to the best of the out-of-place probes (add, scale) only. Same loop
// shape and compile flags as stream_add, so the two out-of-place figures are comparable.
#include "fasttrain/cpu.h"

namespace ft::cpu {

void stream_add(const float* a, const float* __restrict b, float* c, int64_t n) {
#pragma omp parallel for simd num_threads(num_threads()) schedule(static)
  for (int64_t i = 0; i < n; ++i) c[i] = a[i] + b[i];
}

void stream_scale(const float* __restrict a, float* __restrict b, float s, int64_t n) {
#pragma omp parallel for simd num_threads(num_threads()) schedule(static)
  for (int64_t i = 0; i < n; ++i) b[i] = s * a[i];
}

void stream_update3(const float* __restrict a, float* __restrict b, float* __restrict c,
                    float* __restrict d, int64_t n) {
#pragma omp parallel for simd num_threads(num_threads()) schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const float ai = a[i];
    b[i] += ai;
    c[i] += ai;
    d[i] += ai;
  }
}

}  // namespace ft::cpu
