// Gradient codecs for the distributed ring (fasttrain/dist/codecs.py is the NumPy reference; the
// encoded bytes must equal the reference's bit for bit, tests/test_codecs_cpp.py holds us to it).
//
// Layout of the block codecs: [float32 scale per block][payload]. Error feedback (Seide et al.
// 2014; Karimireddy et al. 2019) is fused into encode: with a residual r, the codec encodes
// v = x + r and leaves r = v - decode(encode(v)), one pass over memory instead of four.
//
// Bit-exactness: the project builds with -ffp-contract=fast, which would fuse v * inv + u and
// v - q * scale into FMAs (one rounding instead of the reference's two). Contraction is switched
// off for this file only.
#pragma GCC optimize("fp-contract=off")

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__F16C__)
#include <immintrin.h>
#endif

#include "fasttrain/cpu.h"
#include "fasttrain/philox.h"

namespace ft::cpu {
namespace {

// Parallelize only when there is enough work to pay for waking the team (~64K values).
constexpr int64_t kParallelMin = 1 << 16;

// ---- fp16: IEEE half, round to nearest even (F16C vcvtps2ph; _Float16 elsewhere) ----
inline uint16_t f32_to_f16(float f) {
#if defined(__F16C__)
  return static_cast<uint16_t>(_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#else
  _Float16 h = static_cast<_Float16>(f);
  uint16_t b;
  std::memcpy(&b, &h, 2);
  return b;
#endif
}

inline float f16_to_f32(uint16_t b) {
#if defined(__F16C__)
  return _cvtsh_ss(b);
#else
  _Float16 h;
  std::memcpy(&h, &b, 2);
  return static_cast<float>(h);
#endif
}

// ---- bf16: top 16 bits rounded to nearest even with integer arithmetic; NaN stays a quiet NaN ----
inline uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  const bool nan = (u & 0x7FFFFFFFu) > 0x7F800000u;
  return static_cast<uint16_t>(nan ? ((u >> 16) | 0x0040u) : rounded);
}

inline float bf16_to_f32(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// The tile: a run of whole blocks covering a multiple of 8 values, so int4 nibbles and sign bits
// of one tile never share a byte with another tile's (tiles are then independent work items).
int64_t tile_blocks(int64_t block) {
  int64_t t = 1;
  while ((t * block) % 8) ++t;
  return t;
}

// Uniforms in [0, 1) for values [a, b) (a a multiple of 4): value i takes lane i % 4 of the
// Philox block i / 4 with counter (i/4 lo, i/4 hi, 0, kCodecStream), key (seed lo, seed hi);
// u = (word >> 8) * 2^-24, exactly representable in float32.
constexpr uint32_t kCodecStream = 0xC0DEC;

void uniforms(float* u, int64_t a, int64_t b, uint32_t k0, uint32_t k1) {
  const int64_t g0 = a / 4, g1 = (b + 3) / 4;
#pragma omp simd
  for (int64_t g = g0; g < g1; ++g) {
    const ft::philox::Words w = ft::philox::philox4x32_10(
        static_cast<uint32_t>(g), static_cast<uint32_t>(static_cast<uint64_t>(g) >> 32), 0u,
        kCodecStream, k0, k1);
    float* o = u + 4 * (g - g0);
    o[0] = static_cast<float>(w.w0 >> 8) * 0x1p-24f;
    o[1] = static_cast<float>(w.w1 >> 8) * 0x1p-24f;
    o[2] = static_cast<float>(w.w2 >> 8) * 0x1p-24f;
    o[3] = static_cast<float>(w.w3 >> 8) * 0x1p-24f;
  }
}

}  // namespace

void codec_half_encode(const float* x, float* residual, uint16_t* out, int64_t n, bool bf16) {
#pragma omp parallel for schedule(static) num_threads(num_threads()) if (n >= kParallelMin)
  for (int64_t c = 0; c < n; c += 4096) {
    const int64_t e = std::min(n, c + 4096);
    if (bf16) {
      if (residual) {
#pragma omp simd
        for (int64_t i = c; i < e; ++i) {
          const float v = x[i] + residual[i];
          const uint16_t h = f32_to_bf16(v);
          out[i] = h;
          residual[i] = v - bf16_to_f32(h);
        }
      } else {
#pragma omp simd
        for (int64_t i = c; i < e; ++i) out[i] = f32_to_bf16(x[i]);
      }
      continue;
    }
    int64_t i = c;
#if defined(__F16C__)
    for (; i + 8 <= e; i += 8) {
      __m256 v = _mm256_loadu_ps(x + i);
      if (residual) v = _mm256_add_ps(v, _mm256_loadu_ps(residual + i));
      const __m128i h = _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i), h);
      if (residual) _mm256_storeu_ps(residual + i, _mm256_sub_ps(v, _mm256_cvtph_ps(h)));
    }
#endif
    for (; i < e; ++i) {
      const float v = residual ? x[i] + residual[i] : x[i];
      out[i] = f32_to_f16(v);
      if (residual) residual[i] = v - f16_to_f32(out[i]);
    }
  }
}

