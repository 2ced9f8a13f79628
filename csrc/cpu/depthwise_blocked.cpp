// Depthwise convolution on the blocked layout (see depthwise_blocked.h): the driver. One OpenMP task
// per few output rows of one (image, channel block) plane for the forward and the strided data
// gradient (rows are independent, so the result does not depend on the thread count); the weight
// gradient runs tasks of (fixed range of images, fixed range of channel blocks) into private partial
// sums, added in a fixed order afterwards, so its bits do not depend on the thread count either.
//
// Memory traffic is each operand once: fwd reads x and writes y, bwd_data reads dy and writes dx,
// bwd_weight reads x and dy. The input halo is the padding (read in place, never copied); taps that
// fall past the halo are skipped, so any padding works. The kernels write their output's halo zeros
// (callers may allocate outputs with np.empty) and keep pad lanes (channels >= C) zero: the pad
// lanes of the packed weights are zero.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "depthwise.h"
#include "depthwise_blocked.h"
#include "fasttrain/cpu.h"

namespace ft::cpu {
namespace dwb {
namespace {

// The instruction set follows the direct convolution's choice (set_conv2d_isa forces both).
const Isa& current_isa() {
  const std::string name = conv2d_isa();
  const Isa* isa = name == "avx512" ? isa_avx512() : name == "avx2" ? isa_avx2() : nullptr;
  return isa ? *isa : *isa_portable();
}

int64_t blocks(int64_t c) { return (c + kBlock - 1) / kBlock; }

// w (C, 1, R, S) -> [Cb][R*S][16], pad lanes zero; flip: taps reversed (the stride-1 data gradient).
std::vector<float> pack_weights(const float* w, int64_t C, int64_t RS, bool flip) {
  std::vector<float> wb(blocks(C) * RS * kBlock, 0.f);
  for (int64_t c = 0; c < C; ++c)
    for (int64_t t = 0; t < RS; ++t)
      wb[((c / kBlock) * RS + t) * kBlock + c % kBlock] = w[c * RS + (flip ? RS - 1 - t : t)];
  return wb;
}

// A blocked plane of rows x cols interior pixels with a halo of `halo`: its row `row`'s halo
// columns, plus the whole top (row 0) or bottom (last row) halo rows, set to zero.
void zero_halo(float* plane, int64_t rows, int64_t cols, int64_t halo, int64_t row) {
  if (halo == 0) return;
  const int64_t ld = (cols + 2 * halo) * kBlock;
  float* r = plane + (halo + row) * ld;
  std::memset(r, 0, sizeof(float) * halo * kBlock);
  std::memset(r + (halo + cols) * kBlock, 0, sizeof(float) * halo * kBlock);
  if (row == 0) std::memset(plane, 0, sizeof(float) * halo * ld);
  if (row == rows - 1) std::memset(plane + (halo + rows) * ld, 0, sizeof(float) * halo * ld);
}

// The sums and sums of squares of the 16 lanes of rows [p0, p1) of an output plane (`o` at row p0's
// interior pixel 0) added into part[0..15] / part[16..31]: float over at most 16 pixels of a row,
// then double (the error stays within 16 float roundings of the sums of |y| and y^2).
void add_row_stats(const float* o, int64_t ld, int64_t rows, int64_t Q, double* part) {
  for (int64_t p = 0; p < rows; ++p)
    for (int64_t q0 = 0; q0 < Q; q0 += 16) {
      float s[kBlock] = {}, ss[kBlock] = {};
      for (int64_t q = q0; q < std::min(Q, q0 + 16); ++q) {
        const float* v = o + p * ld + q * kBlock;
        for (int i = 0; i < kBlock; ++i) {
          s[i] += v[i];
          ss[i] += v[i] * v[i];
        }
      }
      for (int i = 0; i < kBlock; ++i) {
        part[i] += s[i];
        part[kBlock + i] += ss[i];
      }
    }
}

// The last-level cache as Linux's sysfs lists it for cpu0 (index3: "32768K"); sysconf's figure can
// be the host's, not the VM's (384 MB against a 32 MB L3 on the bench machine); 32 MB without either.
inline int64_t llc_bytes() {
  static const int64_t bytes = [] {
    std::ifstream f("/sys/devices/system/cpu/cpu0/cache/index3/size");
    int64_t v = 0;
    char unit = 0;
    if (f >> v >> unit && v > 0) return unit == 'M' ? v << 20 : unit == 'K' ? v << 10 : v;
    return int64_t{32} << 20;
  }();
  return bytes;
}

// Whether a call moving `bytes` in all writes its output (at `out`) with non-temporal stores: when
// its operands do not fit the last-level cache, the output leaves the cache before anything reads
// it, and a plain store first reads each fresh line in. Used for the stride-1 data gradient's dx:
// 64x64x32x32 (36 MB against a 32 MB L3), the bench rows' line-aligned arrays, interleaved medians
// of 21 (dw_env_ab.py, load 1.7), streamed against plain: fused backward 1.16-1.23x (1 and 2
// threads), bwd_data alone 0.99-1.00x (its gain is the dy prefetch). Not for the forward's y: 1.25x
// and 1.27x at 1 thread (CPU time), but 0.89x, 1.00x, 1.01x and 1.10x at 2 threads, the bench's
// setting. Arrays that fit keep plain stores (NT stores in cache ran 0.43-0.59x in an earlier
// session).
inline bool stream_output(int64_t bytes, const float* out) {
  return bytes > llc_bytes() && reinterpret_cast<uintptr_t>(out) % 64 == 0;
}

// Asks for rows [lo, hi) (padded-plane coordinates, clipped to the plane) of a blocked plane, every line.
inline void prefetch_plane_rows(const float* plane, int64_t ld, int64_t rows, int64_t lo, int64_t hi) {
  lo = std::max<int64_t>(lo, 0), hi = std::min(hi, rows);
  for (int64_t r = lo; r < hi; ++r)
    for (int64_t i = 0; i < ld; i += kBlock) __builtin_prefetch(plane + r * ld + i);
  asm volatile("");  // a body of prefetches alone is "const" to GCC, which may delete the call (conv2d_direct.cpp)
}

// The input rows (padded coordinates: interior row + hin) that output rows [p0, p1) of g read: [lo, hi).
inline void fwd_in_rows(const Corr& g, int64_t p0, int64_t p1, int64_t& lo, int64_t& hi) {
  lo = p0 * g.sh - g.ph + g.hin, hi = (p1 - 1) * g.sh - g.ph + (g.R - 1) * g.dh + g.hin + 1;
}

// out rows (one task each) = the correlation g of every (image, block) plane of `in`. stats, if not
// null: per channel c < C the sum and sum of squares of out's interior, from per-task partials added
// in task order (so the same bits for any thread count), while the task's rows are still in cache.
void correlate_planes(const Isa& isa, const Corr& g, int64_t N, int64_t Cb, const float* in, const float* wb,
                      const float* bias, float* out, int64_t hout, bool relu, int64_t C = 0,
                      double* stats = nullptr) {
  const int64_t ldi = (g.W + 2 * g.hin) * kBlock, plane_i = (g.H + 2 * g.hin) * ldi;
  const int64_t ldo = (g.Q + 2 * hout) * kBlock, plane_o = (g.P + 2 * hout) * ldo, RS = g.R * g.S;
  // a task is a few rows of one plane: about 64 output pixels (whole planes of a 4 x 4 or 8 x 8 map)
  const int64_t rows = std::clamp<int64_t>(64 / std::max<int64_t>(g.Q, 1), 1, g.P), chunks = (g.P + rows - 1) / rows;
  std::vector<double> part(stats ? N * Cb * chunks * 2 * kBlock : 0, 0.0);
  // Planes larger than kPrefetchPlaneFloats at row stride 1: each task asks for the input rows the next
  // task reads first (1 thread, loaded, 64x64x32x32 fwd: 1.0-1.86x, median 1.2x; at row stride 2 a
  // task's rows are twice as many lines for the same work, and 128x32x32x32 s2 ran 0.74-0.93x; the
  // small planes 0.88-0.95x, where a task is a whole plane and the stream the hardware's)
  const int64_t rows_i = g.H + 2 * g.hin;
  const bool ahead = rows_i * ldi > kPrefetchPlaneFloats && g.sh == 1;
#pragma omp parallel for num_threads(num_threads()) schedule(static)
  for (int64_t task = 0; task < N * Cb * chunks; ++task) {
    const int64_t nc = task / chunks, p0 = task % chunks * rows, p1 = std::min(g.P, p0 + rows), cb = nc % Cb;
    if (ahead && task + 1 < N * Cb * chunks) {
      // the rows of task + 1 that this task does not read
      const int64_t t2 = task + 1, k2 = t2 % chunks, q0 = k2 * rows;
      int64_t lo, hi, plo, phi;
      fwd_in_rows(g, q0, std::min(g.P, q0 + rows), lo, hi);
      if (k2 > 0) fwd_in_rows(g, q0 - rows, q0, plo, phi), lo = std::max(lo, phi);
      prefetch_plane_rows(in + t2 / chunks * plane_i, ldi, rows_i, lo, hi);
    }
    float* po = out + nc * plane_o;
    float* rows_out = po + (hout + p0) * ldo + hout * kBlock;
    isa.fwd_rows(g, in + nc * plane_i + g.hin * ldi + g.hin * kBlock, ldi, wb + cb * RS * kBlock,
                 bias ? bias + cb * kBlock : nullptr, rows_out, ldo, p0, p1, relu);
    if (stats) add_row_stats(rows_out, ldo, p1 - p0, g.Q, part.data() + task * 2 * kBlock);
    for (int64_t p = p0; p < p1; ++p) zero_halo(po, g.P, g.Q, hout, p);
  }
  if (!stats) return;
  for (int64_t c = 0; c < C; ++c) {
    double s = 0.0, ss = 0.0;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < chunks; ++k) {
        const double* pt = part.data() + ((n * Cb + c / kBlock) * chunks + k) * 2 * kBlock + c % kBlock;
        s += pt[0];
        ss += pt[kBlock];
      }
    stats[c] = s;
    stats[C + c] = ss;
  }
}

using depthwise::strided_taps;

Corr forward_corr(int64_t H, int64_t W, int64_t hx, int64_t R, int64_t S, int64_t sh, int64_t sw, int64_t ph,
                  int64_t pw, int64_t dh, int64_t dw) {
  return interior_cols(Corr{H, W, hx, (H + 2 * ph - dh * (R - 1) - 1) / sh + 1,
                            (W + 2 * pw - dw * (S - 1) - 1) / sw + 1, R, S, sh, sw, ph, pw, dh, dw});
}


// The data gradient of one call, set up once (packed weights, tap tables) for bwd_data and the fused
// backward: at stride 1 dy correlated with the flipped filter, dy padded by the filter span minus
// the padding; strided, gathered per dx pixel from the taps that reach it.
// ahead (bwd_data): at stride 1, dy planes larger than kPrefetchPlaneFloats are prefetched
// kDgradAheadRows rows ahead of the rows being summed (64x64x32x32, 1 thread, CPU time, loaded,
// minima of 21 interleaved calls: 1.10 -> 0.77 ms; medians 1.27-1.43x in four runs). The fused
// backward passes false: there its weight gradient reads the same dy plane right after, and
// the prefetch measured 0.95-0.98x.
constexpr int64_t kDgradAheadRows = 2;

class DataGrad {
 public:
  DataGrad(const Isa& isa, const float* w, int64_t C, int64_t H, int64_t W, int64_t R, int64_t S, int64_t sh,
           int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw, int64_t halo_dy, int64_t halo_dx,
           bool ahead)
      : isa_(isa), unit_(sh == 1 && sw == 1), H_(H), W_(W), RS_(R * S), hdy_(halo_dy), hdx_(halo_dx) {
    const Corr f = forward_corr(H, W, 0, R, S, sh, sw, ph, pw, dh, dw);
    wb_ = pack_weights(w, C, RS_, unit_);
    if (unit_) {
      g_ = interior_cols(Corr{f.P, f.Q, halo_dy, H, W, R, S, 1, 1, dh * (R - 1) - ph, dw * (S - 1) - pw, dh, dw});

      if (ahead && (f.P + 2 * halo_dy) * (f.Q + 2 * halo_dy) * kBlock > kPrefetchPlaneFloats) g_.fwd_ahead = kDgradAheadRows;
    } else {
      row_taps_ = strided_taps(H, R, sh, ph, dh, f.P);
      col_taps_ = strided_taps(W, S, sw, pw, dw, f.Q);
      g_ = f;
      g_.row_taps = row_taps_.data();
      g_.col_taps = col_taps_.data();
    }
    ldy_ = (f.Q + 2 * halo_dy) * kBlock;
    plane_y_ = (f.P + 2 * halo_dy) * ldy_;
    ldx_ = (W + 2 * halo_dx) * kBlock;
    plane_x_ = (H + 2 * halo_dx) * ldx_;
  }
  DataGrad(const DataGrad&) = delete;  // g_ points into the tap tables
  DataGrad& operator=(const DataGrad&) = delete;

