// 2-D max and average pooling over NCHW, one (n, c) plane per task, or one output row for the tap
// form's 2x2 windows (tasks are independent, so results do not depend on the thread count).
// Windows start at p*sh - ph; taps outside the image are skipped by max pooling and count as
// zeros for average pooling. Max pooling's taps lie dh, dw apart (dilation). The average's divisor
// is the window's taps inside the padded input (count_include_pad; fewer than kh*kw only for a
// ceil-mode window hanging over the bottom/right padding) or its taps inside the image.
#include <algorithm>
#include <cstring>
#include <limits>
#include <type_traits>

#include "fasttrain/cpu.h"

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace ft::cpu {
namespace {

// The taps i of a window starting at `start` (tap i at start + i*d) that lie in [0, n): i in [lo, hi).
inline void real_taps(int64_t start, int64_t k, int64_t d, int64_t n, int64_t& lo, int64_t& hi) {
  lo = start >= 0 ? 0 : (-start + d - 1) / d;
  hi = start >= n ? 0 : std::min(k, (n - 1 - start) / d + 1);
  if (hi < lo) hi = lo;
}

// The divisor of the average over the window at (h0, w0), see the file comment.
inline float avg_divisor(int64_t h0, int64_t w0, int64_t H, int64_t W, int64_t kh, int64_t kw,
                         int64_t ph, int64_t pw, bool count_include_pad, int64_t divisor_override) {
  if (divisor_override != 0) return static_cast<float>(divisor_override);
  if (count_include_pad)
    return static_cast<float>((std::min(h0 + kh, H + ph) - h0) * (std::min(w0 + kw, W + pw) - w0));
  return static_cast<float>((std::min(h0 + kh, H) - std::max<int64_t>(h0, 0)) *
                            (std::min(w0 + kw, W) - std::max<int64_t>(w0, 0)));
}

// 2x2 windows, stride 2, no padding: disjoint cells, all inside the image (a ceil-mode window
// hanging over the edge fails 2P <= H or 2Q <= W)
inline bool is_2x2_cells(int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw,
                         int64_t H, int64_t W, int64_t P, int64_t Q) {
  return kh == 2 && kw == 2 && sh == 2 && sw == 2 && ph == 0 && pw == 0 && 2 * P <= H && 2 * Q <= W;
}

// Max pooling names each maximum in one of two forms: T = int64_t, its flat position h*W + w in the
// plane (what return_indices hands a user), or T = uint8_t, its window tap r*kw + s (the tap form:
// an eighth of the bytes, for layers that keep the index only for their backward).
template <class T>
constexpr bool kTapForm = std::is_same_v<T, uint8_t>;

template <class T>
inline T max_index(int64_t h, int64_t w, int64_t W, int64_t r, int64_t s, int64_t kw) {
  if constexpr (kTapForm<T>) return static_cast<T>(r * kw + s);
  else return h * W + w;
}

// Threads for a pass over `floats` values: one below 2^15 (see blocked::threads_for)
inline int threads_for(int64_t floats) { return floats < (int64_t{1} << 15) ? 1 : num_threads(); }

// The 2x2 stride-2 window without padding or dilation (every classic CNN's pooling) in a
// branch-free form the compiler vectorises: the general loop below works out each window's real
// taps and ran at 4 ns an output. Same taps in the same order and the same rule as the general
// loop: the first tap starts the running maximum, a later tap replaces it when larger or NaN.
// One output row: r0, r1 the two input rows, h the row index of r0 (W its width).
template <class T>
void maxpool2x2_row(const float* r0, const float* r1, float* yr, T* ar, int64_t Q, int64_t h, int64_t W) {
  for (int64_t q = 0; q < Q; ++q) {
    const float a = r0[2 * q], b = r0[2 * q + 1], c = r1[2 * q], d = r1[2 * q + 1];
    const int64_t w = 2 * q;
    float best = a;
    T at = max_index<T>(h, w, W, 0, 0, 2);
    const bool take_b = b > best || b != b;
    best = take_b ? b : best;
    at = take_b ? max_index<T>(h, w + 1, W, 0, 1, 2) : at;
    const bool take_c = c > best || c != c;
    best = take_c ? c : best;
    at = take_c ? max_index<T>(h + 1, w, W, 1, 0, 2) : at;
    const bool take_d = d > best || d != d;
    best = take_d ? d : best;
    at = take_d ? max_index<T>(h + 1, w + 1, W, 1, 1, 2) : at;
    yr[q] = best;
    ar[q] = at;
  }
}

#if defined(__AVX2__)
// maxpool2x2_row's tap form, 8 outputs a step with AVX2 (the scalar loop above ran about 6 cycles an
// output, so the forward was bound by instructions, not bytes). Each input row's 16 floats are split
// into even and odd columns by in-lane shuffles, which leave the 8 windows in the order 0 1 4 5 2 3 6 7;
// the maxima and taps are put back in order by one 64-bit-lane permute each. The same rule, in the same
// tap order: a later tap replaces the running maximum when larger or NaN. Returns the outputs done.
int64_t maxpool2x2_taps_row_avx2(const float* r0, const float* r1, float* yr, uint8_t* tr, int64_t Q) {
  const __m256 one = _mm256_castsi256_ps(_mm256_set1_epi32(1)), two = _mm256_castsi256_ps(_mm256_set1_epi32(2)),
               three = _mm256_castsi256_ps(_mm256_set1_epi32(3));
  int64_t q = 0;
  for (; q + 8 <= Q; q += 8) {
    const __m256 u0 = _mm256_loadu_ps(r0 + 2 * q), u1 = _mm256_loadu_ps(r0 + 2 * q + 8);
    const __m256 v0 = _mm256_loadu_ps(r1 + 2 * q), v1 = _mm256_loadu_ps(r1 + 2 * q + 8);
    const __m256 a = _mm256_shuffle_ps(u0, u1, _MM_SHUFFLE(2, 0, 2, 0)), b = _mm256_shuffle_ps(u0, u1, _MM_SHUFFLE(3, 1, 3, 1));
    const __m256 c = _mm256_shuffle_ps(v0, v1, _MM_SHUFFLE(2, 0, 2, 0)), d = _mm256_shuffle_ps(v0, v1, _MM_SHUFFLE(3, 1, 3, 1));
    __m256 best = a, at = _mm256_setzero_ps();
    __m256 take = _mm256_or_ps(_mm256_cmp_ps(b, best, _CMP_GT_OQ), _mm256_cmp_ps(b, b, _CMP_UNORD_Q));
    best = _mm256_blendv_ps(best, b, take);
    at = _mm256_blendv_ps(at, one, take);
    take = _mm256_or_ps(_mm256_cmp_ps(c, best, _CMP_GT_OQ), _mm256_cmp_ps(c, c, _CMP_UNORD_Q));
    best = _mm256_blendv_ps(best, c, take);
    at = _mm256_blendv_ps(at, two, take);
    take = _mm256_or_ps(_mm256_cmp_ps(d, best, _CMP_GT_OQ), _mm256_cmp_ps(d, d, _CMP_UNORD_Q));
    best = _mm256_blendv_ps(best, d, take);
    at = _mm256_blendv_ps(at, three, take);
    constexpr int kOrder = _MM_SHUFFLE(3, 1, 2, 0);
    _mm256_storeu_ps(yr + q, _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(best), kOrder)));
    const __m256i t = _mm256_permute4x64_epi64(_mm256_castps_si256(at), kOrder);
    const __m128i t16 = _mm_packus_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256(t, 1));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(tr + q), _mm_packus_epi16(t16, t16));
  }
  return q;
}
#endif

