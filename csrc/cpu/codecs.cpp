// Gradient codecs for the distributed ring (fasttrain/dist/codecs.py is the NumPy reference; the
// encoded bytes must equal the reference's bit for bit, tests/test_codecs_cpp.py holds us to it).
//
// Layout of the block codecs: [float32 scale per block][payload]. Error feedback (Seide et al.
// 2014; Karimireddy et al. 2019) is fused into encode: with a residual r, the codec encodes
// v = x + r and leaves r = v - decode(encode(v)), one pass over memory instead of four.
//
// Bit-exactness: the project builds with -ffp-contract=fast, which would fuse v * inv + u and
// v - q * scale into FMAs (one rounding instead of the reference's two). Contraction is switched
// off for this file only. And GCC inlines floor as a vector round only without trapping math
// (the precision exception of roundps); no FP exception is ever unmasked here, and the results
// are the same IEEE values either way, so that assumption is switched off too.
#pragma GCC optimize("fp-contract=off", "no-trapping-math")

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#if defined(__F16C__) || defined(__AVX2__)
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

#if defined(__x86_64__) && defined(__GNUC__)
// The loops below are written for the vectorizer; where the CPU has AVX-512 a second clone with
// 16 lanes (and 8 lanes of 32x32->64 multiplies for Philox) is picked at load time. Both clones
// compute the same bits: the operations are the same, only the lane count differs.
#define FT_CODEC_CLONES __attribute__((target_clones("arch=x86-64-v4", "default")))
#else
#define FT_CODEC_CLONES
#endif

// A tile is a run of whole blocks covering a multiple of 8 values (so int4 nibbles and sign bits
// of one tile never share a byte with another tile's: tiles are independent work items) and at
// least kTileValues of them, so per-tile overhead stays small when blocks are short; small
// enough that x, the residual and the scratch buffers stay in L1/L2 between the passes.
constexpr int64_t kTileValues = 2048;
// Values quantized per batch of uniforms (a multiple of the 128-value Philox group).
constexpr int64_t kChunk = 1024;
constexpr int64_t kGroup = 128;

int64_t tile_blocks(int64_t block) {
  int64_t t = 1;
  while ((t * block) % 8) ++t;
  return t * std::max<int64_t>(1, kTileValues / (t * block));
}

// ---- stochastic rounding uniforms (the layout of fasttrain/dist/codecs.py philox_uniforms) ----
// Value 128 g + 64 h + 16 w + l takes half h of word w of Philox block c = 16 g + l, counter
// (c lo, c hi, 0, kCodecStream), key (seed lo, seed hi); u = (2 k + 1) * 2^-17 for that 16-bit k
// (exact in float32). One Philox call feeds 8 values; the layout lets a 16- or 8-lane loop over l
// store whole vectors.
constexpr uint32_t kCodecStream = 0xC0DEC;

inline float centred_uniform(uint32_t k16) {
  return static_cast<float>(static_cast<int32_t>(2 * k16 + 1)) * 0x1p-17f;
}

// u[128 (g - g0) + j] for the groups g in [g0, g1)
FT_CODEC_CLONES void uniform_groups(float* __restrict u, int64_t g0, int64_t g1, uint32_t k0,
                                    uint32_t k1) {
  for (int64_t g = g0; g < g1; ++g) {
    const uint64_t c = static_cast<uint64_t>(g) * 16;  // 16 lanes never cross a 2^32 boundary
    const uint32_t lo = static_cast<uint32_t>(c), hi = static_cast<uint32_t>(c >> 32);
    float* __restrict o = u + kGroup * (g - g0);
#pragma omp simd
    for (uint32_t l = 0; l < 16; ++l) {
      const ft::philox::Words w =
          ft::philox::philox4x32_10(lo + l, hi, 0u, kCodecStream, k0, k1);
      o[l] = centred_uniform(w.w0 & 0xFFFFu);
      o[16 + l] = centred_uniform(w.w1 & 0xFFFFu);
      o[32 + l] = centred_uniform(w.w2 & 0xFFFFu);
      o[48 + l] = centred_uniform(w.w3 & 0xFFFFu);
      o[64 + l] = centred_uniform(w.w0 >> 16);
      o[80 + l] = centred_uniform(w.w1 >> 16);
      o[96 + l] = centred_uniform(w.w2 >> 16);
      o[112 + l] = centred_uniform(w.w3 >> 16);
    }
  }
}