  // dx rows [h0, h1) of plane nc (block cb), and those rows' halo zeros
  void rows(const float* dyb, float* dxb, int64_t nc, int64_t cb, int64_t h0, int64_t h1) const {
    const float* dy = dyb + nc * plane_y_ + hdy_ * ldy_ + hdy_ * kBlock;
    const float* w = wb_.data() + cb * RS_ * kBlock;
    float* px = dxb + nc * plane_x_;
    float* out = px + (hdx_ + h0) * ldx_ + hdx_ * kBlock;
    if (unit_)
      isa_.fwd_rows(g_, dy, ldy_, w, nullptr, out, ldx_, h0, h1, false);
    else
      isa_.bwd_data_rows(g_, dy, ldy_, w, out, ldx_, h0, h1);
    for (int64_t h = h0; h < h1; ++h) zero_halo(px, H_, W_, hdx_, h);
  }
  // dx written with non-temporal stores (stride 1: the correlation's register-block rows; stride 2:
  // dgrad_s2_cols's whole blocks of column pairs) when the call moves `bytes` in all and dx starts on
  // a line (stream_output). Stride 2, fused backward of 128x32x32x32 s2 with the forward, 1 thread,
  // CPU time, loaded: 0.97-1.12x in five runs (dx is 4x dy there); bwd_data alone (21 MB) stays plain
  void stream_to(const float* dxb, int64_t bytes) { g_.nt = stream_output(bytes, dxb); }
  int64_t dx_bytes() const { return 4 * plane_x_; }
  int64_t dy_bytes() const { return 4 * plane_y_; }
  int64_t height() const { return H_; }
  // a task is a few rows of one plane: about 64 dx pixels (a whole 8 x 8 plane; one row from 64 columns on)
  int64_t task_rows() const { return std::clamp<int64_t>(64 / std::max<int64_t>(W_, 1), 1, H_); }

