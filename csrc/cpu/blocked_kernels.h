// The per-plane kernels of blocked.h, written once over a 16-float vector (GCC/Clang vector
// extensions: one zmm with AVX-512, two ymm with AVX2, whatever the target has otherwise) and
// compiled by each blocked_<isa>.cpp with its own flags. Everything here is in an anonymous
// namespace on purpose: each including file gets its own internal copy, so the linker can never
// hand the AVX-512 instantiation to the AVX2 or portable path.
//
// Sums over a plane are float within a run of pixels (16 lanes of vector adds) and double across
// runs, so the float part never adds more than max(W, 64) values; a run is one image row, or as
// many whole rows as make 64 pixels where every array's rows lie back to back (no halo): closing a
// run (combining its accumulators, widening them to double) cost a third of the work of an 8-pixel
// row. Each plane's sums are stored
// (not added) to its own slot.
#pragma once
#include <algorithm>
#include <cstring>
#include <limits>
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#include <immintrin.h>
#define FT_BLOCKED_AVX512_MASKS 1
#endif

#include "blocked.h"

// Where a 64-byte vector is wider than the target's registers GCC notes that passing one by value
// has an ABI of its own; every function here has internal linkage and is inlined, so no call
// crosses a compilation unit.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

namespace ft::cpu::blocked {
namespace {

using vf = float __attribute__((vector_size(64)));
using vi = int32_t __attribute__((vector_size(64)));
using vb = uint8_t __attribute__((vector_size(16)));

inline vf ld(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof v);  // unaligned: NumPy aligns arrays to 16 bytes, not 64
  return v;
}
inline void st(float* p, const vf& v) { std::memcpy(p, &v, sizeof v); }
inline vf splat(float s) { return vf{} + s; }
// The batch-norm sweeps work on a pixel's 16 lanes as `Px`: one register-sized vector per piece
// (one zmm with AVX-512, two ymm with AVX2). A 64-byte vector type where registers are 32 bytes
// made GCC lower compares and selects lane by lane in scalar code and keep values carried across a
// loop on the stack, moved 8 bytes at a time through general registers (forced-AVX2 batch norm ran
// 6-9x slower than AVX-512 at 128x32x16x16).
#if defined(__AVX512F__)
using pv = vf;
#else
using pv = float __attribute__((vector_size(32)));
#endif
constexpr int kSub = sizeof(vf) / sizeof(pv);
constexpr int kPvLanes = kLanes / kSub;
struct Px {
  pv v[kSub];
};
#define FT_PX_OP(op)                                                                  \
  __attribute__((always_inline)) inline Px operator op(const Px& a, const Px& b) { \
    Px r;                                                                             \
    for (int u = 0; u < kSub; ++u) r.v[u] = a.v[u] op b.v[u];                         \
    return r;                                                                         \
  }
FT_PX_OP(+)
FT_PX_OP(-)
FT_PX_OP(*)
#undef FT_PX_OP
__attribute__((always_inline)) inline Px& operator+=(Px& a, const Px& b) {
  for (int u = 0; u < kSub; ++u) a.v[u] += b.v[u];
  return a;
}
__attribute__((always_inline)) inline Px ldx(const float* p) {
  Px r;
  for (int u = 0; u < kSub; ++u) std::memcpy(&r.v[u], p + u * kPvLanes, sizeof(pv));
  return r;
}
__attribute__((always_inline)) inline void stx(float* p, const Px& x) {
  for (int u = 0; u < kSub; ++u) std::memcpy(p + u * kPvLanes, &x.v[u], sizeof(pv));
}
__attribute__((always_inline)) inline Px relu(const Px& x) {  // NaN kept, like relu_fwd
  Px r;
  const pv zero = {};
  for (int u = 0; u < kSub; ++u) r.v[u] = x.v[u] < zero ? zero : x.v[u];
  return r;
}
// d where c > 0, else 0
__attribute__((always_inline)) inline Px where_positive(const Px& c, const Px& d) {
  Px r;
  const pv zero = {};
  for (int u = 0; u < kSub; ++u) r.v[u] = c.v[u] > zero ? d.v[u] : zero;
  return r;
}

// 16 lanes of double sums, stored to out[16]; in 4-lane pieces where a vector is 32 bytes (the
// same carried-value trap as above)
#if defined(__AVX512F__)
struct DAcc {
  using vd = double __attribute__((vector_size(128)));
  vd v = {};
  __attribute__((always_inline)) void add(const Px& x) { v += __builtin_convertvector(x.v[0], vd); }
  __attribute__((always_inline)) void store(double* out) const { std::memcpy(out, &v, sizeof v); }
};
#else
struct DAcc {
  using qf = float __attribute__((vector_size(16)));
  using qd = double __attribute__((vector_size(32)));
  static constexpr int kQ = kLanes / 4;
  qd q[kQ] = {};
  __attribute__((always_inline)) void add(const Px& x) {
    for (int i = 0; i < kQ; ++i) {
      qf f;
      std::memcpy(&f, reinterpret_cast<const char*>(&x.v[i * 4 / kPvLanes]) + (i * 4 % kPvLanes) * sizeof(float),
                  sizeof f);
      q[i] += __builtin_convertvector(f, qd);
    }
  }
  __attribute__((always_inline)) void store(double* out) const {
    for (int i = 0; i < kQ; ++i) std::memcpy(out + 4 * i, &q[i], sizeof q[i]);
  }
};
#endif

// Sums over a run of W pixels of f(w) and g(w), on independent accumulator pairs: one chain of
// dependent adds would cap a core at a vector per add latency, below the cache's rate. Four per
// sum with one vector a pixel; two Px (so again four vectors) where a pixel is two.
constexpr int kAcc = 4 / kSub;
template <class F>
__attribute__((always_inline)) inline void row_sums(int64_t W, F f, Px& sa, Px& sb) {
  Px a[kAcc] = {}, b[kAcc] = {};
  int64_t w = 0;
  for (; w + kAcc <= W; w += kAcc)
    for (int u = 0; u < kAcc; ++u) {
      Px v, v2;
      f(w + u, v, v2);
      a[u] += v;
      b[u] += v2;
    }
  for (; w < W; ++w) {
    Px v, v2;
    f(w, v, v2);
    a[0] += v;
    b[0] += v2;
  }
  if constexpr (kAcc == 4) {
    sa = (a[0] + a[1]) + (a[2] + a[3]);
    sb = (b[0] + b[1]) + (b[2] + b[3]);
  } else {
    sa = a[0] + a[1];
    sb = b[0] + b[1];
  }
}

// Rows per run of pixels summed in float (see the file comment): rows are back to back in every
// array the sweep reads when `packed`.
inline int64_t run_rows(int64_t W, bool packed) { return packed ? std::max<int64_t>(1, 64 / W) : 1; }

void bn_sums(In x, int64_t H, int64_t W, const float* shift, double* s, double* s2) {
  const Px k = ldx(shift);
  DAcc t, t2;
  const int64_t rr = run_rows(W, x.row == W * kLanes);
  for (int64_t h = 0; h < H; h += rr) {
    const float* r = x.p + h * x.row;
    Px a, a2;
    row_sums(std::min(rr, H - h) * W, [&](int64_t w, Px& v, Px& v2) {
      v = ldx(r + w * kLanes) - k;
      v2 = v * v;
    }, a, a2);
    t.add(a);
    t2.add(a2);
  }
  t.store(s);
  t2.store(s2);
}

// The normalization's per-channel affine map, one expression for the forward and for the backward
// that recomputes the fused ReLU's mask from x (so both round it alike: one FMA where the target has it).
__attribute__((always_inline)) inline Px affine(const Px& x, const Px& a, const Px& b) { return x * a + b; }

template <bool kRelu, bool kRes>
void bn_apply_t(In x, In res, Out y, int64_t H, int64_t W, const float* a_, const float* b_) {
  const Px a = ldx(a_), b = ldx(b_);
  for (int64_t h = 0; h < H; ++h) {
    const float* xr = x.p + h * x.row;
    const float* rr = kRes ? res.p + h * res.row : nullptr;
    float* yr = y.p + h * y.row;
    for (int64_t w = 0; w < W; ++w) {
      Px v = affine(ldx(xr + w * kLanes), a, b);
      if constexpr (kRes) v += ldx(rr + w * kLanes);
      if constexpr (kRelu) v = relu(v);
      stx(yr + w * kLanes, v);
    }
  }
}

void bn_apply(In x, In res, Out y, int64_t H, int64_t W, const float* a, const float* b, bool relu) {
  if (relu && res.p)
    bn_apply_t<true, true>(x, res, y, H, W, a, b);
  else if (relu)
    bn_apply_t<true, false>(x, res, y, H, W, a, b);
  else if (res.p)
    bn_apply_t<false, true>(x, res, y, H, W, a, b);
  else
    bn_apply_t<false, false>(x, res, y, H, W, a, b);
}

// Where the backward's gradient mask comes from: no fused ReLU, the forward's output y (> 0), or x
// through the forward's affine map (x * a + b > 0: the same value y was computed from, so the same
// mask, without reading y).
enum Mask { kNoMask, kMaskY, kMaskX };

// The gradient reaching the normalization at one pixel: dy, zero where the fused ReLU cut.
template <int kMask>
__attribute__((always_inline)) inline Px grad_in(const float* dy, const float* y, const Px& x, const Px& a,
                                                const Px& b) {
  const Px d = ldx(dy);
  if constexpr (kMask == kMaskY) return where_positive(ldx(y), d);
  if constexpr (kMask == kMaskX) return where_positive(affine(x, a, b), d);
  return d;
}

template <int kMask, bool kStore>
void bn_bwd_sums_t(In x, In dy, In y, const float* ma_, const float* mb_, Out g_out, int64_t H, int64_t W,
                   const float* mu_, double* sdy, double* sdyx) {
  const Px mu = ldx(mu_), ma = kMask == kMaskX ? ldx(ma_) : Px{}, mb = kMask == kMaskX ? ldx(mb_) : Px{};
  DAcc t, t2;
  const int64_t packed = W * kLanes;
  const int64_t rr = run_rows(W, x.row == packed && dy.row == packed && (kMask != kMaskY || y.row == packed) &&
                                     (!kStore || g_out.row == packed));
  for (int64_t h = 0; h < H; h += rr) {
    const float *xr = x.p + h * x.row, *dr = dy.p + h * dy.row, *yr = kMask == kMaskY ? y.p + h * y.row : nullptr;
    float* gr = kStore ? g_out.p + h * g_out.row : nullptr;
    Px a, a2;
    row_sums(std::min(rr, H - h) * W, [&](int64_t w, Px& g, Px& gx) {
      const Px xv = ldx(xr + w * kLanes);
      g = grad_in<kMask>(dr + w * kLanes, kMask == kMaskY ? yr + w * kLanes : nullptr, xv, ma, mb);
      if constexpr (kStore) stx(gr + w * kLanes, g);
      gx = g * (xv - mu);
    }, a, a2);
    t.add(a);
    t2.add(a2);
  }
  t.store(sdy);
  t2.store(sdyx);
}

void bn_bwd_sums(In x, In dy, In y, const float* ma, const float* mb, Out g, int64_t H, int64_t W,
                 const float* mu, double* sdy, double* sdyx) {
  const int m = y.p ? kMaskY : ma ? kMaskX : kNoMask;
#define FT_BN_SUMS(M, S) bn_bwd_sums_t<M, S>(x, dy, y, ma, mb, g, H, W, mu, sdy, sdyx)
  if (g.p)
    m == kMaskY ? FT_BN_SUMS(kMaskY, true) : m == kMaskX ? FT_BN_SUMS(kMaskX, true) : FT_BN_SUMS(kNoMask, true);
  else
    m == kMaskY ? FT_BN_SUMS(kMaskY, false) : m == kMaskX ? FT_BN_SUMS(kMaskX, false) : FT_BN_SUMS(kNoMask, false);
#undef FT_BN_SUMS
}

template <int kMask>
void bn_bwd_dx_t(In x, In dy, In y, const float* ma_, const float* mb_, Out dx, int64_t H, int64_t W,
                 const float* mu_, const float* k_, const float* m1_, const float* m2_) {
  const Px mu = ldx(mu_), k = ldx(k_), m1 = ldx(m1_), m2 = ldx(m2_);
  const Px ma = kMask == kMaskX ? ldx(ma_) : Px{}, mb = kMask == kMaskX ? ldx(mb_) : Px{};
  for (int64_t h = 0; h < H; ++h) {
    const float *xr = x.p + h * x.row, *dr = dy.p + h * dy.row, *yr = kMask == kMaskY ? y.p + h * y.row : nullptr;
    float* dxr = dx.p + h * dx.row;
    for (int64_t w = 0; w < W; ++w) {
      const Px xv = ldx(xr + w * kLanes);
      const Px g = grad_in<kMask>(dr + w * kLanes, kMask == kMaskY ? yr + w * kLanes : nullptr, xv, ma, mb);
      stx(dxr + w * kLanes, k * (g - m1 - (xv - mu) * m2));
    }
  }
}

void bn_bwd_dx(In x, In dy, In y, const float* ma, const float* mb, Out dx, int64_t H, int64_t W,
               const float* mu, const float* k, const float* m1, const float* m2) {
  if (y.p)
    bn_bwd_dx_t<kMaskY>(x, dy, y, ma, mb, dx, H, W, mu, k, m1, m2);
  else if (ma)
    bn_bwd_dx_t<kMaskX>(x, dy, y, ma, mb, dx, H, W, mu, k, m1, m2);
  else
    bn_bwd_dx_t<kNoMask>(x, dy, y, ma, mb, dx, H, W, mu, k, m1, m2);
}

void plane_sum(In x, int64_t H, int64_t W, double* s) {
  DAcc t;
  const int64_t rr = run_rows(W, x.row == W * kLanes);
  for (int64_t h = 0; h < H; h += rr) {
    const float* r = x.p + h * x.row;
    Px a, unused;
    row_sums(std::min(rr, H - h) * W, [&](int64_t w, Px& v, Px& v2) {
      v = ldx(r + w * kLanes);
      v2 = Px{};
    }, a, unused);
    t.add(a);
  }
  t.store(s);
}

void plane_fill(Out y, int64_t H, int64_t W, const float* v_) {
  const vf v = ld(v_);
  for (int64_t h = 0; h < H; ++h)
    for (int64_t w = 0; w < W; ++w) st(y.p + h * y.row + w * kLanes, v);
}

// The taps i of a window starting at `start` (tap i at start + i*d) that lie in [0, n): [lo, hi).
inline void real_taps(int64_t start, int64_t k, int64_t d, int64_t n, int64_t& lo, int64_t& hi) {
  lo = start >= 0 ? 0 : (-start + d - 1) / d;
  hi = start >= n ? 0 : std::min(k, (n - 1 - start) / d + 1);
  if (hi < lo) hi = lo;
}

// Where a 16-lane vector is two ymm (AVX2, or narrower), GCC lowers a compare and select on the
// 64-byte type lane by lane in scalar code (3x slower than the NCHW kernel); on 8-lane halves it
// emits vcmpps and vblendvps. With AVX-512 the whole vector is one zmm compare.
// always_inline: left to GCC's heuristics the halves went through memory at each call (forced-AVX2
// max pool forward 0.26 -> 0.9 ms at 128x16x32x32).
#if defined(__AVX512F__)
__attribute__((always_inline)) inline void take_greater(vf& best, vi& at, const vf& v, int32_t tap) {
  const vi gt = (v > best) | (v != v);  // a NaN is always taken: it propagates, the last one wins
  best = gt ? v : best;
  at = gt ? vi{} + tap : at;
}
// dy where the lane's tap is `tap`, else 0; hits counts the lanes that matched
__attribute__((always_inline)) inline vf pick_tap(const vi& at, int32_t tap, const vf& d, vi& hits) {
  const vi hit = at == tap;
  hits -= hit;  // a true comparison is -1
  return hit ? d : vf{};
}
#else
using hf = float __attribute__((vector_size(32)));
using hi = int32_t __attribute__((vector_size(32)));
template <class H, class V>
__attribute__((always_inline)) inline void split(const V& v, H& lo, H& hi_) {
  std::memcpy(&lo, &v, sizeof lo);
  std::memcpy(&hi_, reinterpret_cast<const char*>(&v) + sizeof lo, sizeof hi_);
}
template <class H, class V>
__attribute__((always_inline)) inline void join(V& v, const H& lo, const H& hi_) {
  std::memcpy(&v, &lo, sizeof lo);
  std::memcpy(reinterpret_cast<char*>(&v) + sizeof lo, &hi_, sizeof hi_);
}
__attribute__((always_inline)) inline void take_greater(vf& best, vi& at, const vf& v, int32_t tap) {
  hf b0, b1, v0, v1;
  hi a0, a1;
  split(best, b0, b1);
  split(v, v0, v1);
  split(at, a0, a1);
  const hi g0 = (v0 > b0) | (v0 != v0), g1 = (v1 > b1) | (v1 != v1);  // NaN taken, as above
  join(best, g0 ? v0 : b0, g1 ? v1 : b1);
  join(at, g0 ? hi{} + tap : a0, g1 ? hi{} + tap : a1);
}
__attribute__((always_inline)) inline vf pick_tap(const vi& at, int32_t tap, const vf& d, vi& hits) {
  hi a0, a1, n0, n1;
  hf d0, d1;
  split(at, a0, a1);
  split(d, d0, d1);
  split(hits, n0, n1);
  const hi m0 = a0 == tap, m1 = a1 == tap;
  join(hits, n0 - m0, n1 - m1);  // a true comparison is -1
  vf out;
  join(out, m0 ? d0 : hf{}, m1 ? d1 : hf{});
  return out;
}
#endif

// Every window of a max pool sweep, row-major: f(p, q, h0, w0, r0, r1, s0, s1), the window at
// (h0, w0) with real taps rows [r0, r1) x columns [s0, s1); f returns false to stop (then so does this).
template <class F>
__attribute__((always_inline)) inline bool each_window(const PoolGeom& g, F f) {
  for (int64_t p = 0; p < g.P; ++p) {
    const int64_t h0 = p * g.sh - g.ph;
    int64_t r0, r1;
    real_taps(h0, g.kh, g.dh, g.H, r0, r1);
    for (int64_t q = 0; q < g.Q; ++q) {
      const int64_t w0 = q * g.sw - g.pw;
      int64_t s0, s1;
      real_taps(w0, g.kw, g.dw, g.W, s0, s1);
      if (!f(p, q, h0, w0, r0, r1, s0, s1)) return false;
    }
  }
  return true;
}

// The usual pooling geometry (2x2 windows, stride 2, no padding or dilation, every window inside
// the image) gets sweeps of its own that step pointers: the general sweep pays an integer division
// per window (the real taps of a window that may cross the border) and, after every one-byte tap
// store (a uint8_t store may alias anything), reloads the geometry from memory; with the taps
// widened byte by byte as well, max pooling ran at a third of the bandwidth its data needs.
inline bool pool_2x2_inside(const PoolGeom& g) {
  return g.kh == 2 && g.kw == 2 && g.sh == 2 && g.sw == 2 && g.ph == 0 && g.pw == 0 && g.dh == 1 && g.dw == 1 &&
         2 * g.P <= g.H && 2 * g.Q <= g.W;
}

// 16 one-byte taps widened to 16 lanes of int32 in two doubling steps: GCC lowers the fourfold
// widening in one __builtin_convertvector to 16 scalar byte extracts, the doubling steps to vpmovzx.
__attribute__((always_inline)) inline vi widen_taps(const uint8_t* p) {
  using vb16 = uint16_t __attribute__((vector_size(32)));
  using vu = uint32_t __attribute__((vector_size(64)));
  vb t8;
  std::memcpy(&t8, p, sizeof t8);
  return reinterpret_cast<vi>(__builtin_convertvector(__builtin_convertvector(t8, vb16), vu));
}

// The inverse: 16 lanes of taps (each < 256) stored as bytes. AVX-512 narrows in one vpmovdb;
// elsewhere GCC lowers the fourfold narrowing byte by byte, the doubling steps to packs.
__attribute__((always_inline)) inline void store_taps(uint8_t* p, const vi& at) {
#if defined(__AVX512F__)
  const vb t8 = __builtin_convertvector(at, vb);
#else
  using vs = int16_t __attribute__((vector_size(32)));
  const vb t8 = __builtin_convertvector(__builtin_convertvector(at, vs), vb);
#endif
  std::memcpy(p, &t8, sizeof t8);
}

// The maximum of one full 2x2 window (taps a, a + 16, b, b + 16) and its tap, in row-major tap order.
__attribute__((always_inline)) inline void max_2x2(const float* a, const float* b, int64_t ds, float* out,
                                                   uint8_t* out_tap) {
  const vf v0 = ld(a), v1 = ld(a + ds), v2 = ld(b), v3 = ld(b + ds);
  vf best = splat(-std::numeric_limits<float>::infinity());
  vi at = {};
  take_greater(best, at, v0, 0);
  take_greater(best, at, v1, 1);
  take_greater(best, at, v2, 2);
  take_greater(best, at, v3, 3);
  st(out, best);
  store_taps(out_tap, at);
}

#if defined(FT_BLOCKED_AVX512_MASKS)
// The sweeps of full 2x2 windows with AVX-512's compare masks: a window's taps are kept as 16 bytes
// (one masked byte move per tap) instead of 16 int32 lanes narrowed at the end, and each selection
// is one masked move on the compare's mask. Through the vector extensions GCC turned every compare
// into a vector of -1/0 lanes and back into a mask for the blend, and max pooling's forward ran 1.5x
// as long as average pooling's over the same bytes. The same rule as take_greater: strictly greater,
// or a NaN (the last NaN wins); the first tap is taken as it stands (it beats -inf, or is -inf and
// then the maximum so far is -inf at tap 0 either way).
__attribute__((always_inline)) inline void take_greater_m(__m512& best, __m128i& at, __m512 v, char tap) {
  const __mmask16 m = _mm512_cmp_ps_mask(v, best, _CMP_GT_OQ) | _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  best = _mm512_mask_mov_ps(best, m, v);
  at = _mm_mask_mov_epi8(at, m, _mm_set1_epi8(tap));
}

void maxpool_fwd_2x2(In x, Out y, uint8_t* tap, int64_t P, int64_t Q) {
  for (int64_t p = 0; p < P; ++p) {
    const float* r0 = x.p + 2 * p * x.row;
    const float* r1 = r0 + x.row;
    float* out = y.p + p * y.row;
    uint8_t* t = tap + p * Q * kLanes;
    for (int64_t q = 0; q < Q; ++q) {
      const float *a = r0 + 2 * q * kLanes, *b = r1 + 2 * q * kLanes;
      __m512 best = _mm512_loadu_ps(a);
      __m128i at = _mm_setzero_si128();
      take_greater_m(best, at, _mm512_loadu_ps(a + kLanes), 1);
      take_greater_m(best, at, _mm512_loadu_ps(b), 2);
      take_greater_m(best, at, _mm512_loadu_ps(b + kLanes), 3);
      _mm512_storeu_ps(out + q * kLanes, best);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(t + q * kLanes), at);
    }
  }
}

