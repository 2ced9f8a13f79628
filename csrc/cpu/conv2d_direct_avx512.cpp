// The direct-convolution micro-kernels for AVX-512 (F + FMA): one zmm holds a 16-channel block.
// Built with AVX-512 flags (CMakeLists.txt) and run only when the CPU reports avx512f at run time.
#include "conv2d_direct.h"

#if defined(__AVX512F__) && defined(__FMA__)
#include <immintrin.h>

#include "conv2d_direct_kernels.h"

namespace ft::cpu::direct {
namespace {

struct V512 {
  using T = __m512;
  static constexpr int kWgradC = 16;  // 16 accumulators + the dy vector: half the zmm file
  // the stem's weight gradient: one accumulator and one input pointer per tap (the pointers, not
  // the zmm, run out first: 9 of the 16 general registers)
  // two output blocks x 8 input channels: 16 accumulators, 2 dy vectors, and 10 loads per
  // 16 FMAs instead of 17 (one block x 16 channels). Four blocks x 4 channels (8 loads per 16
  // FMAs) measured 5-35% slower on the 64-channel layers: twice the dy each sweep streams.
  static constexpr int kWgradKV = 2, kWgradC2 = 8;
  static constexpr int kStemTaps = 9;
  static T zero() { return _mm512_setzero_ps(); }
  static T load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, T v) { _mm512_storeu_ps(p, v); }
  static T fma(T acc, T w, const float* s) { return _mm512_fmadd_ps(w, _mm512_set1_ps(*s), acc); }
  static T relu(T v) { return _mm512_max_ps(v, _mm512_setzero_ps()); }
  static T add(T a, T b) { return _mm512_add_ps(a, b); }
  static T madd(T acc, T a, T b) { return _mm512_fmadd_ps(a, b, acc); }
  static T sub(T a, T b) { return _mm512_sub_ps(a, b); }
  static T positive(T c, T d) { return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(c, _mm512_setzero_ps(), _CMP_GT_OQ), d); }
};

// r[i] := column i of the 16 x 16 matrix whose rows were r[0..15]: unpack pairs of rows (32-bit),
// then pairs of pairs (64-bit), then the 128-bit lanes twice.
inline void transpose16(__m512 r[16]) {
  __m512 t[16], u[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int j = 0; j < 4; ++j) {  // u[4j + e], lane L: element 4L + e of rows 4j .. 4j + 3
    u[4 * j + 0] = _mm512_shuffle_ps(t[4 * j], t[4 * j + 2], _MM_SHUFFLE(1, 0, 1, 0));
    u[4 * j + 1] = _mm512_shuffle_ps(t[4 * j], t[4 * j + 2], _MM_SHUFFLE(3, 2, 3, 2));
    u[4 * j + 2] = _mm512_shuffle_ps(t[4 * j + 1], t[4 * j + 3], _MM_SHUFFLE(1, 0, 1, 0));
    u[4 * j + 3] = _mm512_shuffle_ps(t[4 * j + 1], t[4 * j + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int e = 0; e < 4; ++e) {
    const __m512 x0 = _mm512_shuffle_f32x4(u[e], u[4 + e], 0x88), x1 = _mm512_shuffle_f32x4(u[e], u[4 + e], 0xdd);
    const __m512 y0 = _mm512_shuffle_f32x4(u[8 + e], u[12 + e], 0x88), y1 = _mm512_shuffle_f32x4(u[8 + e], u[12 + e], 0xdd);
    r[e] = _mm512_shuffle_f32x4(x0, y0, 0x88);
    r[e + 4] = _mm512_shuffle_f32x4(x1, y1, 0x88);
    r[e + 8] = _mm512_shuffle_f32x4(x0, y0, 0xdd);
    r[e + 12] = _mm512_shuffle_f32x4(x1, y1, 0xdd);
  }
}

// Reading 16 channel rows a cache line at a time: the plain loop's 16 scalar streams, 4 KiB apart
// on 32 x 32 images, fought over the same L1 sets.
void pack_row512(const float* in, int64_t plane, int nc, int64_t W, float* out) {
  for (int64_t w0 = 0; w0 < W; w0 += 16) {
    const int n = static_cast<int>(W - w0 < 16 ? W - w0 : 16);
    const __mmask16 m = static_cast<__mmask16>((1u << n) - 1);
    __m512 r[16];
    for (int c = 0; c < 16; ++c)
      r[c] = c < nc ? _mm512_maskz_loadu_ps(m, in + c * plane + w0) : _mm512_setzero_ps();
    transpose16(r);
    for (int w = 0; w < n; ++w) _mm512_storeu_ps(out + (w0 + w) * kBlock, r[w]);
  }
}

void unpack_row512(const float* in, int nc, int64_t W, float* out, int64_t plane) {
  for (int64_t w0 = 0; w0 < W; w0 += 16) {
    const int n = static_cast<int>(W - w0 < 16 ? W - w0 : 16);
    const __mmask16 m = static_cast<__mmask16>((1u << n) - 1);
    __m512 r[16];
    for (int w = 0; w < 16; ++w) r[w] = w < n ? _mm512_loadu_ps(in + (w0 + w) * kBlock) : _mm512_setzero_ps();
    transpose16(r);
    for (int c = 0; c < nc; ++c) _mm512_mask_storeu_ps(out + c * plane + w0, m, r[c]);
  }
}

// 32 zmm: up to 24 accumulators (16 pixels x 1 block or 12 pixels x 2 blocks) + weights + broadcast; at 28 GCC spills.
const Isa kIsa{"avx512", 2, {0, 16, 12}, &pick_conv<V512, 16, 12, kBlock>,
               &pick_conv<V512, 16, 12, 1>, &wgrad_tile<V512>, &wgrad_stem<V512>, V512::kStemTaps,
               V512::kWgradKV,
               &pack_row512, &unpack_row512, &pick_conv<V512, 16, 12, kBlock, true>,
               &pw_rows<V512, 6, 4>, &pw_dots<V512, 4, 6>};

}  // namespace

const Isa* isa_avx512() { return &kIsa; }

}  // namespace ft::cpu::direct

#else

namespace ft::cpu::direct {
const Isa* isa_avx512() { return nullptr; }
}  // namespace ft::cpu::direct

#endif
