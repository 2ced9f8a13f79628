// conv2d as im2col + GEMM (Chellapilla et al. 2006, "High performance convolutional neural
// networks for document processing"): per image, unfold x into col (C*R*S x P*Q), then
//   forward      y[n]  (K x PQ)   = W (K x CRS) * col,  bias (+ ReLU) fused in the epilogue
//   bwd_data     dcol  (CRS x PQ) = W^T * dy[n],  dx[n] = col2im(dcol)
//   bwd_weight   dw    (K x CRS) += dy[n] * col^T,  db += sum over P*Q of dy[n]
// 1x1, stride-1, unpadded convolutions use x[n] itself as col (no unfolding).
// Grouped convolutions (w is K x C/G x R x S) run these products once per group, on the group's
// channel slices of x, y and w; dilation only changes which input pixel a tap reads in the unfold.
//
// Threads: with at least as many images as threads, each thread takes whole images and runs
// single-threaded GEMMs (no synchronisation inside an image, the unfold stays in its cache);
// with fewer images, images go one after another and OpenBLAS splits each GEMM.
//
// 3x3 stride-1 undilated ungrouped convolutions go through Winograd F(2x2, 3x3) instead
// (conv2d_winograd.cpp) when the channel counts make it pay, and depthwise convolutions (one input
// channel per group) through their own direct kernel (conv2d_depthwise.cpp); set_conv2d_algo
// forces any of them (tests cover each).
//
// Under 'auto', ungrouped undilated convolutions run the direct engine (conv2d_direct.cpp) when its
// AVX-512 kernels run and both channel counts fill at least half a 16-channel block: on the
// ResNet shapes it beats im2col and Winograd over OpenBLAS (whose kernel here is AVX2, see
// bench/conv_algos.py), and below 8 channels most of its block's multiplies would be by zero
// padding (a 3-channel input uses 3 of 16 lanes). 1x1 kernels do not take the direct engine: with
// one tap per output the NCHW <-> NCHW16c conversions around the direct kernels cost more than
// the GEMM itself (ResNet's strided 1x1 shortcuts: 0.36-0.75x torch channels_last through the
// direct engine vs 0.71-0.82x through im2col, bench/conv_algos.py); the strided unpadded ones run
// the pointwise kernels on the NCHW arrays themselves (conv2d_pointwise_*, use_pointwise), the
// others im2col; a caller whose activations are
// already blocked asks with conv2d_choice(..., blocked=true), which picks the direct engine for
// every ungrouped undilated shape where AVX-512 or AVX2 kernels run, except, with AVX2, the wide
// 3x3 stride-1 layers Winograd does faster (use_direct). With the AVX2 or portable kernels the older
// rule stands (Winograd for 3x3 stride 1 with >= 16 channels, else im2col). The rule is fixed,
// not measured at run time, so results do not change from run to run with the machine's load.
#include <algorithm>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include <omp.h>

#include "blas.h"
#include "fasttrain/check.h"
#include "fasttrain/cpu.h"
#include "depthwise.h"
#include "winograd.h"
#include "conv2d_wino_blocked.h"