// dy to each window's tap, zeros to its other three pixels: one byte compare per tap gives the mask
// of a zero-masked move. A plane is valid when no tap byte has a bit above 3 set (see below).
bool maxpool_bwd_2x2(In dy, const uint8_t* tap, Out dx, int64_t P, int64_t Q) {
  __m128i seen = _mm_setzero_si128();
  for (int64_t p = 0; p < P; ++p) {
    const float* d = dy.p + p * dy.row;
    const uint8_t* t = tap + p * Q * kLanes;
    float* r0 = dx.p + 2 * p * dx.row;
    float* r1 = r0 + dx.row;
    for (int64_t q = 0; q < Q; ++q) {
      const __m128i at = _mm_loadu_si128(reinterpret_cast<const __m128i*>(t + q * kLanes));
      seen = _mm_or_si128(seen, at);
      const __m512 dv = _mm512_loadu_ps(d + q * kLanes);
      float* o0 = r0 + 2 * q * kLanes;
      float* o1 = r1 + 2 * q * kLanes;
      _mm512_storeu_ps(o0, _mm512_maskz_mov_ps(_mm_cmpeq_epi8_mask(at, _mm_setzero_si128()), dv));
      _mm512_storeu_ps(o0 + kLanes, _mm512_maskz_mov_ps(_mm_cmpeq_epi8_mask(at, _mm_set1_epi8(1)), dv));
      _mm512_storeu_ps(o1, _mm512_maskz_mov_ps(_mm_cmpeq_epi8_mask(at, _mm_set1_epi8(2)), dv));
      _mm512_storeu_ps(o1 + kLanes, _mm512_maskz_mov_ps(_mm_cmpeq_epi8_mask(at, _mm_set1_epi8(3)), dv));
    }
  }
  return _mm_test_all_zeros(seen, _mm_set1_epi8(static_cast<char>(0xFC))) != 0;
}
#else
void maxpool_fwd_2x2(In x, Out y, uint8_t* tap, int64_t P, int64_t Q) {
  for (int64_t p = 0; p < P; ++p) {
    const float* r0 = x.p + 2 * p * x.row;
    const float* r1 = r0 + x.row;
    float* out = y.p + p * y.row;
    uint8_t* t = tap + p * Q * kLanes;
    for (int64_t q = 0; q < Q; ++q)
      max_2x2(r0 + 2 * q * kLanes, r1 + 2 * q * kLanes, kLanes, out + q * kLanes, t + q * kLanes);
  }
}