#if defined(__x86_64__) && defined(__GNUC__)
#define FT_CODEC_AVX512 1
// Philox by hand for 16 lanes: the vectorized scalar code above widens every 32-bit lane to 64
// bits for a 64-bit multiply and narrows back (about 9 instructions per 16-lane product, 2.5x
// slower). vpmuludq multiplies the even 32-bit lanes into 64-bit products; the odd lanes get a
// second one after a shift, and a masked move picks the high halves; vpmulld gives the low ones
// (one instruction, measured faster than two more shifts and a masked move).
#define FT_AVX512_FN __attribute__((target("avx512f,avx512dq,avx512bw,avx512vl")))

FT_AVX512_FN inline void mulhilo16(__m512i a, __m512i m, __m512i& hi, __m512i& lo) {
  const __m512i even = _mm512_mul_epu32(a, m);
  const __m512i odd = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), m);
  hi = _mm512_mask_mov_epi32(_mm512_srli_epi64(even, 32), 0xAAAA, odd);
  lo = _mm512_mullo_epi32(a, m);
}

// (2 k + 1) * 2^-17 for k = the low / high 16 bits of each lane
FT_AVX512_FN inline __m512 uniform_lo16(__m512i w) {
  const __m512i k = _mm512_ternarylogic_epi32(_mm512_slli_epi32(w, 1), _mm512_set1_epi32(1),
                                              _mm512_set1_epi32(0x1FFFF), 0xA8);  // (a | b) & c
  return _mm512_mul_ps(_mm512_cvtepi32_ps(k), _mm512_set1_ps(0x1p-17f));
}
FT_AVX512_FN inline __m512 uniform_hi16(__m512i w) {
  const __m512i k = _mm512_or_si512(_mm512_srli_epi32(w, 15), _mm512_set1_epi32(1));
  return _mm512_mul_ps(_mm512_cvtepi32_ps(k), _mm512_set1_ps(0x1p-17f));
}

FT_AVX512_FN void uniform_groups_avx512(float* __restrict u, int64_t g0, int64_t g1, uint32_t k0,
                                        uint32_t k1, const char* pf0, const char* pf1) {
  using namespace ft::philox;
  __m512i key0[kRounds], key1[kRounds];  // the Weyl key schedule, hoisted out of the groups
  for (int r = 0; r < kRounds; ++r) {
    key0[r] = _mm512_set1_epi32(static_cast<int>(k0 + static_cast<uint32_t>(r) * kW0));
    key1[r] = _mm512_set1_epi32(static_cast<int>(k1 + static_cast<uint32_t>(r) * kW1));
  }
  const __m512i m0 = _mm512_set1_epi32(static_cast<int>(kM0));
  const __m512i m1 = _mm512_set1_epi32(static_cast<int>(kM1));
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  for (int64_t g = g0; g < g1; ++g) {
    const uint64_t c = static_cast<uint64_t>(g) * 16;
    __m512i c0 = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(c))), lane);
    __m512i c1 = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(c >> 32)));
    __m512i c2 = _mm512_setzero_si512();
    __m512i c3 = _mm512_set1_epi32(static_cast<int>(kCodecStream));
