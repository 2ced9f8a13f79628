// Direct convolution on the NCHW16c blocked layout (conv2d_direct.h): layouts, tiling, threads and
// the instruction-set choice around the micro-kernels of conv2d_direct_kernels.h.
//
//   forward      y[n,k,p,q]  = b[k] + sum_{c,r,s} x[n,c,p*sh-ph+r,q*sw-pw+s] w[k,c,r,s]
//   bwd_data     dx[n,c,h,w] = sum_{k,r,s : h = p*sh-ph+r, w = q*sw-pw+s} dy[n,k,p,q] w[k,c,r,s]
//   bwd_weight   dw[k,c,r,s] += sum_{n,p,q} dy[n,k,p,q] x[n,c,p*sh-ph+r,q*sw-pw+s]
//
// Padding never reaches a micro-kernel: the input is copied into the blocked layout with a zero
// border (the NCHW -> NCHW16c conversion has to touch every element anyway), so every tap of every
// tile reads memory. The data gradient is a convolution of dy with the transposed weights; with
// stride s it splits into s*s phases (dx rows h = a + s*i for a phase a), each a stride-1
// convolution of dy over the taps r with (a + ph - r) divisible by s. Every phase writes its own
// dx pixels, so no dx pixel is accumulated twice and no zeros are multiplied.
//
// Threads: forward and data-gradient tiles (image x output row x output-channel group x pixel
// tile) are shared out statically, so batch 1 also fills both cores; the weight gradient splits
// the batch between threads into private partial sums (added in thread order), or, with fewer
// images than threads, the (output block, input block, kernel row) triples. No BLAS is called,
// so OpenBLAS's pool never competes with these regions.
#include <algorithm>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include <omp.h>

#include "conv2d_direct.h"
#include "conv2d_wino_blocked.h"
#include "fasttrain/check.h"
#include "fasttrain/cpu.h"