// The tap form's backward over one output row of 2x2 cells: r0[2q + s] = (taps[q] == s ? dy[q] : 0),
// r1[2q + s] = (taps[q] == 2 + s ? dy[q] : 0); returns the OR of the taps (a bit above the lowest two
// set: a tap no 2x2 window has). dy's bits are masked rather than selected: written as
// `at == 0 ? g : 0.0f`, GCC kept a branch per pixel, mispredicted on random taps (7 ns an output, 9x
// this form).
#if defined(__AVX2__)
// maxpool2x2_taps_bwd_row with AVX2, 8 outputs a step: each tap's dy (dy where the tap is t, else
// +0.0, by masking its bits), interleaved into the two input rows (tap 0 with tap 1 in r0, 2 with 3
// in r1) by unpacks and a 128-bit-lane permute. Returns the outputs done; `seen` gathers the OR of
// the taps, as the scalar row's return does.
int64_t maxpool2x2_taps_bwd_row_avx2(const float* dy, const uint8_t* t, float* r0, float* r1, int64_t Q,
                                     uint32_t& seen) {
  __m256i any = _mm256_setzero_si256();
  int64_t q = 0;
  for (; q + 8 <= Q; q += 8) {
    const __m256i at = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(t + q)));
    any = _mm256_or_si256(any, at);
    const __m256 g = _mm256_loadu_ps(dy + q);
    const auto pick = [&](int tap) {
      return _mm256_and_ps(g, _mm256_castsi256_ps(_mm256_cmpeq_epi32(at, _mm256_set1_epi32(tap))));
    };
    const __m256 v0 = pick(0), v1 = pick(1), v2 = pick(2), v3 = pick(3);
    // unpacks pair windows 0 1 | 4 5 and 2 3 | 6 7 within 128-bit lanes; the permutes restore the order
    const __m256 lo01 = _mm256_unpacklo_ps(v0, v1), hi01 = _mm256_unpackhi_ps(v0, v1);
    const __m256 lo23 = _mm256_unpacklo_ps(v2, v3), hi23 = _mm256_unpackhi_ps(v2, v3);
    _mm256_storeu_ps(r0 + 2 * q, _mm256_permute2f128_ps(lo01, hi01, 0x20));
    _mm256_storeu_ps(r0 + 2 * q + 8, _mm256_permute2f128_ps(lo01, hi01, 0x31));
    _mm256_storeu_ps(r1 + 2 * q, _mm256_permute2f128_ps(lo23, hi23, 0x20));
    _mm256_storeu_ps(r1 + 2 * q + 8, _mm256_permute2f128_ps(lo23, hi23, 0x31));
  }
  alignas(32) uint32_t lanes[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), any);
  for (uint32_t v : lanes) seen |= v;
  return q;
}
#endif