// The taps are checked all at once: every one of a full 2x2 window is real, so a plane is valid
// when no tap byte has a bit above 3 set in the OR of them all.
bool maxpool_bwd_2x2(In dy, const uint8_t* tap, Out dx, int64_t P, int64_t Q) {
  uint64_t seen = 0;
  for (int64_t p = 0; p < P; ++p) {
    const float* d = dy.p + p * dy.row;
    const uint8_t* t = tap + p * Q * kLanes;
    float* r0 = dx.p + 2 * p * dx.row;
    float* r1 = r0 + dx.row;
    for (int64_t q = 0; q < Q; ++q) {
      uint64_t half[2];
      std::memcpy(half, t + q * kLanes, sizeof half);
      seen |= half[0] | half[1];
      const vi at = widen_taps(t + q * kLanes);
      const vf dv = ld(d + q * kLanes);
      vi unused = {};  // pick_tap's count of hits: not needed when every tap is real
      float* o0 = r0 + 2 * q * kLanes;
      float* o1 = r1 + 2 * q * kLanes;
      st(o0, pick_tap(at, 0, dv, unused));
      st(o0 + kLanes, pick_tap(at, 1, dv, unused));
      st(o1, pick_tap(at, 2, dv, unused));
      st(o1 + kLanes, pick_tap(at, 3, dv, unused));
    }
  }
  return (seen & 0xFCFCFCFCFCFCFCFCull) == 0;
}
#endif