namespace ft::cpu {
namespace direct {
namespace {

// ---- instruction set ----

// Whether this CPU runs the named kernels: every extension their file is compiled with
// (CMakeLists.txt), since the compiler may use any of them.
bool cpu_runs(const std::string& name) {
#if defined(__x86_64__) || defined(__i386__)
  if (name == "avx512")
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("fma");
  if (name == "avx2") return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
  return name == "portable";
}

const Isa* best_isa() {
  if (isa_avx512() && cpu_runs("avx512")) return isa_avx512();
  if (isa_avx2() && cpu_runs("avx2")) return isa_avx2();
  return isa_portable();
}

const Isa* g_forced = nullptr;  // set_conv2d_isa; null: the best the CPU runs

const Isa* current_isa() {
  static const Isa* best = best_isa();
  return g_forced ? g_forced : best;
}

// ---- buffers ----

// Grow-only per-thread buffers (one per role): the blocked copies of a batch are megabytes, and
// a fresh allocation each call would page-fault them in again every time.
enum Buf { kX, kY, kW, kBias, kPartial, kNumBufs };
float* buffer(Buf which, int64_t n) {
  thread_local std::vector<float> bufs[kNumBufs];
  auto& b = bufs[which];
  if (static_cast<int64_t>(b.size()) < n) b.resize(n);
  return b.data();
}

int64_t blocks(int64_t c) { return (c + kBlock - 1) / kBlock; }

// ---- layout conversion ----

// x (N, C, H, W) -> [N][Cb][pt + H + pb][pl + W + pr][16], zero border and zero channel tail.
void to_blocked(const float* x, float* xb, int64_t N, int64_t C, int64_t H, int64_t W, int64_t pt,
                int64_t pb, int64_t pl, int64_t pr) {
  const Isa& isa = *current_isa();
  const int64_t Cb = blocks(C), Hp = pt + H + pb, Wp = pl + W + pr;
#pragma omp parallel for collapse(2) num_threads(num_threads()) schedule(static)
  for (int64_t nb = 0; nb < N * Cb; ++nb)
    for (int64_t hp = 0; hp < Hp; ++hp) {
      const int64_t n = nb / Cb, cb = nb % Cb, h = hp - pt;
      float* out = xb + (nb * Hp + hp) * Wp * kBlock;
      const int64_t nc = std::min<int64_t>(kBlock, C - cb * kBlock);
      if (h < 0 || h >= H) {
        std::memset(out, 0, sizeof(float) * Wp * kBlock);
        continue;
      }
      std::memset(out, 0, sizeof(float) * pl * kBlock);
      std::memset(out + (pl + W) * kBlock, 0, sizeof(float) * pr * kBlock);
      isa.pack(x + ((n * C + cb * kBlock) * H + h) * W, H * W, static_cast<int>(nc), W,
               out + pl * kBlock);
    }
}

// [N][Cb][P][Q][16] -> y (N, C, P, Q)
void from_blocked(const float* yb, float* y, int64_t N, int64_t C, int64_t P, int64_t Q) {
  const Isa& isa = *current_isa();
  const int64_t Cb = blocks(C);
#pragma omp parallel for collapse(2) num_threads(num_threads()) schedule(static)
  for (int64_t nb = 0; nb < N * Cb; ++nb)
    for (int64_t p = 0; p < P; ++p) {
      const int64_t n = nb / Cb, cb = nb % Cb;
      const float* in = yb + (nb * P + p) * Q * kBlock;
      const int64_t nc = std::min<int64_t>(kBlock, C - cb * kBlock);
      isa.unpack(in, static_cast<int>(nc), Q, y + ((n * C + cb * kBlock) * P + p) * Q, P * Q);
    }
}

// w (K, C, R, S) -> [Kb][Cb][R][S][16 c][16 k] (forward) or, transposed for the data gradient,
// [Cb][Kb][R][S][16 k][16 c]; zero where a block runs past K or C.
void weights_blocked(const float* w, float* wb, int64_t K, int64_t C, int64_t R, int64_t S,
                     bool transpose) {
  const int64_t Kb = blocks(K), Cb = blocks(C), RS = R * S;
  const int64_t ob = transpose ? Cb : Kb, ib = transpose ? Kb : Cb;
  const int64_t O = transpose ? C : K, I = transpose ? K : C;
  // Written in order, one (output block, input block) pair at a time: its values lie in 16 runs
  // of 16 R S floats of w, which stay in L1 (element by element in w's order, every store went
  // to another cache line: ~20 us of a 64 x 64 3x3 layer's call, more than its batch-1 multiplies)
#pragma omp parallel for collapse(2) num_threads(num_threads()) schedule(static) if (ob * ib > 1)
  for (int64_t o = 0; o < ob; ++o)
    for (int64_t i = 0; i < ib; ++i) {
      float* out = wb + (o * ib + i) * RS * kWBlock;
      const int64_t no = std::min<int64_t>(kBlock, O - o * kBlock), ni = std::min<int64_t>(kBlock, I - i * kBlock);
      for (int64_t t = 0; t < RS; ++t)
        for (int64_t ii = 0; ii < kBlock; ++ii) {
          float* row = out + (t * kBlock + ii) * kBlock;
          int64_t oo = 0;
          for (; ii < ni && oo < no; ++oo) {
            const int64_t oc = o * kBlock + oo, ic = i * kBlock + ii;
            row[oo] = transpose ? w[(ic * C + oc) * RS + t] : w[(oc * C + ic) * RS + t];
          }
          for (; oo < kBlock; ++oo) row[oo] = 0.f;
        }
    }
}

// ---- tiling ----

struct Tiling {
  int kv, qt;        // output blocks and pixels per tile
  int64_t groups;    // output-block groups of kv
  int64_t qtiles;    // pixel tiles per output row
};

// The widest tile the registers hold, with the row split into equal tiles (Q = 32 with 16-pixel
// tiles is two full tiles, not 28 + 4).
Tiling tiling(const Isa& isa, int64_t out_blocks, int64_t Q, int64_t stride) {
  Tiling t;
  t.kv = std::min<int64_t>(isa.max_kv, out_blocks);
  int64_t maxq = isa.max_qt[t.kv];
  if (stride > 2) maxq = 1;  // micro-kernels exist for input pixel strides 1 and 2
  t.qtiles = (Q + maxq - 1) / maxq;
  t.qt = static_cast<int>((Q + t.qtiles - 1) / t.qtiles);
  t.groups = (out_blocks + t.kv - 1) / t.kv;
  return t;
}

// One family of output tiles: N images x `rows` output rows x output-block groups x pixel tiles
// of a row of Q pixels; `base` holds the fields every tile shares.
struct TileSet {
  Tiling t;
  ConvTile base;
  int64_t rows, Q, out_blocks;
  int sw;  // input pixel stride of the micro-kernel (1 or 2)
};

// Runs every tile of every set in one parallel loop (one fork and one barrier, however many
// stride phases the data gradient has): fill(tile, set, n, i, kb0, q0) sets a tile's pointers.
// Order: image by image, and in an image row index by row index with the sets (stride phases) of
// one row index side by side. The phases of a data gradient read the same rows of dy and write
// neighbouring pixels of dx: set after set, a stride-2 layer read dy from memory once per phase
// and wrote dx in four sweeps each touching every cache line's neighbours (128 x 16 x 32 x 32,
// 3x3 stride 2: 2.4 ms, ~125 GFLOP/s on one core). Each thread takes a contiguous share of that
// order (neighbouring tiles read the same input rows); phases without taps (zeros, e.g. three of
// the four of a 1x1 stride-2 layer) are spread over the rows, so no share holds only them.
template <class Fill>
void run_tiles(const Isa& isa, const std::vector<TileSet>& sets, int64_t N, Fill fill, bool stem = false,
               bool bn = false) {
  ConvTileFn (*pick)(int, int, int) = stem ? isa.conv_stem : bn ? isa.conv_bn : isa.conv;
  struct Item {
    int32_t k;
    int64_t i, kb0, q0;
    ConvTileFn fn;  // the micro-kernel for the tile's kv and width
  };
  std::vector<Item> plan;  // one image's tiles in run order
  int64_t rows = 0;
  for (const TileSet& ts : sets) rows = std::max(rows, ts.rows);
  for (int64_t i = 0; i < rows; ++i)
    for (size_t k = 0; k < sets.size(); ++k) {
      const TileSet& ts = sets[k];
      if (i >= ts.rows) continue;
      for (int64_t g = 0; g < ts.t.groups; ++g)
        for (int64_t u = 0; u < ts.t.qtiles; ++u) {
          const int64_t kb0 = g * ts.t.kv, q0 = u * ts.t.qt;
          const int kv = static_cast<int>(std::min<int64_t>(ts.t.kv, ts.out_blocks - kb0));
          const int qt = static_cast<int>(std::min<int64_t>(ts.t.qt, ts.Q - q0));
          plan.push_back({static_cast<int32_t>(k), i, kb0, q0, pick(kv, qt, ts.sw)});
        }
    }
  const int64_t per = static_cast<int64_t>(plan.size()), total = N * per;
  const int nt = num_threads();
  const int64_t chunk = std::max<int64_t>(1, (total + nt - 1) / nt);
#pragma omp parallel for num_threads(nt) schedule(static, chunk)
  for (int64_t it = 0; it < total; ++it) {
    const Item& m = plan[it % per];
    ConvTile tile = sets[m.k].base;
    fill(tile, static_cast<size_t>(m.k), it / per, m.i, m.kb0, m.q0);
    m.fn(tile);
  }
}

struct Geom {
  int64_t N, C, H, W, K, R, S, P, Q, sh, sw, ph, pw, Cb, Kb;
};

Geom geom(int64_t N, int64_t C, int64_t H, int64_t W, int64_t K, int64_t R, int64_t S, int64_t sh,
          int64_t sw, int64_t ph, int64_t pw) {
  return {N, C, H, W, K, R, S, (H + 2 * ph - R) / sh + 1, (W + 2 * pw - S) / sw + 1,
          sh, sw, ph, pw, blocks(C), blocks(K)};
}

// ---- the three convolutions on blocked buffers ----

// stats (2, K) = the sums over `tiles` partials [tile][Kb][sum 16, squares 16], in double, each
// (block, sum-or-squares) pair by one thread in tile order: the same bits for any thread count.
// Error: a partial of at most 16 float32 terms carries a relative error <= 15u (u = 2^-24) of
// its sum of |y| (of y^2 for the squares, where no cancellation occurs), and the double additions
// add (tiles)u_64; so the variance sumsq/n - mean^2 the batchnorm forms (in double) is off by at
// most about 15u (E[y^2] + 2|mean| E|y|), a relative 1e-6 of the variance unless
// mean^2 >> variance, which per-pixel float32 sums over the whole batch (error ~ n u) were not.
template <class P>
void reduce_stats(const P* part, int64_t tiles, int64_t Kb, int64_t K, double* stats) {
#pragma omp parallel for num_threads(num_threads()) schedule(static)
  for (int64_t kh = 0; kh < Kb * 2; ++kh) {
    double s[kBlock] = {};
    const P* p = part + kh * kBlock;
    for (int64_t i = 0; i < tiles; ++i, p += Kb * 2 * kBlock)
      for (int l = 0; l < kBlock; ++l) s[l] += p[l];
    const int64_t kb = kh / 2, which = kh % 2;
    for (int l = 0; l < kBlock && kb * kBlock + l < K; ++l) stats[which * K + kb * kBlock + l] = s[l];
  }
}

// Asks the caches for `rows` rows of `px` pixels (a 64-byte line each) in each of `planes`
// planes (planes `plane` floats apart, rows `row`): issued with the first tile of an output row
// for the input rows and output lines the next row is the first to touch, they arrive while
// this row's multiplies run.
// `step`: pixels between the lines asked for (a 1x1 stride-2 layer reads every other one).
// The empty volatile asm keeps the calls: GCC counts a prefetch as no side effect, so a function
// made only of prefetches is "const" to its interprocedural analysis and every call to it is
// deleted as dead code. Until December 2026 none of these prefetches ran (a disassembly of the
// forward's tile loop showed no call; gdb counted no prefetch executed), which is why switching
// them off never changed a timing.
template <bool Write>
void prefetch_rows(const float* p, int64_t planes, int64_t plane, int64_t rows, int64_t row, int64_t px,
                   int64_t step = 1) {
  for (int64_t c = 0; c < planes; ++c)
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t x = 0; x < px; x += step)
        __builtin_prefetch(p + c * plane + r * row + x * kBlock, Write ? 1 : 0, 3);
  asm volatile("");
}

// The forward's tiles over yb ([N][Kb][P][Q][16]): `base` holds the input's geometry and taps,
// in_at(n, p, q0) is the input of the tile at image n, output row p, first column q0; wf the
// weights of output block 0 (blocks base.w_kb apart); bias Kb*16; stem: the CI = 1 kernels.
// stats (or null): (2, K) float64, the sum and the sum of squares of each output channel (after
// the ReLU), from the tiles' float32 partials added in double in a fixed order (tile order, per
// channel block), so the result does not depend on the thread count. ahead(n, p): called with
// the first tile of output row p of image n (prefetches for the next row).
template <class InAt, class Ahead>
void fwd_tiles(const Isa& isa, const Geom& g, ConvTile base, bool stem, InAt in_at, Ahead ahead,
               const float* wf, const float* bias, float* yb, bool relu, double* stats) {
  const Tiling t = tiling(isa, g.Kb, g.Q, g.sw);
  base.out_px = kBlock;
  base.out_kb = g.P * g.Q * kBlock;
  base.relu = relu;
  // the tiles' partial statistics: [n][p][pixel tile][Kb][sum 16, squares 16]
  const int64_t row_tiles = g.N * g.P * t.qtiles;
  float* part = stats ? buffer(kPartial, row_tiles * g.Kb * 2 * kBlock) : nullptr;
  const std::vector<TileSet> sets{{t, base, g.P, g.Q, g.Kb, g.sw == 2 ? 2 : 1}};
  run_tiles(isa, sets, g.N,
            [&](ConvTile& a, size_t, int64_t n, int64_t p, int64_t kb0, int64_t q0) {
              a.in = in_at(n, p, q0);
              a.w = wf + kb0 * a.w_kb;
              a.out = yb + ((n * g.Kb + kb0) * g.P + p) * g.Q * kBlock + q0 * kBlock;
              a.bias = bias + kb0 * kBlock;
              if (part) a.stats = part + (((n * g.P + p) * t.qtiles + q0 / t.qt) * g.Kb + kb0) * 2 * kBlock;
              if (kb0 == 0) ahead(n, p, q0, t.qt);
            }, stem);
  if (stats) reduce_stats(part, row_tiles, g.Kb, g.K, stats);
}

// xp: [N][Cb][H+2hxh][W+2hxw][16] (hxh, hxw: the input's zero halo, >= ph and pw: the
// convolution reads its padding from it); wf: forward weight blocks.
void fwd_blocked(const Isa& isa, const Geom& g, const float* xp, int64_t hxh, int64_t hxw,
                 const float* wf, const float* bias, float* yb, bool relu, double* stats) {
  const int64_t Hp = g.H + 2 * hxh, Wp = g.W + 2 * hxw;
  xp += ((hxh - g.ph) * Wp + (hxw - g.pw)) * kBlock;
  std::vector<int64_t> tap_in(g.R * g.S), tap_w(g.R * g.S);
  for (int64_t r = 0; r < g.R; ++r)
    for (int64_t s = 0; s < g.S; ++s) {
      tap_in[r * g.S + s] = (r * Wp + s) * kBlock;
      tap_w[r * g.S + s] = (r * g.S + s) * kWBlock;
    }
  ConvTile base{};
  base.in_cb = Hp * Wp * kBlock;
  base.tap_in = tap_in.data();
  base.tap_w = tap_w.data();
  base.ntaps = static_cast<int>(g.R * g.S);
  base.Cb = static_cast<int>(g.Cb);
  base.w_cb = g.R * g.S * kWBlock;
  base.w_kb = g.Cb * base.w_cb;
  const int64_t span = (g.Q - 1) * g.sw + g.S;  // input pixels an output row reads
  auto in_at = [&](int64_t n, int64_t p, int64_t q0) {
    return xp + ((n * g.Cb * Hp) + p * g.sh) * Wp * kBlock + q0 * g.sw * kBlock;
  };
  auto ahead = [&](int64_t n, int64_t p, int64_t q0, int64_t qt) {
    // the input rows output row p + d reads and row p + d - 1 did not (image n, or a later one)
    auto rows_ahead = [&](int64_t d, int64_t& n1, int64_t& p1, int64_t& lo, int64_t& hi) {
      n1 = n + (p + d) / g.P;
      p1 = (p + d) % g.P;
      lo = p1 == 0 ? 0 : std::max(p1 * g.sh, (p1 - 1) * g.sh + g.R);
      hi = p1 * g.sh + g.R;
      return n1 < g.N;
    };
    int64_t n1, p1, lo, hi;
    if (g.sh == 1 || g.S == 1) {
      // with the first tile of row p: the input rows row p + 1 reads first, and its output lines
      // (a 1x1 strided layer reads a quarter of the lines: asked for per tile it ran 0.7x)
      if (q0 != 0 || !rows_ahead(1, n1, p1, lo, hi)) return;
      if (hi > lo)
        prefetch_rows<false>(xp + (n1 * g.Cb * Hp + lo) * Wp * kBlock, g.Cb, Hp * Wp * kBlock, hi - lo,
                             Wp * kBlock, span, g.S == 1 ? g.sw : 1);
      prefetch_rows<true>(yb + (n1 * g.Kb * g.P + p1) * g.Q * kBlock, g.Kb, g.P * g.Q * kBlock, 1, 0, g.Q);
      return;
    }
    // Strided: each tile asks for its own columns of the input rows the next output row reads
    // first, and for its output lines there. A stride-2 row reads two fresh input rows (the
    // stride-1 row one, about half as wide): ~68 lines per 8 x 32 tile pair at 16 -> 32 channels,
    // which the caches do not bring in time unasked (docs/KERNELS.md, the stride-2 layers).
    if (!rows_ahead(1, n1, p1, lo, hi)) return;
    const int64_t c0 = q0 * g.sw, step = g.S == 1 ? g.sw : 1;
    const int64_t c1 = std::min(Wp, (q0 + qt - 1) * g.sw + g.S);
    if (hi > lo)
      for (int64_t cb = 0; cb < g.Cb; ++cb)
        prefetch_rows<false>(xp + ((n1 * g.Cb + cb) * Hp + lo) * Wp * kBlock + c0 * kBlock, 1, 0, hi - lo,
                             Wp * kBlock, c1 - c0, step);
    prefetch_rows<true>(yb + (n1 * g.Kb * g.P + p1) * g.Q * kBlock + q0 * kBlock, g.Kb, g.P * g.Q * kBlock, 1, 0,
                        std::min(qt, g.Q - q0));
  };
  fwd_tiles(isa, g, base, false, in_at, ahead, wf, bias, yb, relu, stats);
}

// The zero border dy needs for the data gradient's phases: rows p = i + dp with
// dp = (a + ph - r) / sh over the phases a and the taps r that reach them.
struct Pads {
  int64_t top, bottom;
};
Pads dy_pads(int64_t H, int64_t R, int64_t sh, int64_t ph, int64_t P) {
  Pads d{0, 0};
  for (int64_t a = 0; a < sh && a < H; ++a) {
    const int64_t rows = (H - a + sh - 1) / sh;
    for (int64_t r = 0; r < R; ++r) {
      const int64_t num = a + ph - r;
      if (((num % sh) + sh) % sh) continue;
      const int64_t dp = num >= 0 ? num / sh : -((-num) / sh);
      d.top = std::max(d.top, -dp);
      d.bottom = std::max(d.bottom, rows - 1 + dp - (P - 1));
    }
  }
  return d;
}

// The border dy is read with: the pads of dy_pads (hdy < 0), or a symmetric halo of hdy pixels
// (the caller checked it covers them).
std::pair<Pads, Pads> dy_frame(const Geom& g, int64_t hdy) {
  if (hdy >= 0) return {Pads{hdy, hdy}, Pads{hdy, hdy}};
  return {dy_pads(g.H, g.R, g.sh, g.ph, g.P), dy_pads(g.W, g.S, g.sw, g.pw, g.Q)};
}

// dyp: [N][Kb][pt+P+pb][pl+Q+pr][16] with the pads of dy_frame; dxb: [N][Cb][H][W][16];
// wd: transposed weight blocks.
// bn (or null): the consuming batchnorm's sums (BnGradSums), from the tiles' epilogues; bnc: its
// per-block constants [Cb][mean 16][a 16][b 16].
void bwd_data_blocked(const Isa& isa, const Geom& g, const float* dyp, Pads ph_, Pads pw_,
                      const float* wd, float* dxb, bool accumulate, const BnGradSums* bn, const float* bnc) {
  const int64_t Pp = ph_.top + g.P + ph_.bottom, Qp = pw_.top + g.Q + pw_.bottom;
  ConvTile base{};
  base.in_cb = Pp * Qp * kBlock;
  base.Cb = static_cast<int>(g.Kb);
  base.w_cb = g.R * g.S * kWBlock;
  base.w_kb = g.Kb * base.w_cb;
  base.out_px = g.sw * kBlock;
  base.out_kb = g.H * g.W * kBlock;
  base.accumulate = accumulate;
  // one tile set per stride phase (a, b), each with its own taps
  const int64_t na = std::min(g.sh, g.H), nb = std::min(g.sw, g.W);
  std::vector<std::vector<int64_t>> tap_in(na * nb), tap_w(na * nb);
  std::vector<TileSet> sets;
  int64_t dp_lo = 0, dp_hi = 0;  // the dy rows (from row index i) a row index's tiles read
  for (int64_t a = 0; a < na; ++a)
    for (int64_t b = 0; b < nb; ++b) {
      auto& ti = tap_in[a * nb + b];
      auto& tw = tap_w[a * nb + b];
      for (int64_t r = 0; r < g.R; ++r)
        for (int64_t s = 0; s < g.S; ++s) {
          const int64_t nr = a + g.ph - r, ns = b + g.pw - s;
          if ((((nr % g.sh) + g.sh) % g.sh) || (((ns % g.sw) + g.sw) % g.sw)) continue;
          const int64_t dp = nr >= 0 ? nr / g.sh : -((-nr) / g.sh);
          const int64_t dq = ns >= 0 ? ns / g.sw : -((-ns) / g.sw);
          dp_lo = std::min(dp_lo, dp);
          dp_hi = std::max(dp_hi, dp);
          ti.push_back(((dp + ph_.top) * Qp + dq + pw_.top) * kBlock);
          tw.push_back((r * g.S + s) * kWBlock);
        }
      const int64_t rows = (g.H - a + g.sh - 1) / g.sh, cols = (g.W - b + g.sw - 1) / g.sw;
      ConvTile pb = base;
      pb.tap_in = ti.data();
      pb.tap_w = tw.data();
      pb.ntaps = static_cast<int>(ti.size());
      // accumulating, a phase no tap reaches adds nothing (its set keeps no tiles), unless its
      // pixels' final values feed the batchnorm sums
      sets.push_back({tiling(isa, g.Cb, cols, 1), pb, accumulate && ti.empty() && !bn ? 0 : rows, cols, g.Cb, 1});
    }
  const int64_t rows = (g.H + g.sh - 1) / g.sh;  // row indices (phase 0 has the most)
  // with the first tile of row index i: the dy rows row index i + 1 reads and i did not, and its
  // dx rows
  auto ahead = [&](int64_t n, int64_t i) {
    if (++i == rows) ++n, i = 0;
    if (n == g.N) return;
    const int64_t lo = std::max<int64_t>(0, i + (i == 0 ? dp_lo : dp_hi) + ph_.top);
    const int64_t hi = std::min(Pp, i + dp_hi + ph_.top + 1);
    if (hi > lo)
      prefetch_rows<false>(dyp + (n * g.Kb * Pp + lo) * Qp * kBlock, g.Kb, Pp * Qp * kBlock, hi - lo,
                           Qp * kBlock, Qp);
    prefetch_rows<true>(dxb + (n * g.Cb * g.H + g.sh * i) * g.W * kBlock, g.Cb, g.H * g.W * kBlock,
                        std::min(g.sh, g.H - g.sh * i), g.W * kBlock, g.W);
    if (bn) {  // the batchnorm input's rows the sums epilogue reads (the hardware's prefetch came late)
      const int64_t Hx = g.H + 2 * bn->hx, Wx = g.W + 2 * bn->hx;
      prefetch_rows<false>(bn->x + ((n * g.Cb * Hx) + g.sh * i + bn->hx) * Wx * kBlock + bn->hx * kBlock, g.Cb,
                           Hx * Wx * kBlock, std::min(g.sh, g.H - g.sh * i), Wx * kBlock, g.W);
    }
  };
  // the batchnorm sums' tile partials: [n][row index][phase][pixel tile][Cb][sum 16, sum 16]
  // (slots of a phase with fewer rows or tiles than the most stay zero)
  int64_t maxq = 0;
  for (const TileSet& ts : sets) maxq = std::max(maxq, ts.t.qtiles);
  const int64_t nslots = g.N * rows * static_cast<int64_t>(sets.size()) * maxq;
  float* part = bn ? buffer(kPartial, nslots * g.Cb * 2 * kBlock) : nullptr;
  if (part && sets.size() > 1) std::fill(part, part + nslots * g.Cb * 2 * kBlock, 0.f);
  const int64_t Hx = bn ? g.H + 2 * bn->hx : 0, Wx = bn ? g.W + 2 * bn->hx : 0;
  run_tiles(isa, sets, g.N,
            [&](ConvTile& tl, size_t k, int64_t n, int64_t i, int64_t cb0, int64_t j0) {
              if (k == 0 && cb0 == 0 && j0 == 0) ahead(n, i);
              const int64_t a = static_cast<int64_t>(k) / nb, b = static_cast<int64_t>(k) % nb;
              tl.in = dyp + (n * g.Kb * Pp + i) * Qp * kBlock + j0 * kBlock;
              tl.w = wd + cb0 * tl.w_kb;
              tl.out = dxb + ((n * g.Cb + cb0) * g.H + a + g.sh * i) * g.W * kBlock +
                       (b + g.sw * j0) * kBlock;
              if (part) {
                const int64_t slot = ((n * rows + i) * static_cast<int64_t>(sets.size()) + static_cast<int64_t>(k)) *
                                         maxq + j0 / sets[k].t.qt;
                tl.bn_sums = part + (slot * g.Cb + cb0) * 2 * kBlock;
                tl.bn_x = bn->x + ((n * g.Cb + cb0) * Hx + a + g.sh * i + bn->hx) * Wx * kBlock +
                          (b + g.sw * j0 + bn->hx) * kBlock;
                tl.bn_x_kb = Hx * Wx * kBlock;
                tl.bn_c = bnc + cb0 * 3 * kBlock;
                tl.bn_relu = bn->beta != nullptr;
              }
            }, false, bn != nullptr);
  if (part) reduce_stats(part, nslots, g.Cb, g.C, bn->sums);
}

// The per-block constants of the batchnorm sums' epilogue, [Cb][mean 16][a 16][b 16] (pad lanes 0):
// a and b as blocked.cpp's affine_of forms them from the float mean and invstd, so the ReLU mask is
// the batchnorm's own bit for bit.
void bn_constants(const BnGradSums& bn, int64_t C, float* out) {
  std::fill(out, out + blocks(C) * 3 * kBlock, 0.f);
  for (int64_t c = 0; c < C; ++c) {
    float* o = out + (c / kBlock) * 3 * kBlock + c % kBlock;
    o[0] = bn.mean[c];
    if (bn.beta) {
      const double ac = static_cast<double>(bn.gamma[c]) * bn.invstd[c];
      o[kBlock] = static_cast<float>(ac);
      o[2 * kBlock] = static_cast<float>(bn.beta[c] - static_cast<double>(bn.mean[c]) * ac);
    }
  }
}

// The threads of a weight gradient: out (psz floats: the dw blocks, then the bias gradient's
// sums of dy) = the sum of private partials, added in partial order. Each thread gets a partial
// and share(n0, n1, p0, p1, mine) of the sweep: a contiguous run of images with all output rows
// when there are at least as many images as threads, else every image with a contiguous run of
// rows, so batch 1 keeps both cores busy; with fewer rows than threads too, every thread runs
// items(part), which deals (output block, ...) items out with an omp for into the one partial.
template <class Share, class Items>
void run_wgrad(const Geom& g, int64_t psz, float* out, Share share, Items items) {
  const int nt = num_threads();
  const bool by_image = g.N >= nt, by_rows = !by_image && g.P >= nt;
  const int parts = by_image || by_rows ? nt : 1;
  float* part = buffer(kPartial, parts * psz);
  std::memset(part, 0, sizeof(float) * parts * psz);
#pragma omp parallel num_threads(nt)
  {
    const int th = omp_get_thread_num();
    const int team = omp_get_num_threads();  // may be fewer than asked for
    if (by_image)
      share(g.N * th / team, g.N * (th + 1) / team, 0, g.P, part + th * psz);
    else if (by_rows)
      share(0, g.N, g.P * th / team, g.P * (th + 1) / team, part + th * psz);
    else
      items(part);
#pragma omp barrier
#pragma omp for schedule(static)
    for (int64_t i = 0; i < psz; ++i) {
      float v = 0.f;
      for (int u = 0; u < parts; ++u) v += part[u * psz + i];
      out[i] = v;
    }
  }
}

// dwb [Kb][Cb][R][S][16 c][16 k] = sum over the batch (overwritten), then Kb*16 sums of dy (the
// bias gradient). xp, hxh, hxw as in the forward; dy's interior starts at row pt, column pl of
// dyp ([N][Kb][Pp][Qp][16]).
void bwd_weight_blocked(const Isa& isa, const Geom& g, const float* xp, int64_t hxh, int64_t hxw,
                        const float* dyp, int64_t Pp, int64_t Qp, int64_t pt, int64_t pl, float* dwb) {
  const int64_t Hp = g.H + 2 * hxh, Wp = g.W + 2 * hxw;
  const float* x0 = xp;  // image 0's first line (the halo included)
  xp += ((hxh - g.ph) * Wp + (hxw - g.pw)) * kBlock;
  const int64_t wsz = g.Kb * g.Cb * g.R * g.S * kWBlock;
  const int64_t kvw = std::min<int64_t>(isa.wgrad_kv, g.Kb), kgroups = (g.Kb + kvw - 1) / kvw;
  // images [n, n + images), output rows [p0, p1); the first tap of input block 0 also sums the
  // bias gradient (every tap's sweep reads all of the share's dy)
  auto tile = [&](int64_t n, int64_t images, int64_t p0, int64_t p1, int64_t kb, int64_t cb, int64_t r,
                  int64_t s, float* dw) {
    WgradTile a;
    a.kv = static_cast<int>(std::min(kvw, g.Kb - kb));
    a.dy_kb = Pp * Qp * kBlock;
    a.dw_kb = g.Cb * g.R * g.S * kWBlock;
    a.x = xp + ((n * g.Cb + cb) * Hp + r + p0 * g.sh) * Wp * kBlock + s * kBlock;
    a.x_row = Wp * kBlock;
    a.x_img = g.Cb * Hp * Wp * kBlock;
    a.dy = dyp + ((n * g.Kb + kb) * Pp + pt + p0) * Qp * kBlock + pl * kBlock;
    a.dy_row = Qp * kBlock;
    a.dy_img = g.Kb * Pp * Qp * kBlock;
    a.images = images;
    a.P = p1 - p0;
    a.Q = g.Q;
    a.sh = g.sh;
    a.sw = g.sw;
    a.dw = dw + (((kb * g.Cb + cb) * g.R + r) * g.S + s) * kWBlock;
    a.db = cb == 0 && r == 0 && s == 0 ? dw + wsz + kb * kBlock : nullptr;
    isa.wgrad(a);
  };
  run_wgrad(g, wsz + g.Kb * kBlock, dwb, [&](int64_t lo, int64_t hi, int64_t p0, int64_t p1, float* mine) {
    // A thread's images in groups of about 256 output pixels per sweep, so that on small images
    // the 16 accumulators are not loaded and stored (and the kernel called) for every 64 pixels:
    // 8 x 8 images gained about 5% (single thread, 175-189 -> 191-200 GFLOP/s). Sweeps of 128 to
    // 512 pixels within a 32 x 32 image (dy and x of a sweep in L1 for all taps) were 0-15% slower
    // than whole images.
    const int64_t group = std::max<int64_t>(1, 256 / std::max<int64_t>(1, (p1 - p0) * g.Q));
    // While a group of images runs, each of its tiles asks for an equal slice of the next group's
    // x and dy lines (whole images: the thread's share holds all rows); the hardware alone left
    // a stride-2 sweep, which reads every other pixel, waiting on memory at each image's first taps.
    const int64_t per_group = kgroups * g.Cb * g.R * g.S;
    const int64_t ximg = g.Cb * Hp * Wp, dyimg = g.Kb * Pp * Qp;  // lines (pixels) per image
    // (not where the taps skip pixels, as a 1x1 stride-2 layer's do: asking for every line of its
    // images ran it 0.76x)
    const bool pf = p0 == 0 && p1 == g.P && (g.R > 1 || g.sh == 1) && (g.S > 1 || g.sw == 1);
    for (int64_t n = lo; n < hi; n += group) {
      const int64_t nn = n + group, ng = std::max<int64_t>(0, std::min(group, hi - nn));
      const int64_t xl = ng * ximg, total = xl + ng * dyimg, slice = (total + per_group - 1) / per_group;
      int64_t it = 0;
      for (int64_t kb = 0; kb < g.Kb; kb += kvw)
        for (int64_t cb = 0; cb < g.Cb; ++cb)
          for (int64_t r = 0; r < g.R; ++r)
            for (int64_t s = 0; s < g.S; ++s, ++it) {
              if (pf)
                for (int64_t l = it * slice; l < std::min(total, (it + 1) * slice); ++l)
                  __builtin_prefetch(l < xl ? x0 + (nn * ximg + l) * kBlock
                                            : dyp + (nn * dyimg + l - xl) * kBlock, 0, 3);
              tile(n, std::min(group, hi - n), p0, p1, kb, cb, r, s, mine);
            }
    }
  }, [&](float* part) {
#pragma omp for schedule(static)
    for (int64_t it = 0; it < kgroups * g.Cb * g.R; ++it)
      for (int64_t s = 0; s < g.S; ++s)
        tile(0, g.N, 0, g.P, it / (g.Cb * g.R) * kvw, (it / g.R) % g.Cb, it % g.R, s, part);
  });
}


// ---- the stem: a convolution of few input channels, from an NCHW input ----
// Its input is the network's NCHW input, copied once into zero-bordered planes (xp); the taps
// run over (channel, r, s), one channel per input pixel (CI = 1), so none of the multiplies is by
// a padding lane. Weights: [Kb][C][R][S][16 k]; the output is blocked like every other layer's.

// x (planes of H x W) -> xp (planes of (H + 2ph) x (W + 2pw), zero border).
void pad_planes(const float* x, float* xp, int64_t planes, int64_t H, int64_t W, int64_t ph, int64_t pw) {
  const int64_t Hp = H + 2 * ph, Wp = W + 2 * pw;
#pragma omp parallel for num_threads(num_threads()) schedule(static)
  for (int64_t i = 0; i < planes; ++i) {
    float* o = xp + i * Hp * Wp;
    std::memset(o, 0, sizeof(float) * ph * Wp);
    for (int64_t h = 0; h < H; ++h) {
      float* row = o + (ph + h) * Wp;
      std::fill(row, row + pw, 0.f);
      std::memcpy(row + pw, x + (i * H + h) * W, sizeof(float) * W);
      std::fill(row + pw + W, row + Wp, 0.f);
    }
    std::memset(o + (ph + H) * Wp, 0, sizeof(float) * ph * Wp);
  }
}

// The taps of the stem: offsets (channel, r, s) in the zero-bordered planes, padded with
// `extra` zeros (wgrad_stem reads a whole group's entries).
std::vector<int64_t> stem_taps(const Geom& g, int64_t extra) {
  const int64_t Hp = g.H + 2 * g.ph, Wp = g.W + 2 * g.pw;
  std::vector<int64_t> taps(g.C * g.R * g.S + extra, 0);
  for (int64_t c = 0; c < g.C; ++c)
    for (int64_t r = 0; r < g.R; ++r)
      for (int64_t s = 0; s < g.S; ++s) taps[(c * g.R + r) * g.S + s] = (c * Hp + r) * Wp + s;
  return taps;
}

void stem_fwd(const Isa& isa, const Geom& g, const float* xp, const float* ws, const float* bias,
              float* yb, bool relu, double* stats) {
  const int64_t Hp = g.H + 2 * g.ph, Wp = g.W + 2 * g.pw, crs = g.C * g.R * g.S;
  const std::vector<int64_t> tap_in = stem_taps(g, 0);
  std::vector<int64_t> tap_w(crs);
  for (int64_t i = 0; i < crs; ++i) tap_w[i] = i * kBlock;
  ConvTile base{};
  base.tap_in = tap_in.data();
  base.tap_w = tap_w.data();
  base.ntaps = static_cast<int>(crs);
  base.Cb = 1;
  base.w_kb = crs * kBlock;
  fwd_tiles(isa, g, base, true, [&](int64_t n, int64_t p, int64_t q0) {
    return xp + (n * g.C * Hp + p * g.sh) * Wp + q0 * g.sw;
  }, [](int64_t, int64_t, int64_t, int64_t) {}, ws, bias, yb, relu, stats);
}

// dwt [Kb][C*R*S][16 k] = sum over the batch (overwritten), then Kb*16 sums of dy (the bias
// gradient); dy as in bwd_weight_blocked. One output row at a time, every tap group in turn, so
// the row of dy is read from memory once and from L1 by the other groups; the first group also
// sums it for the bias.
void stem_bwd_weight(const Isa& isa, const Geom& g, const float* xp, const float* dyp, int64_t Pp,
                     int64_t Qp, int64_t pt, int64_t pl, float* dwt) {
  const int64_t Hp = g.H + 2 * g.ph, Wp = g.W + 2 * g.pw, crs = g.C * g.R * g.S;
  const int G = isa.stem_taps;
  const int64_t ngroups = (crs + G - 1) / G, wsz = g.Kb * crs * kBlock;
  const std::vector<int64_t> taps = stem_taps(g, G);
  // images [n, n + images), output rows [p0, p1) of output block kb, tap groups [g0, g1), into dw
  auto rows = [&](int64_t n, int64_t images, int64_t p0, int64_t p1, int64_t kb, int64_t g0, int64_t g1,
                  float* dw) {
    for (int64_t i = n; i < n + images; ++i)
      for (int64_t p = p0; p < p1; ++p)
        for (int64_t grp = g0; grp < g1; ++grp)
          isa.wgrad_stem(xp + i * g.C * Hp * Wp + p * g.sh * Wp, taps.data() + grp * G,
                         static_cast<int>(std::min<int64_t>(G, crs - grp * G)), g.sw,
                         dyp + ((i * g.Kb + kb) * Pp + pt + p) * Qp * kBlock + pl * kBlock, g.Q,
                         dw + (kb * crs + grp * G) * kBlock, grp == 0 ? dw + wsz + kb * kBlock : nullptr);
  };
  run_wgrad(g, wsz + g.Kb * kBlock, dwt, [&](int64_t lo, int64_t hi, int64_t p0, int64_t p1, float* mine) {
    for (int64_t n = lo; n < hi; ++n)
      for (int64_t kb = 0; kb < g.Kb; ++kb) rows(n, 1, p0, p1, kb, 0, ngroups, mine);
  }, [&](float* part) {
#pragma omp for schedule(static)
    for (int64_t it = 0; it < g.Kb * ngroups; ++it)
      rows(0, g.N, 0, g.P, it / ngroups, it % ngroups, it % ngroups + 1, part);
  });
}

}  // namespace
}  // namespace direct

