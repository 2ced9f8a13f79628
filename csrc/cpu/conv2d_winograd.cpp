// Winograd F(2x2, 3x3) for 3x3 stride-1 convolutions (Lavin & Gray 2016, "Fast algorithms for
// convolutional neural networks"). Each 2x2 output tile is A^T [(G g G^T) . (B^T d B)] A with d
// the 4x4 input tile around it: 16 multiplies per tile and channel pair instead of 36, so the
// GEMM work drops 2.25x against im2col. Per 16 transformed points xi the products over channels
// form one GEMM:
//   forward      M[xi] (K x T) = U[xi] (K x C) * V[xi] (C x T),  U = G g G^T, V = B^T d B
//   bwd_data     the same with dy as input and the flipped, channel-transposed weights
//   bwd_weight   dU[xi] (K x C) += Z[xi] (K x T) * V[xi]^T,  Z = A dy A^T,  dw += G^T dU G
// (bwd_weight is the adjoint of the forward map g -> y, so it reuses V and the same 16 GEMMs).
// T is the tile count of a chunk: about kChunkCols tiles, whole tile rows, which may span images
// or split one. Wide enough for OpenBLAS, small enough that V and M (16 (C + K) T floats) stay in
// a core's L2: at 64 channels 128 tiles ran about 10% faster than 256 (a whole 32x32 image), and
// a single large image still splits into chunks for the threads. Chunks are fixed by the shape
// alone, so results do not depend on the thread count (except how OpenBLAS splits a GEMM when
// there are fewer chunks than threads).
//
// Transforms work on one tile row at a time with the input columns split into even and odd
// ones, so every tile's four columns are two consecutive even and two consecutive odd entries
// and the loops over tiles run on contiguous arrays (they vectorize).
#include "winograd.h"

#include <algorithm>
#include <vector>

#include <omp.h>

#include "blas.h"
#include "fasttrain/cpu.h"