#pragma GCC unroll 10
    for (int r = 0; r < kRounds; ++r) {
      __m512i hi0, lo0, hi1, lo1;
      mulhilo16(c0, m0, hi0, lo0);
      mulhilo16(c2, m1, hi1, lo1);
      c0 = _mm512_ternarylogic_epi32(hi1, c1, key0[r], 0x96);  // hi1 ^ c1 ^ k0
      c2 = _mm512_ternarylogic_epi32(hi0, c3, key1[r], 0x96);  // hi0 ^ c3 ^ k1
      c1 = lo1;
      c3 = lo0;
    }
    // a group's worth (512 bytes) of each prefetch stream; they are never dereferenced
    for (int k = 0; k < 512; k += 64) {
      _mm_prefetch(pf0 + 512 * (g - g0) + k, _MM_HINT_T0);
      if (pf1) _mm_prefetch(pf1 + 512 * (g - g0) + k, _MM_HINT_T0);
    }
    float* o = u + kGroup * (g - g0);
    _mm512_storeu_ps(o, uniform_lo16(c0));
    _mm512_storeu_ps(o + 16, uniform_lo16(c1));
    _mm512_storeu_ps(o + 32, uniform_lo16(c2));
    _mm512_storeu_ps(o + 48, uniform_lo16(c3));
    _mm512_storeu_ps(o + 64, uniform_hi16(c0));
    _mm512_storeu_ps(o + 80, uniform_hi16(c1));
    _mm512_storeu_ps(o + 96, uniform_hi16(c2));
    _mm512_storeu_ps(o + 112, uniform_hi16(c3));
  }
}

// The hand-written path where the CPU has AVX-512 (F, DQ, BW, VL), unless FASTTRAIN_CODEC_SIMD=
// portable asks for the portable loop (the tests use it to hold that loop to the reference too).
bool philox_avx512() {
  static const bool yes = [] {
    const char* env = std::getenv("FASTTRAIN_CODEC_SIMD");
    if (env && std::strcmp(env, "portable") == 0) return false;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
  }();
  return yes;
}
#endif

// pf0, pf1 (pf1 may be null): memory to prefetch at the rate the uniforms are made, 512 bytes per
// group. Philox does no loads, so without the hint the memory system idles while it runs, and
// the loads that follow wait for DRAM (the hardware prefetcher runs only a little ahead).
void uniforms(float* u, int64_t g0, int64_t g1, uint32_t k0, uint32_t k1, const char* pf0,
              const char* pf1) {
#if defined(FT_CODEC_AVX512)
  if (philox_avx512()) return uniform_groups_avx512(u, g0, g1, k0, k1, pf0, pf1);
#endif
  uniform_groups(u, g0, g1, k0, k1);
}

// max |x + r| (r may be null) over m values
FT_CODEC_CLONES float max_abs(const float* __restrict x, const float* __restrict r, int64_t m) {
  float mx = 0.f;
  if (r) {
#pragma omp simd reduction(max : mx)
    for (int64_t i = 0; i < m; ++i) mx = std::max(mx, std::fabs(x[i] + r[i]));
  } else {
#pragma omp simd reduction(max : mx)
    for (int64_t i = 0; i < m; ++i) mx = std::max(mx, std::fabs(x[i]));
  }
  return mx;
}

// q = clip(floor(v * inv + u), -lev, lev) for v = x (+ r); with r, r = v - q * scale
FT_CODEC_CLONES void quantize(const float* __restrict x, float* __restrict r,
                              const float* __restrict u, int8_t* __restrict q, int64_t m,
                              float inv, float scale, float flev) {
  if (r) {
#pragma omp simd
    for (int64_t i = 0; i < m; ++i) {
      const float v = x[i] + r[i];
      float y = std::floor(v * inv + u[i]);
      y = std::min(std::max(y, -flev), flev);
      q[i] = static_cast<int8_t>(static_cast<int32_t>(y));
      r[i] = v - y * scale;  // y is the integer q exactly: the reference's v - decode
    }
  } else {
#pragma omp simd
    for (int64_t i = 0; i < m; ++i) {
      float y = std::floor(x[i] * inv + u[i]);
      y = std::min(std::max(y, -flev), flev);
      q[i] = static_cast<int8_t>(static_cast<int32_t>(y));
    }
  }
}