 private:
  const Isa& isa_;
  bool unit_;
  int64_t H_, W_, RS_, hdy_, hdx_, ldy_ = 0, plane_y_ = 0, ldx_ = 0, plane_x_ = 0;
  Corr g_{};
  std::vector<float> wb_;
  std::vector<int64_t> row_taps_, col_taps_;
};

// The weight gradient (accumulated into dwt, db) of tasks (range of images, range of channel
// blocks) into private partial sums added in a fixed order afterwards. data, if not null (the fused
// backward): each plane's data gradient into dxb first, so the weight gradient reads that plane's dy
// from cache.
// Planes of a 16 x 16 map or smaller, weight gradient alone: a task is one channel block over a range
// of images, its planes (a whole image apart) summed in registers a group at a time, each plane's
// lines prefetched while the one before is summed. Fused (data) or larger planes: a task walks its
// images in memory order, each
// image's planes of the task's blocks one after the other (one long stream of x and of dy; a task
// per block jumped a whole image between planes: 64x64x32x32, 2 threads, 0.75 -> 0.72 ms, the fused
// backward with the forward 2.31 -> 2.08 ms).
void weight_grad(const Isa& isa, const Corr& g0, const float* xb, const float* dyb, float* dwt, float* db,
                 int64_t N, int64_t C, int64_t halo_dy, const DataGrad* data, float* dxb) {
  const int64_t Cb = blocks(C), RS = g0.R * g0.S, A = (RS + 1) * kBlock;  // per block: taps + bias sums
  const int64_t ldx = (g0.W + 2 * g0.hin) * kBlock, plane_x = (g0.H + 2 * g0.hin) * ldx;
  const int64_t ldy = (g0.Q + 2 * halo_dy) * kBlock, plane_y = (g0.P + 2 * halo_dy) * ldy;
  const bool small = plane_x <= kPrefetchPlaneFloats, by_block = small && !data;
  Corr g = g0;
  if (data && !by_block) g.dy_ahead = plane_y;  // the plane after in memory: the next one of the task
  // The task grid (ng image ranges x cg block ranges) is chosen from the shape alone, never from the
  // thread count: the partial sums and the order they are added in are the same for any thread count.
  const int64_t ng = by_block ? std::min<int64_t>(N, std::max<int64_t>(1, (64 + Cb - 1) / Cb)) : std::min<int64_t>(N, 8);
  const int64_t cg = by_block ? Cb : std::min<int64_t>(Cb, (8 + ng - 1) / ng);
  // float sums over groups of whole planes of at least kFlushPixels output pixels, then added in
  // double: small maps would otherwise spend more on the flushes than on the sums
  constexpr int64_t kFlushPixels = 1024;
  const int64_t group = std::max<int64_t>(1, kFlushPixels / std::max<int64_t>(g.P * g.Q, 1));
  // part[image range][block][A]: each task fills its blocks' rows of its image range
  std::vector<double> part(ng * Cb * A, 0.0);
#pragma omp parallel for num_threads(num_threads()) schedule(static)
  for (int64_t task = 0; task < ng * cg; ++task) {
    // by_block: block-major (a thread takes whole blocks); which thread runs a task never changes its sums
    const int64_t kn = by_block ? task % ng : task / cg, kc = by_block ? task / ng : task % cg;
    const int64_t n0 = N * kn / ng, n1 = N * (kn + 1) / ng, c0 = Cb * kc / cg, c1 = Cb * (kc + 1) / cg;
    thread_local std::vector<float> acc;
    acc.assign((c1 - c0) * A, 0.f);
    double* out = part.data() + (kn * Cb + c0) * A;
    // `count` planes of one block from plane nc on (an image apart), summed into a
    const auto planes = [&](const Corr& gc, int64_t nc, int64_t count, float* a) {
      isa.wgrad_planes(gc, xb + nc * plane_x + g.hin * ldx + g.hin * kBlock, ldx, Cb * plane_x,
                       dyb + nc * plane_y + halo_dy * ldy + halo_dy * kBlock, ldy, Cb * plane_y, count, a);
    };
    Corr gnext = g;  // a group that is not the task's last: its last plane prefetches the next group's first
    gnext.next_plane = true;
    for (int64_t n = n0; n < n1; n += group) {
      const int64_t count = std::min(group, n1 - n);
      if (by_block) {  // one block (c1 = c0 + 1): the group's planes in one call
        planes(n + count < n1 ? gnext : g, n * Cb + c0, count, acc.data());
      } else {
        for (int64_t i = n; i < n + count; ++i)
          for (int64_t cb = c0; cb < c1; ++cb) {
            if (data) data->rows(dyb, dxb, i * Cb + cb, cb, 0, data->height());
            if (small) {  // the plane after this one in memory is the task's next (all blocks): prefetch it
              Corr gm = g;
              gm.next_plane = c1 - c0 == Cb && (i + 1 < n1 || cb + 1 < c1);
              const int64_t nc = i * Cb + cb;
              isa.wgrad_planes(gm, xb + nc * plane_x + g.hin * ldx + g.hin * kBlock, ldx, plane_x,
                               dyb + nc * plane_y + halo_dy * ldy + halo_dy * kBlock, ldy, plane_y, 1,
                               acc.data() + (cb - c0) * A);
            } else {
              planes(g, i * Cb + cb, 1, acc.data() + (cb - c0) * A);
            }
          }
      }
      for (int64_t i = 0; i < (c1 - c0) * A; ++i) out[i] += acc[i];
      std::fill(acc.begin(), acc.end(), 0.f);
    }
  }
  // sums over the image ranges in order, 16 lanes at a time
  for (int64_t cb = 0; cb < Cb; ++cb)
    for (int64_t t = 0; t <= RS; ++t) {
      double s[kBlock] = {};
      for (int64_t kn = 0; kn < ng; ++kn) {
        const double* pt = part.data() + (kn * Cb + cb) * A + t * kBlock;
        for (int i = 0; i < kBlock; ++i) s[i] += pt[i];
      }
      for (int64_t c = cb * kBlock; c < std::min(C, (cb + 1) * kBlock); ++c) {
        if (t < RS)
          dwt[c * RS + t] += static_cast<float>(s[c % kBlock]);
        else
          db[c] += static_cast<float>(s[c % kBlock]);
      }
    }
}

}  // namespace
}  // namespace dwb

