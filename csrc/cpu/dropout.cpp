// Dropout with Philox-4x32-10 masks (docs/KERNELS.md): element i of a tensor belongs to block
// i / 4, lane i % 4; one Philox call per block gives the 4 words, and an element is kept iff its
// word >= threshold. The loops run over whole blocks, branch-free (selects, not ifs), so the
// compiler vectorizes Philox across blocks (8 blocks per AVX2 pass); the partial last block is
// done on its own. Bits equal the NumPy reference's exactly.
#include <cstring>

#include "fasttrain/cpu.h"
#include "fasttrain/philox.h"

namespace ft::cpu {

namespace {

using ft::philox::Words;

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

// y = keep ? x * scale : 0 (the reference's where(keep, x, 0) * scale, same float32 rounding)
void scale_kept(const float* __restrict x, float* __restrict y, int64_t n, float scale,
                const Key k) {
  const int64_t full = n / 4;
#pragma omp parallel for simd num_threads(num_threads()) schedule(static)
  for (int64_t b = 0; b < full; ++b) {
    const Words w = block_words(b, k);
    const float* xb = x + 4 * b;
    float* yb = y + 4 * b;
    yb[0] = w.w0 >= k.t ? xb[0] * scale : 0.f;
    yb[1] = w.w1 >= k.t ? xb[1] * scale : 0.f;
    yb[2] = w.w2 >= k.t ? xb[2] * scale : 0.f;
    yb[3] = w.w3 >= k.t ? xb[3] * scale : 0.f;
  }
  if (full * 4 < n) {
    const Words w = block_words(full, k);
    const uint32_t ws[4] = {w.w0, w.w1, w.w2, w.w3};
    for (int64_t i = full * 4; i < n; ++i) y[i] = ws[i - full * 4] >= k.t ? x[i] * scale : 0.f;
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

void dropout_mask(uint8_t* __restrict mask, int64_t n, double p, uint64_t seed, uint32_t step,
                  uint32_t layer) {
  const Key k = make_key(p, seed, step, layer);
  const int64_t full = n / 4;
#pragma omp parallel for simd num_threads(num_threads()) schedule(static)
  for (int64_t b = 0; b < full; ++b) {
    const Words w = block_words(b, k);
    uint8_t* mb = mask + 4 * b;
    mb[0] = w.w0 >= k.t;
    mb[1] = w.w1 >= k.t;
    mb[2] = w.w2 >= k.t;
    mb[3] = w.w3 >= k.t;
  }
  if (full * 4 < n) {
    const Words w = block_words(full, k);
    const uint32_t ws[4] = {w.w0, w.w1, w.w2, w.w3};
    for (int64_t i = full * 4; i < n; ++i) mask[i] = ws[i - full * 4] >= k.t;
  }
}

void dropout_fwd(const float* x, float* y, int64_t n, double p, uint64_t seed, uint32_t step,
                 uint32_t layer) {
  if (p == 0.0) {  // the contract: p == 0 copies (no generator work at all)
    if (x != y && n > 0) std::memcpy(y, x, static_cast<size_t>(n) * sizeof(float));
    return;
  }
  // the scale rounded to float32 once, as the reference computes it
  scale_kept(x, y, n, static_cast<float>(1.0 / (1.0 - p)), make_key(p, seed, step, layer));
}

void dropout_bwd(const float* dy, float* dx, int64_t n, double p, uint64_t seed, uint32_t step,
                 uint32_t layer) {
  dropout_fwd(dy, dx, n, p, seed, step, layer);  // the same regenerated mask and scale
}

}  // namespace ft::cpu