// Two int4 values per byte, even index in the low nibble, stored as q + 8 (1..15): for q in
// [-8, 7], (q + 8) mod 16 == (q ^ 8) & 15, so a pair read as one little-endian uint16 packs with
// an XOR and two masks. An odd count pads the last high nibble with 8 (a zero), like the reference.
FT_CODEC_CLONES void pack_nibbles(const int8_t* __restrict q, uint8_t* __restrict dst, int64_t m) {
  const int64_t pairs = m / 2;
#pragma omp simd
  for (int64_t j = 0; j < pairs; ++j) {
    uint16_t p;
    std::memcpy(&p, q + 2 * j, 2);
    const uint32_t t = p ^ 0x0808u;
    dst[j] = static_cast<uint8_t>((t & 0x0Fu) | ((t >> 4) & 0xF0u));
  }
  if (m & 1) dst[pairs] = static_cast<uint8_t>(((q[m - 1] ^ 8) & 0x0F) | 0x80);
}

// out[i] = (nibble i - 8) * scale for values [s, e) of a nibble payload p
FT_CODEC_CLONES void unpack_nibbles(const uint8_t* __restrict p, float* __restrict out, int64_t s,
                                    int64_t e, float scale) {
  int64_t i = s;
  if ((i & 1) && i < e) {  // a block starting on a high nibble
    out[i] = static_cast<float>((p[i >> 1] >> 4) - 8) * scale;
    ++i;
  }
  const int64_t j0 = i / 2, j1 = e / 2;
#pragma omp simd
  for (int64_t j = j0; j < j1; ++j) {
    const int b = p[j];
    out[2 * j] = static_cast<float>((b & 15) - 8) * scale;
    out[2 * j + 1] = static_cast<float>((b >> 4) - 8) * scale;
  }
  if ((e & 1) && 2 * j1 >= i) out[e - 1] = static_cast<float>((p[j1] & 15) - 8) * scale;
}

// ---- sign ----
// np.packbits order: value 8 j + k is bit 7 - k of byte j; a last partial byte is zero-padded.
FT_CODEC_CLONES void sign_bits(const float* __restrict x, const float* __restrict r,
                               uint8_t* __restrict dst, int64_t m) {
  int64_t i = 0;
#if defined(__AVX2__)
  // reversing the 8 lanes puts value 8 j in movemask's bit 7
  const __m256i rev = _mm256_setr_epi32(7, 6, 5, 4, 3, 2, 1, 0);
  const __m256 zero = _mm256_setzero_ps();
  for (; i + 8 <= m; i += 8) {
    __m256 v = _mm256_loadu_ps(x + i);
    if (r) v = _mm256_add_ps(v, _mm256_loadu_ps(r + i));
    const __m256 ge = _mm256_cmp_ps(_mm256_permutevar8x32_ps(v, rev), zero, _CMP_GE_OQ);
    dst[i / 8] = static_cast<uint8_t>(_mm256_movemask_ps(ge));
  }
#endif
  for (; i < m; i += 8) {
    uint8_t byte = 0;
    for (int k = 0; k < 8 && i + k < m; ++k) {
      const float v = r ? x[i + k] + r[i + k] : x[i + k];
      if (v >= 0.f) byte = static_cast<uint8_t>(byte | (0x80u >> k));
    }
    dst[i / 8] = byte;
  }
}

