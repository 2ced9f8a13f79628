// Winograd F(2x2, 3x3) and F(4x4, 3x3) on the NCHW16c blocked layout
// (conv2d_wino_blocked_avx512.cpp): the 3x3 stride-1 padding-1 convolutions of the direct engine's
// blocked entry points with 2.25x (2x2 tiles) or 4x (4x4 tiles) fewer multiplies.
// conv2d_blocked_fwd / _bwd_data / _bwd_weight run it when winograd_blocked_tile (conv2d.cpp: the
// algorithm setting and the rule) says so.
#pragma once
#include <cstdint>

namespace ft::cpu::wino_blocked {

// One 3x3 stride-1 padding-1 convolution, blocked in and out:
//   out[n, o, h, w] (+)= bias[o] + sum_{i, r, s} in[n, i, h - 1 + r, w - 1 + s] * g(o, i, r, s)
// with g(o, i, r, s) = w[o, i, r, s] (w: (Cout, Cin, 3, 3), the forward), or, transpose (the data
// gradient: in = dy, out = dx), g(o, i, r, s) = w[i, o, 2 - r, 2 - s] (w: (Cin, Cout, 3, 3)).
struct Args {
  const float* in;     // [N][ceil(Cin/16)][H + 2 halo][W + 2 halo][16], zero halo and channel tail
  int64_t halo;        // >= 1: the padding is read from it
  int64_t N, Cin, H, W, Cout;
  const float* w;
  bool transpose;
  const float* bias;   // Cout values, or nullptr
  float* out;          // [N][ceil(Cout/16)][H][W][16], no halo
  bool relu;
  bool accumulate;     // out += the convolution
  double* stats;       // (2, Cout) sum and sum of squares of out (after the ReLU), or nullptr;
                       // with bn_x, the batchnorm sums below instead
  int tile = 2;        // output tile side: 2 (F(2x2, 3x3)) or 4 (F(4x4, 3x3))
  // The data gradient feeding a training batchnorm (BnGradSums in fasttrain/cpu.h): stats gets
  // [sum m * g, sum m * g * (x - mean)] with x the batchnorm's input (blocked like out, zero halo
  // bn_hx) and m = (x * a + b > 0) when bn_relu; bn_c: per output block [mean 16][a 16][b 16].
  const float* bn_x = nullptr;
  int64_t bn_hx = 0;
  const float* bn_c = nullptr;
  bool bn_relu = false;
};

// The weight gradient of the forward above (transpose false), by F(2x2, 3x3) or F(4x4, 3x3):
//   dw[k, c, r, s] += sum_{n, h, w} dy[n, k, h, w] x[n, c, h - 1 + r, w - 1 + s],  db[k] += sum dy[n, k, ., .]
struct WgradArgs {
  const float* x;      // blocked, zero halo halo_x >= 1 (as Args::in)
  int64_t halo_x;
  const float* dy;     // [N][ceil(K/16)][H + 2 halo_dy][W + 2 halo_dy][16]
  int64_t halo_dy;
  int64_t N, C, H, W, K;
  float* dw;           // (K, C, 3, 3), accumulated into
  float* db;           // K, accumulated into
  int tile = 2;        // output tile side: 2 or 4, as Args::tile
};

// Whether this build holds the AVX-512 kernels (the CPU check is the caller's).
bool available();
void run(const Args& a);
void run_wgrad(const WgradArgs& a);

}  // namespace ft::cpu::wino_blocked

namespace ft::cpu {
// conv2d_direct.cpp: stats (2, K) = the per-channel sums over `parts` batchnorm-statistics partials
// laid out [part][ceil(K/16)][sum 16, squares 16], added in double in part order (the same bits for
// any thread count); the direct kernels' per-tile partials are float, Winograd's per-chunk double.
void reduce_block_stats(const float* part, int64_t parts, int64_t Kb, int64_t K, double* stats);
void reduce_block_stats(const double* part, int64_t parts, int64_t Kb, int64_t K, double* stats);

// conv2d.cpp: the Winograd output tile side (2 or 4) the blocked entry point `op` (forward, data or
// weight gradient) runs this shape with on the blocked layout, 0 for the direct kernels; an error
// when the algorithm is forced to "winograd-blocked" or "winograd43-blocked" on a shape it cannot do.
int winograd_blocked_tile(const char* op, int64_t N, int64_t C, int64_t H, int64_t W, int64_t K,
                          int64_t R, int64_t S, int64_t sh, int64_t sw, int64_t ph, int64_t pw);
}  // namespace ft::cpu