// Strict >: the first maximum in row-major tap order wins, a NaN tap is always taken (so NaN
// propagates and the last NaN wins, as in PyTorch and the NCHW kernel), and the tap starts at the
// first real one, so a window of -inf still names a real element. The tap is
// the window's own index r * kw + s, one byte a lane: an int64 flat index per lane made the index
// array 8x the pooled output, and writing it (then reading it back in backward) was most of the time.
void maxpool_fwd(In x, Out y, uint8_t* tap, const PoolGeom& g) {
  if (pool_2x2_inside(g)) return maxpool_fwd_2x2(x, y, tap, g.P, g.Q);
  each_window(g, [&](int64_t p, int64_t q, int64_t h0, int64_t w0, int64_t r0, int64_t r1, int64_t s0,
                            int64_t s1) {
    float* out = y.p + p * y.row + q * kLanes;
    uint8_t* out_tap = tap + (p * g.Q + q) * kLanes;
    if (g.kh == 2 && g.kw == 2 && r0 == 0 && r1 == 2 && s0 == 0 && s1 == 2) {
      // a 2x2 window with all four taps real (border windows of a padded sweep): the loop's order
      const float* t0 = x.p + h0 * x.row + w0 * kLanes;
      max_2x2(t0, t0 + g.dh * x.row, g.dw * kLanes, out, out_tap);
      return true;
    }
    vf best = splat(-std::numeric_limits<float>::infinity());
    vi at = vi{} + static_cast<int32_t>(r0 * g.kw + s0);
    for (int64_t r = r0; r < r1; ++r) {
      const float* row = x.p + (h0 + r * g.dh) * x.row;
      for (int64_t s = s0; s < s1; ++s) {
        take_greater(best, at, ld(row + (w0 + s * g.dw) * kLanes), static_cast<int32_t>(r * g.kw + s));
      }
    }
    st(out, best);
    store_taps(out_tap, at);
    return true;
  });
}

