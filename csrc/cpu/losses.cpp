// Fused softmax cross-entropy (docs/KERNELS.md; reference fasttrain/kernels/losses.py): one visit
// per row computes the max, the sum of exp, the row's loss and its gradient while the row sits in
// L1. Rows run in parallel (one contiguous share per thread); each row's loss goes to its own
// slot and the slots are summed in row order, so the loss does not depend on the thread count.
// exp is fasttrain/vmath.h's, which vectorizes (std::exp stays a scalar call per element).
#include <omp.h>

#include <cmath>
#include <vector>

#include "fasttrain/cpu.h"
#include "fasttrain/vmath.h"

namespace ft::cpu {
namespace {

// d = exp(x - max(x)) over one row of C >= 1 logits; returns sum(d), and the max in m. Inlined
// into each caller's instruction-set clone.
__attribute__((always_inline)) inline float shifted_exp(const float* x, float* d, int64_t C, float& m) {
  m = x[0];
  // a select, not std::fmax: GCC keeps fmax (NaN rules) a scalar call per element. A NaN
  // logit makes the row's sum and loss NaN either way.
#pragma omp simd reduction(max : m)
  for (int64_t j = 1; j < C; ++j) m = x[j] > m ? x[j] : m;
  // subtracting the max: every exp argument is <= 0, so nothing overflows
  float s = 0.f;
  const float mm = m;
#pragma omp simd reduction(+ : s)
  for (int64_t j = 0; j < C; ++j) {
    const float e = vmath::expf_approx(x[j] - mm);
    d[j] = e;
    s += e;
  }
  return s;
}

// Rows [r0, r1): each row's loss to row_loss[r], its gradient to dlogits.
FT_VMATH_CLONES void xent_rows(const float* logits, const int64_t* labels, float* dlogits,
                               double* row_loss, int64_t r0, int64_t r1, int64_t N, int64_t C) {
  const float inv_n = 1.f / static_cast<float>(N);
  for (int64_t r = r0; r < r1; ++r) {
    const float* x = logits + r * C;
    float* d = dlogits + r * C;
    float m;
    const float s = shifted_exp(x, d, C, m);
    const int64_t y = labels[r];
    // loss_r = log(sum_j exp(x_j)) - x_y = log(s) - (x_y - m), in double like the reference
    row_loss[r] = std::log(static_cast<double>(s)) - static_cast<double>(x[y] - m);
    const float denom = s * static_cast<float>(N);  // e / (s N), rounded as the reference does
#pragma omp simd
    for (int64_t j = 0; j < C; ++j) d[j] /= denom;
    d[y] -= inv_n;
  }
}

// softmax_xent_weighted's rows [r0, r1); W = sum of the class weights.
FT_VMATH_CLONES void xent_weighted_rows(const float* logits, const int64_t* labels, const float* w,
                                        float eps, int64_t ignore_index, float scale, double W,
                                        float* dlogits, double* row_loss, int64_t r0, int64_t r1,
                                        int64_t C) {
  const float eps_c = eps / static_cast<float>(C);
  for (int64_t r = r0; r < r1; ++r) {
    const float* x = logits + r * C;
    float* d = dlogits + r * C;
    const int64_t y = labels[r];
    if (y == ignore_index) {  // costs nothing, moves nothing
      row_loss[r] = 0.0;
      for (int64_t j = 0; j < C; ++j) d[j] = 0.f;
      continue;
    }
    float m;
    const float s = shifted_exp(x, d, C, m);
    const double log_s = std::log(static_cast<double>(s));
    const float wy = w[y];
    // -log p_c = log s - z_c; the smoothing term needs sum_c w_c z_c (double, like the reference)
    double loss = (1.0 - eps) * wy * (log_s - static_cast<double>(x[y] - m));
    if (eps != 0.f) {
      double wz = 0.0;
#pragma omp simd reduction(+ : wz)
      for (int64_t j = 0; j < C; ++j) wz += static_cast<double>(w[j]) * static_cast<double>(x[j] - m);
      loss += static_cast<double>(eps_c) * (W * log_s - wz);
    }
    row_loss[r] = loss;
    // d_j = scale (a p_j - (eps/C) w_j), a = (1 - eps) w_y + eps W / C; then the label's own term
    const float a = (1.f - eps) * wy + static_cast<float>(eps * W / static_cast<double>(C));
    const float pa = scale * a / s, pw = scale * eps_c;
#pragma omp simd
    for (int64_t j = 0; j < C; ++j) d[j] = pa * d[j] - pw * w[j];
    d[y] -= scale * (1.f - eps) * wy;
  }
}

}  // namespace

void softmax_xent_weighted(const float* logits, const int64_t* labels, const float* weight,
                           float label_smoothing, int64_t ignore_index, float scale,
                           float* dlogits, double* row_loss, int64_t N, int64_t C) {
  if (N == 0) return;
  double W = 0.0;
  for (int64_t j = 0; j < C; ++j) W += weight[j];
#pragma omp parallel num_threads(num_threads())
  {
    const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
    xent_weighted_rows(logits, labels, weight, label_smoothing, ignore_index, scale, W, dlogits,
                       row_loss, N * t / nt, N * (t + 1) / nt, C);
  }
}

double softmax_xent(const float* logits, const int64_t* labels, float* dlogits, int64_t N,
                    int64_t C) {
  if (N == 0) return 0.0;
  std::vector<double> row_loss(static_cast<size_t>(N));
#pragma omp parallel num_threads(num_threads())
  {
    const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
    xent_rows(logits, labels, dlogits, row_loss.data(), N * t / nt, N * (t + 1) / nt, N, C);
  }
  double total = 0.0;
  for (int64_t r = 0; r < N; ++r) total += row_loss[r];
  return total / static_cast<double>(N);
}

}  // namespace ft::cpu