void reduce_block_stats(const float* part, int64_t parts, int64_t Kb, int64_t K, double* stats) {
  direct::reduce_stats(part, parts, Kb, K, stats);
}
void reduce_block_stats(const double* part, int64_t parts, int64_t Kb, int64_t K, double* stats) {
  direct::reduce_stats(part, parts, Kb, K, stats);
}

using direct::kBlock;

namespace {
// A 1x1 stride-1 unpadded convolution whose blocked arrays carry no halo is a product over the
// pixels: an image's H x W pixels are contiguous in each channel block, so it runs as one row of
// H*W pixels. On small maps (4 x 4, 2 x 2: most of a CIFAR MobileNet's pointwise FLOPs) a row is
// otherwise too short for a full register tile (4 pixels x 2 blocks: 8 accumulators, where the
// micro-kernels hold 24), and the weight gradient's sweeps are row loops of 2-4 pixels.
// Rows of 16 pixels and more already fill the tiles (and are prefetched row by row), so they stay.
bool flat_pointwise(int64_t& H, int64_t& W, int64_t R, int64_t S, int64_t sh, int64_t sw, int64_t ph,
                    int64_t pw, int64_t halo) {
  if (R != 1 || S != 1 || sh != 1 || sw != 1 || ph != 0 || pw != 0 || halo != 0 || W >= 16) return false;
  W *= H;
  H = 1;
  return true;
}
}  // namespace

