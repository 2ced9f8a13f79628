// Winograd F(2x2, 3x3) and F(4x4, 3x3) (Lavin & Gray 2016) on the NCHW16c blocked layout, with
// AVX-512: one zmm is the 16 channels of one pixel, so the transforms are plain vector adds over
// whole blocks. One template over the output tile side M (2 or 4) runs both.
//
// Output tiles are M x M pixels (the last row/column of tiles is partial when M does not divide
// the map); each needs the (M + 2) x (M + 2) input patch around it. Per chunk of tiles (sized so a
// chunk's transformed data stay in the thread's L2):
//   1. input transform  V[e][t][c] = (B^T d B)[e] for the (M + 2)^2 positions e of each tile t;
//   2. (M + 2)^2 independent channel products M[e][t][o] = sum_c V[e][t][c] U[e][c][o], each a
//      register-blocked micro-kernel (TR tiles x KV blocks of 16 output channels in zmm
//      accumulators over all input channels; V broadcast, U one vector load): the shape of the
//      direct engine's 1x1 kernel;
//   3. output transform y = A^T M A (+ bias, + the old output when accumulating, ReLU, and the
//      batchnorm statistics' per-tile partials: store_tile, shared by both tile sizes) straight
//      into the blocked output.
// The weights U = G g G^T are transformed once per call. An M x M tile costs (M + 2)^2 products per
// channel pair instead of the 9 M^2 of direct outputs (16 for 4 outputs, 36 for 16); the
// transforms are O(C + K) per tile.
// Threads share out the chunks (a batch-1 call still gives every thread chunks). The statistics
// are per-tile float32 sums (<= M^2 pixels) added in double per chunk, the chunks' sums then in
// chunk order; the chunks follow from the shape, so the bits do not depend on the thread count,
// and every output element's sum runs over the input channels in order, so the outputs do not
// either. The weight gradient (run_wgrad) is the adjoint of the same algorithm, either tile size.
#include "conv2d_wino_blocked.h"

#if defined(__AVX512F__) && defined(__FMA__)
#include <immintrin.h>

#include <algorithm>
#include <utility>
#include <vector>

#include <omp.h>

#include "fasttrain/check.h"
#include "fasttrain/cpu.h"