void depthwise_blocked_fwd(const float* xb, const float* w, const float* b, float* yb, int64_t N, int64_t C,
                           int64_t H, int64_t W, int64_t R, int64_t S, int64_t sh, int64_t sw, int64_t ph,
                           int64_t pw, int64_t dh, int64_t dw, bool relu, int64_t halo_x, int64_t halo_y,
                           double* stats) {
  using namespace dwb;
  Corr g = forward_corr(H, W, halo_x, R, S, sh, sw, ph, pw, dh, dw);
  // y streamed (register-block rows only) when x and y do not fit the last-level cache, unless the
  // statistics epilogue reads each task's rows right back: 64x64x32x32 (36 MB), 1 thread, CPU time,
  // loaded, interleaved medians of 15: 1.07-1.15x in three runs; 2 threads (CPU time of both) 1.05-1.18x
  const int64_t fwd_bytes = 4 * N * blocks(C) * kBlock *
                            ((H + 2 * halo_x) * (W + 2 * halo_x) + (g.P + 2 * halo_y) * (g.Q + 2 * halo_y));
  g.nt = !stats && stream_output(fwd_bytes, yb);
  const std::vector<float> wb = pack_weights(w, C, R * S, false);
  std::vector<float> bias(blocks(C) * kBlock, 0.f);
  std::copy(b, b + C, bias.begin());
  correlate_planes(current_isa(), g, N, blocks(C), xb, wb.data(), bias.data(), yb, halo_y, relu, C, stats);
}