// mean |x + r| over a block, summed in the reference's order: 8 lanes (lane = index % 8) in index
// order, then ((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7)). The 8 lanes are one AVX2 vector.
float sign_scale(const float* __restrict x, const float* __restrict r, int64_t m) {
  float l[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  int64_t i = 0;
#if defined(__AVX2__)
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  __m256 acc = _mm256_setzero_ps();
  if (r) {
    for (; i + 8 <= m; i += 8)
      acc = _mm256_add_ps(acc, _mm256_and_ps(abs_mask, _mm256_add_ps(_mm256_loadu_ps(x + i),
                                                                     _mm256_loadu_ps(r + i))));
  } else {
    for (; i + 8 <= m; i += 8) acc = _mm256_add_ps(acc, _mm256_and_ps(abs_mask, _mm256_loadu_ps(x + i)));
  }
  _mm256_storeu_ps(l, acc);
#else
  for (; i + 8 <= m; i += 8)
    for (int j = 0; j < 8; ++j) l[j] += std::fabs(r ? x[i + j] + r[i + j] : x[i + j]);
#endif
  for (int j = 0; i < m; ++i, ++j) l[j] += std::fabs(r ? x[i] + r[i] : x[i]);
  const float l04 = l[0] + l[4], l15 = l[1] + l[5], l26 = l[2] + l[6], l37 = l[3] + l[7];
  return ((l04 + l26) + (l15 + l37)) / static_cast<float>(m);
}

// r = v - (v >= 0 ? scale : -scale) for v = x + r (the reference's v - decode)
FT_CODEC_CLONES void sign_residual(const float* __restrict x, float* __restrict r, int64_t m,
                                   float scale) {
#pragma omp simd
  for (int64_t i = 0; i < m; ++i) {
    const float v = x[i] + r[i];
    r[i] = v - (v >= 0.f ? scale : -scale);
  }
}

// Sign bits and residual of one block in a single pass, for blocks that start on a byte (block a
// multiple of 8): v = x + r is loaded once for both (bits first: they use r before it changes).
void sign_bits_residual(const float* __restrict x, float* __restrict r, uint8_t* __restrict dst,
                        int64_t m, float scale) {
  int64_t i = 0;
#if defined(__AVX2__)
  const __m256i rev = _mm256_setr_epi32(7, 6, 5, 4, 3, 2, 1, 0);
  const __m256 zero = _mm256_setzero_ps(), pos = _mm256_set1_ps(scale), neg = _mm256_set1_ps(-scale);
  for (; i + 8 <= m; i += 8) {
    const __m256 v = _mm256_add_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(r + i));
    const __m256 ge = _mm256_cmp_ps(v, zero, _CMP_GE_OQ);
    dst[i / 8] = static_cast<uint8_t>(_mm256_movemask_ps(_mm256_permutevar8x32_ps(ge, rev)));
    _mm256_storeu_ps(r + i, _mm256_sub_ps(v, _mm256_blendv_ps(neg, pos, ge)));
  }
#endif
  sign_bits(x + i, r + i, dst + i / 8, m - i);
  sign_residual(x + i, r + i, m - i, scale);
}