namespace ft::cpu::wino_blocked {
namespace {

constexpr int kB = 16;
using V = __m512;

inline int64_t blocks(int64_t c) { return (c + kB - 1) / kB; }

// The products of one position, both shapes of one register-blocked kernel: R rows x KV blocks of
// 16 columns in zmm accumulators over a reduction of L steps; per step KV vectors of b (one load
// each) and R scalars of a (broadcast), R * KV FMAs:
//   out[i * ldo + j * 16 + l] (+)= sum_{s < L} a[i * ai + s * as] * b[s * bs + j * bj + l]
// with the a stride of unit length fixed at compile time (UNIT_ROWS: ai == 1, else as == 1).
// Forward / data gradient: rows = tiles, steps = input channels (M = V U); weight gradient:
// rows = input channels, steps = tiles, accumulating into dU (dU += V^T Y).
template <int R, int KV, bool UNIT_ROWS>
void rank_update(const float* a, int64_t a_stride, const float* b, int64_t bs, int64_t bj, int64_t L, float* out,
                 int64_t ldo, bool accumulate) {
  const int64_t ai = UNIT_ROWS ? 1 : a_stride, as = UNIT_ROWS ? a_stride : 1;
  V acc[R][KV];
#pragma GCC unroll 16
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < KV; ++j) acc[i][j] = accumulate ? _mm512_loadu_ps(out + i * ldo + j * kB) : _mm512_setzero_ps();
  for (int64_t s = 0; s < L; ++s) {
    V w[KV];
#pragma GCC unroll 4
    for (int j = 0; j < KV; ++j) w[j] = _mm512_loadu_ps(b + s * bs + j * bj);
#pragma GCC unroll 16
    for (int i = 0; i < R; ++i) {
      const V x = _mm512_set1_ps(a[i * ai + s * as]);
#pragma GCC unroll 4
      for (int j = 0; j < KV; ++j) acc[i][j] = _mm512_fmadd_ps(w[j], x, acc[i][j]);
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < R; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < KV; ++j) _mm512_storeu_ps(out + i * ldo + j * kB, acc[i][j]);
}

using RankUpdateFn = void (*)(const float*, int64_t, const float*, int64_t, int64_t, int64_t, float*, int64_t, bool);

template <int KV, bool UNIT_ROWS, int... I>
RankUpdateFn pick(int rows, std::integer_sequence<int, I...>) {
  static constexpr RankUpdateFn fns[] = {&rank_update<I + 1, KV, UNIT_ROWS>...};
  return fns[rows - 1];
}

// Register tiles: 2 blocks x 12 tiles (24 accumulators, 2 loads + 12 broadcasts per 24 FMAs),
// 1 block x 16 tiles for an odd block count's last block.
constexpr int kKV = 2, kTR2 = 12, kTR1 = 16;

template <bool UNIT_ROWS>
RankUpdateFn rank_update_fn(int kv, int rows) {
  return kv == 2 ? pick<2, UNIT_ROWS>(rows, std::make_integer_sequence<int, kTR2>{})
                 : pick<1, UNIT_ROWS>(rows, std::make_integer_sequence<int, kTR1>{});
}

// F(M x M, 3 x 3): output tiles of M x M pixels, input patches of A x A, A^2 positions. M = 2
// interpolates at 0, 1, -1 and infinity (the transforms only add, subtract and halve); M = 4 at
// 0, 1, -1, 2, -2 and infinity (Lavin & Gray's matrices: B^T up to 5, A^T up to 8, G with 1/6 and
// 1/24). Of the point sets for 4 x 4 tiles tried in float32 (0, +-1, +-2; 0, +-1, +-1/2; 0, +-1,
// 2, -1/2) none was better than 1.1x in the mean error, and this one has the cheapest transforms
// (paired sums and differences, see docs/KERNELS.md for the measured error).
template <int M>
struct Tile {
  static constexpr int A = M + 2, P = A * A;
};

// The weight transform's rows for one column g0, g1, g2 of 16 channel pairs: out[r] = (G g)[r].
template <int M>
inline void g_rows(V g0, V g1, V g2, V* out) {
  if constexpr (M == 2) {
    out[0] = g0;
    out[1] = 0.5f * (g0 + g1 + g2);
    out[2] = 0.5f * (g0 - g1 + g2);
    out[3] = g2;
  } else {
    constexpr float k6 = 1.f / 6, k12 = 1.f / 12, k24 = 1.f / 24;
    out[0] = 0.25f * g0;
    out[1] = -k6 * (g0 + g1 + g2);
    out[2] = -k6 * (g0 - g1 + g2);
    out[3] = k24 * g0 + k12 * g1 + k6 * g2;
    out[4] = k24 * g0 - k12 * g1 + k6 * g2;
    out[5] = g2;
  }
}

// U[e][ob][c][16]: G g G^T for each (output, input) channel pair, zero past Cout and Cin; 16 output
// channels (one block) per vector. Channel pair by channel pair in scalars, with single floats
// stored across A^2 planes, it cost 0.1-0.5 ms a call at 64 -> 64 channels (4x4 tiles), more than
// the products of a batch-8 8x8 layer.
template <int M>
void transform_weights(const Args& a, float* U, int64_t Cinp, int64_t Kbo) {
  constexpr int A = Tile<M>::A;
  const int64_t plane = Kbo * Cinp * kB;
#pragma omp parallel for num_threads(num_threads()) schedule(static)
  for (int64_t oi = 0; oi < Kbo * Cinp; ++oi) {
    const int64_t ob = oi / Cinp, i = oi % Cinp;
    alignas(64) float gs[9][kB] = {};
    for (int64_t l = 0; l < kB && i < a.Cin && ob * kB + l < a.Cout; ++l) {
      const int64_t o = ob * kB + l;
      for (int rs = 0; rs < 9; ++rs)
        gs[rs][l] = a.transpose ? a.w[(i * a.Cout + o) * 9 + 8 - rs] : a.w[(o * a.Cin + i) * 9 + rs];
    }
    V t[3][A];  // (G g)^T: t[s][r]
    for (int s = 0; s < 3; ++s)
      g_rows<M>(_mm512_load_ps(gs[s]), _mm512_load_ps(gs[3 + s]), _mm512_load_ps(gs[6 + s]), t[s]);
    float* dst = U + oi * kB;
    for (int r = 0; r < A; ++r) {
      V e[A];
      g_rows<M>(t[0][r], t[1][r], t[2][r], e);
      for (int c = 0; c < A; ++c) _mm512_storeu_ps(dst + (r * A + c) * plane, e[c]);
    }
  }
}

// The floats between two of a chunk's 16 position planes (T tiles of ld channels each): one cache
// line more than the data, because planes a multiple of 4 KiB apart fall into the same L1 sets and
// a tile's 16 stores (and the products' reads) evict each other: 64->32 8x8 at batch 128, 32->64
// 16x16 at batch 32 and 32->32 16x16 at batch 8 (T * ld * 4 bytes = 4 or 8 KiB) ran 1.4-1.7x
// slower per image than at one image more or less.
inline int64_t plane(int64_t T, int64_t ld) { return T * ld + kB; }

// Grow-only per-thread buffers (a chunk's V and M in the workers; the calling thread's weight-
// gradient partials and chunk statistics, which its team shares): per thread, so calls from
// several Python threads (the GIL is released) never share one.
template <class T = float>
T* thread_buffer(int which, int64_t n) {
  thread_local std::vector<T> bufs[4];
  auto& b = bufs[which];
  if (static_cast<int64_t>(b.size()) < n) b.resize(n);
  return b.data();
}

// The tiles of a map (m x m output pixels each) and the input transform V = B^T d B of tiles
// [t0, t0 + nT) into V[e * vplane + t * Cinp + c] (e: the (m + 2)^2 positions); d: the
// (m + 2) x (m + 2) patch (one row and column of it in the input's halo), zeros past the halo (the
// last tile row/column of a map that is not a multiple of m).
struct Tiles {
  const float* in;
  int64_t halo, Cbi, Cinp, Hp, Wp, TW, per_img, m;