void codec_half_decode(const uint16_t* in, float* out, int64_t n, bool bf16) {
#pragma omp parallel for schedule(static) num_threads(num_threads()) if (n >= kParallelMin)
  for (int64_t c = 0; c < n; c += 4096) {
    const int64_t e = std::min(n, c + 4096);
    if (bf16) {
#pragma omp simd
      for (int64_t i = c; i < e; ++i) out[i] = bf16_to_f32(in[i]);
      continue;
    }
    int64_t i = c;
#if defined(__F16C__)
    for (; i + 8 <= e; i += 8)
      _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(in + i))));
#endif
    for (; i < e; ++i) out[i] = f16_to_f32(in[i]);
  }
}

// QSGD-style int8 / int4 (Alistarh et al. 2017): scale = max|v| / levels per block,
// q = clip(floor(v * (1 / scale) + u), -levels, levels), u ~ U[0, 1) from Philox.
void codec_int_encode(const float* x, float* residual, uint8_t* out, int64_t n, int64_t block,
                      int bits, uint64_t seed) {
  const int levels = bits == 8 ? 127 : 7;
  const float flev = static_cast<float>(levels);
  const int64_t nb = (n + block - 1) / block;
  float* scales = reinterpret_cast<float*>(out);  // callers pass 4-byte aligned buffers
  uint8_t* payload = out + 4 * nb;
  const int64_t tb = tile_blocks(block), tile = tb * block;
  const int64_t ntiles = (nb + tb - 1) / tb;
  const uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
#pragma omp parallel num_threads(num_threads()) if (n >= kParallelMin)
  {
    std::vector<float> u(tile + 4), v(tile);
    std::vector<int8_t> q(tile);
#pragma omp for schedule(static)
    for (int64_t t = 0; t < ntiles; ++t) {
      const int64_t a = t * tile, b = std::min(n, a + tile);
      uniforms(u.data(), a, b, k0, k1);
      for (int64_t i = a; i < b; ++i) v[i - a] = residual ? x[i] + residual[i] : x[i];
      for (int64_t blk = a / block; blk * block < b; ++blk) {
        const int64_t s = blk * block - a, e = std::min(b, (blk + 1) * block) - a;
        float m = 0.f;
#pragma omp simd reduction(max : m)
        for (int64_t i = s; i < e; ++i) m = std::max(m, std::fabs(v[i]));
        const float scale = m / flev;
        const float inv = scale > 0.f ? 1.f / scale : 0.f;
        scales[blk] = scale;
#pragma omp simd
        for (int64_t i = s; i < e; ++i) {
          float y = v[i] * inv;
          y = std::floor(y + u[i]);
          y = std::min(std::max(y, -flev), flev);
          q[i] = static_cast<int8_t>(y);
        }
        if (residual) {
#pragma omp simd
          for (int64_t i = s; i < e; ++i) residual[a + i] = v[i] - static_cast<float>(q[i]) * scale;
        }
      }
      if (bits == 8) {
        std::memcpy(payload + a, q.data(), b - a);
      } else {
        const int64_t m = b - a;
        for (int64_t j = 0; 2 * j < m; ++j) {
          const uint8_t lo = static_cast<uint8_t>(q[2 * j] + 8);
          const uint8_t hi = 2 * j + 1 < m ? static_cast<uint8_t>(q[2 * j + 1] + 8) : uint8_t(8);
          payload[a / 2 + j] = static_cast<uint8_t>(lo | (hi << 4));
        }
      }
    }
  }
}

