// Philox-4x32-10, the counter-based generator of Salmon, Moraes, Dror and Shaw, "Parallel random
// numbers: as easy as 1, 2, 3" (SC'11), as specified by Random123's philox.h. Shared by the CPU
// and CUDA dropout kernels so every backend draws the same bits as the NumPy reference
// (fasttrain/kernels/dropout.py, docs/KERNELS.md). Plain inline functions on scalars: the CPU loop
// that calls them once per 4-element block vectorizes across blocks.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define FT_HOST_DEVICE __host__ __device__
#else
#define FT_HOST_DEVICE
#endif

namespace ft::philox {

// Round multipliers and Weyl key increments (golden ratio, sqrt(3) - 1), Random123 philox.h.
constexpr uint32_t kM0 = 0xD2511F53u;
constexpr uint32_t kM1 = 0xCD9E8D57u;
constexpr uint32_t kW0 = 0x9E3779B9u;
constexpr uint32_t kW1 = 0xBB67AE85u;
constexpr int kRounds = 10;

struct Words {
  uint32_t w0, w1, w2, w3;
};

// 32x32 -> 64-bit product split into halves (one vpmuludq lane on x86, __umulhi on a GPU).
FT_HOST_DEVICE inline void mulhilo(uint32_t a, uint32_t m, uint32_t& hi, uint32_t& lo) {
#if defined(__CUDA_ARCH__)
  hi = __umulhi(a, m);
  lo = a * m;
#else
  const uint64_t prod = static_cast<uint64_t>(a) * m;
  hi = static_cast<uint32_t>(prod >> 32);
  lo = static_cast<uint32_t>(prod);
#endif
}

// Philox-4x32-10 of counter (c0, c1, c2, c3) under key (k0, k1).
FT_HOST_DEVICE inline Words philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3,
                                          uint32_t k0, uint32_t k1) {
  // Fully unrolled: the caller's loop over blocks then has a straight-line body and vectorizes
  // across blocks (a rolled inner loop here makes GCC's cost model give up).
#if defined(__CUDACC__)
#pragma unroll
#elif defined(__clang__)
#pragma clang loop unroll(full)
#elif defined(__GNUC__)
#pragma GCC unroll 10
#endif
  for (int r = 0; r < kRounds; ++r) {
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo(c0, kM0, hi0, lo0);
    mulhilo(c2, kM1, hi1, lo1);
    const uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
    k0 += kW0;  // uint32 arithmetic wraps mod 2^32: the Weyl key schedule
    k1 += kW1;
  }
  return Words{c0, c1, c2, c3};
}

// Dropout threshold t = min(floor(p * 2^32), 2^32 - 1); an element is kept iff its word >= t,
// so P(drop) = t / 2^32 ~ p. Computed in double like the reference.
FT_HOST_DEVICE inline uint32_t dropout_threshold(double p) {
  const double t = p * 4294967296.0;  // p in [0, 1): t in [0, 2^32); floor == truncation
  return t >= 4294967295.0 ? 0xFFFFFFFFu : static_cast<uint32_t>(t);
}

// Counter of the 4-element block b: (b lo, b hi, step, layer); key = (seed lo, seed hi).
FT_HOST_DEVICE inline Words dropout_block(uint64_t b, uint32_t step, uint32_t layer, uint32_t k0,
                                          uint32_t k1) {
  return philox4x32_10(static_cast<uint32_t>(b), static_cast<uint32_t>(b >> 32), step, layer, k0, k1);
}

}  // namespace ft::philox