  struct At {
    int64_t n, h, w;  // the image and the output pixel at the tile's top left
  };
  At at(int64_t tg) const {
    const int64_t i = tg % per_img;
    return {tg / per_img, m * (i / TW), m * (i % TW)};
  }
};

// y = B^T x for one line of A values (x and y may not alias).
template <int M>
inline void bt_line(const V* x, V* y) {
  if constexpr (M == 2) {
    y[0] = _mm512_sub_ps(x[0], x[2]);
    y[1] = _mm512_add_ps(x[1], x[2]);
    y[2] = _mm512_sub_ps(x[2], x[1]);
    y[3] = _mm512_sub_ps(x[1], x[3]);
  } else {
    const V four = _mm512_set1_ps(4.f), five = _mm512_set1_ps(5.f), two = _mm512_set1_ps(2.f);
    const V a = _mm512_fnmadd_ps(four, x[2], x[4]), b = _mm512_fnmadd_ps(four, x[1], x[3]);  // x4 - 4 x2, x3 - 4 x1
    const V c = _mm512_sub_ps(x[4], x[2]), d = _mm512_mul_ps(two, _mm512_sub_ps(x[3], x[1]));
    y[0] = _mm512_fmadd_ps(four, x[0], _mm512_fnmadd_ps(five, x[2], x[4]));
    y[1] = _mm512_add_ps(a, b);
    y[2] = _mm512_sub_ps(a, b);
    y[3] = _mm512_add_ps(c, d);
    y[4] = _mm512_sub_ps(c, d);
    y[5] = _mm512_fmadd_ps(four, x[1], _mm512_fnmadd_ps(five, x[3], x[5]));
  }
}

template <int M>
void input_transform(const Tiles& a, int64_t t0, int64_t nT, float* Vb, int64_t vplane) {
  constexpr int A = Tile<M>::A;
  const int64_t Cbi = a.Cbi, Cinp = a.Cinp, Hp = a.Hp, Wp = a.Wp;
  for (int64_t tl = 0; tl < nT; ++tl) {
    const auto [n, h, w] = a.at(t0 + tl);
    const int64_t h0 = h - 1 + a.halo, w0 = w - 1 + a.halo;  // padded coordinates
    const bool full = h0 + A - 1 < Hp && w0 + A - 1 < Wp;
    for (int64_t cb = 0; cb < Cbi; ++cb) {
      const float* base = a.in + ((n * Cbi + cb) * Hp * Wp + h0 * Wp + w0) * kB;
      // the two columns (one line each per row) the tile after next is the first to read
#pragma GCC unroll 6
      for (int i = 0; i < A; ++i) {
        _mm_prefetch(reinterpret_cast<const char*>(base + (i * Wp + 2 * M + 2) * kB), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(base + (i * Wp + 2 * M + 3) * kB), _MM_HINT_T0);
      }
      V t[A][A];  // B^T d, column by column
#pragma GCC unroll 6
      for (int j = 0; j < A; ++j) {
        V d[A], c[A];
        if (full) {
#pragma GCC unroll 6
          for (int i = 0; i < A; ++i) d[i] = _mm512_loadu_ps(base + (i * Wp + j) * kB);
        } else {
          for (int i = 0; i < A; ++i)
            d[i] = h0 + i < Hp && w0 + j < Wp ? _mm512_loadu_ps(base + (i * Wp + j) * kB) : _mm512_setzero_ps();
        }
        bt_line<M>(d, c);
#pragma GCC unroll 6
        for (int i = 0; i < A; ++i) t[i][j] = c[i];
      }
      float* out = Vb + tl * Cinp + cb * kB;
#pragma GCC unroll 6
      for (int i = 0; i < A; ++i) {
        V r[A];
        bt_line<M>(t[i], r);
#pragma GCC unroll 6
        for (int j = 0; j < A; ++j) _mm512_storeu_ps(out + (i * A + j) * vplane, r[j]);
      }
    }
  }
}

// Tiles per chunk and chunks: a chunk's V and M (P positions x (Cinp + Kp) floats per tile) in
// about 256 KiB of L2 (512 KiB and 1 MiB measured 0-10% slower, 128 KiB 5-20% slower); a
// multiple of 8 chunks, so 2, 4 or 8 threads get equal shares.
int64_t chunk_cap(int64_t Cinp, int64_t Kp, int64_t P = 16) {
  return std::max<int64_t>(kTR2, (256 * 1024 / 4) / (P * (Cinp + Kp)) / kTR2 * kTR2);
}

std::pair<int64_t, int64_t> chunking(int64_t tiles, int64_t Cinp, int64_t Kp, int64_t P) {
  const int64_t cap = chunk_cap(Cinp, Kp, P);
  const int64_t want = ((tiles + cap - 1) / cap + 7) / 8 * 8;
  const int64_t T = std::max<int64_t>(1, (tiles + want - 1) / want);
  return {T, (tiles + T - 1) / T};
}

// One tile's output transform y = A^T m A + b; m: the tile's P positions, mplane floats apart.
template <int M>
inline void output_transform(const float* mp, int64_t mplane, V b, V (&y)[M][M]) {
  constexpr int A = Tile<M>::A;
  V s[M][A];  // A^T m, column by column
#pragma GCC unroll 6
  for (int j = 0; j < A; ++j) {
    V m[A];
#pragma GCC unroll 6
    for (int i = 0; i < A; ++i) m[i] = _mm512_loadu_ps(mp + (i * A + j) * mplane);
    if constexpr (M == 2) {
      s[0][j] = _mm512_add_ps(_mm512_add_ps(m[0], m[1]), m[2]);
      s[1][j] = _mm512_sub_ps(_mm512_sub_ps(m[1], m[2]), m[3]);
    } else {
      const V p = _mm512_add_ps(m[1], m[2]), q = _mm512_sub_ps(m[1], m[2]);
      const V r = _mm512_add_ps(m[3], m[4]), t = _mm512_sub_ps(m[3], m[4]);
      s[0][j] = _mm512_add_ps(_mm512_add_ps(m[0], p), r);
      s[1][j] = _mm512_fmadd_ps(_mm512_set1_ps(2.f), t, q);
      s[2][j] = _mm512_fmadd_ps(_mm512_set1_ps(4.f), r, p);
      s[3][j] = _mm512_add_ps(_mm512_fmadd_ps(_mm512_set1_ps(8.f), t, q), m[5]);
    }
  }
#pragma GCC unroll 4
  for (int i = 0; i < M; ++i) {
    const V* x = s[i];
    if constexpr (M == 2) {
      y[i][0] = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(x[0], x[1]), x[2]), b);
      y[i][1] = _mm512_add_ps(_mm512_sub_ps(_mm512_sub_ps(x[1], x[2]), x[3]), b);
    } else {
      const V p = _mm512_add_ps(x[1], x[2]), q = _mm512_sub_ps(x[1], x[2]);
      const V r = _mm512_add_ps(x[3], x[4]), t = _mm512_sub_ps(x[3], x[4]);
      y[i][0] = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(x[0], p), r), b);
      y[i][1] = _mm512_add_ps(_mm512_fmadd_ps(_mm512_set1_ps(2.f), t, q), b);
      y[i][2] = _mm512_add_ps(_mm512_fmadd_ps(_mm512_set1_ps(4.f), r, p), b);
      y[i][3] = _mm512_add_ps(_mm512_add_ps(_mm512_fmadd_ps(_mm512_set1_ps(8.f), t, q), x[5]), b);
    }
  }
}