void depthwise_blocked_bwd_data(const float* dyb, const float* w, float* dxb, int64_t N, int64_t C, int64_t H,
                                int64_t W, int64_t R, int64_t S, int64_t sh, int64_t sw, int64_t ph, int64_t pw,
                                int64_t dh, int64_t dw, int64_t halo_dy, int64_t halo_dx) {
  using namespace dwb;
  const int64_t Cb = blocks(C);
  DataGrad data(current_isa(), w, C, H, W, R, S, sh, sw, ph, pw, dh, dw, halo_dy, halo_dx, true);
  data.stream_to(dxb, N * Cb * (data.dy_bytes() + data.dx_bytes()));
  const int64_t rows = data.task_rows(), chunks = (H + rows - 1) / rows;
#pragma omp parallel for num_threads(num_threads()) schedule(static)
  for (int64_t task = 0; task < N * Cb * chunks; ++task) {
    const int64_t nc = task / chunks, h0 = task % chunks * rows;
    data.rows(dyb, dxb, nc, nc % Cb, h0, std::min(H, h0 + rows));
  }
}

void depthwise_blocked_bwd_weight(const float* xb, const float* dyb, float* dwt, float* db, int64_t N, int64_t C,
                                  int64_t H, int64_t W, int64_t R, int64_t S, int64_t sh, int64_t sw, int64_t ph,
                                  int64_t pw, int64_t dh, int64_t dw, int64_t halo_x, int64_t halo_dy) {
  using namespace dwb;
  weight_grad(current_isa(), forward_corr(H, W, halo_x, R, S, sh, sw, ph, pw, dh, dw), xb, dyb, dwt, db, N, C,
              halo_dy, nullptr, nullptr);
}