namespace ft::cpu {
namespace {

// C and K: all channels; G groups of cg() input and kg() output channels each.
struct Geom {
  int64_t N, C, H, W, K, R, S, P, Q, sh, sw, ph, pw, dilh, dilw, G;
  int64_t cg() const { return C / G; }
  int64_t kg() const { return K / G; }
  int64_t crs() const { return cg() * R * S; }  // one group's unfolded rows
  int64_t pq() const { return P * Q; }
  bool direct() const { return R == 1 && S == 1 && sh == 1 && sw == 1 && ph == 0 && pw == 0; }
};

// Output columns q whose input column q*sw - pw + s*dilw lies inside [0, W): q in [lo, hi).
inline void valid_q(const Geom& g, int64_t s, int64_t& lo, int64_t& hi) {
  int64_t off = s * g.dilw - g.pw;  // input column = q*sw + off
  lo = off >= 0 ? 0 : (-off + g.sw - 1) / g.sw;
  hi = off >= g.W ? 0 : std::min<int64_t>(g.Q, (g.W - 1 - off) / g.sw + 1);
  if (hi < lo) hi = lo;
}

// col (CgRS x PQ) from one group's channels x (Cg x H x W); out-of-image taps are zero.
void im2col(const Geom& g, const float* x, float* col) {
  for (int64_t c = 0; c < g.cg(); ++c)
    for (int64_t r = 0; r < g.R; ++r)
      for (int64_t s = 0; s < g.S; ++s) {
        float* row = col + ((c * g.R + r) * g.S + s) * g.pq();
        int64_t lo, hi;
        valid_q(g, s, lo, hi);
        for (int64_t p = 0; p < g.P; ++p) {
          float* out = row + p * g.Q;
          int64_t h = p * g.sh - g.ph + r * g.dilh;
          if (h < 0 || h >= g.H) {
            std::memset(out, 0, sizeof(float) * g.Q);
            continue;
          }
          const float* in = x + (c * g.H + h) * g.W + (s * g.dilw - g.pw);
          for (int64_t q = 0; q < lo; ++q) out[q] = 0.f;
          if (g.sw == 1) {
            std::memcpy(out + lo, in + lo, sizeof(float) * (hi - lo));
          } else {
            for (int64_t q = lo; q < hi; ++q) out[q] = in[q * g.sw];
          }
          for (int64_t q = hi; q < g.Q; ++q) out[q] = 0.f;
        }
      }
}

// dx (Cg x H x W) = sum of the taps of dcol (CgRS x PQ): the adjoint of im2col.
void col2im(const Geom& g, const float* dcol, float* dx) {
  std::memset(dx, 0, sizeof(float) * g.cg() * g.H * g.W);
  for (int64_t c = 0; c < g.cg(); ++c)
    for (int64_t r = 0; r < g.R; ++r)
      for (int64_t s = 0; s < g.S; ++s) {
        const float* row = dcol + ((c * g.R + r) * g.S + s) * g.pq();
        int64_t lo, hi;
        valid_q(g, s, lo, hi);
        for (int64_t p = 0; p < g.P; ++p) {
          int64_t h = p * g.sh - g.ph + r * g.dilh;
          if (h < 0 || h >= g.H) continue;
          const float* in = row + p * g.Q;
          float* out = dx + (c * g.H + h) * g.W + (s * g.dilw - g.pw);
          if (g.sw == 1) {
#pragma omp simd
            for (int64_t q = lo; q < hi; ++q) out[q] += in[q];
          } else {
            for (int64_t q = lo; q < hi; ++q) out[q * g.sw] += in[q];
          }
        }
      }
}

// A per-thread scratch buffer that only grows: OpenMP's pool threads persist between calls, so
// the unfold buffer is allocated (and page-faulted) once, not on every call.
float* scratch(int64_t n) {
  thread_local std::vector<float> buf;
  if (static_cast<int64_t>(buf.size()) < n) buf.resize(n);
  return buf.data();
}

// Below this many channels in or out, Auto keeps im2col (measured on the bench shapes).
constexpr int64_t kWinogradMinChannels = 16;

bool per_image_threads(int64_t N, int nt) { return nt > 1 && N >= nt; }

depthwise::Shape dw_shape(const Geom& g) {
  return {g.N, g.C, g.H, g.W, g.K / g.C, g.R, g.S, g.P, g.Q, g.sh, g.sw, g.ph, g.pw, g.dilh, g.dilw};
}

// The slices of group grp: its input channels of one image, its weight rows, its output rows.
inline const float* x_group(const Geom& g, const float* x, int64_t grp) { return x + grp * g.cg() * g.H * g.W; }
inline const float* w_group(const Geom& g, const float* w, int64_t grp) { return w + grp * g.kg() * g.crs(); }
inline int64_t y_group(const Geom& g, int64_t grp) { return grp * g.kg() * g.pq(); }

// The columns (CgRS x PQ) of group grp of one image: the unfold into buf, or x itself (buf null:
// a 1x1 stride-1 unpadded convolution).
inline const float* group_cols(const Geom& g, const float* x, int64_t grp, float* buf) {
  if (!buf) return x_group(g, x, grp);
  im2col(g, x_group(g, x, grp), buf);
  return buf;
}

void fwd_image(const Geom& g, const float* x, const float* w, const float* b, float* y, bool relu) {
  float* buf = g.direct() ? nullptr : scratch(g.crs() * g.pq());
  for (int64_t grp = 0; grp < g.G; ++grp)
    blas::sgemm(false, false, g.kg(), g.pq(), g.crs(), 1.f, w_group(g, w, grp), g.crs(),
                group_cols(g, x, grp, buf), g.pq(), 0.f, y + y_group(g, grp), g.pq());
  for (int64_t k = 0; k < g.K; ++k) {  // epilogue while the rows are still in cache
    float* yk = y + k * g.pq();
    const float bk = b[k];
    if (relu) {
#pragma omp simd
      for (int64_t i = 0; i < g.pq(); ++i) yk[i] = std::max(yk[i] + bk, 0.f);
    } else {
#pragma omp simd
      for (int64_t i = 0; i < g.pq(); ++i) yk[i] += bk;
    }
  }
}

void bwd_data_image(const Geom& g, const float* dy, const float* w, float* dx) {
  float* dcol = g.direct() ? nullptr : scratch(g.crs() * g.pq());
  for (int64_t grp = 0; grp < g.G; ++grp) {
    float* dxg = dx + grp * g.cg() * g.H * g.W;
    const float *wg = w_group(g, w, grp), *dyg = dy + y_group(g, grp);
    if (!dcol) {  // dx[n] (Cg x HW) = W^T (Cg x Kg) * dy[n] (Kg x HW)
      blas::sgemm(true, false, g.cg(), g.pq(), g.kg(), 1.f, wg, g.crs(), dyg, g.pq(), 0.f, dxg, g.pq());
      continue;
    }
    blas::sgemm(true, false, g.crs(), g.pq(), g.kg(), 1.f, wg, g.crs(), dyg, g.pq(), 0.f, dcol, g.pq());
    col2im(g, dcol, dxg);
  }
}

// dw_acc (K x CgRS) += dy[n] * col^T per group; db_acc (K) += row sums of dy[n] (in double:
// P*Q*N terms).
void bwd_weight_image(const Geom& g, const float* x, const float* dy, float* dw_acc, double* db_acc) {
  float* buf = g.direct() ? nullptr : scratch(g.crs() * g.pq());
  for (int64_t grp = 0; grp < g.G; ++grp)
    blas::sgemm(false, true, g.kg(), g.crs(), g.pq(), 1.f, dy + y_group(g, grp), g.pq(),
                group_cols(g, x, grp, buf), g.pq(), 1.f, dw_acc + grp * g.kg() * g.crs(), g.crs());
  for (int64_t k = 0; k < g.K; ++k) {
    const float* dyk = dy + k * g.pq();
    float s = 0.f;
#pragma omp simd reduction(+ : s)
    for (int64_t i = 0; i < g.pq(); ++i) s += dyk[i];
    db_acc[k] += s;
  }
}

Geom geom(int64_t N, int64_t C, int64_t H, int64_t W, int64_t K, int64_t R, int64_t S, int64_t sh,
          int64_t sw, int64_t ph, int64_t pw, int64_t dilh, int64_t dilw, int64_t G) {
  return {N, C, H, W, K, R, S, (H + 2 * ph - dilh * (R - 1) - 1) / sh + 1,
          (W + 2 * pw - dilw * (S - 1) - 1) / sw + 1, sh, sw, ph, pw, dilh, dilw, G};
}

// body(n) for every image: whole images per thread with one-thread BLAS when there are enough
// images, otherwise images in turn with OpenBLAS splitting each GEMM over the threads.
template <class Body>
void over_images(int64_t N, Body body) {
  const int nt = num_threads();
  if (per_image_threads(N, nt)) {
    blas::SingleThreaded one;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t n = 0; n < N; ++n) body(n);
  } else {
    for (int64_t n = 0; n < N; ++n) body(n);
  }
}

enum class Algo { Auto, Im2col, Winograd, Depthwise, Direct, WinogradBlocked, Winograd43Blocked, Pointwise };
Algo g_algo = Algo::Auto;
constexpr int kNumAlgos = 8;
const char* const kAlgoNames[kNumAlgos] = {"auto",   "im2col",           "winograd",           "depthwise",
                                           "direct", "winograd-blocked", "winograd43-blocked", "pointwise"};
const char* algo_name(Algo a) { return kAlgoNames[static_cast<int>(a)]; }

// Whether op runs through Winograd. Forcing it on a convolution it cannot do is an error, not a
// quiet switch to im2col, so a test that forces it really tests it. `cin`, `cout`: the channels
// the op reads and writes (swapped for the data gradient).
bool use_winograd(const char* op, const Geom& g, bool data_grad, int64_t cin, int64_t cout) {
  const bool fits = g.R == 3 && g.S == 3 && g.sh == 1 && g.sw == 1 && g.dilh == 1 && g.dilw == 1 &&
                    g.G == 1 && (!data_grad || (g.ph <= 2 && g.pw <= 2));
  switch (g_algo) {
    case Algo::Im2col:
    case Algo::Depthwise:
    case Algo::Direct:
    case Algo::WinogradBlocked:
    case Algo::Winograd43Blocked:
    case Algo::Pointwise:
      return false;
    case Algo::Winograd:
      FT_CHECK(fits, op << ": conv2d algorithm 'winograd' needs a 3x3 kernel with stride 1"
                        << (data_grad ? " and padding <= 2" : "")
                        << ", no dilation and groups 1, got " << g.R << "x" << g.S << " stride ("
                        << g.sh << ", " << g.sw << ") padding (" << g.ph << ", " << g.pw
                        << ") dilation (" << g.dilh << ", " << g.dilw << ") groups " << g.G);
      return true;
    case Algo::Auto:
      break;
  }
  // With few channels the transforms cost more than the GEMM multiplies they save.
  return fits && std::min(cin, cout) >= kWinogradMinChannels;
}

// Whether op runs through the depthwise kernel: every group reads one input channel. Under 'auto'
// always (im2col would run G tiny GEMMs of Cg*R*S = R*S rows each).
bool use_depthwise(const char* op, const Geom& g) {
  const bool fits = g.G == g.C && g.G > 1;
  switch (g_algo) {
    case Algo::Im2col:
    case Algo::Winograd:
    case Algo::Direct:
    case Algo::WinogradBlocked:
    case Algo::Winograd43Blocked:
    case Algo::Pointwise:
      return false;
    case Algo::Depthwise:
      FT_CHECK(fits, op << ": conv2d algorithm 'depthwise' needs groups == in_channels > 1, got groups "
                        << g.G << " with " << g.C << " input channels");
      return true;
    case Algo::Auto:
      break;
  }
  return fits;
}

// Whether op runs through the NCHW pointwise kernels (conv2d_pointwise_*: a 1x1 kernel, padding 0,
// groups 1, no dilation). Under 'auto' for strided such layers (ResNet's shortcuts) where the
// AVX-512 kernels run: im2col gathers the strided pixels and calls OpenBLAS (AVX2 kernel here)
// on one small product per image (64 x 64 x 32 for 32->64 at 16x16, ~65 GFLOP/s on one core).
bool use_pointwise(const char* op, const Geom& g) {
  const bool fits = g.R == 1 && g.S == 1 && g.ph == 0 && g.pw == 0 && g.G == 1 && g.dilh == 1 && g.dilw == 1;
  if (g_algo == Algo::Pointwise) {
    FT_CHECK(fits, op << ": conv2d algorithm 'pointwise' needs a 1x1 kernel with padding 0, no dilation and "
                      << "groups 1, got " << g.R << "x" << g.S << " padding (" << g.ph << ", " << g.pw
                      << ") dilation (" << g.dilh << ", " << g.dilw << ") groups " << g.G);
    return true;
  }
  return g_algo == Algo::Auto && fits && (g.sh > 1 || g.sw > 1) && conv2d_isa() == "avx512";
}

constexpr int64_t kDirectMinChannels = 8;

// Whether op runs through the direct engine (conv2d_direct.cpp), which handles groups 1 without
// dilation, any kernel size, stride and padding.
// blocked: the caller keeps its activations in the blocked layout (conv2d_choice's `blocked`), so
// no conversion is paid around the kernels: every kernel size runs direct where the intrinsics
// kernels run, 1x1 shortcuts and the few-channel stem (its own kernel) included.
// With the AVX2 kernels (half the vector width, half the FMA peak of AVX-512), Winograd F(2,3) over
// OpenBLAS beats the direct kernels on the wide 3x3 stride-1 layers even with the layout conversions
// left out (1 thread, CPU time: 32->32 ch at 32x32 1.07x, 64->64 at 16x16 1.12x; ties at
// C*K*P*Q = 2^19-2^18: 32->64 at 16x16, 64->64 at 8x8), while on the narrower ones the direct
// kernels win (16->16 at 32x32 1.37x, 32->32 at 16x16 1.17x, the stride-2 and 1x1 shapes
// 1.3-1.7x). So under blocked=true an AVX2 3x3 stride-1 layer of C*K*P*Q >= 2^20 takes NCHW:
// convnet_classic batch 128 220 -> 203 ms a step, the ResNets (all below) unchanged. See
// docs/KERNELS.md for the measurements.
constexpr int64_t kAvx2WinogradWork = int64_t{1} << 20;

bool use_direct(const char* op, const Geom& g, bool blocked = false) {
  const bool fits = g.G == 1 && g.dilh == 1 && g.dilw == 1;
  if (g_algo == Algo::Auto && blocked) {
    const std::string isa = conv2d_isa();
    if (!fits || isa == "portable") return false;
    const bool wide_3x3 = g.R == 3 && g.S == 3 && g.sh == 1 && g.sw == 1 &&
                          g.C * g.K * g.pq() >= kAvx2WinogradWork;
    return !(isa == "avx2" && wide_3x3);
  }
  if (g_algo == Algo::Auto) {
    // few input channels (a network's input): the forward and weight gradient run the stem kernels
    // inside the direct entry points; the data gradient (C outputs of 16 lanes) does not pay there
    const bool stem = g.C < kDirectMinChannels && std::strstr(op, "bwd_data") == nullptr;
    return fits && conv2d_isa() == "avx512" && g.K >= kDirectMinChannels && (g.C >= kDirectMinChannels || stem) &&
           g.R * g.S > 1;
  }
  if (g_algo != Algo::Direct && g_algo != Algo::WinogradBlocked && g_algo != Algo::Winograd43Blocked) return false;
  FT_CHECK(fits, op << ": conv2d algorithm '" << algo_name(g_algo) << "' needs groups 1 and no dilation, got groups "
                    << g.G << " dilation (" << g.dilh << ", " << g.dilw << ")");
  return true;
}

// Winograd on the blocked layout (conv2d_wino_blocked_avx512.cpp) runs the forward and both
// gradients of a 3x3 stride-1 padding-1 ungrouped undilated layer inside the direct engine's
// blocked entry points, under 'auto' where its AVX-512 kernels run (see docs/KERNELS.md for the
// measurements):
// - forward and data gradient by F(4x4, 3x3) where both channel counts are at least
//   kWinoBlockedMinChannels and the call has at least kWinoBlockedMinTiles 4x4 tiles; else by
//   F(2x2, 3x3) from kWino2BlockedMinChannels channels and kWinoBlockedMinTiles 2x2 tiles; else
//   direct. 1 thread, CPU time, batch 128: 4x4 tiles ran 16->16 at 32x32 1.28x faster than direct
//   (2x2 tiles only tied), 32->32 at 16x16 and 64->64 at 8x8 1.45-1.5x faster than 2x2 tiles (8x8
//   maps hold 2x2 tiles of 4x4: the transforms cost what 2x2 tiles' do, the products 0.56x). With
//   fewer tiles the weight transform and each chunk's full pass over U are paid for few tiles: at
//   batch 8, 64->64 8x8 (32 tiles of 4x4) took 1.5x the 2x2 tiles' time, and at batch 1 both
//   Winograds lost to direct (2x2 tiles 1.3-2.3x slower at 16 to 64 tiles).
// - weight gradient by F(4x4, 3x3) under the forward's F(4x4) rule, else by F(2x2, 3x3) from
//   kWinoBlockedMinChannels channels (1.13-1.22x faster than direct at 16 channels, batch 32-128).
//   1 thread, CPU time, batch 128: 4x4 tiles ran 32->32 16x16 1.3x and 64->64 8x8 1.6x faster
//   than 2x2 tiles, 16->16 32x32 1.03x (1.45x at batch 32: at 128 the 18 MB of x and dy leave
//   the cache); at batch 8, 64->64 8x8, the two tied, and at batch 1 4x4 tiles took 1.3x.
// Below 16 channels the transforms (O(C + K) per tile) outweigh the products.
constexpr int64_t kWinoBlockedMinChannels = 16;
constexpr int64_t kWino2BlockedMinChannels = 32;
constexpr int64_t kWinoBlockedMinTiles = 128;

bool is_weight_grad(const char* op) {
  const std::string_view name(op);
  constexpr std::string_view suffix = "bwd_weight";
  return name.size() >= suffix.size() && name.substr(name.size() - suffix.size()) == suffix;
}

bool wino_blocked_fits(const Geom& g) {
  return g.R == 3 && g.S == 3 && g.sh == 1 && g.sw == 1 && g.ph == 1 && g.pw == 1 && g.dilh == 1 &&
         g.dilw == 1 && g.G == 1;
}

// The Winograd tile side (2 or 4) for op on this shape, 0 for the direct kernels.
int pick_wino_blocked(const char* op, const Geom& g) {
  const bool fits = wino_blocked_fits(g);
  if (g_algo == Algo::WinogradBlocked || g_algo == Algo::Winograd43Blocked) {
    FT_CHECK(fits, op << ": conv2d algorithm '" << algo_name(g_algo) << "' needs a 3x3 kernel with stride 1, padding 1, "
                      << "no dilation and groups 1, got " << g.R << "x" << g.S << " stride (" << g.sh << ", "
                      << g.sw << ") padding (" << g.ph << ", " << g.pw << ") dilation (" << g.dilh << ", "
                      << g.dilw << ") groups " << g.G);
    FT_CHECK(wino_blocked::available() && conv2d_isa() == "avx512",
             op << ": conv2d algorithm '" << algo_name(g_algo) << "' needs the AVX-512 kernels, but the direct engine "
                << "runs '" << conv2d_isa() << "'");
    return g_algo == Algo::Winograd43Blocked ? 4 : 2;
  }
  if (g_algo != Algo::Auto || !fits || !wino_blocked::available() || conv2d_isa() != "avx512") return 0;
  const int64_t ch = std::min(g.C, g.K);
  const auto tiles = [&g](int64_t m) { return g.N * ((g.H + m - 1) / m) * ((g.W + m - 1) / m); };
  if (ch >= kWinoBlockedMinChannels && tiles(4) >= kWinoBlockedMinTiles) return 4;
  if (is_weight_grad(op)) return ch >= kWinoBlockedMinChannels ? 2 : 0;
  return ch >= kWino2BlockedMinChannels && tiles(2) >= kWinoBlockedMinTiles ? 2 : 0;
}

Algo choose(const char* op, const Geom& g, bool data_grad, bool blocked) {
  if (use_direct(op, g, blocked))
    switch (pick_wino_blocked(op, g)) {
      case 2:
        return Algo::WinogradBlocked;
      case 4:
        return Algo::Winograd43Blocked;
      default:
        return Algo::Direct;
    }
  if (use_depthwise(op, g)) return Algo::Depthwise;
  if (use_pointwise(op, g)) return Algo::Pointwise;
  const int64_t cin = data_grad ? g.K : g.C, cout = data_grad ? g.C : g.K;
  return use_winograd(op, g, data_grad, cin, cout) ? Algo::Winograd : Algo::Im2col;
}

}  // namespace