// The epilogue every tile size shares: the tile's rows x cols pixels that exist (+ the old output
// when accumulating, ReLU) stored at o (the tile's top left in the blocked output, W pixels a
// row), and their float32 sum and sum of squares added in double into the chunk's statistics cs
// (nullptr: none).
// With a.bn_x, xb (the batchnorm input's pixel at the tile's top left, a.W + 2 a.bn_hx pixels a row)
// and bc (the block's [mean][a][b]): the batchnorm sums of BnGradSums instead of the statistics.
template <int M>
inline void store_tile(const Args& a, const V (&y)[M][M], int rows, int cols, float* o, double* cs,
                       const float* xb = nullptr, const float* bc = nullptr) {
  V sum = _mm512_setzero_ps(), sq = _mm512_setzero_ps();
  if (xb) {
    const int64_t wx = a.W + 2 * a.bn_hx;
    const V mu = _mm512_loadu_ps(bc), ma = _mm512_loadu_ps(bc + kB), mb = _mm512_loadu_ps(bc + 2 * kB);
    for (int i = 0; i < rows; ++i)
      for (int j = 0; j < cols; ++j) {
        float* p = o + (i * a.W + j) * kB;
        V r = y[i][j];
        if (a.accumulate) r = _mm512_add_ps(r, _mm512_loadu_ps(p));
        _mm512_storeu_ps(p, r);
        const V x = _mm512_loadu_ps(xb + (i * wx + j) * kB);
        if (a.bn_relu)
          r = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(_mm512_fmadd_ps(x, ma, mb), _mm512_setzero_ps(), _CMP_GT_OQ), r);
        sum = _mm512_add_ps(sum, r);
        sq = _mm512_fmadd_ps(r, _mm512_sub_ps(x, mu), sq);
      }
  } else {
    for (int i = 0; i < rows; ++i)
      for (int j = 0; j < cols; ++j) {
        float* p = o + (i * a.W + j) * kB;
        V r = y[i][j];
        if (a.accumulate) r = _mm512_add_ps(r, _mm512_loadu_ps(p));
        if (a.relu) r = _mm512_max_ps(r, _mm512_setzero_ps());
        sum = _mm512_add_ps(sum, r);
        sq = _mm512_fmadd_ps(r, r, sq);
        _mm512_storeu_ps(p, r);
      }
  }
  if (cs) {  // the tile's float32 sums of <= M * M pixels, added in double
    const auto add = [](double* at, V v) {
      _mm512_storeu_pd(at, _mm512_add_pd(_mm512_loadu_pd(at), _mm512_cvtps_pd(_mm512_castps512_ps256(v))));
      _mm512_storeu_pd(at + 8, _mm512_add_pd(_mm512_loadu_pd(at + 8), _mm512_cvtps_pd(_mm512_extractf32x8_ps(v, 1))));
    };
    add(cs, sum);
    add(cs + kB, sq);
  }
}