void depthwise_blocked_bwd(const float* xb, const float* dyb, const float* w, float* dxb, float* dwt, float* db,
                           int64_t N, int64_t C, int64_t H, int64_t W, int64_t R, int64_t S, int64_t sh, int64_t sw,
                           int64_t ph, int64_t pw, int64_t dh, int64_t dw, int64_t halo_x, int64_t halo_dy,
                           int64_t halo_dx) {
  using namespace dwb;
  const Isa& isa = current_isa();
  // Planes of a 16 x 16 map or smaller fuse in memory order (each plane's dx, then its weight sums
  // from the dy the data gradient just read, the next plane in memory prefetched while this one is
  // summed) where a plane has more than 64 output pixels at row stride 1: 128x64x16x16 with the
  // forward 1.14-1.26x against the two passes (1 thread, CPU time, loaded, interleaved medians of 15,
  // one module; 1.10-1.19x against the old build). 128x128x8x8 read 1.06-1.14x in one module but
  // 0.77-0.84x against the old build, so 8 x 8 maps keep the two passes.
  // The same walk without the next-plane prefetch was 0.82-0.89x on
  // 16 x 16, as was the earlier fused walk (one block's planes, a whole image apart, dx out of memory
  // order; the passes apart were 1.04-1.17x faster than it). Smaller planes keep the two passes,
  // each in its own order, dy read twice: fused they ran 0.74-0.78x (128x256x8x8 s2) and 0.84x
  // (128x256x4x4), a call per 16-pixel plane.
  const Corr f = forward_corr(H, W, halo_x, R, S, sh, sw, ph, pw, dh, dw);
  const bool small = (H + 2 * halo_x) * (W + 2 * halo_x) * kBlock <= kPrefetchPlaneFloats;
  if (small && !(sh == 1 && f.P * f.Q > 64)) {
    depthwise_blocked_bwd_data(dyb, w, dxb, N, C, H, W, R, S, sh, sw, ph, pw, dh, dw, halo_dy, halo_dx);
    depthwise_blocked_bwd_weight(xb, dyb, dwt, db, N, C, H, W, R, S, sh, sw, ph, pw, dh, dw, halo_x, halo_dy);
    return;
  }
  DataGrad data(isa, w, C, H, W, R, S, sh, sw, ph, pw, dh, dw, halo_dy, halo_dx, false);
  data.stream_to(dxb, blocks(C) * N * (data.dy_bytes() + 2 * data.dx_bytes()));  // x about dx's size
  weight_grad(isa, f, xb, dyb, dwt, db, N, C, halo_dy, &data, dxb);
}

}  // namespace ft::cpu