uint8_t maxpool2x2_taps_bwd_row(const float* dy, const uint8_t* t, float* r0, float* r1, int64_t Q) {
  uint32_t seen = 0;
  for (int64_t q = 0; q < Q; ++q) {
    const uint32_t at = t[q];
    uint32_t g;
    std::memcpy(&g, dy + q, sizeof g);
    seen |= at;
    const uint32_t v[4] = {g & (0u - (at == 0)), g & (0u - (at == 1)), g & (0u - (at == 2)), g & (0u - (at == 3))};
    std::memcpy(r0 + 2 * q, v, 2 * sizeof(float));
    std::memcpy(r1 + 2 * q, v + 2, 2 * sizeof(float));
  }
  return static_cast<uint8_t>(seen);
}

// Any window shape: each window works out its real taps. Strict >: the first maximum in row-major
// order wins; a NaN is always taken, so it propagates and the last NaN wins, as in PyTorch; the index
// starts at the first real tap, so a window of -inf still names a real tap.
template <class T>
void maxpool_general(const float* x, float* y, T* idx, int64_t NC, int64_t H, int64_t W, int64_t P, int64_t Q,
                     int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh,
                     int64_t dw) {
#pragma omp parallel for num_threads(threads_for(NC * H * W)) schedule(static)
  for (int64_t pl = 0; pl < NC; ++pl) {
    const float* xp = x + pl * H * W;
    for (int64_t p = 0; p < P; ++p) {
      const int64_t h0 = p * sh - ph;
      int64_t r0, r1;
      real_taps(h0, kh, dh, H, r0, r1);
      for (int64_t q = 0; q < Q; ++q) {
        const int64_t w0 = q * sw - pw;
        int64_t s0, s1;
        real_taps(w0, kw, dw, W, s0, s1);
        float best = -std::numeric_limits<float>::infinity();
        int64_t br = r0, bs = s0;
        for (int64_t r = r0; r < r1; ++r)
          for (int64_t s = s0; s < s1; ++s) {
            const float v = xp[(h0 + r * dh) * W + w0 + s * dw];
            if (v > best || v != v) {
              best = v;
              br = r;
              bs = s;
            }
          }
        y[pl * P * Q + p * Q + q] = best;
        idx[pl * P * Q + p * Q + q] = max_index<T>(h0 + br * dh, w0 + bs * dw, W, br, bs, kw);
      }
    }
  }
}

}  // namespace