namespace ft::cpu::winograd {
namespace {

constexpr int64_t kPts = 16;         // transformed points per 4x4 tile
constexpr int64_t kChunkCols = 128;  // target tiles per GEMM (measured on the bench shapes)

// A 3x3 stride-1 convolution of Cin-channel H x W images into Cout channels, padding ph, pw.
struct Tiles {
  int64_t N, Cin, H, W, Cout, ph, pw, P, Q, th, tw;
  int64_t rows_per_chunk() const { return std::max<int64_t>(1, kChunkCols / tw); }
  int64_t chunks() const { return (N * th + rows_per_chunk() - 1) / rows_per_chunk(); }
};

Tiles tiles(int64_t N, int64_t Cin, int64_t H, int64_t W, int64_t Cout, int64_t ph, int64_t pw) {
  const int64_t P = H + 2 * ph - 2, Q = W + 2 * pw - 2;
  return {N, Cin, H, W, Cout, ph, pw, P, Q, (P + 1) / 2, (Q + 1) / 2};
}

// Grows only: OpenMP's pool threads persist, so the buffers are allocated once per thread.
float* scratch(int64_t n) {
  thread_local std::vector<float> buf;
  if (static_cast<int64_t>(buf.size()) < n) buf.resize(n);
  return buf.data();
}

// fn(n, i0, i1, col0) for the parts of tile rows [g0, g1) of the whole batch (tile row g is row
// g % th of image g / th), split at image borders; col0: the part's first column in the chunk.
template <class Fn>
void for_each_part(const Tiles& t, int64_t g0, int64_t g1, Fn fn) {
  for (int64_t g = g0; g < g1;) {
    const int64_t n = g / t.th, i0 = g % t.th, i1 = std::min(t.th, i0 + (g1 - g));
    fn(n, i0, i1, (g - g0) * t.tw);
    g += i1 - i0;
  }
}

// body(chunk, slot) for every chunk. With at least as many chunks as threads each thread takes
// whole chunks with one-thread BLAS (slot = its thread number); otherwise chunks run in turn and
// OpenBLAS splits each GEMM (slot 0).
template <class Body>
void over_chunks(int64_t chunks, Body body) {
  const int nt = num_threads();
  if (nt > 1 && chunks >= nt) {
    blas::SingleThreaded one;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t i = 0; i < chunks; ++i) body(i, omp_get_thread_num());
  } else {
    for (int64_t i = 0; i < chunks; ++i) body(i, 0);
  }
}

// Columns 2m - pad (even) and 2m - pad + 1 (odd) of one image row, m in [0, n); zero outside
// the row (row == nullptr: a padding row).
void split_row(const float* row, int64_t W, int64_t pad, int64_t n, float* even, float* odd) {
  if (!row) {
    std::fill(even, even + n, 0.f);
    std::fill(odd, odd + n, 0.f);
    return;
  }
  // [lo, hi): both columns inside the row, so that stretch needs no bounds checks
  const int64_t lo = std::min(n, (pad + 1) / 2);
  const int64_t hi = std::max(lo, std::min(n, W + pad >= 2 ? (W + pad - 2) / 2 + 1 : 0));
  auto edge = [&](int64_t m) {
    const int64_t e = 2 * m - pad, o = e + 1;
    even[m] = e >= 0 && e < W ? row[e] : 0.f;
    odd[m] = o >= 0 && o < W ? row[o] : 0.f;
  };
  for (int64_t m = 0; m < lo; ++m) edge(m);
  const float* r = row - pad;
#pragma omp simd
  for (int64_t m = lo; m < hi; ++m) {
    even[m] = r[2 * m];
    odd[m] = r[2 * m + 1];
  }
  for (int64_t m = hi; m < n; ++m) edge(m);
}

// Padded image row (row == nullptr: a padding row) split into its even and odd columns: even[m]
// = column 2m - pad, odd[m] = column 2m + 1 - pad, m in [0, ns). `line` (2 ns floats) holds the
// padded row; its zero borders are written by the caller once, only the interior is copied here,
// and ns is a multiple of the vector width so the split loop has no scalar remainder.
void split_padded(const float* row, int64_t W, int64_t pad, int64_t ns, float* line, float* even,
                  float* odd) {
  if (!row) {
    std::fill(even, even + ns, 0.f);
    std::fill(odd, odd + ns, 0.f);
    return;
  }
  std::copy(row, row + W, line + pad);
#pragma omp simd
  for (int64_t m = 0; m < ns; ++m) {
    even[m] = line[2 * m];
    odd[m] = line[2 * m + 1];
  }
}

// V[xi][c][col0 + (i - i0) tw + j] = (B^T d B)[xi] for tiles (i, j), i in [i0, i1), of one
// Cin x H x W image.
void input_transform(const Tiles& t, const float* x, int64_t i0, int64_t i1, float* V, int64_t T,
                     int64_t col0) {
  // tile j reads even/odd columns j and j + 1: t.tw + 1 of each, rounded up to 8 (2 ns >= W + pw,
  // so a padded row fits in `line`)
  const int64_t ns = (t.tw + 1 + 7) / 8 * 8;
  const int64_t rows = 2 * (i1 - i0) + 2;  // padded rows the tiles read
  std::vector<float> buf(2 * ns * rows + 8 * ns + 2 * ns, 0.f);
  float *split = buf.data(), *rt = split + 2 * ns * rows, *line = rt + 8 * ns;
  for (int64_t c = 0; c < t.Cin; ++c) {
    const float* plane = x + c * t.H * t.W;
    for (int64_t r = 0; r < rows; ++r) {  // each row once (neighbouring tile rows share two)
      const int64_t h = 2 * i0 + r - t.ph;
      split_padded(h >= 0 && h < t.H ? plane + h * t.W : nullptr, t.W, t.pw, ns, line,
                   split + 2 * ns * r, split + 2 * ns * r + ns);
    }
    for (int64_t i = i0; i < i1; ++i) {
      // B^T d (rows) over rows 2i..2i+3 of split; a row's even and odd halves are contiguous,
      // so one loop covers both. rt[a] = [even | odd] of row a of B^T d.
      const float* s = split + 2 * ns * 2 * (i - i0);
      const int64_t w2 = 2 * ns;
#pragma omp simd
      for (int64_t m = 0; m < w2; ++m) {
        const float d0 = s[m], d1 = s[w2 + m], d2 = s[2 * w2 + m], d3 = s[3 * w2 + m];
        rt[m] = d0 - d2;
        rt[w2 + m] = d1 + d2;
        rt[2 * w2 + m] = d2 - d1;
        rt[3 * w2 + m] = d1 - d3;
      }
      // (B^T d) B (columns): columns 2j..2j+3 are even j, odd j, even j+1, odd j+1
      for (int64_t a = 0; a < 4; ++a) {
        const float *e = rt + a * w2, *o = e + ns;
        float* out = V + (a * 4 * t.Cin + c) * T + col0 + (i - i0) * t.tw;
        const int64_t ld = t.Cin * T;  // distance between consecutive points xi
        float *v0 = out, *v1 = out + ld, *v2 = out + 2 * ld, *v3 = out + 3 * ld;
#pragma omp simd
        for (int64_t j = 0; j < t.tw; ++j) {
          v0[j] = e[j] - e[j + 1];
          v1[j] = o[j] + e[j + 1];
          v2[j] = e[j + 1] - o[j];
          v3[j] = o[j] - o[j + 1];
        }
      }
    }
  }
}

// Tile rows [i0, i1) of y (Cout x P x Q, one image) from M[xi][k][col0 + (i - i0) tw + j]:
// A^T m A, then + b[k] (ReLU) when b.
void output_transform(const Tiles& t, const float* M, int64_t T, int64_t col0, int64_t i0,
                      int64_t i1, const float* b, bool relu, float* y) {
  std::vector<float> buf(4 * t.tw);
  float *y00 = buf.data(), *y01 = y00 + t.tw, *y10 = y01 + t.tw, *y11 = y10 + t.tw;
  const int64_t ld = t.Cout * T;  // distance between consecutive points xi
  for (int64_t k = 0; k < t.Cout; ++k) {
    const float bk = b ? b[k] : 0.f;
    float* plane = y + k * t.P * t.Q;
    for (int64_t i = i0; i < i1; ++i) {
      const float* m = M + k * T + col0 + (i - i0) * t.tw;
#pragma omp simd
      for (int64_t j = 0; j < t.tw; ++j) {
        float s0[4], s1[4];  // A^T m (rows)
        for (int64_t c = 0; c < 4; ++c) {
          const float m0 = m[(0 + c) * ld + j], m1 = m[(4 + c) * ld + j];
          const float m2 = m[(8 + c) * ld + j], m3 = m[(12 + c) * ld + j];
          s0[c] = m0 + m1 + m2;
          s1[c] = m1 - m2 - m3;
        }
        y00[j] = s0[0] + s0[1] + s0[2] + bk;
        y01[j] = s0[1] - s0[2] - s0[3] + bk;
        y10[j] = s1[0] + s1[1] + s1[2] + bk;
        y11[j] = s1[1] - s1[2] - s1[3] + bk;
      }
      if (relu) {
#pragma omp simd
        for (int64_t j = 0; j < 4 * t.tw; ++j) y00[j] = std::max(y00[j], 0.f);
      }
      for (int64_t r = 0; r < 2 && 2 * i + r < t.P; ++r) {
        float* row = plane + (2 * i + r) * t.Q;
        const float *left = r ? y10 : y00, *right = r ? y11 : y01;
        for (int64_t j = 0; j < t.Q / 2; ++j) {
          row[2 * j] = left[j];
          row[2 * j + 1] = right[j];
        }
        if (t.Q % 2) row[t.Q - 1] = left[t.tw - 1];
      }
    }
  }
}

// Z[xi][k][col0 + (i - i0) tw + j] = (A dy A^T)[xi] for the 2x2 tiles in tile rows [i0, i1) of
// one Cout x P x Q gradient (zero beyond the last row/column when P, Q are odd).
void grad_transform(const Tiles& t, const float* dy, int64_t i0, int64_t i1, float* Z, int64_t T,
                    int64_t col0) {
  const int64_t n = t.tw;
  std::vector<float> buf(4 * n);
  float *e0 = buf.data(), *o0 = e0 + n, *e1 = o0 + n, *o1 = e1 + n;
  const int64_t ld = t.Cout * T;
  for (int64_t k = 0; k < t.Cout; ++k) {
    const float* plane = dy + k * t.P * t.Q;
    for (int64_t i = i0; i < i1; ++i) {
      split_row(plane + 2 * i * t.Q, t.Q, 0, n, e0, o0);
      split_row(2 * i + 1 < t.P ? plane + (2 * i + 1) * t.Q : nullptr, t.Q, 0, n, e1, o1);
      float* z = Z + k * T + col0 + (i - i0) * t.tw;
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) {
        // A dy (rows): d0, d0 + d1, d0 - d1, -d1, for the even and the odd column
        const float ue[4] = {e0[j], e0[j] + e1[j], e0[j] - e1[j], -e1[j]};
        const float uo[4] = {o0[j], o0[j] + o1[j], o0[j] - o1[j], -o1[j]};
        for (int64_t a = 0; a < 4; ++a) {  // (A dy) A^T (columns)
          z[(4 * a + 0) * ld + j] = ue[a];
          z[(4 * a + 1) * ld + j] = ue[a] + uo[a];
          z[(4 * a + 2) * ld + j] = ue[a] - uo[a];
          z[(4 * a + 3) * ld + j] = -uo[a];
        }
      }
    }
  }
}