// out[i] = bit i ? scale : -scale for values [s, e) of a packbits payload p
void unpack_signs(const uint8_t* __restrict p, float* __restrict out, int64_t s, int64_t e,
                  float scale) {
  int64_t i = s;
  auto one = [&](int64_t k) { out[k] = ((p[k >> 3] >> (7 - (k & 7))) & 1) ? scale : -scale; };
#if defined(__AVX2__)
  for (; (i & 7) && i < e; ++i) one(i);
  // broadcast the byte, test bit 7 - k in lane k
  const __m256i bit = _mm256_setr_epi32(128, 64, 32, 16, 8, 4, 2, 1);
  const __m256 pos = _mm256_set1_ps(scale), neg = _mm256_set1_ps(-scale);
  for (; i + 8 <= e; i += 8) {
    const __m256i b = _mm256_set1_epi32(p[i >> 3]);
    const __m256i clear = _mm256_cmpeq_epi32(_mm256_and_si256(b, bit), _mm256_setzero_si256());
    _mm256_storeu_ps(out + i, _mm256_blendv_ps(pos, neg, _mm256_castsi256_ps(clear)));
  }
#endif
  for (; i < e; ++i) one(i);
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
// q = clip(floor(v * (1 / scale) + u), -levels, levels), u from Philox (uniform_groups).
// Per tile: one pass for the block scales, then batches of kChunk values: uniforms, quantize
// (and the residual), pack. x and r are read twice, the second time from cache.
void codec_int_encode(const float* x, float* residual, uint8_t* out, int64_t n, int64_t block,
                      int bits, uint64_t seed) {
  const float flev = bits == 8 ? 127.f : 7.f;
  const int64_t nb = (n + block - 1) / block;
  float* scales = reinterpret_cast<float*>(out);  // callers pass 4-byte aligned buffers
  uint8_t* payload = out + 4 * nb;
  const int64_t tb = tile_blocks(block), tile = tb * block;
  const int64_t ntiles = (n + tile - 1) / tile;
  const uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
#pragma omp parallel num_threads(num_threads()) if (n >= kParallelMin)
  {
    std::vector<float> u(kChunk + 2 * kGroup), inv(tb);
    std::vector<int8_t> q(bits == 4 ? kChunk : 0);
#pragma omp for schedule(static)
    for (int64_t t = 0; t < ntiles; ++t) {
      const int64_t a = t * tile, b = std::min(n, a + tile), blk0 = a / block;
      for (int64_t blk = blk0; blk * block < b; ++blk) {
        const int64_t s = blk * block, e = std::min(b, s + block);
        const float scale = max_abs(x + s, residual ? residual + s : nullptr, e - s) / flev;
        scales[blk] = scale;
        inv[blk - blk0] = scale > 0.f ? 1.f / scale : 0.f;
      }
      for (int64_t c = a; c < b; c += kChunk) {
        const int64_t ce = std::min(b, c + kChunk), g0 = c / kGroup;
        // prefetch one tile ahead (addresses only: a prefetch past the array end cannot fault)
        const auto ahead = [&](const float* p) {
          return p ? reinterpret_cast<const char*>(reinterpret_cast<uintptr_t>(p + c) + 4 * tile) : nullptr;
        };
        uniforms(u.data(), g0, (ce + kGroup - 1) / kGroup, k0, k1, ahead(x), ahead(residual));
        const float* uc = u.data() + (c - g0 * kGroup);
        for (int64_t blk = c / block; blk * block < ce; ++blk) {
          const int64_t s = std::max(c, blk * block), e = std::min(ce, (blk + 1) * block);
          int8_t* dst = bits == 8 ? reinterpret_cast<int8_t*>(payload) + s : q.data() + (s - c);
          quantize(x + s, residual ? residual + s : nullptr, uc + (s - c), dst, e - s,
                   inv[blk - blk0], scales[blk], flev);
        }
        if (bits == 4) pack_nibbles(q.data(), payload + c / 2, ce - c);
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
      unpack_nibbles(payload, out, s, e, scale);
    }
  }
}

// 1-bit sign with scale mean|v| per block (signSGD with a scale, Bernstein et al. 2018). Per
// tile: the sign bits of the whole tile (they need no scale), then per block the scale and, with
// error feedback, the residual (which overwrites r, so it comes after the bits).
void codec_sign_encode(const float* x, float* residual, uint8_t* out, int64_t n, int64_t block) {
  const int64_t nb = (n + block - 1) / block;
  float* scales = reinterpret_cast<float*>(out);
  uint8_t* payload = out + 4 * nb;
  const int64_t tile = tile_blocks(block) * block;
  const int64_t ntiles = (n + tile - 1) / tile;
#pragma omp parallel for schedule(static) num_threads(num_threads()) if (n >= kParallelMin)
  for (int64_t t = 0; t < ntiles; ++t) {
    const int64_t a = t * tile, b = std::min(n, a + tile);
    if (residual && block % 8 == 0) {
      for (int64_t blk = a / block; blk * block < b; ++blk) {
        const int64_t s = blk * block, e = std::min(b, s + block);
        const float scale = sign_scale(x + s, residual + s, e - s);
        scales[blk] = scale;
        sign_bits_residual(x + s, residual + s, payload + s / 8, e - s, scale);
      }
      continue;
    }
    sign_bits(x + a, residual ? residual + a : nullptr, payload + a / 8, b - a);
    for (int64_t blk = a / block; blk * block < b; ++blk) {
      const int64_t s = blk * block, e = std::min(b, s + block);
      const float scale = sign_scale(x + s, residual ? residual + s : nullptr, e - s);
      scales[blk] = scale;
      if (residual) sign_residual(x + s, residual + s, e - s, scale);
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
    unpack_signs(payload, out, s, e, scales[blk]);
  }
}

}  // namespace ft::cpu