void set_conv2d_isa(const std::string& name) {
  using namespace direct;
  const Isa* isa = nullptr;
  if (name == "auto") {
    g_forced = nullptr;
    return;
  }
  FT_CHECK(name == "avx512" || name == "avx2" || name == "portable",
           "set_conv2d_isa(name): expected 'auto', 'avx512', 'avx2' or 'portable', got '" << name << "'");
  if (name == "portable") {
    isa = isa_portable();
  } else {
    isa = name == "avx512" ? isa_avx512() : isa_avx2();
    FT_CHECK(isa != nullptr, "set_conv2d_isa(name): '" << name << "' was not compiled into this build");
    FT_CHECK(cpu_runs(name), "set_conv2d_isa(name): this CPU does not support '" << name << "'");
  }
  g_forced = isa;
}

std::string conv2d_isa() { return direct::current_isa()->name; }

void conv2d_to_blocked(const float* x, float* xb, int64_t N, int64_t C, int64_t H, int64_t W,
                       int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
  direct::to_blocked(x, xb, N, C, H, W, pt, pb, pl, pr);
}

void conv2d_from_blocked(const float* xb, float* x, int64_t N, int64_t C, int64_t H, int64_t W) {
  direct::from_blocked(xb, x, N, C, H, W);
}

void conv2d_blocked_dy_pads(int64_t H, int64_t W, int64_t R, int64_t S, int64_t sh, int64_t sw,
                            int64_t ph, int64_t pw, int64_t pads[4]) {
  const int64_t P = (H + 2 * ph - R) / sh + 1, Q = (W + 2 * pw - S) / sw + 1;
  const direct::Pads pv = direct::dy_pads(H, R, sh, ph, P), pq = direct::dy_pads(W, S, sw, pw, Q);
  pads[0] = pv.top;
  pads[1] = pv.bottom;
  pads[2] = pq.top;
  pads[3] = pq.bottom;
}

