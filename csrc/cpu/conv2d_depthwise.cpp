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
//   bwd_weight    dw[r, s] = sum_pq dy[p, q] * xpad[p*sh + r*dilh, q*sw + s*dilw]: each thread a
//                 range of channels over all images (no partial buffers to combine), float sums
//                 per plane added in double across the images.
#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include <omp.h>

#include "depthwise.h"
#include "depthwise_nchw.h"
#include "fasttrain/cpu.h"

namespace ft::cpu {
namespace dwn {

namespace {
// lanes i < lim (and < lanes) with 0 <= start + i < len
uint32_t span(int lanes, int64_t start, int64_t len, int64_t lim) {
  uint32_t m = 0;
  for (int64_t i = 0; i < std::min<int64_t>(lanes, lim); ++i)
    if (start + i >= 0 && start + i < len) m |= 1u << i;
  return m;
}
int64_t floordiv(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }
}  // namespace

bool make_plan(Plan& g, int lanes, int64_t Hi, int64_t Wi, int64_t Ho, int64_t Wo, int64_t R, int64_t S, int64_t sh,
               int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw) {
  if ((sw != 1 && sw != 2) || R * S > kMaxTaps || Ho <= 0 || Wo <= 0) return false;
  g.Hi = Hi, g.Wi = Wi, g.Ho = Ho, g.Wo = Wo, g.R = R, g.S = S, g.sh = sh, g.sw = sw, g.ph = ph, g.pw = pw;
  g.dh = dh, g.dw = dw, g.lanes = lanes;
  // flat only for rows narrower than a vector (which would leave lanes idle): a flat chunk loads
  // its nine taps and their masks itself, where rows mode shares them between output rows
  g.flat = sh == 1 && sw == 1 && Wo == Wi && Wo < lanes;
  g.masks.clear();
  g.offs.clear();
  if (g.flat) {
    // output index o = p*Wo + q reads in[o + (r*dh - ph)*Wi + s*dw - pw] when that pixel is inside
    const int64_t n = Ho * Wo;
    g.chunks = (n + lanes - 1) / lanes;
    for (int64_t r = 0; r < R; ++r)
      for (int64_t s = 0; s < S; ++s) g.offs.push_back((r * dh - ph) * Wi + s * dw - pw);
    g.masks.assign(g.chunks * R * S, 0u);
    for (int64_t k = 0; k < g.chunks; ++k)
      for (int64_t i = 0; i < lanes && k * lanes + i < n; ++i) {
        const int64_t p = (k * lanes + i) / Wo, q = (k * lanes + i) % Wo;
        for (int64_t r = 0; r < R; ++r)
          for (int64_t s = 0; s < S; ++s) {
            const int64_t h = p + r * dh - ph, v = q + s * dw - pw;
            if (h >= 0 && h < Hi && v >= 0 && v < Wi) g.masks[k * R * S + r * S + s] |= 1u << i;
          }
      }
    g.tail = span(lanes, 0, n - (g.chunks - 1) * lanes, lanes);
    return true;
  }
  g.chunks = (Wo + lanes - 1) / lanes;
  for (int64_t k = 0; k < g.chunks; ++k) {
    const int64_t q0 = k * lanes, lim = std::min<int64_t>(lanes, Wo - q0);
    for (int64_t s = 0; s < S; ++s) {
      const int64_t col = q0 * sw + s * dw - pw;
      if (sw == 1) {
        g.masks.push_back(span(lanes, col, Wi, lim));
      } else {  // two loads of `lanes` columns; the odd ones are dropped
        g.masks.push_back(span(lanes, col, Wi, 2 * lim));
        g.masks.push_back(span(lanes, col + lanes, Wi, 2 * lim - lanes));
      }
    }
  }
  g.tail = span(lanes, 0, Wo - (g.chunks - 1) * lanes, lanes);
  return true;
}

bool make_gather_plan(GatherPlan& gp, const Plan& f) {
  if (f.sw != 2) return false;
  const int lanes = f.lanes;
  gp.g = f;
  gp.chunks = (f.Wi + lanes - 1) / lanes;
  gp.masks.clear();
  gp.base.clear();
  for (int64_t k = 0; k < gp.chunks; ++k)
    for (int64_t s = 0; s < f.S; ++s) {
      // dx column v = k*lanes + i reads dy column (v + pw - s*dw) / 2 where that is whole
      const int64_t j0 = k * lanes + f.pw - s * f.dw, base = floordiv(j0, 2);
      gp.base.push_back(base);
      gp.masks.push_back(span(lanes, base, f.Wo, lanes / 2 + 1));
      gp.masks.push_back(static_cast<uint32_t>(j0 - 2 * base));
    }
  gp.tail = span(lanes, 0, f.Wi - (gp.chunks - 1) * lanes, lanes);
  return true;
}

}  // namespace dwn

namespace depthwise {
namespace {

// The vectorised plane kernels follow the direct convolution's instruction set (set_conv2d_isa);
// null under "portable" (the plain C++ kernels below).
// Asks for a plane's lines ahead of its kernel: the vector kernels issue few loads between many
// FMAs, so without it a thread has few misses in flight and streams from memory below the rate
// the plain kernels' copy into a scratch buffer reached.
// Planes are asked for about 4 KiB ahead: the next plane, or several planes on for small maps
// (a 4 x 4 plane is one line).
inline void prefetch_plane(const float* p, int64_t n) {
  for (int64_t i = 0; i < n; i += 16) __builtin_prefetch(p + i);
  asm volatile("");  // a body of prefetches alone is "const" to GCC, which may delete the call (conv2d_direct.cpp)
}
inline int64_t planes_ahead(int64_t floats) { return std::max<int64_t>(1, 1024 / std::max<int64_t>(floats, 1)); }

const dwn::Isa* nchw_isa() {
  const std::string name = conv2d_isa();
  return name == "avx512" ? dwn::isa_avx512() : name == "avx2" ? dwn::isa_avx2() : nullptr;
}

float* scratch(int64_t n) {
  thread_local std::vector<float> buf;
  if (static_cast<int64_t>(buf.size()) < n) buf.resize(n);
  return buf.data();
}

// dst (rows x cols) = src (src_rows x src_cols) placed at (top, left), zero elsewhere; top/left may
// be negative (rows/columns of src cut off).
void place(const float* src, int64_t src_rows, int64_t src_cols, float* dst, int64_t rows, int64_t cols,
           int64_t top, int64_t left) {
  // plain loops rather than memset/memcpy: the pieces are a few floats to a few dozen, where a
  // library call per piece (three per row) cost more than the copy
  const int64_t c0 = std::clamp<int64_t>(left, 0, cols), c1 = std::clamp<int64_t>(left + src_cols, c0, cols);
  for (int64_t u = 0; u < rows; ++u) {
    float* d = dst + u * cols;
    const int64_t h = u - top;
    if (h < 0 || h >= src_rows) {
      for (int64_t v = 0; v < cols; ++v) d[v] = 0.f;
      continue;
    }
    const float* srow = src + h * src_cols - left;
    for (int64_t v = 0; v < c0; ++v) d[v] = 0.f;
    for (int64_t v = c0; v < c1; ++v) d[v] = srow[v];
    for (int64_t v = c1; v < cols; ++v) d[v] = 0.f;
  }
}

// out (P x Q) = [out +] bias + correlation of in (leading dimension ld) with taps (R x S), output
// pixel (p, q) reading in[(p*sh + r*dilh) * ld + q*sw + s*dilw]. The tap counts and the column
// stride are template parameters where they are known (0: read at run time). A row is done in
// chunks of L = 16, then 8, then 4 outputs (MobileNet's maps are 32, 16, 8, 4 and 2 wide) whose
// accumulators stay in registers across all the taps (the fixed trip counts are what lets the
// compiler keep them there and vectorize each tap's update); the rest one output at a time.
template <int KR, int KS, int SW, int L>
inline void correlate_chunk(const float* base, int64_t ld, const float* taps, int64_t R, int64_t S, int64_t sw,
                            int64_t dilh, int64_t dilw, float* o, float bias, bool relu, bool accumulate) {
  float acc[L];
#pragma omp simd
  for (int64_t i = 0; i < L; ++i) acc[i] = accumulate ? o[i] : bias;
  for (int64_t r = 0; r < (KR ? KR : R); ++r)
    for (int64_t s = 0; s < (KS ? KS : S); ++s) {
      const float wv = taps[r * S + s];
      const float* src = base + r * dilh * ld + s * dilw;
#pragma omp simd
      for (int64_t i = 0; i < L; ++i) acc[i] += wv * src[i * (SW ? SW : sw)];
    }
#pragma omp simd
  for (int64_t i = 0; i < L; ++i) o[i] = relu ? std::max(acc[i], 0.f) : acc[i];
}

template <int KR, int KS, int SW>
void correlate(const float* in, int64_t ld, const float* taps, int64_t R_, int64_t S_, int64_t sh,
               int64_t sw_, int64_t dilh, int64_t dilw, float* out, int64_t P, int64_t Q, float bias,
               bool relu, bool accumulate) {
  const int64_t R = KR ? KR : R_, S = KS ? KS : S_, sw = SW ? SW : sw_;
  for (int64_t p = 0; p < P; ++p) {
    const float* base = in + p * sh * ld;
    float* o = out + p * Q;
    int64_t q0 = 0;
    for (; q0 + 16 <= Q; q0 += 16)
      correlate_chunk<KR, KS, SW, 16>(base + q0 * sw, ld, taps, R, S, sw, dilh, dilw, o + q0, bias, relu, accumulate);
    if (q0 + 8 <= Q) {
      correlate_chunk<KR, KS, SW, 8>(base + q0 * sw, ld, taps, R, S, sw, dilh, dilw, o + q0, bias, relu, accumulate);
      q0 += 8;
    }
    if (q0 + 4 <= Q) {
      correlate_chunk<KR, KS, SW, 4>(base + q0 * sw, ld, taps, R, S, sw, dilh, dilw, o + q0, bias, relu, accumulate);
      q0 += 4;
    }
    for (int64_t q = q0; q < Q; ++q) {
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

// sums[r*S + s] = sum over (p, q) of dy[p*Q + q] * in[(p*sh + r*dilh) * ld + q*sw + s*dilw]: the
// weight gradient of one plane. For known tap counts each tap keeps a vector of kWChunk partial
// sums in registers over the whole plane (one horizontal sum per tap at the end, instead of one
// per row); otherwise one reduction per tap and row.
constexpr int64_t kWChunk = 8;

// acc[r*KS + s] += d[0:V] * base[r*dilh*ld + s*dilw : +V] for a vector type V of floats
template <int KR, int KS, class V>
inline void tap_products(V* acc, const float* d, const float* base, int64_t ld, int64_t dilh, int64_t dilw) {
  V dv;
  std::memcpy(&dv, d, sizeof(V));
  for (int64_t r = 0; r < KR; ++r)
    for (int64_t s = 0; s < KS; ++s) {
      V xv;
      std::memcpy(&xv, base + r * dilh * ld + s * dilw, sizeof(V));
      acc[r * KS + s] += dv * xv;
    }
}

template <int KR, int KS, int SW>
void weight_sums(const float* in, int64_t ld, const float* dy, int64_t R_, int64_t S_, int64_t sh,
                 int64_t sw_, int64_t dilh, int64_t dilw, int64_t P, int64_t Q, float* sums) {
  const int64_t sw = SW ? SW : sw_;
  if constexpr (KR > 0 && KS > 0 && SW == 1) {
    // GCC/Clang vector types: the KR*KS accumulators are values, so they live in registers (as a
    // float array they were stored and reloaded around every FMA)
    typedef float vec __attribute__((vector_size(kWChunk * sizeof(float))));
    typedef float vec4 __attribute__((vector_size(4 * sizeof(float))));  // rows 4 wide, or a rest of 4
    vec acc[KR * KS] = {};
    vec4 acc4[KR * KS] = {};
    float tail[KR * KS] = {};
    for (int64_t p = 0; p < P; ++p) {
      const float* base = in + p * sh * ld;
      const float* d = dy + p * Q;
      int64_t q0 = 0;
      for (; q0 + kWChunk <= Q; q0 += kWChunk) tap_products<KR, KS>(acc, d + q0, base + q0, ld, dilh, dilw);
      if (q0 + 4 <= Q) {
        tap_products<KR, KS>(acc4, d + q0, base + q0, ld, dilh, dilw);
        q0 += 4;
      }
      for (int64_t q = q0; q < Q; ++q)
        for (int64_t r = 0; r < KR; ++r)
          for (int64_t s = 0; s < KS; ++s) tail[r * KS + s] += d[q] * base[r * dilh * ld + q + s * dilw];
    }
    for (int64_t t = 0; t < KR * KS; ++t) {
      float v = tail[t];
      for (int64_t i = 0; i < kWChunk; ++i) v += acc[t][i];
      for (int64_t i = 0; i < 4; ++i) v += acc4[t][i];
      sums[t] = v;
    }
  } else if constexpr (KR > 0 && KS > 0) {
    float acc[KR * KS][kWChunk] = {};
    float tail[KR * KS] = {};
    for (int64_t p = 0; p < P; ++p) {
      const float* base = in + p * sh * ld;
      const float* d = dy + p * Q;
      int64_t q0 = 0;
      for (; q0 + kWChunk <= Q; q0 += kWChunk)
        for (int64_t r = 0; r < KR; ++r)
          for (int64_t s = 0; s < KS; ++s) {
            const float* src = base + r * dilh * ld + q0 * sw + s * dilw;
#pragma omp simd
            for (int64_t i = 0; i < kWChunk; ++i) acc[r * KS + s][i] += d[q0 + i] * src[i * sw];
          }
      for (int64_t q = q0; q < Q; ++q)
        for (int64_t r = 0; r < KR; ++r)
          for (int64_t s = 0; s < KS; ++s) tail[r * KS + s] += d[q] * base[r * dilh * ld + q * sw + s * dilw];
    }
    for (int64_t t = 0; t < KR * KS; ++t) {
      float v = tail[t];
      for (int64_t i = 0; i < kWChunk; ++i) v += acc[t][i];
      sums[t] = v;
    }
  } else {
    for (int64_t r = 0; r < R_; ++r)
      for (int64_t s = 0; s < S_; ++s) {
        float sum = 0.f;
        for (int64_t p = 0; p < P; ++p) {
          const float* row = in + (p * sh + r * dilh) * ld + s * dilw;
          const float* d = dy + p * Q;
#pragma omp simd reduction(+ : sum)
          for (int64_t q = 0; q < Q; ++q) sum += d[q] * row[q * sw];
        }
        sums[r * S_ + s] = sum;
      }
  }
}

using WeightSumsFn = void (*)(const float*, int64_t, const float*, int64_t, int64_t, int64_t, int64_t,
                              int64_t, int64_t, int64_t, int64_t, float*);

WeightSumsFn pick_weight_sums(int64_t R, int64_t S, int64_t sw) {
  if (R == 3 && S == 3) return sw == 1 ? weight_sums<3, 3, 1> : sw == 2 ? weight_sums<3, 3, 2> : weight_sums<3, 3, 0>;
  return sw == 1 ? weight_sums<0, 0, 1> : weight_sums<0, 0, 0>;
}

// ---- narrow maps: kLanes channels at once -------------------------------------------------------
// Rows narrower than one vector (MobileNet's 4x4 and 2x2 maps) leave the row kernels mostly
// scalar, and the per-plane set-up outweighs the work. There the planes of kLanes consecutive
// channels are interleaved into [row][column][channel] buffers (the transposes run in L1), so
// every tap is one full-vector FMA with a vector of the channels' weights, at any stride, with
// no wasted lanes; the results are de-interleaved back into the planes.
constexpr int64_t kLanes = 16;  // an AVX-512 vector; the interleave is 16x16 register transposes there
// A pixel's 16 channels; the arithmetic runs on its two halves of 8 (a 16-float GCC vector type
// under AVX2 flags went through general registers, 2.5x slower than the 8-lane code).
struct alignas(64) lanes {
  float v[kLanes];
};
typedef float half8 __attribute__((vector_size(8 * sizeof(float))));
constexpr int kHalves = kLanes / 8;
inline half8* halves(lanes* p) { return reinterpret_cast<half8*>(p); }

// dst (rows x cols x kLanes) = the planes src + j*plane_stride (j < nch; other lanes zero), each
// src_rows x src_cols placed at (top, left), zero elsewhere.
void interleave(const dwn::Isa* isa, const float* src, int64_t plane_stride, int64_t nch, int64_t src_rows,
                int64_t src_cols, lanes* dst, int64_t rows, int64_t cols, int64_t top, int64_t left) {
  float* f = reinterpret_cast<float*>(dst);
  if (isa && isa->to_lanes) {
    // the transposes write whole pixel vectors (lanes past nch zero): only the border is zeroed
    for (int64_t h = 0; h < rows; ++h) {
      if (h < top || h >= top + src_rows) {
        std::memset(f + h * cols * kLanes, 0, sizeof(lanes) * cols);
        continue;
      }
      std::memset(f + h * cols * kLanes, 0, sizeof(lanes) * std::max<int64_t>(left, 0));
      const int64_t r0 = left + src_cols;
      if (r0 < cols) std::memset(f + (h * cols + r0) * kLanes, 0, sizeof(lanes) * (cols - r0));
    }
    return isa->to_lanes(src, plane_stride, nch, src_rows, src_cols, f, cols, top, left);
  }
  std::memset(f, 0, sizeof(lanes) * rows * cols);
  for (int64_t j = 0; j < nch; ++j)
    for (int64_t h = 0; h < src_rows; ++h)
      for (int64_t v = 0; v < src_cols; ++v)
        f[((h + top) * cols + v + left) * kLanes + j] = src[j * plane_stride + h * src_cols + v];
}

// The planes dst + j*plane_stride (j < nch), rows x cols each, from the (top, left) corner of src.
void deinterleave(const dwn::Isa* isa, const lanes* src, int64_t src_cols, int64_t top, int64_t left, float* dst,
                  int64_t plane_stride, int64_t nch, int64_t rows, int64_t cols) {
  const float* f = reinterpret_cast<const float*>(src);
  if (isa && isa->from_lanes) return isa->from_lanes(f, src_cols, top, left, dst, plane_stride, nch, rows, cols);
  for (int64_t j = 0; j < nch; ++j)
    for (int64_t h = 0; h < rows; ++h)
      for (int64_t v = 0; v < cols; ++v) dst[j * plane_stride + h * cols + v] = f[((h + top) * src_cols + v + left) * kLanes + j];
}

// taps[t].v[j] = w[(c0 + j) * RS + t] (zero for j >= nch)
void lane_taps(const float* w, int64_t c0, int64_t nch, int64_t RS, lanes* taps) {
  for (int64_t t = 0; t < RS; ++t) {
    taps[t] = lanes{};
    for (int64_t j = 0; j < nch; ++j) taps[t].v[j] = w[(c0 + j) * RS + t];
  }
}

// The taps of every block of kLanes channels, [block][tap] (RS + 1 with bias: the bias last), once
// per call (per group they were 160 scalar stores beside a few hundred shuffles).
std::vector<lanes> all_lane_taps(const float* w, const float* b, int64_t C, int64_t RS) {
  const int64_t blocks = (C + kLanes - 1) / kLanes, T = RS + (b ? 1 : 0);
  std::vector<lanes> taps(blocks * T);
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int64_t c0 = blk * kLanes, nch = std::min(kLanes, C - c0);
    lane_taps(w, c0, nch, RS, taps.data() + blk * T);
    if (b) {
      lanes& bias = taps[blk * T + RS];
      bias = lanes{};
      for (int64_t j = 0; j < nch; ++j) bias.v[j] = b[c0 + j];
    }
  }
  return taps;
}

// Per-thread interleaved buffers (aligned for the vector type).
lanes* lane_scratch(int64_t n) {
  thread_local std::vector<lanes> buf;
  if (static_cast<int64_t>(buf.size()) < n) buf.resize(n);
  return buf.data();
}

// Maps narrower than 8 run channel-interleaved; with the AVX-512 transposes (the interleave costs a
// few shuffles per float) 8-wide maps too, where the flat plane kernels matched it on the forward
// and the data gradient but reduced each plane's ten sums across lanes in the weight gradient
// (1 thread, in cache, 128 planes of 8x8: bwd_weight 7.7-9.4 -> 6.9 us; 16x16 maps stay on the
// row kernels: interleaved they ran 1.1-2x slower).
bool narrow(const Shape& g) {
  const dwn::Isa* isa = nchw_isa();
  return g.M == 1 && (g.Q < 8 || (isa && isa->to_lanes && g.Q == 8));
}

void fwd_narrow(const float* x, const float* w, const float* b, float* y, const Shape& g, bool relu) {
  const dwn::Isa* isa = nchw_isa();
  const int64_t Hp = g.H + 2 * g.ph, Wp = g.W + 2 * g.pw, RS = g.R * g.S, PQ = g.P * g.Q;
  const std::vector<lanes> packed = all_lane_taps(w, b, g.C, RS);
  const int64_t blocks = (g.C + kLanes - 1) / kLanes;
#pragma omp parallel for num_threads(num_threads()) schedule(static)
  for (int64_t task = 0; task < g.N * blocks; ++task) {
    const int64_t n = task / blocks, c0 = task % blocks * kLanes, nch = std::min(kLanes, g.C - c0);
    lanes* buf = lane_scratch(Hp * Wp + PQ);
    lanes* out = buf + Hp * Wp;
    const lanes *taps = packed.data() + task % blocks * (RS + 1), &bias = taps[RS];
    if (task + 1 < g.N * blocks) prefetch_plane(x + (n * g.C + c0 + kLanes) * g.H * g.W, kLanes * g.H * g.W);
    interleave(isa, x + (n * g.C + c0) * g.H * g.W, g.H * g.W, nch, g.H, g.W, buf, Hp, Wp, g.ph, g.pw);
    const half8 *X = halves(buf), *T = reinterpret_cast<const half8*>(taps);
    half8* O = halves(out);
    if (isa && isa->lanes_corr) {
      isa->lanes_corr(dwn::LanesGeo{Wp, g.P, g.Q, g.R, g.S, g.sh, g.sw, g.dilh, g.dilw},
                      reinterpret_cast<const float*>(buf), reinterpret_cast<const float*>(taps), bias.v,
                      reinterpret_cast<float*>(out), relu);
    } else
    for (int u = 0; u < kHalves; ++u)
      for (int64_t p = 0; p < g.P; ++p)
        for (int64_t q = 0; q < g.Q; ++q) {
          half8 acc = reinterpret_cast<const half8*>(&bias)[u];
          for (int64_t r = 0; r < g.R; ++r)
            for (int64_t s = 0; s < g.S; ++s)
              acc += T[(r * g.S + s) * kHalves + u] *
                     X[((p * g.sh + r * g.dilh) * Wp + q * g.sw + s * g.dilw) * kHalves + u];
          if (relu) acc = acc < 0 ? half8{} : acc;  // as std::max(acc, 0) in the row kernels: NaN stays
          O[(p * g.Q + q) * kHalves + u] = acc;
        }
    deinterleave(isa, out, g.Q, 0, 0, y + (n * g.C + c0) * PQ, PQ, nch, g.P, g.Q);
  }
}


// Strided, with the AVX-512 kernels: gathered per dx pixel (1, 2 or 4 taps at stride 2) from the
// interleaved dy, written once into an unpadded buffer (the scatter below zeroes a padded buffer
// and reads and writes each dx pixel once per tap: 2x slower at 8x8 stride 2).
void bwd_data_narrow_gather(const dwn::Isa* isa, const float* dy, const float* w, float* dx, const Shape& g) {
  const int64_t RS = g.R * g.S, PQ = g.P * g.Q, HW = g.H * g.W;
  const std::vector<lanes> packed = all_lane_taps(w, nullptr, g.C, RS);
  const std::vector<int64_t> rt = strided_taps(g.H, g.R, g.sh, g.ph, g.dilh, g.P);
  const std::vector<int64_t> ct = strided_taps(g.W, g.S, g.sw, g.pw, g.dilw, g.Q);
  const dwn::LanesGeo lg{g.W, g.P, g.Q, g.R, g.S, g.sh, g.sw, g.dilh, g.dilw};
  const int64_t blocks = (g.C + kLanes - 1) / kLanes;
#pragma omp parallel for num_threads(num_threads()) schedule(static)
  for (int64_t task = 0; task < g.N * blocks; ++task) {
    const int64_t n = task / blocks, c0 = task % blocks * kLanes, nch = std::min(kLanes, g.C - c0);
    lanes* buf = lane_scratch(HW + PQ);
    lanes* d = buf + HW;
    if (task + 1 < g.N * blocks) prefetch_plane(dy + (n * g.C + c0 + kLanes) * PQ, kLanes * PQ);
    interleave(isa, dy + (n * g.C + c0) * PQ, PQ, nch, g.P, g.Q, d, g.P, g.Q, 0, 0);
    isa->lanes_gather(lg, g.H, g.W, rt.data(), ct.data(), reinterpret_cast<const float*>(d),
                      reinterpret_cast<const float*>(packed.data() + task % blocks * RS), reinterpret_cast<float*>(buf));
    deinterleave(isa, buf, g.W, 0, 0, dx + (n * g.C + c0) * HW, HW, nch, g.H, g.W);
  }
}

void bwd_data_narrow(const float* dy, const float* w, float* dx, const Shape& g) {
  const dwn::Isa* isa = nchw_isa();
  if (isa && isa->lanes_gather && (g.sh > 1 || g.sw > 1)) return bwd_data_narrow_gather(isa, dy, w, dx, g);
  const int64_t Hp = g.H + 2 * g.ph, Wp = g.W + 2 * g.pw, RS = g.R * g.S, PQ = g.P * g.Q;
  const std::vector<lanes> packed = all_lane_taps(w, nullptr, g.C, RS);
  const int64_t blocks = (g.C + kLanes - 1) / kLanes;
#pragma omp parallel for num_threads(num_threads()) schedule(static)
  for (int64_t task = 0; task < g.N * blocks; ++task) {
    const int64_t n = task / blocks, c0 = task % blocks * kLanes, nch = std::min(kLanes, g.C - c0);
    lanes* buf = lane_scratch(Hp * Wp + PQ);
    lanes* d = buf + Hp * Wp;
    const lanes* taps = packed.data() + task % blocks * RS;
    std::memset(static_cast<void*>(buf), 0, sizeof(lanes) * Hp * Wp);
    if (task + 1 < g.N * blocks) prefetch_plane(dy + (n * g.C + c0 + kLanes) * PQ, kLanes * PQ);
    interleave(isa, dy + (n * g.C + c0) * PQ, PQ, nch, g.P, g.Q, d, g.P, g.Q, 0, 0);
    half8* B = halves(buf);
    const half8 *D = halves(d), *T = reinterpret_cast<const half8*>(taps);
    if (isa && isa->lanes_scatter) {
      isa->lanes_scatter(dwn::LanesGeo{Wp, g.P, g.Q, g.R, g.S, g.sh, g.sw, g.dilh, g.dilw},
                         reinterpret_cast<const float*>(d), reinterpret_cast<const float*>(taps),
                         reinterpret_cast<float*>(buf));
    } else
    for (int u = 0; u < kHalves; ++u)
      for (int64_t p = 0; p < g.P; ++p)
        for (int64_t q = 0; q < g.Q; ++q) {
          const half8 gv = D[(p * g.Q + q) * kHalves + u];
          for (int64_t r = 0; r < g.R; ++r)
            for (int64_t s = 0; s < g.S; ++s)
              B[((p * g.sh + r * g.dilh) * Wp + q * g.sw + s * g.dilw) * kHalves + u] +=
                  T[(r * g.S + s) * kHalves + u] * gv;
        }
    deinterleave(isa, buf, Wp, g.ph, g.pw, dx + (n * g.C + c0) * g.H * g.W, g.H * g.W, nch, g.H, g.W);
  }
}

void bwd_weight_narrow(const float* x, const float* dy, float* dw, float* db, const Shape& g) {
  const dwn::Isa* isa = nchw_isa();
  const int64_t Hp = g.H + 2 * g.ph, Wp = g.W + 2 * g.pw, RS = g.R * g.S, PQ = g.P * g.Q;
  const int64_t blocks = (g.C + kLanes - 1) / kLanes;
  // one task per channel block over all images in order: as in bwd_weight, no partials to combine
#pragma omp parallel for num_threads(num_threads()) schedule(static)
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int64_t c0 = blk * kLanes, nch = std::min(kLanes, g.C - c0);
    lanes* buf = lane_scratch(Hp * Wp + PQ + RS + 1);
    lanes *d = buf + Hp * Wp, *sums = d + PQ, *sb = sums + RS;
    const half8 *X = halves(buf), *D = halves(d);
    half8 *Sm = halves(sums), *Sb = halves(sb);
    std::vector<double> acc_w(RS * kLanes, 0.0), acc_b(kLanes, 0.0);
    for (int64_t n = 0; n < g.N; ++n) {
      if (n + 1 < g.N) {  // the next image's planes of this block: a whole image on
        prefetch_plane(x + ((n + 1) * g.C + c0) * g.H * g.W, nch * g.H * g.W);
        prefetch_plane(dy + ((n + 1) * g.C + c0) * PQ, nch * PQ);
      }
      interleave(isa, x + (n * g.C + c0) * g.H * g.W, g.H * g.W, nch, g.H, g.W, buf, Hp, Wp, g.ph, g.pw);
      interleave(isa, dy + (n * g.C + c0) * PQ, PQ, nch, g.P, g.Q, d, g.P, g.Q, 0, 0);
      for (int64_t t = 0; t <= RS; ++t) sums[t] = lanes{};
      if (isa && isa->lanes_wgrad) {
        isa->lanes_wgrad(dwn::LanesGeo{Wp, g.P, g.Q, g.R, g.S, g.sh, g.sw, g.dilh, g.dilw},
                         reinterpret_cast<const float*>(buf), reinterpret_cast<const float*>(d),
                         reinterpret_cast<float*>(sums));
      } else
      for (int u = 0; u < kHalves; ++u)
        for (int64_t p = 0; p < g.P; ++p)
          for (int64_t q = 0; q < g.Q; ++q) {
            const half8 gv = D[(p * g.Q + q) * kHalves + u];
            Sb[u] += gv;
            for (int64_t r = 0; r < g.R; ++r)
              for (int64_t s = 0; s < g.S; ++s)
                Sm[(r * g.S + s) * kHalves + u] +=
                    gv * X[((p * g.sh + r * g.dilh) * Wp + q * g.sw + s * g.dilw) * kHalves + u];
          }
      for (int64_t j = 0; j < nch; ++j) {
        for (int64_t t = 0; t < RS; ++t) acc_w[t * kLanes + j] += sums[t].v[j];
        acc_b[j] += sb->v[j];
      }
    }
    for (int64_t j = 0; j < nch; ++j) {
      for (int64_t t = 0; t < RS; ++t) dw[(c0 + j) * RS + t] += static_cast<float>(acc_w[t * kLanes + j]);
      db[c0 + j] += static_cast<float>(acc_b[j]);
    }
  }
}

}  // namespace

// 8 x 8 planes, 3 x 3, stride 2, padding 1, multiplier 1, under AVX-512: the whole-plane kernels
// (depthwise_nchw.h: S2P8FwdFn), null otherwise.
const dwn::Isa* s2p8(const Shape& g) {
  const dwn::Isa* isa = nchw_isa();
  const bool fits = g.M == 1 && g.H == 8 && g.W == 8 && g.R == 3 && g.S == 3 && g.sh == 2 && g.sw == 2 &&
                    g.ph == 1 && g.pw == 1 && g.dilh == 1 && g.dilw == 1;
  return fits && isa && isa->s2p8_fwd ? isa : nullptr;
}

// The planes [lo, hi) of thread t of T over n planes (OpenMP's static schedule, whole planes).
inline void plane_range(int64_t n, int t, int T, int64_t& lo, int64_t& hi) { lo = n * t / T, hi = n * (t + 1) / T; }

void fwd(const float* x, const float* w, const float* b, float* y, const Shape& g, bool relu) {
  const int64_t HW = g.H * g.W, RS = g.R * g.S, PQ = g.P * g.Q, K = g.C * g.M;
  if (const dwn::Isa* isa = s2p8(g)) {
#pragma omp parallel num_threads(num_threads())
    {
      int64_t lo, hi;
      plane_range(g.N * g.C, omp_get_thread_num(), omp_get_num_threads(), lo, hi);
      isa->s2p8_fwd(x, w, b, y, lo, hi, g.C, relu);
    }
    return;
  }
  dwn::Plan plan;
  if (const dwn::Isa* isa = nchw_isa(); isa && dwn::make_plan(plan, isa->lanes, g.H, g.W, g.P, g.Q, g.R, g.S, g.sh, g.sw,
                                                               g.ph, g.pw, g.dilh, g.dilw) &&
                                        !narrow(g)) {
    const int64_t ahead = planes_ahead(HW);
#pragma omp parallel for num_threads(num_threads()) schedule(static)
    for (int64_t plane = 0; plane < g.N * g.C; ++plane) {
      const int64_t n = plane / g.C, c = plane % g.C;
      if (plane + ahead < g.N * g.C) prefetch_plane(x + (plane + ahead) * HW, HW);
      for (int64_t j = 0; j < g.M; ++j) {
        const int64_t k = c * g.M + j;
        isa->corr(plan, x + plane * HW, w + k * RS, b[k], y + (n * K + k) * PQ, relu, false);
      }
    }
    return;
  }
  if (narrow(g)) return fwd_narrow(x, w, b, y, g, relu);
  const int64_t Hp = g.H + 2 * g.ph, Wp = g.W + 2 * g.pw;
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
  if (const dwn::Isa* isa = s2p8(g)) {
#pragma omp parallel num_threads(num_threads())
    {
      int64_t lo, hi;
      plane_range(g.N * g.C, omp_get_thread_num(), omp_get_num_threads(), lo, hi);
      isa->s2p8_bwd_data(dy, w, dx, lo, hi, g.C);
    }
    return;
  }
  if (const dwn::Isa* isa = nchw_isa()) {
    dwn::Plan plan;
    if (g.sh == 1 && g.sw == 1 &&
        dwn::make_plan(plan, isa->lanes, g.P, g.Q, g.H, g.W, g.R, g.S, 1, 1, g.dilh * (g.R - 1) - g.ph,
                       g.dilw * (g.S - 1) - g.pw, g.dilh, g.dilw) &&
        !narrow(g)) {
      // the correlation of dy with the flipped filter (as the plain kernel below), read in place
      const int64_t ahead = planes_ahead(g.M * PQ);
#pragma omp parallel for num_threads(num_threads()) schedule(static)
      for (int64_t plane = 0; plane < g.N * g.C; ++plane) {
        const int64_t n = plane / g.C, c = plane % g.C;
        if (plane + ahead < g.N * g.C) prefetch_plane(dy + (plane + ahead) * g.M * PQ, g.M * PQ);
        float flipped[dwn::kMaxTaps];
        for (int64_t j = 0; j < g.M; ++j) {
          const int64_t k = c * g.M + j;
          for (int64_t i = 0; i < RS; ++i) flipped[i] = w[k * RS + RS - 1 - i];
          isa->corr(plan, dy + (n * K + k) * PQ, flipped, 0.f, dx + plane * HW, false, j > 0);
        }
      }
      return;
    }
    dwn::GatherPlan gp;
    if (g.sw == 2 && !narrow(g) &&
        dwn::make_plan(plan, isa->lanes, g.H, g.W, g.P, g.Q, g.R, g.S, g.sh, g.sw, g.ph, g.pw, g.dilh, g.dilw) &&
        dwn::make_gather_plan(gp, plan)) {
      const int64_t ahead = planes_ahead(g.M * PQ);
#pragma omp parallel for num_threads(num_threads()) schedule(static)
      for (int64_t plane = 0; plane < g.N * g.C; ++plane) {
        const int64_t n = plane / g.C, c = plane % g.C;
        if (plane + ahead < g.N * g.C) prefetch_plane(dy + (plane + ahead) * g.M * PQ, g.M * PQ);
        for (int64_t j = 0; j < g.M; ++j) {
          const int64_t k = c * g.M + j;
          isa->gather(gp, dy + (n * K + k) * PQ, w + k * RS, dx + plane * HW, j > 0);
        }
      }
      return;
    }
  }
  if (narrow(g)) return bwd_data_narrow(dy, w, dx, g);
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
  const int nt = static_cast<int>(std::min<int64_t>(num_threads(), std::max<int64_t>(g.C, 1)));
  if (const dwn::Isa* isa = s2p8(g)) {
    // each thread a contiguous range of channels over the images in order (as below)
#pragma omp parallel num_threads(nt)
    {
      int64_t lo, hi;
      plane_range(g.C, omp_get_thread_num(), omp_get_num_threads(), lo, hi);
      isa->s2p8_wgrad(x, dy, dw, db, g.N, g.C, lo, hi);
    }
    return;
  }
  dwn::Plan plan;
  if (const dwn::Isa* isa = nchw_isa(); isa && dwn::make_plan(plan, isa->lanes, g.H, g.W, g.P, g.Q, g.R, g.S, g.sh, g.sw,
                                                               g.ph, g.pw, g.dilh, g.dilw) &&
                                        !narrow(g)) {
    // as below: each thread a contiguous range of channels over the images in order, a plane's
    // float sums (the kernel's fixed order) added in double
#pragma omp parallel num_threads(nt)
    {
      const int t = omp_get_thread_num(), T = omp_get_num_threads();
      const int64_t c_lo = g.C * t / T, c_hi = g.C * (t + 1) / T, nc = c_hi - c_lo;
      float sums[dwn::kMaxTaps + 1];
      std::vector<double> acc_w(nc * g.M * RS, 0.0), acc_b(nc * g.M, 0.0);
      // the planes this thread visits, in order: (n, c) for c in [c_lo, c_hi), image by image
      const int64_t ahead = planes_ahead((g.H * g.W + g.M * PQ) / 2);
      // 3x3 rows mode: each plane's lane sums added into vectors per channel instead of 10 reductions
      // across lanes per plane, reduced into the double sums every kVecImages images (a fixed schedule:
      // the same bits for any thread count). 1 thread, in L2, interleaved, min of 41: 32x32 planes
      // 1.03-1.06x, 16x16 1.01-1.02x.
      const int L = isa->lanes;
      const bool vec = isa->wgrad_vec && RS == 9 && !plan.flat;
      constexpr int64_t kVecImages = 8;
      std::vector<float> vsum(vec ? nc * g.M * 10 * L : 0, 0.f);
      for (int64_t n = 0; n < g.N; ++n) {
        for (int64_t c = c_lo; c < c_hi; ++c) {
          const int64_t i = (c - c_lo) + ahead, n2 = n + i / nc, c2 = c_lo + i % nc;
          if (n2 < g.N) {
            prefetch_plane(x + (n2 * g.C + c2) * g.H * g.W, g.H * g.W);
            prefetch_plane(dy + (n2 * K + c2 * g.M) * PQ, g.M * PQ);
          }
          for (int64_t j = 0; j < g.M; ++j) {
            const int64_t a = (c - c_lo) * g.M + j;
            const float *xp = x + (n * g.C + c) * g.H * g.W, *dp = dy + (n * K + c * g.M + j) * PQ;
            if (vec && isa->wgrad_vec(plan, xp, dp, vsum.data() + a * 10 * L)) continue;
            isa->wgrad(plan, xp, dp, sums);
            for (int64_t i = 0; i < RS; ++i) acc_w[a * RS + i] += sums[i];
            acc_b[a] += sums[RS];
          }
        }
        if (vec && (n % kVecImages == kVecImages - 1 || n + 1 == g.N))
          for (int64_t a = 0; a < nc * g.M; ++a) {
            float* v = vsum.data() + a * 10 * L;
            for (int64_t t = 0; t < 10; ++t) {
              float s = 0.f;
              for (int l = 0; l < L; ++l) s += v[t * L + l];
              (t < 9 ? acc_w[a * RS + t] : acc_b[a]) += s;
            }
            std::fill(v, v + 10 * L, 0.f);
          }
      }
      for (int64_t a = 0; a < nc * g.M; ++a) {
        const int64_t k = c_lo * g.M + a;
        for (int64_t i = 0; i < RS; ++i) dw[k * RS + i] += static_cast<float>(acc_w[a * RS + i]);
        db[k] += static_cast<float>(acc_b[a]);
      }
    }
    return;
  }
  if (narrow(g)) return bwd_weight_narrow(x, dy, dw, db, g);
  const WeightSumsFn sums_of = pick_weight_sums(g.R, g.S, g.sw);
  // Each thread owns a contiguous range of channels and walks the images in order, reading its
  // channels' planes of each image as one contiguous stretch (a channel's planes alone sit
  // C*H*W apart: one page each, where the hardware prefetcher starts cold every time). The sums
  // of a channel run over the images in order whatever the thread count: results are bitwise
  // independent of it.
#pragma omp parallel num_threads(nt)
  {
    const int t = omp_get_thread_num(), T = omp_get_num_threads();
    const int64_t c_lo = g.C * t / T, c_hi = g.C * (t + 1) / T, nc = c_hi - c_lo;
    float* buf = scratch(Hp * Wp + RS);
    float* sums = buf + Hp * Wp;
    std::vector<double> acc_w(nc * g.M * RS, 0.0), acc_b(nc * g.M, 0.0);
    for (int64_t n = 0; n < g.N; ++n)
      for (int64_t c = c_lo; c < c_hi; ++c) {
        place(x + (n * g.C + c) * g.H * g.W, g.H, g.W, buf, Hp, Wp, g.ph, g.pw);
        for (int64_t j = 0; j < g.M; ++j) {
          const int64_t a = (c - c_lo) * g.M + j;
          const float* dyk = dy + (n * K + c * g.M + j) * PQ;
          sums_of(buf, Wp, dyk, g.R, g.S, g.sh, g.sw, g.dilh, g.dilw, g.P, g.Q, sums);
          for (int64_t i = 0; i < RS; ++i) acc_w[a * RS + i] += sums[i];
          float sb = 0.f;
#pragma omp simd reduction(+ : sb)
          for (int64_t i = 0; i < PQ; ++i) sb += dyk[i];
          acc_b[a] += sb;
        }
      }
    for (int64_t a = 0; a < nc * g.M; ++a) {
      const int64_t k = c_lo * g.M + a;
      for (int64_t i = 0; i < RS; ++i) dw[k * RS + i] += static_cast<float>(acc_w[a * RS + i]);
      db[k] += static_cast<float>(acc_b[a]);
    }
  }
}

std::vector<int64_t> strided_taps(int64_t n, int64_t K, int64_t st, int64_t pad, int64_t d, int64_t m) {
  std::vector<int64_t> taps(n * (2 * K + 1));
  for (int64_t i = 0; i < n; ++i) {
    int64_t* t = taps.data() + i * (2 * K + 1);
    t[0] = 0;
    for (int64_t k = 0; k < K; ++k) {
      const int64_t v = i + pad - k * d;
      if (v < 0 || v % st || v / st >= m) continue;
      t[1 + 2 * t[0]] = k;
      t[2 + 2 * t[0]++] = v / st;
    }
  }
  return taps;
}

}  // namespace depthwise
}  // namespace ft::cpu
