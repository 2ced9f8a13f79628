// Batch normalization, pooling and the halo copy on the blocked layout (blocked.h), around the
// per-plane kernels of blocked_kernels.h.
//
// Threads: every pass is a loop over planes (image n, channel block cb), shared out statically.
// Per-channel sums are computed per plane (float within a run of rows, double across runs) into their own
// slot, then added over the images in image order, so results are bit-identical for every thread
// count. Batch-norm statistics follow batchnorm.cpp: sums of d = x - K and d^2 with the shift
// K = the channel's first value ("shifted data", Chan, Golub & LeVeque 1983), so the variance
// E[d^2] - E[d]^2 does not cancel when |mean| >> std.
//
// Outputs: every kernel writes its output's halo (zeros), so callers may allocate with np.empty.
// Pad lanes of outputs are zero when those of the inputs are (per-channel constants are zero
// there: y = 0 * x + 0, dx = 0 * (...)); the kernels never read or write an input's halo.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "blocked.h"
#include "fasttrain/check.h"
#include "fasttrain/cpu.h"

namespace ft::cpu {
namespace blocked {
namespace {

// The instruction set the direct convolution runs (set_conv2d_isa forces both).
const Isa& isa() {
  const std::string name = conv2d_isa();
  const Isa* p = name == "avx512" ? isa_avx512() : name == "avx2" ? isa_avx2() : isa_portable();
  return p ? *p : *isa_portable();
}

int64_t blocks(int64_t c) { return (c + kLanes - 1) / kLanes; }

// Threads for a pass over `floats` values: one below ~128 KiB, where waking a second thread and
// meeting it at the barriers costs more than the work (a whole scheduler tick when the machine is
// busy). The result does not depend on it (see the file comment).
int threads_for(int64_t floats) { return floats < (int64_t{1} << 15) ? 1 : num_threads(); }

// One blocked array: [N][Cb][H + 2h][W + 2h][16].
struct Arr {
  int64_t Cb, H, W, h;
  int64_t row() const { return (W + 2 * h) * kLanes; }
  int64_t plane() const { return (H + 2 * h) * row(); }
  int64_t interior(int64_t t) const { return t * plane() + h * row() + h * kLanes; }  // t = n * Cb + cb
  In in(const float* base, int64_t t) const { return {base ? base + interior(t) : nullptr, row()}; }
  Out out(float* base, int64_t t) const { return {base ? base + interior(t) : nullptr, row()}; }
};

// n floats (a multiple of 16) of zeros, as vector stores: the halo's bands are a few pixels wide
// and a memset call per band cost as much as the plane's own work on 8 x 8 images.
inline void zero_run(float* p, int64_t n) {
  using v16 = float __attribute__((vector_size(64)));
  const v16 z = {};
  for (int64_t i = 0; i < n; i += kLanes) std::memcpy(p + i, &z, sizeof z);
}

// Zero the halo of plane t of `a` (the interior is the caller's). A row's right band and the next
// row's left band are adjacent, so each is one run.
void zero_halo(const Arr& a, float* base, int64_t t) {
  if (a.h == 0) return;
  float* pl = base + t * a.plane();
  const int64_t row = a.row(), side = a.h * kLanes;
  zero_run(pl, a.h * row + side);  // the top rows and the first interior row's left band
  for (int64_t r = a.h; r + 1 < a.h + a.H; ++r) zero_run(pl + r * row + row - side, 2 * side);
  zero_run(pl + (a.h + a.H) * row - side, side + a.h * row);  // the last right band, the bottom rows
}

// Per-plane partial sums: slot t holds `k` vectors of 16 doubles, each stored whole by one kernel
// call (so not zeroed here).
struct Partials {
  std::unique_ptr<double[]> v;
  int k;
  Partials(int64_t planes, int k_) : v(new double[static_cast<size_t>(planes) * k_ * kLanes]), k(k_) {}
  double* at(int64_t t, int j) { return v.get() + (t * k + j) * kLanes; }
  // out[(cb * k + j) * 16 + l] = sum over the images, in image order, of channel block cb's vector
  // j, lane l: every block's sums at once, image by image over the contiguous slots of an image's
  // planes, so the Cb * k * 16 running sums are independent vector lanes. (Block by block, each
  // lane's sum was one chain of dependent double adds over the N images, and each thread walks all
  // N * Cb slots: at 64 channels, 8 x 8, batch 128 that walk was a few microseconds of a 100 us
  // call.) Each lane still adds its images in order from 0.0: the same bits.
  void totals(int64_t N, int64_t Cb, double* out) {
    const int64_t m = Cb * k * kLanes;
    for (int64_t i = 0; i < m; ++i) out[i] = 0.0;
    for (int64_t n = 0; n < N; ++n) {
      const double* p = at(n * Cb, 0);
      for (int64_t i = 0; i < m; ++i) out[i] += p[i];
    }
  }
};

// The forward's per-channel map y = x * a + b, from the float mean and invstd it returns (not the
// double values behind them), so that the backward recomputes the same a and b, and so the same
// ReLU mask, from its arguments.
inline void affine_of(float gamma, float beta, float mean, float invstd, float& a, float& b) {
  const double ac = static_cast<double>(gamma) * invstd;
  a = static_cast<float>(ac);
  b = static_cast<float>(beta - static_cast<double>(mean) * ac);
}

// y = relu?(x * a + b + res?) over every plane, halo of y zeroed; a, b: Cb * 16 floats.
void apply(const Isa& k, const float* x, const Arr& ax, const float* res, const Arr& ar, float* y,
           const Arr& ay, int64_t T, const float* a, const float* b, bool relu) {
#pragma omp for schedule(static)
  for (int64_t t = 0; t < T; ++t) {
    const int64_t cb = t % ax.Cb;
    k.bn_apply(ax.in(x, t), ar.in(res, t), ay.out(y, t), ax.H, ax.W, a + cb * kLanes, b + cb * kLanes, relu);
    zero_halo(ay, y, t);
  }
}

}  // namespace
}  // namespace blocked

using blocked::Arr;
using blocked::kLanes;

void batchnorm_blocked_fwd_train(const float* x, const float* gamma, const float* beta, float eps,
                                 float* y, float* mean, float* invstd, int64_t N, int64_t C, int64_t H,
                                 int64_t W, bool relu, const float* residual, const double* stats,
                                 int64_t hx, int64_t hy, int64_t hr) {
  const blocked::Isa& k = blocked::isa();
  const int64_t Cb = blocked::blocks(C), T = N * Cb;
  const Arr ax{Cb, H, W, hx}, ay{Cb, H, W, hy}, ar{Cb, H, W, hr};
  const double M = static_cast<double>(N) * H * W;
  std::vector<float> shift(Cb * kLanes, 0.f), a(Cb * kLanes, 0.f), b(Cb * kLanes, 0.f);
  if (!stats && N > 0)
    for (int64_t c = 0; c < C; ++c) shift[c] = x[ax.interior(c / kLanes) + c % kLanes];
  blocked::Partials part(stats ? 0 : T, 2);
  // channel c's mean and variance -> a, b (and mean, invstd when `out`)
  auto constants = [&](int64_t c, double mu, double var, float* a_, float* b_, bool out) {
    const float m = static_cast<float>(mu), is = static_cast<float>(1.0 / std::sqrt(std::max(var, 0.0) + eps));
    if (out) {
      mean[c] = m;
      invstd[c] = is;
    }
    blocked::affine_of(gamma[c], beta[c], m, is, a_[c], b_[c]);
  };
  if (stats)  // raw sums from the convolution's epilogue, accumulated in double there: no pass of
              // our own before the apply, so no barrier either
    for (int64_t c = 0; c < C; ++c) {
      const double mu = stats[c] / M;
      constants(c, mu, stats[C + c] / M - mu * mu, a.data(), b.data(), true);
    }
#pragma omp parallel num_threads(blocked::threads_for(T * H * W * kLanes))
  {
    if (stats) {
      blocked::apply(k, x, ax, residual, ar, y, ay, T, a.data(), b.data(), relu);
    } else {
#pragma omp for schedule(static)
      for (int64_t t = 0; t < T; ++t)
        k.bn_sums(ax.in(x, t), H, W, shift.data() + (t % Cb) * kLanes, part.at(t, 0), part.at(t, 1));
      // every thread forms every channel's constants itself (the same bits; no barrier before the
      // apply, see batchnorm_blocked_bwd); mean and invstd: the master's
      const bool master = omp_get_thread_num() == 0;
      std::vector<float> ta(Cb * kLanes, 0.f), tb(Cb * kLanes, 0.f);
      std::vector<double> tot(Cb * 2 * kLanes);
      part.totals(N, Cb, tot.data());
      for (int64_t cb = 0; cb < Cb; ++cb) {
        const double *s = tot.data() + cb * 2 * kLanes, *s2 = s + kLanes;
        for (int64_t c = cb * kLanes; c < std::min(C, (cb + 1) * kLanes); ++c) {
          const double dm = s[c % kLanes] / M;
          constants(c, shift[c] + dm, s2[c % kLanes] / M - dm * dm, ta.data(), tb.data(), master);
        }
      }
      blocked::apply(k, x, ax, residual, ar, y, ay, T, ta.data(), tb.data(), relu);
    }
  }
}

void batchnorm_blocked_fwd_eval(const float* x, const float* gamma, const float* beta,
                                const float* running_mean, const float* running_var, float eps, float* y,
                                int64_t N, int64_t C, int64_t H, int64_t W, bool relu,
                                const float* residual, int64_t hx, int64_t hy, int64_t hr) {
  const int64_t Cb = blocked::blocks(C);
  std::vector<float> a(Cb * kLanes, 0.f), b(Cb * kLanes, 0.f);
  for (int64_t c = 0; c < C; ++c) {
    const double ac = gamma[c] / std::sqrt(static_cast<double>(running_var[c]) + eps);
    a[c] = static_cast<float>(ac);
    b[c] = static_cast<float>(beta[c] - running_mean[c] * ac);
  }
  const blocked::Isa& k = blocked::isa();
#pragma omp parallel num_threads(blocked::threads_for(N * Cb * H * W * kLanes))
  blocked::apply(k, x, {Cb, H, W, hx}, residual, {Cb, H, W, hr}, y, {Cb, H, W, hy}, N * Cb, a.data(),
                 b.data(), relu);
}

// Two passes: per-plane sums of g (dy after the ReLU mask) and g * (x - mu), then dx. With dres
// (the residual's gradient, which is g) the first pass writes g there and the second reads it back
// instead of dy and the mask's source. With sums ((2, C): those two sums, from the epilogue of the
// data gradient that wrote dy, BnGradSums) only the dx pass runs.
void batchnorm_blocked_bwd(const float* x, const float* dy, const float* gamma, const float* mean,
                           const float* invstd, float* dx, float* dgamma, float* dbeta, int64_t N,
                           int64_t C, int64_t H, int64_t W, const float* y, float* dres, int64_t hx,
                           int64_t hy, int64_t hdx, const float* beta, const double* sums) {
  FT_CHECK(!(sums && dres), "batchnorm_blocked_bwd(sums): expected dres=None with sums (dres is written by the "
                            "sums pass), got both");
  const blocked::Isa& k = blocked::isa();
  const int64_t Cb = blocked::blocks(C), T = N * Cb;
  const Arr ax{Cb, H, W, hx}, ay{Cb, H, W, hy}, adx{Cb, H, W, hdx}, a0{Cb, H, W, 0};
  const double M = static_cast<double>(N) * H * W;
  std::vector<float> mu(Cb * kLanes, 0.f);
  std::copy(mean, mean + C, mu.begin());
  // the ReLU mask from x: the forward's a and b (pad lanes 0 * x + 0: masked, and their g is 0 anyway)
  std::vector<float> ma, mb;
  if (beta && !y) {
    ma.assign(Cb * kLanes, 0.f);
    mb.assign(Cb * kLanes, 0.f);
    for (int64_t c = 0; c < C; ++c) blocked::affine_of(gamma[c], beta[c], mean[c], invstd[c], ma[c], mb[c]);
  }
  auto lanes = [](const std::vector<float>& v, int64_t t, int64_t Cb) {
    return v.empty() ? nullptr : v.data() + (t % Cb) * kLanes;
  };
  blocked::Partials part(sums ? 0 : T, 2);
#pragma omp parallel num_threads(blocked::threads_for(T * H * W * kLanes))
  {
    if (!sums) {  // (a uniform condition: every thread of the team skips the loop or runs it)
#pragma omp for schedule(static)
    for (int64_t t = 0; t < T; ++t)
      k.bn_bwd_sums(ax.in(x, t), a0.in(dy, t), ay.in(y, t), lanes(ma, t, Cb), lanes(mb, t, Cb), a0.out(dres, t),
                    H, W, mu.data() + (t % Cb) * kLanes, part.at(t, 0), part.at(t, 1));
    }
    // Every thread forms every channel's constants itself (a few hundred channels over N partials,
    // the same arithmetic, so the same bits): no barrier between them and the dx pass, where one
    // thread would compute them while the other waited. dgamma and dbeta: the master's.
    const bool master = omp_get_thread_num() == 0;
    std::vector<float> kk(Cb * kLanes, 0.f), m1(Cb * kLanes, 0.f), m2(Cb * kLanes, 0.f);
    std::vector<double> tot(Cb * 2 * kLanes);
    if (!sums) part.totals(N, Cb, tot.data());
    for (int64_t cb = 0; cb < Cb; ++cb) {
      double* s = tot.data() + cb * 2 * kLanes;
      double* s2 = s + kLanes;
      if (sums) {
        for (int l = 0; l < kLanes; ++l) {
          const int64_t c = std::min(C - 1, cb * kLanes + l);
          s[l] = sums[c];
          s2[l] = sums[C + c];
        }
      }
      for (int64_t c = cb * kLanes; c < std::min(C, (cb + 1) * kLanes); ++c) {
        const double sdy = s[c % kLanes], sdyxhat = s2[c % kLanes] * invstd[c];
        if (master) {
          dbeta[c] += static_cast<float>(sdy);
          dgamma[c] += static_cast<float>(sdyxhat);
        }
        kk[c] = static_cast<float>(gamma[c] * static_cast<double>(invstd[c]));
        m1[c] = static_cast<float>(sdy / M);
        m2[c] = static_cast<float>(sdyxhat / M * invstd[c]);
      }
    }
#pragma omp for schedule(static)
    for (int64_t t = 0; t < T; ++t) {
      const int64_t o = (t % Cb) * kLanes;
      if (dres)  // g as the first pass stored it: already masked
        k.bn_bwd_dx(ax.in(x, t), a0.in(dres, t), ay.in(nullptr, t), nullptr, nullptr, adx.out(dx, t), H, W,
                    mu.data() + o, kk.data() + o, m1.data() + o, m2.data() + o);
      else
        k.bn_bwd_dx(ax.in(x, t), a0.in(dy, t), ay.in(y, t), lanes(ma, t, Cb), lanes(mb, t, Cb), adx.out(dx, t), H,
                    W, mu.data() + o, kk.data() + o, m1.data() + o, m2.data() + o);
      blocked::zero_halo(adx, dx, t);
    }
  }
}

void blocked_repad(const float* x, float* y, int64_t N, int64_t C, int64_t H, int64_t W, int64_t hin,
                   int64_t hout) {
  const int64_t Cb = blocked::blocks(C);
  const Arr ax{Cb, H, W, hin}, ay{Cb, H, W, hout};
#pragma omp parallel for num_threads(blocked::threads_for(N * Cb * H * W * kLanes)) schedule(static)
  for (int64_t t = 0; t < N * Cb; ++t) {
    for (int64_t h = 0; h < H; ++h)
      std::memcpy(y + ay.interior(t) + h * ay.row(), x + ax.interior(t) + h * ax.row(), sizeof(float) * W * kLanes);
    blocked::zero_halo(ay, y, t);
  }
}

void global_avgpool_blocked_fwd(const float* x, float* y, int64_t N, int64_t C, int64_t H, int64_t W,
                                int64_t hx) {
  const blocked::Isa& k = blocked::isa();
  const int64_t Cb = blocked::blocks(C);
  const Arr ax{Cb, H, W, hx};
  const double inv = 1.0 / (static_cast<double>(H) * W);
#pragma omp parallel for num_threads(blocked::threads_for(N * Cb * H * W * kLanes)) schedule(static)
  for (int64_t t = 0; t < N * Cb; ++t) {
    double s[kLanes];
    k.plane_sum(ax.in(x, t), H, W, s);
    const int64_t n = t / Cb, c0 = (t % Cb) * kLanes;
    for (int64_t l = 0; l < kLanes && c0 + l < C; ++l) y[n * C + c0 + l] = static_cast<float>(s[l] * inv);
  }
}

void global_avgpool_blocked_bwd(const float* dy, float* dx, int64_t N, int64_t C, int64_t H, int64_t W,
                                int64_t hdx) {
  const blocked::Isa& k = blocked::isa();
  const int64_t Cb = blocked::blocks(C);
  const Arr adx{Cb, H, W, hdx};
  const float inv = static_cast<float>(1.0 / (static_cast<double>(H) * W));
#pragma omp parallel for num_threads(blocked::threads_for(N * Cb * H * W * kLanes)) schedule(static)
  for (int64_t t = 0; t < N * Cb; ++t) {
    float v[kLanes] = {};
    const int64_t n = t / Cb, c0 = (t % Cb) * kLanes;
    for (int64_t l = 0; l < kLanes && c0 + l < C; ++l) v[l] = dy[n * C + c0 + l] * inv;
    k.plane_fill(adx.out(dx, t), H, W, v);
    blocked::zero_halo(adx, dx, t);
  }
}

void maxpool2d_blocked_fwd(const float* x, float* y, uint8_t* tap, int64_t N, int64_t C, int64_t H, int64_t W,
                           int64_t P, int64_t Q, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph,
                           int64_t pw, int64_t dh, int64_t dw, int64_t hx, int64_t hy) {
  const blocked::Isa& k = blocked::isa();
  const int64_t Cb = blocked::blocks(C);
  const Arr ax{Cb, H, W, hx}, ay{Cb, P, Q, hy};
  const blocked::PoolGeom g{H, W, P, Q, kh, kw, sh, sw, ph, pw, dh, dw, true};
#pragma omp parallel for num_threads(blocked::threads_for(N * Cb * H * W * kLanes)) schedule(static)
  for (int64_t t = 0; t < N * Cb; ++t) {
    k.maxpool_fwd(ax.in(x, t), ay.out(y, t), tap + t * P * Q * kLanes, g);
    blocked::zero_halo(ay, y, t);
  }
}

void maxpool2d_blocked_bwd(const float* dy, const uint8_t* tap, float* dx, int64_t N, int64_t C, int64_t P,
                           int64_t Q, int64_t H, int64_t W, int64_t kh, int64_t kw, int64_t sh, int64_t sw,
                           int64_t ph, int64_t pw, int64_t dh, int64_t dw, int64_t hdx) {
  const blocked::Isa& k = blocked::isa();
  const int64_t Cb = blocked::blocks(C);
  const Arr adx{Cb, H, W, hdx}, ady{Cb, P, Q, 0};
  const blocked::PoolGeom g{H, W, P, Q, kh, kw, sh, sw, ph, pw, dh, dw, true};
  // Disjoint windows (2x2 stride 2, the common case) store dx directly; when they also cover every
  // interior pixel only the halo needs zeros, else the whole plane is zeroed first.
  const bool tiled = sh >= (kh - 1) * dh + 1 && sw >= (kw - 1) * dw + 1;
  const bool covers = tiled && dh == 1 && dw == 1 && sh == kh && sw == kw && P * sh - ph >= H && Q * sw - pw >= W;
  int64_t bad = -1;  // the first plane holding a tap that is not a real tap of its window
#pragma omp parallel for num_threads(blocked::threads_for(N * Cb * H * W * kLanes)) schedule(static)
  for (int64_t t = 0; t < N * Cb; ++t) {
    if (covers)
      blocked::zero_halo(adx, dx, t);
    else
      std::memset(dx + t * adx.plane(), 0, sizeof(float) * adx.plane());
    const uint8_t* tp = tap + t * P * Q * kLanes;
    if (!(tiled ? k.maxpool_bwd_tiled : k.maxpool_bwd)(ady.in(dy, t), tp, adx.out(dx, t), g)) {
#pragma omp critical(ft_maxpool_blocked_bad)
      if (bad < 0 || t < bad) bad = t;
    }
  }
  FT_CHECK(bad < 0, "maxpool2d_blocked_bwd(taps): expected window taps the forward wrote (r * kw + s of a tap "
                        "inside the image), got another in plane (n=" << bad / Cb << ", channel block " << bad % Cb
                        << ")");
}

void avgpool2d_blocked_fwd(const float* x, float* y, int64_t N, int64_t C, int64_t H, int64_t W, int64_t P,
                           int64_t Q, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw,
                           bool count_include_pad, int64_t hx, int64_t hy) {
  const blocked::Isa& k = blocked::isa();
  const int64_t Cb = blocked::blocks(C);
  const Arr ax{Cb, H, W, hx}, ay{Cb, P, Q, hy};
  const blocked::PoolGeom g{H, W, P, Q, kh, kw, sh, sw, ph, pw, 1, 1, count_include_pad};
#pragma omp parallel for num_threads(blocked::threads_for(N * Cb * H * W * kLanes)) schedule(static)
  for (int64_t t = 0; t < N * Cb; ++t) {
    k.avgpool_fwd(ax.in(x, t), ay.out(y, t), g);
    blocked::zero_halo(ay, y, t);
  }
}

void avgpool2d_blocked_bwd(const float* dy, float* dx, int64_t N, int64_t C, int64_t H, int64_t W, int64_t P,
                           int64_t Q, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t ph, int64_t pw,
                           bool count_include_pad, int64_t hdx) {
  const blocked::Isa& k = blocked::isa();
  const int64_t Cb = blocked::blocks(C);
  const Arr adx{Cb, H, W, hdx}, ady{Cb, P, Q, 0};
  const bool disjoint = sh >= kh && sw >= kw;
  const blocked::PoolGeom g{H, W, P, Q, kh, kw, sh, sw, ph, pw, 1, 1, count_include_pad, disjoint};
  // windows that tile the interior (2x2 stride 2 on even sizes) store every pixel: only the halo needs zeros
  const bool covers = disjoint && sh == kh && sw == kw && P * sh - ph >= H && Q * sw - pw >= W;
#pragma omp parallel for num_threads(blocked::threads_for(N * Cb * H * W * kLanes)) schedule(static)
  for (int64_t t = 0; t < N * Cb; ++t) {
    if (covers)
      blocked::zero_halo(adx, dx, t);
    else
      std::memset(dx + t * adx.plane(), 0, sizeof(float) * adx.plane());
    k.avgpool_bwd(ady.in(dy, t), adx.out(dx, t), g);
  }
}

}  // namespace ft::cpu