void conv2d_blocked_fwd(const float* xp, const float* w, const float* b, float* yb, int64_t N,
                        int64_t C, int64_t H, int64_t W, int64_t K, int64_t R, int64_t S, int64_t sh,
                        int64_t sw, int64_t ph, int64_t pw, bool relu, double* stats, int64_t hxh,
                        int64_t hxw) {
  using namespace direct;
  if (const int m = hxh == hxw ? winograd_blocked_tile("conv2d_blocked_fwd", N, C, H, W, K, R, S, sh, sw, ph, pw) : 0)
    return wino_blocked::run({xp, hxh, N, C, H, W, K, w, false, b, yb, relu, false, stats, m});
  flat_pointwise(H, W, R, S, sh, sw, ph, pw, std::max(hxh, hxw));
  const Geom g = geom(N, C, H, W, K, R, S, sh, sw, ph, pw);
  float* wf = buffer(kW, g.Kb * g.Cb * R * S * kWBlock);
  float* bias = buffer(kBias, g.Kb * kBlock);
  std::fill(bias, bias + g.Kb * kBlock, 0.f);
  std::copy(b, b + K, bias);
  weights_blocked(w, wf, K, C, R, S, false);
  fwd_blocked(*current_isa(), g, xp, hxh, hxw, wf, bias, yb, relu, stats);
}