// U[xi][o][i] = (G g G^T)[xi], g = w[o][i] (3x3), or with flip the kernel of the data gradient:
// g = w[i][o] rotated by 180 degrees, for w of shape (Cin, Cout, 3, 3).
void weight_transform(const float* w, int64_t Cout, int64_t Cin, bool flip, float* U) {
  for (int64_t o = 0; o < Cout; ++o)
    for (int64_t i = 0; i < Cin; ++i) {
      float g[3][3];
      const float* src = flip ? w + (i * Cout + o) * 9 : w + (o * Cin + i) * 9;
      for (int r = 0; r < 3; ++r)
        for (int s = 0; s < 3; ++s) g[r][s] = flip ? src[(2 - r) * 3 + (2 - s)] : src[r * 3 + s];
      float gg[4][3];  // G g
      for (int s = 0; s < 3; ++s) {
        gg[0][s] = g[0][s];
        gg[1][s] = 0.5f * (g[0][s] + g[1][s] + g[2][s]);
        gg[2][s] = 0.5f * (g[0][s] - g[1][s] + g[2][s]);
        gg[3][s] = g[2][s];
      }
      for (int a = 0; a < 4; ++a) {  // (G g) G^T
        const float u[4] = {gg[a][0], 0.5f * (gg[a][0] + gg[a][1] + gg[a][2]),
                            0.5f * (gg[a][0] - gg[a][1] + gg[a][2]), gg[a][2]};
        for (int c = 0; c < 4; ++c) U[((a * 4 + c) * Cout + o) * Cin + i] = u[c];
      }
    }
}