// Windows that never share a pixel (stride >= the dilated window): each window writes its real taps
// as dy where the tap won and 0 elsewhere, with no read-modify-write. Pixels of no window are the
// caller's to zero. Returns false (and stops) at a tap that is not a real tap of its window.
bool maxpool_bwd_tiled(In dy, const uint8_t* tap, Out dx, const PoolGeom& g) {
  if (pool_2x2_inside(g)) return maxpool_bwd_2x2(dy, tap, dx, g.P, g.Q);
  return each_window(g, [&](int64_t p, int64_t q, int64_t h0, int64_t w0, int64_t r0, int64_t r1, int64_t s0,
                            int64_t s1) {
    const vi at = widen_taps(tap + (p * g.Q + q) * kLanes);
    const vf d = ld(dy.p + p * dy.row + q * kLanes);
    vi hits = {};  // a lane whose tap is a real one of this window hits exactly once
    for (int64_t r = r0; r < r1; ++r) {
      float* row = dx.p + (h0 + r * g.dh) * dx.row;
      for (int64_t s = s0; s < s1; ++s) {
        st(row + (w0 + s * g.dw) * kLanes, pick_tap(at, static_cast<int32_t>(r * g.kw + s), d, hits));
      }
    }
    const vi once = hits == 1;
    for (int l = 0; l < kLanes; ++l)
      if (!once[l]) return false;
    return true;
  });
}