void codec_int_decode(const uint8_t* in, float* out, int64_t n, int64_t block, int bits) {
  const int64_t nb = (n + block - 1) / block;
  const float* scales = reinterpret_cast<const float*>(in);
  const uint8_t* payload = in + 4 * nb;
#pragma omp parallel for schedule(static) num_threads(num_threads()) if (n >= kParallelMin)
  for (int64_t blk = 0; blk < nb; ++blk) {
    const int64_t s = blk * block, e = std::min(n, s + block);
    const float scale = scales[blk];
    if (bits == 8) {
      const int8_t* q = reinterpret_cast<const int8_t*>(payload);
#pragma omp simd
      for (int64_t i = s; i < e; ++i) out[i] = static_cast<float>(q[i]) * scale;
    } else {
#pragma omp simd
      for (int64_t i = s; i < e; ++i) {
        const int nib = (payload[i >> 1] >> ((i & 1) * 4)) & 0xF;
        out[i] = static_cast<float>(nib - 8) * scale;
      }
    }
  }
}

// 1-bit sign with scale mean|v| per block (signSGD with a scale, Bernstein et al. 2018). The mean's
// sum has a fixed order the reference repeats: 8 lanes (lane = index in block % 8) summed in
// index order, then ((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7)).
void codec_sign_encode(const float* x, float* residual, uint8_t* out, int64_t n, int64_t block) {
  const int64_t nb = (n + block - 1) / block;
  float* scales = reinterpret_cast<float*>(out);
  uint8_t* payload = out + 4 * nb;
  const int64_t tb = tile_blocks(block), tile = tb * block;
  const int64_t ntiles = (nb + tb - 1) / tb;
#pragma omp parallel num_threads(num_threads()) if (n >= kParallelMin)
  {
    std::vector<float> v(tile + 8);
#pragma omp for schedule(static)
    for (int64_t t = 0; t < ntiles; ++t) {
      const int64_t a = t * tile, b = std::min(n, a + tile);
      for (int64_t i = a; i < b; ++i) v[i - a] = residual ? x[i] + residual[i] : x[i];
      for (int64_t blk = a / block; blk * block < b; ++blk) {
        const int64_t s = blk * block - a, e = std::min(b, (blk + 1) * block) - a;
        float l[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
        int64_t i = s;
        for (; i + 8 <= e; i += 8)
          for (int j = 0; j < 8; ++j) l[j] += std::fabs(v[i + j]);
        for (int j = 0; i < e; ++i, ++j) l[j] += std::fabs(v[i]);
        const float l04 = l[0] + l[4], l15 = l[1] + l[5], l26 = l[2] + l[6], l37 = l[3] + l[7];
        const float sum = (l04 + l26) + (l15 + l37);
        const float scale = sum / static_cast<float>(e - s);
        scales[blk] = scale;
        if (residual)
          for (int64_t k = s; k < e; ++k)
            residual[a + k] = v[k] - (v[k] >= 0.f ? scale : -scale);
      }
      const int64_t m = b - a;  // pack big-endian bit order, like np.packbits
      for (int64_t j = 0; 8 * j < m; ++j) {
        uint8_t byte = 0;
        for (int k = 0; k < 8; ++k) {
          const int64_t i = 8 * j + k;
          byte = static_cast<uint8_t>(byte | ((i < m && v[i] >= 0.f) ? (0x80u >> k) : 0u));
        }
        payload[a / 8 + j] = byte;
      }
    }
  }
}

void codec_sign_decode(const uint8_t* in, float* out, int64_t n, int64_t block) {
  const int64_t nb = (n + block - 1) / block;
  const float* scales = reinterpret_cast<const float*>(in);
  const uint8_t* payload = in + 4 * nb;
#pragma omp parallel for schedule(static) num_threads(num_threads()) if (n >= kParallelMin)
  for (int64_t blk = 0; blk < nb; ++blk) {
    const int64_t s = blk * block, e = std::min(n, s + block);
    const float scale = scales[blk];
#pragma omp simd
    for (int64_t i = s; i < e; ++i)
      out[i] = ((payload[i >> 3] >> (7 - (i & 7))) & 1) ? scale : -scale;
  }
}

}  // namespace ft::cpu