// dw[k][c] += G^T dU[.][k][c] G (4x4 -> 3x3), the adjoint of weight_transform.
void weight_untransform(const float* dU, int64_t K, int64_t C, float* dw) {
  for (int64_t k = 0; k < K; ++k)
    for (int64_t c = 0; c < C; ++c) {
      float u[4][4];
      for (int xi = 0; xi < 16; ++xi) u[xi / 4][xi % 4] = dU[(xi * K + k) * C + c];
      float t[3][4];  // G^T u
      for (int b = 0; b < 4; ++b) {
        t[0][b] = u[0][b] + 0.5f * (u[1][b] + u[2][b]);
        t[1][b] = 0.5f * (u[1][b] - u[2][b]);
        t[2][b] = 0.5f * (u[1][b] + u[2][b]) + u[3][b];
      }
      float* out = dw + (k * C + c) * 9;
      for (int r = 0; r < 3; ++r) {  // (G^T u) G
        out[r * 3 + 0] += t[r][0] + 0.5f * (t[r][1] + t[r][2]);
        out[r * 3 + 1] += 0.5f * (t[r][1] - t[r][2]);
        out[r * 3 + 2] += 0.5f * (t[r][1] + t[r][2]) + t[r][3];
      }
    }
}

// y = conv(x) with pre-transformed weights U (16 x Cout x Cin); b, relu as in output_transform.
void conv(const Tiles& t, const float* x, const float* U, const float* b, bool relu, float* y) {
  const int64_t rows = t.rows_per_chunk(), all_rows = t.N * t.th;
  const int64_t xs = t.Cin * t.H * t.W, ys = t.Cout * t.P * t.Q;
  over_chunks(t.chunks(), [&](int64_t ci, int) {
    const int64_t g0 = ci * rows, g1 = std::min(all_rows, g0 + rows), T = (g1 - g0) * t.tw;
    float* V = scratch(kPts * (t.Cin + t.Cout) * T);
    float* M = V + kPts * t.Cin * T;
    for_each_part(t, g0, g1, [&](int64_t n, int64_t i0, int64_t i1, int64_t col0) {
      input_transform(t, x + n * xs, i0, i1, V, T, col0);
    });
    for (int64_t xi = 0; xi < kPts; ++xi)
      blas::sgemm(false, false, t.Cout, T, t.Cin, 1.f, U + xi * t.Cout * t.Cin, t.Cin,
                  V + xi * t.Cin * T, T, 0.f, M + xi * t.Cout * T, T);
    for_each_part(t, g0, g1, [&](int64_t n, int64_t i0, int64_t i1, int64_t col0) {
      output_transform(t, M, T, col0, i0, i1, b, relu, y + n * ys);
    });
  });
}

}  // namespace