void maxpool2d_fwd(const float* x, float* y, int64_t* argmax, int64_t NC, int64_t H, int64_t W,
                   int64_t P, int64_t Q, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
                   int64_t ph, int64_t pw, int64_t dh, int64_t dw) {
  if (dh == 1 && dw == 1 && is_2x2_cells(kh, kw, sh, sw, ph, pw, H, W, P, Q)) {
#pragma omp parallel for num_threads(num_threads()) schedule(static)
    for (int64_t pl = 0; pl < NC; ++pl)
      for (int64_t p = 0; p < P; ++p) {
        const float* r0 = x + pl * H * W + 2 * p * W;
        maxpool2x2_row<int64_t>(r0, r0 + W, y + (pl * P + p) * Q, argmax + (pl * P + p) * Q, Q, 2 * p, W);
      }
    return;
  }
  maxpool_general<int64_t>(x, y, argmax, NC, H, W, P, Q, kh, kw, sh, sw, ph, pw, dh, dw);
}

void maxpool2d_taps_fwd(const float* x, float* y, uint8_t* taps, int64_t NC, int64_t H, int64_t W, int64_t P,
                        int64_t Q, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw,
                        int64_t dh, int64_t dw) {
  if (dh == 1 && dw == 1 && is_2x2_cells(kh, kw, sh, sw, ph, pw, H, W, P, Q)) {
    // one task per output row, so a batch of a few large planes still fills both cores; the AVX2 row
    // unless the kernels are forced to the portable path (set_conv2d_isa, for tests)
    [[maybe_unused]] const bool vector = conv2d_isa() != "portable";
#pragma omp parallel for num_threads(threads_for(NC * H * W)) schedule(static)
    for (int64_t i = 0; i < NC * P; ++i) {
      const float* r0 = x + (i / P) * H * W + 2 * (i % P) * W;
      int64_t q = 0;
#if defined(__AVX2__)
      if (vector) q = maxpool2x2_taps_row_avx2(r0, r0 + W, y + i * Q, taps + i * Q, Q);
#endif
      maxpool2x2_row<uint8_t>(r0 + 2 * q, r0 + W + 2 * q, y + i * Q + q, taps + i * Q + q, Q - q, 0, 0);
    }
    return;
  }
  maxpool_general<uint8_t>(x, y, taps, NC, H, W, P, Q, kh, kw, sh, sw, ph, pw, dh, dw);
}

int64_t maxpool2d_bwd(const float* dy, const int64_t* argmax, float* dx, int64_t NC, int64_t H,
                      int64_t W, int64_t P, int64_t Q) {
  const int64_t HW = H * W, PQ = P * Q;
  // Windows that tile the plane in disjoint 2x2 cells (the 2x2 stride-2 pooling, or any window
  // whose maximum fell in its own cell) write each cell in one pass, without clearing the plane
  // and scattering into it: a plane with a maximum outside its cell is redone the general way.
  const bool cells = 2 * P <= H && 2 * Q <= W;
  int64_t bad = std::numeric_limits<int64_t>::max();   // the first bad position, whatever the thread count
#pragma omp parallel for num_threads(num_threads()) schedule(static) reduction(min : bad)
  for (int64_t pl = 0; pl < NC; ++pl) {
    float* dxp = dx + pl * HW;
    const float* dyp = dy + pl * PQ;
    const int64_t* ap = argmax + pl * PQ;
    bool in_cells = cells;
    for (int64_t p = 0; p < P && in_cells; ++p) {
      float* r0 = dxp + 2 * p * W;
      float* r1 = r0 + W;
      int64_t outside = 0;
      for (int64_t q = 0; q < Q; ++q) {
        const int64_t first = 2 * p * W + 2 * q, at = ap[p * Q + q];
        const float g = dyp[p * Q + q];
        r0[2 * q] = at == first ? g : 0.0f;
        r0[2 * q + 1] = at == first + 1 ? g : 0.0f;
        r1[2 * q] = at == first + W ? g : 0.0f;
        r1[2 * q + 1] = at == first + W + 1 ? g : 0.0f;
        outside += at != first && at != first + 1 && at != first + W && at != first + W + 1;
      }
      if (outside) in_cells = false;
      else
        for (int64_t w = 2 * Q; w < W; ++w) r0[w] = r1[w] = 0.0f;   // the columns no cell covers
    }
    if (in_cells) {   // the rows no cell covers (several when the windows are wider than 2, e.g. 3x3 stride 2)
      std::memset(dxp + 2 * P * W, 0, sizeof(float) * (H - 2 * P) * W);
      continue;
    }
    std::memset(dxp, 0, sizeof(float) * HW);
    for (int64_t i = 0; i < PQ; ++i) {
      const int64_t at = ap[i];
      if (at < 0 || at >= HW) {   // an index outside the plane would write out of bounds
        bad = std::min(bad, pl * PQ + i);
        break;
      }
      dxp[at] += dyp[i];
    }
  }
  return bad == std::numeric_limits<int64_t>::max() ? -1 : bad;
}