void set_conv2d_algo(const std::string& name) {
  for (int i = 0; i < kNumAlgos; ++i)
    if (name == kAlgoNames[i]) {
      g_algo = static_cast<Algo>(i);
      return;
    }
  FT_CHECK(false, "set_conv2d_algo(name): expected 'auto', 'im2col', 'winograd', 'depthwise', "
                  "'direct', 'winograd-blocked', 'winograd43-blocked' or 'pointwise', got '" << name << "'");
}

std::string conv2d_algo() { return algo_name(g_algo); }

std::string conv2d_choice(const std::string& op, int64_t N, int64_t C, int64_t H, int64_t W,
                          int64_t K, int64_t R, int64_t S, int64_t sh, int64_t sw, int64_t ph,
                          int64_t pw, int64_t dilh, int64_t dilw, int64_t groups, bool blocked) {
  FT_CHECK(op == "fwd" || op == "bwd_data" || op == "bwd_weight",
           "conv2d_choice(op): expected 'fwd', 'bwd_data' or 'bwd_weight', got '" << op << "'");
  const Geom g = geom(N, C, H, W, K, R, S, sh, sw, ph, pw, dilh, dilw, groups);
  return algo_name(choose(op.c_str(), g, op == "bwd_data", blocked));
}

int winograd_blocked_tile(const char* op, int64_t N, int64_t C, int64_t H, int64_t W, int64_t K,
                          int64_t R, int64_t S, int64_t sh, int64_t sw, int64_t ph, int64_t pw) {
  return pick_wino_blocked(op, geom(N, C, H, W, K, R, S, sh, sw, ph, pw, 1, 1, 1));
}