void conv2d_blocked_bwd_data(const float* dyp, const float* w, float* dxb, int64_t N, int64_t C,
                             int64_t H, int64_t W, int64_t K, int64_t R, int64_t S, int64_t sh,
                             int64_t sw, int64_t ph, int64_t pw, int64_t hdy, bool accumulate,
                             const BnGradSums* bn) {
  using namespace direct;
  std::vector<float> bnc;
  if (bn) {
    bnc.resize(blocks(C) * 3 * kBlock);
    bn_constants(*bn, C, bnc.data());
  }
  // a 3x3 stride-1 padding-1 data gradient reads dy with one pixel of zeros all round (its
  // conv2d_blocked_dy_pads), so hdy = -1 is a halo of 1
  if (const int m = winograd_blocked_tile("conv2d_blocked_bwd_data", N, C, H, W, K, R, S, sh, sw, ph, pw)) {
    wino_blocked::Args a{dyp, hdy < 0 ? 1 : hdy, N, K, H, W, C, w, true, nullptr, dxb, false, accumulate,
                         bn ? bn->sums : nullptr, m};
    if (bn) {
      a.bn_x = bn->x;
      a.bn_hx = bn->hx;
      a.bn_c = bnc.data();
      a.bn_relu = bn->beta != nullptr;
    }
    return wino_blocked::run(a);
  }
  // (the batchnorm input's halo counts: flattening the rows needs every array's rows back to back)
  flat_pointwise(H, W, R, S, sh, sw, ph, pw, std::max<int64_t>({hdy, 0, bn ? bn->hx : 0}));
  const Geom g = geom(N, C, H, W, K, R, S, sh, sw, ph, pw);
  const auto [pv, pq] = dy_frame(g, hdy);
  float* wd = buffer(kW, g.Kb * g.Cb * R * S * kWBlock);
  weights_blocked(w, wd, K, C, R, S, true);
  bwd_data_blocked(*current_isa(), g, dyp, pv, pq, wd, dxb, accumulate, bn, bnc.data());
}

void conv2d_blocked_bwd_weight(const float* xp, const float* dyp, float* dw, float* db, int64_t N,
                               int64_t C, int64_t H, int64_t W, int64_t K, int64_t R, int64_t S,
                               int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t hxh,
                               int64_t hxw, int64_t hdy) {
  using namespace direct;
  if (const int m = hxh == hxw ? winograd_blocked_tile("conv2d_blocked_bwd_weight", N, C, H, W, K, R, S, sh, sw, ph, pw) : 0)
    return wino_blocked::run_wgrad({xp, hxh, dyp, hdy < 0 ? 1 : hdy, N, C, H, W, K, dw, db, m});
  flat_pointwise(H, W, R, S, sh, sw, ph, pw, std::max({hxh, hxw, hdy}));
  const Geom g = geom(N, C, H, W, K, R, S, sh, sw, ph, pw);
  const auto [pv, pq] = dy_frame(g, hdy);
  const int64_t wsz = g.Kb * g.Cb * R * S * kWBlock;
  float* dwb = buffer(kW, wsz + g.Kb * kBlock);
  bwd_weight_blocked(*current_isa(), g, xp, hxh, hxw, dyp, pv.top + g.P + pv.bottom, pq.top + g.Q + pq.bottom,
                     pv.top, pq.top, dwb);
#pragma omp parallel for num_threads(num_threads()) schedule(static)
  for (int64_t k = 0; k < K; ++k) {
    db[k] += dwb[wsz + k];
    for (int64_t c = 0; c < C; ++c)
      for (int64_t r = 0; r < R; ++r)
        for (int64_t s = 0; s < S; ++s)
          dw[((k * C + c) * R + r) * S + s] +=
              dwb[((((k / kBlock) * g.Cb + c / kBlock) * R + r) * S + s) * kWBlock +
                  (c % kBlock) * kBlock + k % kBlock];
  }
}

