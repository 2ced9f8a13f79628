// Dropout with Philox-4x32-10 masks (docs/KERNELS.md): element i of a tensor belongs to block
// i / 4, lane i % 4; one Philox call per block gives the 4 words, and an element is kept iff its
// word >= threshold. Bits equal the NumPy reference's exactly.
//
// Vectorization: the work is split into chunks of whole blocks; threads take chunks, and inside a
// chunk a branch-free `omp simd` loop runs Philox for 8 blocks per AVX2 pass (vpmuludq gives the
// 32x32->64 products). Written as `parallel for simd` over all blocks, GCC 12 judged the outlined
// loop unprofitable and ran Philox scalar (5x slower), hence the helper with restrict pointers.
// The partial last block (n % 4 elements) is done on its own.
#include <algorithm>
#include <cstring>

#include "dropout.h"
#include "fasttrain/cpu.h"
#include "fasttrain/philox.h"

namespace ft::cpu {

namespace {

using ft::philox::Words;

constexpr int64_t kChunkBlocks = 2048;  // 8192 elements (32 KiB of float32) per task

struct Key {
  uint32_t k0, k1, step, layer, t;
};

Key make_key(double p, uint64_t seed, uint32_t step, uint32_t layer) {
  return Key{static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32), step, layer,
             ft::philox::dropout_threshold(p)};
}

inline Words block_words(int64_t b, const Key& k) {
  return ft::philox::dropout_block(static_cast<uint64_t>(b), k.step, k.layer, k.k0, k.k1);
}

// keep ? v : +0.f as a bit mask. A float select conditioned on a uint32 compare is not
// if-converted by GCC 12 ("control flow in loop"); the AND with an all-ones/all-zeros mask is
// branch-free and vectorizes. Dropped NaNs become 0, as in the reference's where(keep, x, 0).
inline float keep_or_zero(float v, uint32_t word, uint32_t t) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  bits &= 0u - static_cast<uint32_t>(word >= t);
  float r;
  std::memcpy(&r, &bits, sizeof r);
  return r;
}

// Philox is multiply-bound: AVX-512 has 8 lanes of 32x32->64 multiplies (vpmuludq zmm) against
// AVX2's 4, so where the CPU has it a second clone is picked at load time (GCC function
// multiversioning); the bits are the same in both clones.
#if defined(__x86_64__) && defined(__GNUC__)
#define FT_PHILOX_CLONES __attribute__((target_clones("arch=x86-64-v4", "default")))
#else
#define FT_PHILOX_CLONES
#endif

// y[4b..4b+3] = keep ? x * scale : 0 for blocks [b0, b1)
FT_PHILOX_CLONES void scale_blocks(const float* __restrict x, float* __restrict y, int64_t b0, int64_t b1,
                  float scale, uint32_t k0, uint32_t k1, uint32_t step, uint32_t layer,
                  uint32_t t) {
#pragma omp simd
  for (int64_t b = b0; b < b1; ++b) {
    const Words w = ft::philox::dropout_block(static_cast<uint64_t>(b), step, layer, k0, k1);
    const float* xb = x + 4 * b;
    float* yb = y + 4 * b;
    yb[0] = keep_or_zero(xb[0] * scale, w.w0, t);
    yb[1] = keep_or_zero(xb[1] * scale, w.w1, t);
    yb[2] = keep_or_zero(xb[2] * scale, w.w2, t);
    yb[3] = keep_or_zero(xb[3] * scale, w.w3, t);
  }
}

// mask[4b..4b+3] = keep for blocks [b0, b1)
FT_PHILOX_CLONES void mask_blocks(uint8_t* __restrict mask, int64_t b0, int64_t b1, uint32_t k0, uint32_t k1,
                 uint32_t step, uint32_t layer, uint32_t t) {
#pragma omp simd
  for (int64_t b = b0; b < b1; ++b) {
    const Words w = ft::philox::dropout_block(static_cast<uint64_t>(b), step, layer, k0, k1);
    uint8_t* mb = mask + 4 * b;
    mb[0] = w.w0 >= t ? 1 : 0;
    mb[1] = w.w1 >= t ? 1 : 0;
    mb[2] = w.w2 >= t ? 1 : 0;
    mb[3] = w.w3 >= t ? 1 : 0;
  }
}

// Runs body(b0, b1) over the whole blocks in parallel chunks, then tail(words) for the partial
// last block, if any.
template <class Body, class Tail>
void over_blocks(int64_t n, const Key& k, Body body, Tail tail) {
  const int64_t full = n / 4;
  const int64_t chunks = (full + kChunkBlocks - 1) / kChunkBlocks;
#pragma omp parallel for num_threads(num_threads()) schedule(static)
  for (int64_t c = 0; c < chunks; ++c)
    body(c * kChunkBlocks, std::min(full, (c + 1) * kChunkBlocks));
  if (full * 4 < n) {
    const Words w = block_words(full, k);
    const uint32_t ws[4] = {w.w0, w.w1, w.w2, w.w3};
    for (int64_t i = full * 4; i < n; ++i) tail(i, ws[i - full * 4]);
  }
}

}  // namespace

void philox4x32(const uint32_t* counter, const uint32_t* key, uint32_t* out, int64_t n) {
  const uint32_t k0 = key[0], k1 = key[1];
#pragma omp parallel for simd num_threads(num_threads()) schedule(static)
  for (int64_t r = 0; r < n; ++r) {
    const uint32_t* c = counter + 4 * r;
    const Words w = ft::philox::philox4x32_10(c[0], c[1], c[2], c[3], k0, k1);
    uint32_t* o = out + 4 * r;
    o[0] = w.w0;
    o[1] = w.w1;
    o[2] = w.w2;
    o[3] = w.w3;
  }
}

void dropout_mask(uint8_t* mask, int64_t n, double p, uint64_t seed, uint32_t step,
                  uint32_t layer) {
  const Key k = make_key(p, seed, step, layer);
  over_blocks(
      n, k, [&](int64_t b0, int64_t b1) { mask_blocks(mask, b0, b1, k.k0, k.k1, k.step, k.layer, k.t); },
      [&](int64_t i, uint32_t word) { mask[i] = word >= k.t ? 1 : 0; });
}

void dropout_fwd(const float* x, float* y, int64_t n, double p, uint64_t seed, uint32_t step,
                 uint32_t layer) {
  if (p == 0.0) {  // the contract: p == 0 copies (no generator work at all)
    if (x != y && n > 0) std::memcpy(y, x, static_cast<size_t>(n) * sizeof(float));
    return;
  }
  const Key k = make_key(p, seed, step, layer);
  const float scale = static_cast<float>(1.0 / (1.0 - p));  // rounded once, like the reference
  const bool avx512 = conv2d_isa() == "avx512";  // the run-time choice the conv engine uses, forced alike
  over_blocks(
      n, k,
      [&](int64_t b0, int64_t b1) {
        if (avx512) b0 += dropout::scale_blocks_avx512(x, y, b0, b1, scale, k.k0, k.k1, k.step, k.layer, k.t);
        scale_blocks(x, y, b0, b1, scale, k.k0, k.k1, k.step, k.layer, k.t);
      },
      [&](int64_t i, uint32_t word) { y[i] = keep_or_zero(x[i] * scale, word, k.t); });
}

void dropout_bwd(const float* dy, float* dx, int64_t n, double p, uint64_t seed, uint32_t step,
                 uint32_t layer) {
  dropout_fwd(dy, dx, n, p, seed, step, layer);  // the same regenerated mask and scale
}

}  // namespace ft::cpu