void conv2d_fwd(const float* x, const float* w, const float* b, float* y, int64_t N, int64_t C,
                int64_t H, int64_t W, int64_t K, int64_t R, int64_t S, int64_t sh, int64_t sw,
                int64_t ph, int64_t pw, bool relu, int64_t dilh, int64_t dilw, int64_t groups) {
  const Geom g = geom(N, C, H, W, K, R, S, sh, sw, ph, pw, dilh, dilw, groups);
  if (use_direct("conv2d_fwd", g))
    return conv2d_direct_fwd(x, w, b, y, N, C, H, W, K, R, S, sh, sw, ph, pw, relu);
  if (use_depthwise("conv2d_fwd", g))
    return depthwise::fwd(x, w, b, y, dw_shape(g), relu);
  if (use_pointwise("conv2d_fwd", g))
    return conv2d_pointwise_fwd(x, w, b, y, N, C, H, W, K, sh, sw, relu);
  if (use_winograd("conv2d_fwd", g, false, C, K))
    return winograd::fwd(x, w, b, y, N, C, H, W, K, ph, pw, relu);
  const int64_t xs = C * H * W, ys = K * g.pq();
  over_images(N, [&](int64_t n) { fwd_image(g, x + n * xs, w, b, y + n * ys, relu); });
}