// Overlapping windows: dx (zeroed by the caller) += dy at each window's tap; lanes never collide
// (each writes its own channel), so the scatter is safe to vectorize.
bool maxpool_bwd(In dy, const uint8_t* tap, Out dx, const PoolGeom& g) {
  return each_window(g, [&](int64_t p, int64_t q, int64_t h0, int64_t w0, int64_t r0, int64_t r1, int64_t s0,
                            int64_t s1) {
    const uint8_t* t = tap + (p * g.Q + q) * kLanes;
    const float* d = dy.p + p * dy.row + q * kLanes;
    int64_t off[kLanes];
    for (int l = 0; l < kLanes; ++l) {
      const int64_t r = t[l] / g.kw, s = t[l] % g.kw;
      if (r < r0 || r >= r1 || s < s0 || s >= s1) return false;
      off[l] = (h0 + r * g.dh) * dx.row + (w0 + s * g.dw) * kLanes + l;
    }
#pragma omp simd
    for (int l = 0; l < kLanes; ++l) dx.p[off[l]] += d[l];
    return true;
  });
}

// The divisor of the average over the window at (h0, w0) (the NCHW kernel's rule).
inline float avg_divisor(int64_t h0, int64_t w0, const PoolGeom& g) {
  if (g.count_include_pad)
    return static_cast<float>((std::min(h0 + g.kh, g.H + g.ph) - h0) * (std::min(w0 + g.kw, g.W + g.pw) - w0));
  return static_cast<float>((std::min(h0 + g.kh, g.H) - std::max<int64_t>(h0, 0)) *
                            (std::min(w0 + g.kw, g.W) - std::max<int64_t>(w0, 0)));
}

