// Depthwise convolution, direct (Howard et al. 2017, "MobileNets": a K x K filter per channel,
// followed by a 1x1 convolution that mixes channels). Each output reads R*S inputs per weight,
// so the arithmetic intensity is R*S/4 FLOPs per byte moved (about 2 for 3x3): the kernel is
// memory-bound, and the target is to stream x and y once at memory bandwidth. im2col would
// instead write and read an R*S times larger unfold and run C GEMMs of R*S rows each.
//
// One task per (n, c) plane (OpenMP over N*C; planes are independent, so results do not depend
// on the thread count). A plane is first copied into a zero-bordered scratch buffer (it stays in
// L1/L2: 32x32 floats are 4 KiB), so the tap loops need no bounds tests and vectorize over the
// output row:
//   fwd           y[p, q] = b + sum_rs w[r, s] * xpad[p*sh + r*dilh, q*sw + s*dilw]
//   bwd_data      stride 1: the same correlation of a padded dy with the flipped kernel;
//                 stride > 1: every dy tap scattered into a padded dx plane
//   bwd_weight    dw[r, s] = sum_pq dy[p, q] * xpad[p*sh + r*dilh, q*sw + s*dilw]: one task per
//                 channel c over all images (no partial buffers to combine), float sums per plane
//                 added in double across the images.
#include <algorithm>
#include <cstring>
#include <vector>

#include "depthwise.h"
#include "fasttrain/cpu.h"