void conv2d_bwd_data(const float* dy, const float* w, float* dx, int64_t N, int64_t C, int64_t H,
                     int64_t W, int64_t K, int64_t R, int64_t S, int64_t sh, int64_t sw, int64_t ph,
                     int64_t pw, int64_t dilh, int64_t dilw, int64_t groups) {
  const Geom g = geom(N, C, H, W, K, R, S, sh, sw, ph, pw, dilh, dilw, groups);
  if (use_direct("conv2d_bwd_data", g))
    return conv2d_direct_bwd_data(dy, w, dx, N, C, H, W, K, R, S, sh, sw, ph, pw);
  if (use_depthwise("conv2d_bwd_data", g))
    return depthwise::bwd_data(dy, w, dx, dw_shape(g));
  if (use_pointwise("conv2d_bwd_data", g))
    return conv2d_pointwise_bwd_data(dy, w, dx, N, C, H, W, K, sh, sw);
  if (use_winograd("conv2d_bwd_data", g, true, K, C))
    return winograd::bwd_data(dy, w, dx, N, C, H, W, K, ph, pw);
  const int64_t xs = C * H * W, ys = K * g.pq();
  over_images(N, [&](int64_t n) { bwd_data_image(g, dy + n * ys, w, dx + n * xs); });
}