template <int M>
void run_tiles(const Args& a) {
  constexpr int P = Tile<M>::P;
  const int64_t Cbi = blocks(a.Cin), Kbo = blocks(a.Cout), Cinp = Cbi * kB, Kp = Kbo * kB;
  const int64_t Hp = a.H + 2 * a.halo, Wp = a.W + 2 * a.halo;
  const int64_t TH = (a.H + M - 1) / M, TW = (a.W + M - 1) / M, per_img = TH * TW, tiles = a.N * per_img;
  // the calling thread's buffer 3 (its 0 to 2 are its V and M as worker 0, and the weight gradient's
  // partials): a fresh vector each call paid its page faults (0.6 MiB at 64 channels)
  float* U = thread_buffer(3, P * Kbo * Cinp * kB);
  transform_weights<M>(a, U, Cinp, Kbo);
  std::vector<float> biasv(Kp, 0.f);
  if (a.bias) std::copy(a.bias, a.bias + a.Cout, biasv.begin());
  const float* bias = biasv.data();
  // the chunks follow from the shape alone, not from the thread count: the statistics are summed
  // per chunk
  const int nt = num_threads();
  const auto [T, nchunks] = chunking(tiles, Cinp, Kp, P);
  // per chunk: [Kbo][sum 16, squares 16] in double
  double* part = a.stats ? thread_buffer<double>(0, nchunks * Kbo * 2 * kB) : nullptr;
  const Tiles x{a.in, a.halo, Cbi, Cinp, Hp, Wp, TW, per_img, M};

#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t ch = 0; ch < nchunks; ++ch) {
    const int64_t t0 = ch * T, nT = std::min(T, tiles - t0);
    const int64_t vplane = plane(T, Cinp), mplane = plane(T, Kp);
    float* Vb = thread_buffer(0, P * vplane);
    float* Mb = thread_buffer(1, P * mplane);
    // 1. input transform
    input_transform<M>(x, t0, nT, Vb, vplane);
    // 2. the P channel products
    for (int e = 0; e < P; ++e) {
      const float* v = Vb + e * vplane;
      const float* u = U + e * Kbo * Cinp * kB;
      float* m = Mb + e * mplane;
      for (int64_t kb = 0; kb < Kbo; kb += kKV) {
        const int kv = static_cast<int>(std::min<int64_t>(kKV, Kbo - kb));
        const int maxtr = kv == 2 ? kTR2 : kTR1;
        for (int64_t tt = 0; tt < nT; tt += maxtr) {
          const int tr = static_cast<int>(std::min<int64_t>(maxtr, nT - tt));
          rank_update_fn<false>(kv, tr)(v + tt * Cinp, Cinp, u + kb * Cinp * kB, kB, Cinp * kB, a.Cin,
                                        m + tt * Kp + kb * kB, Kp, false);
        }
      }
    }
    // 3. output transform and epilogue
    double* cs = part ? part + ch * Kbo * 2 * kB : nullptr;
    if (cs) std::fill(cs, cs + Kbo * 2 * kB, 0.0);
    // the batchnorm input's pixels of the tile after `tl` (M rows of M, every output block), asked
    // for while `tl`'s transforms run: read as they come, they stalled the epilogue on each line
    const auto ahead = [&](int64_t tl) {
      if (!a.bn_x || tl + 1 >= nT) return;
      const auto [n, h, w] = x.at(t0 + tl + 1);
      const int64_t Hx = a.H + 2 * a.bn_hx, Wx = a.W + 2 * a.bn_hx;
      const int rows = static_cast<int>(std::min<int64_t>(M, a.H - h)), cols = static_cast<int>(std::min<int64_t>(M, a.W - w));
      for (int64_t kb = 0; kb < Kbo; ++kb)
        for (int i = 0; i < rows; ++i) {
          const float* p = a.bn_x + ((n * Kbo + kb) * Hx + h + a.bn_hx + i) * Wx * kB + (w + a.bn_hx) * kB;
          for (int j = 0; j < cols; ++j) _mm_prefetch(reinterpret_cast<const char*>(p + j * kB), _MM_HINT_T0);
        }
    };
    for (int64_t tl = 0; tl < nT; ++tl) {
      ahead(tl);
      const auto [n, h, w] = x.at(t0 + tl);
      const int rows = static_cast<int>(std::min<int64_t>(M, a.H - h)), cols = static_cast<int>(std::min<int64_t>(M, a.W - w));
      for (int64_t kb = 0; kb < Kbo; ++kb) {
        V y[M][M];
        output_transform<M>(Mb + tl * Kp + kb * kB, mplane, _mm512_loadu_ps(bias + kb * kB), y);
        const float* xb = a.bn_x ? a.bn_x + ((n * Kbo + kb) * (a.H + 2 * a.bn_hx) + h + a.bn_hx) *
                                           (a.W + 2 * a.bn_hx) * kB + (w + a.bn_hx) * kB
                                 : nullptr;
        store_tile<M>(a, y, rows, cols, a.out + ((n * Kbo + kb) * a.H + h) * a.W * kB + w * kB,
                      cs ? cs + kb * 2 * kB : nullptr, xb, a.bn_c ? a.bn_c + kb * 3 * kB : nullptr);
      }
    }
  }
  if (part) reduce_block_stats(part, nchunks, Kbo, a.Cout, a.stats);
}

}  // namespace