namespace ft::cpu::depthwise {
namespace {

float* scratch(int64_t n) {
  thread_local std::vector<float> buf;
  if (static_cast<int64_t>(buf.size()) < n) buf.resize(n);
  return buf.data();
}

// dst (rows x cols) = src (src_rows x src_cols) placed at (top, left), zero elsewhere; top/left may
// be negative (rows/columns of src cut off).
void place(const float* src, int64_t src_rows, int64_t src_cols, float* dst, int64_t rows, int64_t cols,
           int64_t top, int64_t left) {
  const int64_t c0 = std::max<int64_t>(left, 0), c1 = std::min(cols, left + src_cols);
  for (int64_t u = 0; u < rows; ++u) {
    float* d = dst + u * cols;
    const int64_t h = u - top;
    if (h < 0 || h >= src_rows || c1 <= c0) {
      std::memset(d, 0, sizeof(float) * cols);
      continue;
    }
    std::memset(d, 0, sizeof(float) * c0);
    std::memcpy(d + c0, src + h * src_cols + (c0 - left), sizeof(float) * (c1 - c0));
    std::memset(d + c1, 0, sizeof(float) * (cols - c1));
  }
}

// out (P x Q) = [out +] bias + correlation of in (leading dimension ld) with taps (R x S), output
// pixel (p, q) reading in[(p*sh + r*dilh) * ld + q*sw + s*dilw]. The tap counts and the column
// stride are template parameters where they are known (0: read at run time), so the common 3x3
// stride-1 case keeps its accumulator in a register across the fully unrolled taps.
template <int KR, int KS, int SW>
void correlate(const float* in, int64_t ld, const float* taps, int64_t R_, int64_t S_, int64_t sh,
               int64_t sw_, int64_t dilh, int64_t dilw, float* out, int64_t P, int64_t Q, float bias,
               bool relu, bool accumulate) {
  const int64_t R = KR ? KR : R_, S = KS ? KS : S_, sw = SW ? SW : sw_;
  for (int64_t p = 0; p < P; ++p) {
    const float* base = in + p * sh * ld;
    float* o = out + p * Q;
#pragma omp simd
    for (int64_t q = 0; q < Q; ++q) {
      float acc = accumulate ? o[q] : bias;
      for (int64_t r = 0; r < R; ++r)
        for (int64_t s = 0; s < S; ++s) acc += taps[r * S + s] * base[r * dilh * ld + q * sw + s * dilw];
      o[q] = relu ? std::max(acc, 0.f) : acc;
    }
  }
}

using CorrelateFn = void (*)(const float*, int64_t, const float*, int64_t, int64_t, int64_t, int64_t,
                             int64_t, int64_t, float*, int64_t, int64_t, float, bool, bool);

CorrelateFn pick(int64_t R, int64_t S, int64_t sw) {
  if (R == 3 && S == 3) return sw == 1 ? correlate<3, 3, 1> : sw == 2 ? correlate<3, 3, 2> : correlate<3, 3, 0>;
  if (R == 5 && S == 5 && sw == 1) return correlate<5, 5, 1>;
  return sw == 1 ? correlate<0, 0, 1> : correlate<0, 0, 0>;
}

}  // namespace

void fwd(const float* x, const float* w, const float* b, float* y, const Shape& g, bool relu) {
  const int64_t Hp = g.H + 2 * g.ph, Wp = g.W + 2 * g.pw, RS = g.R * g.S, PQ = g.P * g.Q, K = g.C * g.M;
  const CorrelateFn corr = pick(g.R, g.S, g.sw);
#pragma omp parallel for num_threads(num_threads()) schedule(static)
  for (int64_t plane = 0; plane < g.N * g.C; ++plane) {
    const int64_t n = plane / g.C, c = plane % g.C;
    float* buf = scratch(Hp * Wp);
    place(x + plane * g.H * g.W, g.H, g.W, buf, Hp, Wp, g.ph, g.pw);
    for (int64_t j = 0; j < g.M; ++j) {
      const int64_t k = c * g.M + j;
      corr(buf, Wp, w + k * RS, g.R, g.S, g.sh, g.sw, g.dilh, g.dilw, y + (n * K + k) * PQ, g.P, g.Q, b[k],
           relu, false);
    }
  }
}

void bwd_data(const float* dy, const float* w, float* dx, const Shape& g) {
  const int64_t RS = g.R * g.S, PQ = g.P * g.Q, K = g.C * g.M, HW = g.H * g.W;
  if (g.sh == 1 && g.sw == 1) {
    // dx[h, w] = sum_rs w[R-1-r, S-1-s] * dypad[h + r*dilh, w + s*dilw], dy placed at
    // (dilh*(R-1) - ph, dilw*(S-1) - pw) in dypad
    const int64_t Hd = g.H + g.dilh * (g.R - 1), Wd = g.W + g.dilw * (g.S - 1);
    const CorrelateFn corr = pick(g.R, g.S, 1);
#pragma omp parallel for num_threads(num_threads()) schedule(static)
    for (int64_t plane = 0; plane < g.N * g.C; ++plane) {
      const int64_t n = plane / g.C, c = plane % g.C;
      float* buf = scratch(Hd * Wd + RS);
      float* flipped = buf + Hd * Wd;
      for (int64_t j = 0; j < g.M; ++j) {
        const int64_t k = c * g.M + j;
        for (int64_t i = 0; i < RS; ++i) flipped[i] = w[k * RS + RS - 1 - i];
        place(dy + (n * K + k) * PQ, g.P, g.Q, buf, Hd, Wd, g.dilh * (g.R - 1) - g.ph, g.dilw * (g.S - 1) - g.pw);
        corr(buf, Wd, flipped, g.R, g.S, 1, 1, g.dilh, g.dilw, dx + plane * HW, g.H, g.W, 0.f, false, j > 0);
      }
    }
    return;
  }
  const int64_t Hp = g.H + 2 * g.ph, Wp = g.W + 2 * g.pw;
#pragma omp parallel for num_threads(num_threads()) schedule(static)
  for (int64_t plane = 0; plane < g.N * g.C; ++plane) {
    const int64_t n = plane / g.C, c = plane % g.C;
    float* buf = scratch(Hp * Wp);
    std::memset(buf, 0, sizeof(float) * Hp * Wp);
    for (int64_t j = 0; j < g.M; ++j) {
      const int64_t k = c * g.M + j;
      const float* dyk = dy + (n * K + k) * PQ;
      for (int64_t p = 0; p < g.P; ++p)
        for (int64_t r = 0; r < g.R; ++r)
          for (int64_t s = 0; s < g.S; ++s) {
            float* row = buf + (p * g.sh + r * g.dilh) * Wp + s * g.dilw;
            const float wv = w[k * RS + r * g.S + s];
            for (int64_t q = 0; q < g.Q; ++q) row[q * g.sw] += wv * dyk[p * g.Q + q];
          }
    }
    float* dxp = dx + plane * HW;
    for (int64_t h = 0; h < g.H; ++h) std::memcpy(dxp + h * g.W, buf + (h + g.ph) * Wp + g.pw, sizeof(float) * g.W);
  }
}

void bwd_weight(const float* x, const float* dy, float* dw, float* db, const Shape& g) {
  const int64_t Hp = g.H + 2 * g.ph, Wp = g.W + 2 * g.pw, RS = g.R * g.S, PQ = g.P * g.Q, K = g.C * g.M;
#pragma omp parallel for num_threads(num_threads()) schedule(static)
  for (int64_t c = 0; c < g.C; ++c) {
    float* buf = scratch(Hp * Wp);
    std::vector<double> acc_w(g.M * RS, 0.0), acc_b(g.M, 0.0);
    for (int64_t n = 0; n < g.N; ++n) {
      place(x + (n * g.C + c) * g.H * g.W, g.H, g.W, buf, Hp, Wp, g.ph, g.pw);
      for (int64_t j = 0; j < g.M; ++j) {
        const float* dyk = dy + (n * K + c * g.M + j) * PQ;
        for (int64_t r = 0; r < g.R; ++r)
          for (int64_t s = 0; s < g.S; ++s) {
            float sum = 0.f;
            for (int64_t p = 0; p < g.P; ++p) {
              const float* row = buf + (p * g.sh + r * g.dilh) * Wp + s * g.dilw;
              const float* d = dyk + p * g.Q;
              if (g.sw == 1) {
#pragma omp simd reduction(+ : sum)
                for (int64_t q = 0; q < g.Q; ++q) sum += d[q] * row[q];
              } else {
#pragma omp simd reduction(+ : sum)
                for (int64_t q = 0; q < g.Q; ++q) sum += d[q] * row[q * g.sw];
              }
            }
            acc_w[j * RS + r * g.S + s] += sum;
          }
        float sb = 0.f;
#pragma omp simd reduction(+ : sb)
        for (int64_t i = 0; i < PQ; ++i) sb += dyk[i];
        acc_b[j] += sb;
      }
    }
    for (int64_t j = 0; j < g.M; ++j) {
      const int64_t k = c * g.M + j;
      for (int64_t i = 0; i < RS; ++i) dw[k * RS + i] += static_cast<float>(acc_w[j * RS + i]);
      db[k] += static_cast<float>(acc_b[j]);
    }
  }
}

}  // namespace ft::cpu::depthwise
