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
//
// stream_sum is the read-only probe (every byte of a and b read, none written: a reduction's traffic;
// two input streams, as a weight gradient reads x and dy; one stream ran within 5 % in the LLC), the limit
// for kernels that read arrays and write only a few floats (a weight gradient): writes travel on the
// caches' write path, so the in-place probes count write bytes that a read-only kernel cannot use
// (1 thread, 7-10 MB, in the last-level cache: read-only 107-120 GB/s, in-place add 180-192 GB/s).
// Eight independent vector sums, so the adds' latency never paces the loads.
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

float stream_sum(const float* a, const float* b, int64_t n) {
  constexpr int64_t kLanes = 64;  // 8 AVX2 vectors (4 AVX-512) of partial sums
  const int64_t blocks = n / kLanes;
  double total = 0.0;
#pragma omp parallel num_threads(num_threads()) reduction(+ : total)
  {
    float acc[kLanes] = {};
#pragma omp for schedule(static)
    for (int64_t i = 0; i < blocks; ++i)
#pragma omp simd
      for (int64_t k = 0; k < kLanes; ++k) acc[k] += a[i * kLanes + k] + b[i * kLanes + k];
    for (int64_t k = 0; k < kLanes; ++k) total += acc[k];
  }
  for (int64_t i = blocks * kLanes; i < n; ++i) total += a[i] + b[i];
  return static_cast<float>(total);
}

}  // namespace ft::cpu