// Full 2x2 windows: the divisor is 4 under either rule, and * 0.25 rounds exactly as / 4 does.
void avgpool_fwd_2x2(In x, Out y, int64_t P, int64_t Q) {
  const vf quarter = splat(0.25f);
  for (int64_t p = 0; p < P; ++p) {
    const float* r0 = x.p + 2 * p * x.row;
    const float* r1 = r0 + x.row;
    float* out = y.p + p * y.row;
    for (int64_t q = 0; q < Q; ++q) {
      const float *a = r0 + 2 * q * kLanes, *b = r1 + 2 * q * kLanes;
      vf s = ((vf{} + ld(a)) + ld(a + kLanes)) + ld(b);  // the general loop's order of additions
      s += ld(b + kLanes);
      st(out + q * kLanes, s * quarter);
    }
  }
}

void avgpool_bwd_2x2(In dy, Out dx, int64_t P, int64_t Q) {
  const vf quarter = splat(0.25f);
  for (int64_t p = 0; p < P; ++p) {
    const float* d = dy.p + p * dy.row;
    float* r0 = dx.p + 2 * p * dx.row;
    float* r1 = r0 + dx.row;
    for (int64_t q = 0; q < Q; ++q) {
      const vf v = ld(d + q * kLanes) * quarter;
      float *a = r0 + 2 * q * kLanes, *b = r1 + 2 * q * kLanes;
      st(a, v);
      st(a + kLanes, v);
      st(b, v);
      st(b + kLanes, v);
    }
  }
}