void conv2d_stem_fwd(const float* x, const float* w, const float* b, float* yb, int64_t N,
                     int64_t C, int64_t H, int64_t W, int64_t K, int64_t R, int64_t S, int64_t sh,
                     int64_t sw, int64_t ph, int64_t pw, bool relu, double* stats) {
  using namespace direct;
  const Geom g = geom(N, C, H, W, K, R, S, sh, sw, ph, pw);
  const int64_t crs = C * R * S;
  float* xp = buffer(kX, N * C * (H + 2 * ph) * (W + 2 * pw));
  float* ws = buffer(kW, g.Kb * crs * kBlock);
  float* bias = buffer(kBias, g.Kb * kBlock);
  pad_planes(x, xp, N * C, H, W, ph, pw);
  std::fill(ws, ws + g.Kb * crs * kBlock, 0.f);
  for (int64_t k = 0; k < K; ++k)
    for (int64_t i = 0; i < crs; ++i) ws[((k / kBlock) * crs + i) * kBlock + k % kBlock] = w[k * crs + i];
  std::fill(bias, bias + g.Kb * kBlock, 0.f);
  std::copy(b, b + K, bias);
  stem_fwd(*current_isa(), g, xp, ws, bias, yb, relu, stats);
}

void conv2d_stem_bwd_weight(const float* x, const float* dyp, float* dw, float* db, int64_t N,
                            int64_t C, int64_t H, int64_t W, int64_t K, int64_t R, int64_t S,
                            int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t hdy) {
  using namespace direct;
  const Geom g = geom(N, C, H, W, K, R, S, sh, sw, ph, pw);
  const auto [pv, pq] = dy_frame(g, hdy);
  const int64_t crs = C * R * S;
  float* xp = buffer(kX, N * C * (H + 2 * ph) * (W + 2 * pw));
  const int64_t wsz = g.Kb * crs * kBlock;
  float* dwt = buffer(kW, wsz + g.Kb * kBlock);
  pad_planes(x, xp, N * C, H, W, ph, pw);
  stem_bwd_weight(*current_isa(), g, xp, dyp, pv.top + g.P + pv.bottom, pq.top + g.Q + pq.bottom,
                  pv.top, pq.top, dwt);
  for (int64_t k = 0; k < K; ++k) {
    db[k] += dwt[wsz + k];
    for (int64_t i = 0; i < crs; ++i) dw[k * crs + i] += dwt[((k / kBlock) * crs + i) * kBlock + k % kBlock];
  }
}

// ---- 1x1 convolutions with padding 0 on NCHW arrays (any stride), no layout conversion ----
// A 1x1 layer does one multiply-add per input value and output channel, so converting NCHW to the
// blocked layout and back costs as much as its product (0.36-0.75x torch channels_last through the
// direct engine, docs/KERNELS.md). Here each image's pixels run along the vectors instead: the
// forward is y[n] (K x PQ) = w (K x C) * xs (C x PQ), xs the pixels the stride picks (gathered into
// a zero-tailed buffer of whole vectors), the data gradient dxs (C x PQ) = w^T dy[n] scattered back
// into dx (zero elsewhere), the weight gradient lane-wise dot products of dy's and xs's rows over
// the images, summed across the 16 lanes once at the end. Threads take whole images.
namespace {
using namespace direct;

struct PwGeom {
  int64_t P, Q, PQ, L, Lp;  // output rows, columns, pixels; vectors per padded row, its floats
};
PwGeom pw_geom(int64_t H, int64_t W, int64_t sh, int64_t sw) {
  const int64_t P = (H - 1) / sh + 1, Q = (W - 1) / sw + 1, L = (P * Q + kBlock - 1) / kBlock;
  return {P, Q, P * Q, L, L * kBlock};
}

// xs[c*ld + p*Q + q] = x[c][p*sh][q*sw] for nc planes of H x W, the tail [PQ, ld) zero.
void pw_gather(const float* x, int64_t nc, int64_t H, int64_t W, int64_t sh, int64_t sw, const PwGeom& g, float* xs,
               int64_t ld) {
  for (int64_t c = 0; c < nc; ++c) {
    float* o = xs + c * ld;
    const float* plane = x + c * H * W;
    for (int64_t p = 0; p < g.P; ++p) {
      const float* row = plane + p * sh * W;
      float* out = o + p * g.Q;
      if (sw == 1) {
        std::memcpy(out, row, sizeof(float) * g.Q);
      } else {
#pragma omp simd
        for (int64_t q = 0; q < g.Q; ++q) out[q] = row[q * sw];
      }
    }
    std::fill(o + g.PQ, o + ld, 0.f);
  }
}
}  // namespace

void conv2d_pointwise_fwd(const float* x, const float* w, const float* b, float* y, int64_t N, int64_t C, int64_t H,
                          int64_t W, int64_t K, int64_t sh, int64_t sw, bool relu) {
  const Isa& isa = *current_isa();
  const PwGeom g = pw_geom(H, W, sh, sw);
  // rows of whole vectors are written in place; otherwise through a buffer, then copied
  const bool in_place = g.PQ % kBlock == 0;
#pragma omp parallel for num_threads(num_threads()) schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    float* xs = buffer(kX, C * g.Lp);
    pw_gather(x + n * C * H * W, C, H, W, sh, sw, g, xs, g.Lp);
    float* yn = y + n * K * g.PQ;
    float* out = in_place ? yn : buffer(kY, K * g.Lp);
    const int64_t ldo = in_place ? g.PQ : g.Lp;
    isa.pw_rows(w, C, K, C, xs, g.Lp, g.L, out, ldo);
    for (int64_t k = 0; k < K; ++k) {  // the bias (and ReLU) while the image's rows are in L1
      const float* src = out + k * ldo;
      float* yk = yn + k * g.PQ;
      const float bk = b[k];
      if (relu) {
#pragma omp simd
        for (int64_t i = 0; i < g.PQ; ++i) yk[i] = std::max(src[i] + bk, 0.f);
      } else {
#pragma omp simd
        for (int64_t i = 0; i < g.PQ; ++i) yk[i] = src[i] + bk;
      }
    }
  }
}

void conv2d_pointwise_bwd_data(const float* dy, const float* w, float* dx, int64_t N, int64_t C, int64_t H, int64_t W,
                               int64_t K, int64_t sh, int64_t sw) {
  const Isa& isa = *current_isa();
  const PwGeom g = pw_geom(H, W, sh, sw);
  std::vector<float> wt(C * K);  // w^T: C x K
  for (int64_t k = 0; k < K; ++k)
    for (int64_t c = 0; c < C; ++c) wt[c * K + k] = w[k * C + c];
  const bool whole = g.PQ % kBlock == 0;  // dy's rows are whole vectors: read in place
#pragma omp parallel for num_threads(num_threads()) schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const float* d = dy + n * K * g.PQ;
    int64_t ldd = g.PQ;
    if (!whole) {
      float* dp = buffer(kX, K * g.Lp);
      for (int64_t k = 0; k < K; ++k) {
        std::copy(d + k * g.PQ, d + (k + 1) * g.PQ, dp + k * g.Lp);
        std::fill(dp + k * g.Lp + g.PQ, dp + (k + 1) * g.Lp, 0.f);
      }
      d = dp;
      ldd = g.Lp;
    }
    float* dxs = buffer(kY, C * g.Lp);
    isa.pw_rows(wt.data(), K, C, K, d, ldd, g.L, dxs, g.Lp);
    for (int64_t c = 0; c < C; ++c) {  // scattered back: the pixels no tap reads get zero
      float* plane = dx + (n * C + c) * H * W;
      const float* src = dxs + c * g.Lp;
      if (sh == 1 && sw == 1) {
        std::memcpy(plane, src, sizeof(float) * H * W);
        continue;
      }
      // row by row, each written while in L1 (a whole-plane clear first, then the scatter, read a
      // 32 x 32 plane back from L2: 128 x 16 x 32 x 32 0.67 -> 0.49 ms on one core)
      for (int64_t h = 0; h < H; ++h) {
        float* row = plane + h * W;
        std::memset(row, 0, sizeof(float) * W);
        if (h % sh || h / sh >= g.P) continue;
        const float* s = src + (h / sh) * g.Q;
        for (int64_t q = 0; q < g.Q; ++q) row[q * sw] = s[q];
      }
    }
  }
}