void conv2d_bwd_weight(const float* x, const float* dy, float* dw, float* db, int64_t N, int64_t C,
                       int64_t H, int64_t W, int64_t K, int64_t R, int64_t S, int64_t sh,
                       int64_t sw, int64_t ph, int64_t pw, int64_t dilh, int64_t dilw,
                       int64_t groups) {
  const Geom g = geom(N, C, H, W, K, R, S, sh, sw, ph, pw, dilh, dilw, groups);
  if (use_direct("conv2d_bwd_weight", g))
    return conv2d_direct_bwd_weight(x, dy, dw, db, N, C, H, W, K, R, S, sh, sw, ph, pw);
  if (use_depthwise("conv2d_bwd_weight", g))
    return depthwise::bwd_weight(x, dy, dw, db, dw_shape(g));
  if (use_pointwise("conv2d_bwd_weight", g))
    return conv2d_pointwise_bwd_weight(x, dy, dw, db, N, C, H, W, K, sh, sw);
  if (use_winograd("conv2d_bwd_weight", g, false, C, K))
    return winograd::bwd_weight(x, dy, dw, db, N, C, H, W, K, ph, pw);
  const int nt = num_threads();
  const int64_t xs = C * H * W, ys = K * g.pq(), wsz = K * g.crs();
  if (per_image_threads(N, nt)) {
    // Each thread accumulates its images into a private dw/db; the partials are then added into
    // dw, db in thread order (a fixed order for a given thread count).
    std::vector<float> part_w(static_cast<size_t>(nt) * wsz, 0.f);
    std::vector<double> part_b(static_cast<size_t>(nt) * K, 0.0);
    blas::SingleThreaded one;
#pragma omp parallel num_threads(nt)
    {
      const int t = omp_get_thread_num();
#pragma omp for schedule(static)
      for (int64_t n = 0; n < N; ++n)
        bwd_weight_image(g, x + n * xs, dy + n * ys, part_w.data() + t * wsz, part_b.data() + t * K);
#pragma omp for schedule(static)
      for (int64_t i = 0; i < wsz; ++i) {
        float s = 0.f;
        for (int u = 0; u < nt; ++u) s += part_w[u * wsz + i];
        dw[i] += s;
      }
    }
    for (int64_t k = 0; k < K; ++k) {
      double s = 0.0;
      for (int u = 0; u < nt; ++u) s += part_b[u * K + k];
      db[k] += static_cast<float>(s);
    }
  } else {
    std::vector<double> acc_b(K, 0.0);
    for (int64_t n = 0; n < N; ++n) bwd_weight_image(g, x + n * xs, dy + n * ys, dw, acc_b.data());
    for (int64_t k = 0; k < K; ++k) db[k] += static_cast<float>(acc_b[k]);
  }
}

}  // namespace ft::cpu
