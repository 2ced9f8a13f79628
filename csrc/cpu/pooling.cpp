// 2-D max and average pooling over NCHW, one (n, c) plane per task (planes are independent, so
// results do not depend on the thread count). Windows start at p*sh - ph; taps outside the
// image are skipped by max pooling and count as zeros for average pooling (count_include_pad).
#include <algorithm>
#include <cstring>
#include <limits>

#include "fasttrain/cpu.h"

namespace ft::cpu {

void maxpool2d_fwd(const float* x, float* y, int64_t* argmax, int64_t NC, int64_t H, int64_t W,
                   int64_t P, int64_t Q, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
                   int64_t ph, int64_t pw) {
#pragma omp parallel for num_threads(num_threads()) schedule(static)
  for (int64_t pl = 0; pl < NC; ++pl) {
    const float* xp = x + pl * H * W;
    for (int64_t p = 0; p < P; ++p) {
      const int64_t h0 = std::max<int64_t>(p * sh - ph, 0), h1 = std::min(p * sh - ph + kh, H);
      for (int64_t q = 0; q < Q; ++q) {
        const int64_t w0 = std::max<int64_t>(q * sw - pw, 0), w1 = std::min(q * sw - pw + kw, W);
        float best = -std::numeric_limits<float>::infinity();
        int64_t at = h0 * W + w0;  // the first tap, so a window of -inf still names a real tap
        for (int64_t h = h0; h < h1; ++h)
          for (int64_t w = w0; w < w1; ++w)
            if (xp[h * W + w] > best) {  // strict: the first maximum in row-major order wins
              best = xp[h * W + w];
              at = h * W + w;
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
                   int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw) {
  const float inv = 1.f / static_cast<float>(kh * kw);
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
        y[pl * P * Q + p * Q + q] = s * inv;
      }
    }
  }
}

void avgpool2d_bwd(const float* dy, float* dx, int64_t NC, int64_t H, int64_t W, int64_t P,
                   int64_t Q, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph,
                   int64_t pw) {
  const float inv = 1.f / static_cast<float>(kh * kw);
#pragma omp parallel for num_threads(num_threads()) schedule(static)
  for (int64_t pl = 0; pl < NC; ++pl) {
    float* dxp = dx + pl * H * W;
    std::memset(dxp, 0, sizeof(float) * H * W);
    for (int64_t p = 0; p < P; ++p) {
      const int64_t h0 = std::max<int64_t>(p * sh - ph, 0), h1 = std::min(p * sh - ph + kh, H);
      for (int64_t q = 0; q < Q; ++q) {
        const int64_t w0 = std::max<int64_t>(q * sw - pw, 0), w1 = std::min(q * sw - pw + kw, W);
        const float g = dy[pl * P * Q + p * Q + q] * inv;
        for (int64_t h = h0; h < h1; ++h)
          for (int64_t w = w0; w < w1; ++w) dxp[h * W + w] += g;
      }
    }
  }
}

}  // namespace ft::cpu