void fwd(const float* x, const float* w, const float* b, float* y, int64_t N, int64_t C, int64_t H,
         int64_t W, int64_t K, int64_t ph, int64_t pw, bool relu) {
  const Tiles t = tiles(N, C, H, W, K, ph, pw);
  std::vector<float> U(kPts * K * C);
  weight_transform(w, K, C, false, U.data());
  conv(t, x, U.data(), b, relu, y);
}

void bwd_data(const float* dy, const float* w, float* dx, int64_t N, int64_t C, int64_t H,
              int64_t W, int64_t K, int64_t ph, int64_t pw) {
  const int64_t P = H + 2 * ph - 2, Q = W + 2 * pw - 2;
  const Tiles t = tiles(N, K, P, Q, C, 2 - ph, 2 - pw);  // t.P == H, t.Q == W
  std::vector<float> U(kPts * C * K);
  weight_transform(w, C, K, true, U.data());
  conv(t, dy, U.data(), nullptr, false, dx);
}

void bwd_weight(const float* x, const float* dy, float* dw, float* db, int64_t N, int64_t C,
                int64_t H, int64_t W, int64_t K, int64_t ph, int64_t pw) {
  const Tiles t = tiles(N, C, H, W, K, ph, pw);
  const int64_t rows = t.rows_per_chunk(), all_rows = N * t.th;
  const int64_t xs = C * H * W, ys = K * t.P * t.Q, usz = kPts * K * C;
  const int nt = num_threads();
  // One dU per thread, added in thread order afterwards (a fixed order for a thread count).
  std::vector<float> part(static_cast<size_t>(nt) * usz, 0.f);
  over_chunks(t.chunks(), [&](int64_t ci, int slot) {
    const int64_t g0 = ci * rows, g1 = std::min(all_rows, g0 + rows), T = (g1 - g0) * t.tw;
    float* V = scratch(kPts * (C + K) * T);
    float* Z = V + kPts * C * T;
    for_each_part(t, g0, g1, [&](int64_t n, int64_t i0, int64_t i1, int64_t col0) {
      input_transform(t, x + n * xs, i0, i1, V, T, col0);
      grad_transform(t, dy + n * ys, i0, i1, Z, T, col0);
    });
    float* dU = part.data() + slot * usz;
    for (int64_t xi = 0; xi < kPts; ++xi)
      blas::sgemm(false, true, K, C, T, 1.f, Z + xi * K * T, T, V + xi * C * T, T, 1.f,
                  dU + xi * K * C, C);
  });
  for (int u = 1; u < nt; ++u)
    for (int64_t i = 0; i < usz; ++i) part[i] += part[u * usz + i];
  weight_untransform(part.data(), K, C, dw);
  // db: per image in float, images added in double (N * P * Q terms), as the im2col path does
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t k = 0; k < K; ++k) {
    double acc = 0.0;
    for (int64_t n = 0; n < N; ++n) {
      const float* d = dy + n * ys + k * t.P * t.Q;
      float s = 0.f;
#pragma omp simd reduction(+ : s)
      for (int64_t i = 0; i < t.P * t.Q; ++i) s += d[i];
      acc += s;
    }
    db[k] += static_cast<float>(acc);
  }
}

}  // namespace ft::cpu::winograd