int64_t maxpool2d_taps_bwd(const float* dy, const uint8_t* taps, float* dx, int64_t NC, int64_t H, int64_t W,
                           int64_t P, int64_t Q, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph,
                           int64_t pw, int64_t dh, int64_t dw) {
  const int64_t HW = H * W, PQ = P * Q;
  if (dh == 1 && dw == 1 && is_2x2_cells(kh, kw, sh, sw, ph, pw, H, W, P, Q)) {
    // every cell written once, no clearing pass; the pixels no cell covers (a last odd row or
    // column) get zeros. Taps are checked all at once: all four of a 2x2 window are real, so only a
    // byte above 3 is wrong, and then the search for the first one is the rare path.
    uint8_t seen = 0;
    [[maybe_unused]] const bool vector = conv2d_isa() != "portable";   // as the forward
#pragma omp parallel for num_threads(threads_for(NC * HW)) schedule(static) reduction(| : seen)
    for (int64_t i = 0; i < NC * P; ++i) {
      const int64_t pl = i / P, p = i % P;
      float* r0 = dx + pl * HW + 2 * p * W;
      float* r1 = r0 + W;
      int64_t q = 0;
#if defined(__AVX2__)
      if (vector) {
        uint32_t any = 0;
        q = maxpool2x2_taps_bwd_row_avx2(dy + i * Q, taps + i * Q, r0, r1, Q, any);
        seen |= static_cast<uint8_t>(any);   // an OR of bytes
      }
#endif
      seen |= maxpool2x2_taps_bwd_row(dy + i * Q + q, taps + i * Q + q, r0 + 2 * q, r1 + 2 * q, Q - q);
      for (int64_t w = 2 * Q; w < W; ++w) r0[w] = r1[w] = 0.0f;
      if (p == P - 1) std::memset(dx + pl * HW + 2 * P * W, 0, sizeof(float) * (H - 2 * P) * W);
    }
    if (seen & 0xFC)
      for (int64_t i = 0; i < NC * PQ; ++i)
        if (taps[i] > 3) return i;
    return -1;
  }
  // any window shape: clear the plane, then add each dy at its tap's position (windows may overlap)
  int64_t bad = std::numeric_limits<int64_t>::max();
#pragma omp parallel for num_threads(threads_for(NC * HW)) schedule(static) reduction(min : bad)
  for (int64_t pl = 0; pl < NC; ++pl) {
    float* dxp = dx + pl * HW;
    std::memset(dxp, 0, sizeof(float) * HW);
    for (int64_t p = 0; p < P; ++p)
      for (int64_t q = 0; q < Q; ++q) {
        const int64_t i = pl * PQ + p * Q + q, r = taps[i] / kw, s = taps[i] % kw;
        const int64_t h = p * sh - ph + r * dh, w = q * sw - pw + s * dw;
        if (r >= kh || h < 0 || h >= H || w < 0 || w >= W) {   // not a real tap of its window
          bad = std::min(bad, i);
          p = P;
          break;
        }
        dxp[h * W + w] += dy[i];
      }
  }
  return bad == std::numeric_limits<int64_t>::max() ? -1 : bad;
}