bool available() { return true; }

void run(const Args& a) {
  FT_CHECK(a.tile == 2 || a.tile == 4, "winograd-blocked: tile must be 2 or 4, got " << a.tile);
  return a.tile == 4 ? run_tiles<4>(a) : run_tiles<2>(a);
}


namespace {

// The adjoints of the output and weight transforms, for one line: out = A g (A: the transpose of
// the forward's A^T; g: M values, out: M + 2) and t = G^T u (u: M + 2 values, t: 3).
template <int M>
inline void a_line(const V* g, V* out) {
  const V z = _mm512_setzero_ps();
  if constexpr (M == 2) {
    out[0] = g[0];
    out[1] = _mm512_add_ps(g[0], g[1]);
    out[2] = _mm512_sub_ps(g[0], g[1]);
    out[3] = _mm512_sub_ps(z, g[1]);
  } else {
    const V p = _mm512_add_ps(g[0], g[2]), q = _mm512_add_ps(g[1], g[3]);
    const V r = _mm512_fmadd_ps(_mm512_set1_ps(4.f), g[2], g[0]), s = _mm512_fmadd_ps(_mm512_set1_ps(8.f), g[3], _mm512_add_ps(g[1], g[1]));
    out[0] = g[0];
    out[1] = _mm512_add_ps(p, q);
    out[2] = _mm512_sub_ps(p, q);
    out[3] = _mm512_add_ps(r, s);
    out[4] = _mm512_sub_ps(r, s);
    out[5] = g[3];
  }
}

template <int M>
inline void gt_line(const V* u, V* t) {
  const auto k = [](float f) { return _mm512_set1_ps(f); };
  if constexpr (M == 2) {
    const V h = _mm512_mul_ps(_mm512_add_ps(u[1], u[2]), k(0.5f));
    t[0] = _mm512_add_ps(u[0], h);
    t[1] = _mm512_mul_ps(_mm512_sub_ps(u[1], u[2]), k(0.5f));
    t[2] = _mm512_add_ps(h, u[3]);
  } else {
    const V a = _mm512_add_ps(u[1], u[2]), b = _mm512_sub_ps(u[1], u[2]);
    const V c = _mm512_add_ps(u[3], u[4]), d = _mm512_sub_ps(u[3], u[4]);
    t[0] = _mm512_fmadd_ps(k(0.25f), u[0], _mm512_fmadd_ps(k(-1.f / 6), a, _mm512_mul_ps(k(1.f / 24), c)));
    t[1] = _mm512_fmadd_ps(k(-1.f / 6), b, _mm512_mul_ps(k(1.f / 12), d));
    t[2] = _mm512_add_ps(_mm512_mul_ps(k(1.f / 6), _mm512_sub_ps(c, a)), u[5]);
  }
}

// The cache lines of x and dy that tiles [t0, t1) read, as whole padded rows per image and channel
// block (a chunk's tiles are consecutive, so its rows are nearly all whole), appended to `to` as
// (first byte, lines).
template <int M>
void tile_rows(const Tiles& x, const WgradArgs& a, int64_t Kbo, int64_t t0, int64_t t1,
               std::vector<std::pair<const char*, int64_t>>& to) {
  const int64_t Hp = x.Hp, Wp = x.Wp, Pp = a.H + 2 * a.halo_dy, Qp = a.W + 2 * a.halo_dy;
  for (int64_t n = t0 / x.per_img; n * x.per_img < t1; ++n) {
    const int64_t i0 = std::max<int64_t>(t0 - n * x.per_img, 0), i1 = std::min(t1 - n * x.per_img, x.per_img) - 1;
    const int64_t h0 = M * (i0 / x.TW), h1 = M * (i1 / x.TW) + M - 1;  // output rows
    const int64_t xr0 = h0 - 1 + x.halo, xr1 = std::min(Hp - 1, h1 + 1 + x.halo);
    for (int64_t cb = 0; cb < x.Cbi; ++cb)
      to.emplace_back(reinterpret_cast<const char*>(x.in + ((n * x.Cbi + cb) * Hp + xr0) * Wp * kB), (xr1 - xr0 + 1) * Wp);
    const int64_t yr1 = std::min(a.H - 1, h1);
    for (int64_t kb = 0; kb < Kbo; ++kb)
      to.emplace_back(reinterpret_cast<const char*>(a.dy + ((n * Kbo + kb) * Pp + a.halo_dy + h0) * Qp * kB), (yr1 - h0 + 1) * Qp);
  }
}

// The weight gradient: per chunk, V = B^T x B (the forward's input transform) and Y = A dy A^T
// (the adjoint of the output transform), then per position dU[e] += V[e]^T Y[e] (input channels
// x output channels, reduced over the chunk's tiles in registers) into the thread's partial;
// finally dw += G^T dU G (the adjoint of the weight transform) and db += the sums of dy.
template <int M>
void run_wgrad_tiles(const WgradArgs& a) {
  constexpr int A = Tile<M>::A, P = Tile<M>::P;
  const int64_t Cbi = blocks(a.C), Kbo = blocks(a.K), Cinp = Cbi * kB, Kp = Kbo * kB;
  const int64_t Hp = a.H + 2 * a.halo_x, Wp = a.W + 2 * a.halo_x;
  const int64_t Pp = a.H + 2 * a.halo_dy, Qp = a.W + 2 * a.halo_dy;
  const int64_t TH = (a.H + M - 1) / M, TW = (a.W + M - 1) / M, per_img = TH * TW, tiles = a.N * per_img;
  const int nt = num_threads();
  // chunks as long as the forward's L2 cap allows, but no longer than a thread's share: the
  // products keep dU in registers over a chunk's tiles and load and store it once per chunk, so
  // the forward's multiple of 8 chunks (2 tiles each for one 8x8 image) would move the whole dU
  // per 2 tiles (batch 1, 64 channels 8x8: 2x the direct kernel's time)
  const int64_t T = std::max<int64_t>(1, std::min<int64_t>(chunk_cap(Cinp, Kp, P), (tiles + nt - 1) / nt));
  const int64_t nchunks = (tiles + T - 1) / T;
  const int64_t usz = P * Cinp * Kp, psz = usz + Kp;  // a partial: dU [e][c][Kp], then db
  // (not cleared: a thread's first chunk writes its dU, the others add to it; rows past C are
  // never written nor read. Clearing all partials up front cost 5-10% of a 64-channel call.)
  float* part = thread_buffer(2, nt * psz);
  const Tiles x{a.x, a.halo_x, Cbi, Cinp, Hp, Wp, TW, per_img, M};
  const int64_t eplane = Cinp * Kp;
  // Prefetching the next chunk's x and dy (below) pays where they come from memory: ResNet-20's
  // batch-128 layers on 32x32 and 16x16 maps (x and dy 10-19 MB) ran 1.15-1.6x faster, 1 thread;
  // where they stay in the caches between calls (64 channels on 8x8 maps, 5-7 MB; 16 and 32
  // channels at batch 32, 3-5 MB) it cost 5-15% (its L2 traffic beside the products' reads).
  const bool ahead = (a.N * Cbi * Hp * Wp + a.N * Kbo * Pp * Qp) * kB * 4 >= (int64_t{8} << 20);
#pragma omp parallel num_threads(nt)
  {
    float* du = part + omp_get_thread_num() * psz;
    std::fill(du + usz, du + psz, 0.f);
    bool fresh = true;  // no chunk yet: dU holds an earlier call's values
    std::vector<std::pair<const char*, int64_t>> next;
#pragma omp for schedule(static) nowait
    for (int64_t ch = 0; ch < nchunks; ++ch) {
      const int64_t t0 = ch * T, nT = std::min(T, tiles - t0);
      const int64_t vplane = plane(T, Cinp), yplane = plane(T, Kp);
      float* Vb = thread_buffer(0, P * vplane);
      float* Yb = thread_buffer(1, P * yplane);
      input_transform<M>(x, t0, nT, Vb, vplane);
      for (int64_t tl = 0; tl < nT; ++tl) {
        const auto [n, h, w] = x.at(t0 + tl);
        const int rows = static_cast<int>(std::min<int64_t>(M, a.H - h)), cols = static_cast<int>(std::min<int64_t>(M, a.W - w));
        const bool full = rows == M && cols == M;
        for (int64_t kb = 0; kb < Kbo; ++kb) {
          const float* g = a.dy + (((n * Kbo + kb) * Pp + a.halo_dy + h) * Qp + a.halo_dy + w) * kB;
          V d[M][M];  // the tile's dy, zeros past the map (dy's halo may be 0)
#pragma GCC unroll 4
          for (int i = 0; i < M; ++i)
#pragma GCC unroll 4
            for (int j = 0; j < M; ++j)
              d[i][j] = full || (i < rows && j < cols) ? _mm512_loadu_ps(g + (i * Qp + j) * kB) : _mm512_setzero_ps();
          V sum = _mm512_setzero_ps();
#pragma GCC unroll 4
          for (int i = 0; i < M; ++i) {
            V rs = d[i][0];
#pragma GCC unroll 4
            for (int j = 1; j < M; ++j) rs = _mm512_add_ps(rs, d[i][j]);
            sum = i ? _mm512_add_ps(sum, rs) : rs;
          }
          float* db = du + usz + kb * kB;
          _mm512_storeu_ps(db, _mm512_add_ps(_mm512_loadu_ps(db), sum));
          V r[A][M];  // A dy, column by column
#pragma GCC unroll 4
          for (int j = 0; j < M; ++j) {
            V col[M], o[A];
#pragma GCC unroll 4
            for (int i = 0; i < M; ++i) col[i] = d[i][j];
            a_line<M>(col, o);
#pragma GCC unroll 6
            for (int i = 0; i < A; ++i) r[i][j] = o[i];
          }
          float* out = Yb + tl * Kp + kb * kB;
#pragma GCC unroll 6
          for (int i = 0; i < A; ++i) {
            V o[A];
            a_line<M>(r[i], o);
#pragma GCC unroll 6
            for (int j = 0; j < A; ++j) _mm512_storeu_ps(out + (i * A + j) * yplane, o[j]);
          }
        }
      }
      // the next chunk's x and dy asked into L2 while this chunk's products run, a share per
      // position: its transforms then find them there instead of waiting on memory
      next.clear();
      if (ahead && ch + 1 < nchunks) tile_rows<M>(x, a, Kbo, t0 + T, std::min(tiles, t0 + 2 * T), next);
      int64_t lines = 0, issued = 0;
      size_t r_at = 0;
      int64_t r_off = 0;
      for (const auto& r : next) lines += r.second;
      for (int e = 0; e < P; ++e) {
        for (const int64_t upto = lines * (e + 1) / P; issued < upto; ++issued) {
          _mm_prefetch(next[r_at].first + r_off * 64, _MM_HINT_T1);
          if (++r_off == next[r_at].second) ++r_at, r_off = 0;
        }
        for (int64_t kb = 0; kb < Kbo; kb += kKV) {
          const int kv = static_cast<int>(std::min<int64_t>(kKV, Kbo - kb));
          const int maxcn = kv == 2 ? kTR2 : kTR1;
          for (int64_t c0 = 0; c0 < a.C; c0 += maxcn) {
            const int cn = static_cast<int>(std::min<int64_t>(maxcn, a.C - c0));
            rank_update_fn<true>(kv, cn)(Vb + e * vplane + c0, Cinp, Yb + e * yplane + kb * kB, Kp, kB, nT,
                                         du + (e * Cinp + c0) * Kp + kb * kB, Kp, !fresh);
          }
        }
      }
      fresh = false;
    }
    if (fresh) std::fill(du, du + usz, 0.f);  // more threads than chunks
#pragma omp barrier
    // dw += G^T dU G, 16 output channels at a time (dU's rows are [c][Kp]: one vector per
    // position), dU the partials' sum in thread order (read here, not first summed into one
    // partial: that stored and reread all of dU)
#pragma omp for schedule(static)
    for (int64_t ck = 0; ck < a.C * Kbo; ++ck) {
      const int64_t c = ck / Kbo, kb = ck % Kbo;
      const float* u = part + c * Kp + kb * kB;
      V t[3][A];  // G^T dU, column by column
#pragma GCC unroll 6
      for (int b = 0; b < A; ++b) {
        V col[A], o[3];
#pragma GCC unroll 6
        for (int r = 0; r < A; ++r) {
          const float* ur = u + (r * A + b) * eplane;
          V v = _mm512_loadu_ps(ur);
          for (int th = 1; th < nt; ++th) v = _mm512_add_ps(v, _mm512_loadu_ps(ur + th * psz));
          col[r] = v;
        }
        gt_line<M>(col, o);
        for (int s = 0; s < 3; ++s) t[s][b] = o[s];
      }
      alignas(64) float g[9][kB];
      for (int r = 0; r < 3; ++r) {  // (G^T dU) G
        V o[3];
        gt_line<M>(t[r], o);
        for (int s = 0; s < 3; ++s) _mm512_store_ps(g[r * 3 + s], o[s]);
      }
      for (int64_t l = 0; l < kB && kb * kB + l < a.K; ++l) {
        float* dw = a.dw + ((kb * kB + l) * a.C + c) * 9;
        for (int rs = 0; rs < 9; ++rs) dw[rs] += g[rs][l];
      }
    }
  }
  for (int64_t k = 0; k < a.K; ++k) {
    float v = part[usz + k];
    for (int th = 1; th < nt; ++th) v += part[th * psz + usz + k];
    a.db[k] += v;
  }
}

}  // namespace

void run_wgrad(const WgradArgs& a) {
  FT_CHECK(a.tile == 2 || a.tile == 4, "winograd-blocked weight gradient: tile must be 2 or 4, got " << a.tile);
  return a.tile == 4 ? run_wgrad_tiles<4>(a) : run_wgrad_tiles<2>(a);
}
}  // namespace ft::cpu::wino_blocked

#else

#include "fasttrain/check.h"

namespace ft::cpu::wino_blocked {
bool available() { return false; }
void run(const Args&) { FT_CHECK(false, "conv2d: 'winograd-blocked' was not compiled into this build (no AVX-512)"); }
void run_wgrad(const WgradArgs&) {
  FT_CHECK(false, "conv2d: 'winograd-blocked' was not compiled into this build (no AVX-512)");
}
}  // namespace ft::cpu::wino_blocked

#endif
