// 2-D max and average pooling over NCHW, one (n, c) plane per task (planes are independent, so
// results do not depend on the thread count). Windows start at p*sh - ph; taps outside the
// image are skipped by max pooling and count as zeros for average pooling. Max pooling's taps
// lie dh, dw apart (dilation). The average's divisor is the window's taps inside the padded
// input (count_include_pad; fewer than kh*kw only for a ceil-mode window hanging over the
// bottom/right padding) or its taps inside the image.
#include <algorithm>
#include <cstring>
#include <limits>

#include "fasttrain/cpu.h"

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

}  // namespace

void maxpool2d_fwd(const float* x, float* y, int64_t* argmax, int64_t NC, int64_t H, int64_t W,
                   int64_t P, int64_t Q, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
                   int64_t ph, int64_t pw, int64_t dh, int64_t dw) {
#pragma omp parallel for num_threads(num_threads()) schedule(static)
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
        // the first real tap, so a window of -inf still names a real tap
        int64_t at = (h0 + r0 * dh) * W + w0 + s0 * dw;
        for (int64_t r = r0; r < r1; ++r)
          for (int64_t s = s0; s < s1; ++s) {
            const int64_t i = (h0 + r * dh) * W + w0 + s * dw;
            // strict: the first maximum in row-major order wins; a NaN is always taken, so it
            // propagates and the last NaN wins, as in PyTorch
            if (xp[i] > best || xp[i] != xp[i]) {
              best = xp[i];
              at = i;
            }
          }
        y[pl * P * Q + p * Q + q] = best;
        argmax[pl * P * Q + p * Q + q] = at;
      }
    }
  }
}

void maxpool2d_bwd(const float* dy, const int64_t* argmax, float* dx, int64_t NC, int64_t HW,
                   int64_t PQ) {
#pragma omp parallel for num_threads(num_threads()) schedule(static)
  for (int64_t pl = 0; pl < NC; ++pl) {
    float* dxp = dx + pl * HW;
    std::memset(dxp, 0, sizeof(float) * HW);
    for (int64_t i = 0; i < PQ; ++i) dxp[argmax[pl * PQ + i]] += dy[pl * PQ + i];
  }
}

void avgpool2d_fwd(const float* x, float* y, int64_t NC, int64_t H, int64_t W, int64_t P, int64_t Q,
                   int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw,
                   bool count_include_pad, int64_t divisor_override) {
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