void avgpool2d_fwd(const float* x, float* y, int64_t NC, int64_t H, int64_t W, int64_t P, int64_t Q,
                   int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw,
                   bool count_include_pad, int64_t divisor_override) {
  if (is_2x2_cells(kh, kw, sh, sw, ph, pw, H, W, P, Q)) {
    // same sum order (row by row, from 0) and divisor as the general loop, so the same bits
    const float div = avg_divisor(0, 0, H, W, 2, 2, 0, 0, count_include_pad, divisor_override);
#pragma omp parallel for num_threads(num_threads()) schedule(static)
    for (int64_t pl = 0; pl < NC; ++pl)
      for (int64_t p = 0; p < P; ++p) {
        const float* r0 = x + pl * H * W + 2 * p * W;
        const float* r1 = r0 + W;
        float* yr = y + pl * P * Q + p * Q;
        for (int64_t q = 0; q < Q; ++q) yr[q] = (0.f + r0[2 * q] + r0[2 * q + 1] + r1[2 * q] + r1[2 * q + 1]) / div;
      }
    return;
  }
#pragma omp parallel for num_threads(num_threads()) schedule(static)
  for (int64_t pl = 0; pl < NC; ++pl) {
    const float* xp = x + pl * H * W;
    for (int64_t p = 0; p < P; ++p) {
      const int64_t h0 = std::max<int64_t>(p * sh - ph, 0), h1 = std::min(p * sh - ph + kh, H);
      for (int64_t q = 0; q < Q; ++q) {
        const int64_t w0 = std::max<int64_t>(q * sw - pw, 0), w1 = std::min(q * sw - pw + kw, W);
        float s = 0.f;
        for (int64_t h = h0; h < h1; ++h)
          for (int64_t w = w0; w < w1; ++w) s += xp[h * W + w];
        y[pl * P * Q + p * Q + q] =
            s / avg_divisor(p * sh - ph, q * sw - pw, H, W, kh, kw, ph, pw, count_include_pad, divisor_override);
      }
    }
  }
}

void avgpool2d_bwd(const float* dy, float* dx, int64_t NC, int64_t H, int64_t W, int64_t P,
                   int64_t Q, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph,
                   int64_t pw, bool count_include_pad, int64_t divisor_override) {
  if (is_2x2_cells(kh, kw, sh, sw, ph, pw, H, W, P, Q)) {   // each cell written once, no clearing pass
    const float div = avg_divisor(0, 0, H, W, 2, 2, 0, 0, count_include_pad, divisor_override);
#pragma omp parallel for num_threads(num_threads()) schedule(static)
    for (int64_t pl = 0; pl < NC; ++pl) {
      float* dxp = dx + pl * H * W;
      for (int64_t p = 0; p < P; ++p) {
        float* r0 = dxp + 2 * p * W;
        float* r1 = r0 + W;
        const float* gr = dy + pl * P * Q + p * Q;
        for (int64_t q = 0; q < Q; ++q) {
          const float g = 0.f + gr[q] / div;   // as added into the cleared plane: -0 becomes +0
          r0[2 * q] = r0[2 * q + 1] = r1[2 * q] = r1[2 * q + 1] = g;
        }
        for (int64_t w = 2 * Q; w < W; ++w) r0[w] = r1[w] = 0.0f;
      }
      std::memset(dxp + 2 * P * W, 0, sizeof(float) * (H - 2 * P) * W);
    }
    return;
  }
#pragma omp parallel for num_threads(num_threads()) schedule(static)
  for (int64_t pl = 0; pl < NC; ++pl) {
    float* dxp = dx + pl * H * W;
    std::memset(dxp, 0, sizeof(float) * H * W);
    for (int64_t p = 0; p < P; ++p) {
      const int64_t h0 = std::max<int64_t>(p * sh - ph, 0), h1 = std::min(p * sh - ph + kh, H);
      for (int64_t q = 0; q < Q; ++q) {
        const int64_t w0 = std::max<int64_t>(q * sw - pw, 0), w1 = std::min(q * sw - pw + kw, W);
        const float g = dy[pl * P * Q + p * Q + q] /
                        avg_divisor(p * sh - ph, q * sw - pw, H, W, kh, kw, ph, pw, count_include_pad, divisor_override);
        for (int64_t h = h0; h < h1; ++h)
          for (int64_t w = w0; w < w1; ++w) dxp[h * W + w] += g;
      }
    }
  }
}

}  // namespace ft::cpu