void avgpool_fwd(In x, Out y, const PoolGeom& g) {
  if (pool_2x2_inside(g)) return avgpool_fwd_2x2(x, y, g.P, g.Q);
  for (int64_t p = 0; p < g.P; ++p) {
    const int64_t hs = p * g.sh - g.ph, h0 = std::max<int64_t>(hs, 0), h1 = std::min(hs + g.kh, g.H);
    for (int64_t q = 0; q < g.Q; ++q) {
      const int64_t ws = q * g.sw - g.pw, w0 = std::max<int64_t>(ws, 0), w1 = std::min(ws + g.kw, g.W);
      vf s = {};
      if (g.kh == 2 && g.kw == 2 && h0 == hs && h1 == hs + 2 && w0 == ws && w1 == ws + 2) {
        // the usual 2x2 window inside the image: unrolled, the loop's order of additions
        const float* t = x.p + h0 * x.row + w0 * kLanes;
        s = ((s + ld(t)) + ld(t + kLanes)) + ld(t + x.row);
        s += ld(t + x.row + kLanes);
      } else {
        for (int64_t h = h0; h < h1; ++h)
          for (int64_t w = w0; w < w1; ++w) s += ld(x.p + h * x.row + w * kLanes);
      }
      st(y.p + p * y.row + q * kLanes, s / splat(avg_divisor(hs, ws, g)));
    }
  }
}

// dx += dy / divisor over each window's real taps (dx zeroed by the caller); with g.disjoint (no
// pixel in two windows) dx is stored instead, so the caller zeroes only the pixels of no window.
void avgpool_bwd(In dy, Out dx, const PoolGeom& g) {
  if (g.disjoint && pool_2x2_inside(g)) return avgpool_bwd_2x2(dy, dx, g.P, g.Q);
  for (int64_t p = 0; p < g.P; ++p) {
    const int64_t hs = p * g.sh - g.ph, h0 = std::max<int64_t>(hs, 0), h1 = std::min(hs + g.kh, g.H);
    for (int64_t q = 0; q < g.Q; ++q) {
      const int64_t ws = q * g.sw - g.pw, w0 = std::max<int64_t>(ws, 0), w1 = std::min(ws + g.kw, g.W);
      const vf d = ld(dy.p + p * dy.row + q * kLanes) / splat(avg_divisor(hs, ws, g));
      for (int64_t h = h0; h < h1; ++h)
        for (int64_t w = w0; w < w1; ++w) {
          float* o = dx.p + h * dx.row + w * kLanes;
          st(o, g.disjoint ? d : ld(o) + d);
        }
    }
  }
}

constexpr Isa make_isa(const char* name) {
  return Isa{name, &bn_sums, &bn_apply, &bn_bwd_sums, &bn_bwd_dx, &plane_sum, &plane_fill,
             &maxpool_fwd, &maxpool_bwd_tiled, &maxpool_bwd, &avgpool_fwd, &avgpool_bwd};
}

}  // namespace
}  // namespace ft::cpu::blocked