void conv2d_pointwise_bwd_weight(const float* x, const float* dy, float* dw, float* db, int64_t N, int64_t C,
                                 int64_t H, int64_t W, int64_t K, int64_t sh, int64_t sw) {
  const Isa& isa = *current_isa();
  const PwGeom g = pw_geom(H, W, sh, sw);
  const int nt = num_threads();
  const int64_t asz = K * C * kBlock;
  // per thread: the lane sums [K][C][16] (float), then K bias sums (double)
  std::vector<float> acc(static_cast<size_t>(nt) * asz, 0.f);
  std::vector<double> bsum(static_cast<size_t>(nt) * K, 0.0);
  const bool whole = g.PQ % kBlock == 0;
  // images per call: about 256 pixels, so the accumulators are loaded and stored once per 16
  // vectors of each row rather than per image on small maps
  const int64_t group = std::max<int64_t>(1, std::min<int64_t>(16, 256 / g.Lp));
#pragma omp parallel num_threads(nt)
  {
    const int t = omp_get_thread_num(), team = omp_get_num_threads();
    float* mine = acc.data() + t * asz;
    double* bmine = bsum.data() + t * K;
    const int64_t lo = N * t / team, hi = N * (t + 1) / team;
    float* xs = buffer(kX, group * C * g.Lp);
    float* dp = whole ? nullptr : buffer(kY, group * K * g.Lp);
    for (int64_t n0 = lo; n0 < hi; n0 += group) {
      const int64_t images = std::min(group, hi - n0);
      for (int64_t i = 0; i < images; ++i) {
        pw_gather(x + (n0 + i) * C * H * W, C, H, W, sh, sw, g, xs + i * C * g.Lp, g.Lp);
        const float* d = dy + (n0 + i) * K * g.PQ;
        for (int64_t k = 0; k < K; ++k) {
          // a row's sum in float (vectorized; a double chain of P*Q dependent adds cost as much
          // as the products), the rows added in double
          float s = 0.f;
          const float* dk = d + k * g.PQ;
#pragma omp simd reduction(+ : s)
          for (int64_t j = 0; j < g.PQ; ++j) s += dk[j];
          bmine[k] += s;
          if (dp) {
            float* o = dp + (i * K + k) * g.Lp;
            std::copy(dk, dk + g.PQ, o);
            std::fill(o + g.PQ, o + g.Lp, 0.f);
          }
        }
      }
      if (dp)
        isa.pw_dots(dp, g.Lp, K * g.Lp, K, xs, g.Lp, C * g.Lp, C, g.L, images, mine);
      else
        isa.pw_dots(dy + n0 * K * g.PQ, g.PQ, K * g.PQ, K, xs, g.Lp, C * g.Lp, C, g.L, images, mine);
    }
  }
  // the partials in thread order: the same bits for a given thread count
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t kc = 0; kc < K * C; ++kc) {
    double s = 0.0;
    for (int u = 0; u < nt; ++u)
      for (int l = 0; l < kBlock; ++l) s += acc[u * asz + kc * kBlock + l];
    dw[kc] += static_cast<float>(s);
  }
  for (int64_t k = 0; k < K; ++k) {
    double s = 0.0;
    for (int u = 0; u < nt; ++u) s += bsum[u * K + k];
    db[k] += static_cast<float>(s);
  }
}

// The NCHW entry points: convert in, run on the blocked layout, convert out. The data and weight
// gradients share one blocked dy format (padded for the data gradient's phases).
// Whether an NCHW call of C input channels runs the stem kernels: below one block of channels, unless a
// Winograd algorithm on the blocked layout was forced (it then runs as asked, on padded channels).
static bool stem_nchw(int64_t C) {
  if (C >= direct::kStemMaxChannels) return false;
  const std::string algo = conv2d_algo();
  return algo == "auto" || algo == "direct";
}

void conv2d_direct_fwd(const float* x, const float* w, const float* b, float* y, int64_t N,
                       int64_t C, int64_t H, int64_t W, int64_t K, int64_t R, int64_t S, int64_t sh,
                       int64_t sw, int64_t ph, int64_t pw, bool relu) {
  using namespace direct;
  const Geom g = geom(N, C, H, W, K, R, S, sh, sw, ph, pw);
  float* yb = buffer(kY, N * g.Kb * g.P * g.Q * kBlock);
  if (stem_nchw(C)) {  // the network's stem kernels: no padding of C to 16 lanes (their buffers are kX, kW)
    conv2d_stem_fwd(x, w, b, yb, N, C, H, W, K, R, S, sh, sw, ph, pw, relu, nullptr);
    return from_blocked(yb, y, N, K, g.P, g.Q);
  }
  float* xp = buffer(kX, N * g.Cb * (H + 2 * ph) * (W + 2 * pw) * kBlock);
  to_blocked(x, xp, N, C, H, W, ph, ph, pw, pw);
  conv2d_blocked_fwd(xp, w, b, yb, N, C, H, W, K, R, S, sh, sw, ph, pw, relu, nullptr, ph, pw);
  from_blocked(yb, y, N, K, g.P, g.Q);
}

void conv2d_direct_bwd_data(const float* dy, const float* w, float* dx, int64_t N, int64_t C,
                            int64_t H, int64_t W, int64_t K, int64_t R, int64_t S, int64_t sh,
                            int64_t sw, int64_t ph, int64_t pw) {
  using namespace direct;
  const Geom g = geom(N, C, H, W, K, R, S, sh, sw, ph, pw);
  int64_t pads[4];
  conv2d_blocked_dy_pads(H, W, R, S, sh, sw, ph, pw, pads);
  float* dyp = buffer(kY, N * g.Kb * (pads[0] + g.P + pads[1]) * (pads[2] + g.Q + pads[3]) * kBlock);
  float* dxb = buffer(kX, N * g.Cb * H * W * kBlock);
  to_blocked(dy, dyp, N, K, g.P, g.Q, pads[0], pads[1], pads[2], pads[3]);
  conv2d_blocked_bwd_data(dyp, w, dxb, N, C, H, W, K, R, S, sh, sw, ph, pw);
  from_blocked(dxb, dx, N, C, H, W);
}

void conv2d_direct_bwd_weight(const float* x, const float* dy, float* dw, float* db, int64_t N,
                              int64_t C, int64_t H, int64_t W, int64_t K, int64_t R, int64_t S,
                              int64_t sh, int64_t sw, int64_t ph, int64_t pw) {
  using namespace direct;
  const Geom g = geom(N, C, H, W, K, R, S, sh, sw, ph, pw);
  if (stem_nchw(C)) {  // the stem's weight gradient reads dy's interior only: no halo
    float* dyb = buffer(kY, N * g.Kb * g.P * g.Q * kBlock);
    to_blocked(dy, dyb, N, K, g.P, g.Q, 0, 0, 0, 0);
    return conv2d_stem_bwd_weight(x, dyb, dw, db, N, C, H, W, K, R, S, sh, sw, ph, pw, 0);
  }
  int64_t pads[4];
  conv2d_blocked_dy_pads(H, W, R, S, sh, sw, ph, pw, pads);
  float* xp = buffer(kX, N * g.Cb * (H + 2 * ph) * (W + 2 * pw) * kBlock);
  float* dyp = buffer(kY, N * g.Kb * (pads[0] + g.P + pads[1]) * (pads[2] + g.Q + pads[3]) * kBlock);
  to_blocked(x, xp, N, C, H, W, ph, ph, pw, pw);
  to_blocked(dy, dyp, N, K, g.P, g.Q, pads[0], pads[1], pads[2], pads[3]);
  conv2d_blocked_bwd_weight(xp, dyp, dw, db, N, C, H, W, K, R, S, sh, sw, ph, pw, ph, pw);
}

}  // namespace ft::cpu
