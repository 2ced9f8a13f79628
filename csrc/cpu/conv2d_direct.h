// Direct convolution on a channel-blocked layout: the interface between the driver
// (conv2d_direct.cpp: layouts, tiling, threads, instruction-set choice) and the register-blocked
// micro-kernels, compiled once per instruction set (conv2d_direct_{avx512,avx2,portable}.cpp from
// the one template in conv2d_direct_kernels.h).
//
// Layout: activations are [N][C/16][H][W][16] ("NCHW16c"): 16 channels of one pixel are one
// AVX-512 vector (two AVX2 vectors); channels past C are zero. Weights are blocks of 16 input
// channels x 16 output channels per kernel tap: [out block][in block][R][S][16 in][16 out].
#pragma once
#include <cstdint>

namespace ft::cpu::direct {

constexpr int kBlock = 16;
constexpr int64_t kWBlock = kBlock * kBlock;  // floats in one 16 x 16 weight block
// Below one block of input channels an NCHW call's forward and weight gradient run the stem kernels
// (one channel per tap, as the network's first layer does) rather than padding C to 16 lanes.
constexpr int64_t kStemMaxChannels = kBlock;

// One output tile: QT pixels of one output row x KV blocks of 16 output channels, accumulated in
// registers over every input channel block and every kernel tap, then stored once.
//   out[t][j] = bias[j] + sum_{cb, tap, c} in[cb*in_cb + tap_in[tap] + t*in_px + c]
//                                          * w[j*w_kb + cb*w_cb + tap_w[tap] + c*16 + (0..15)]
struct ConvTile {
  const float* in;        // input at (channel block 0, tile pixel 0, tap offset 0)
  int64_t in_cb;          // floats between input channel blocks
  const int64_t* tap_in;  // per tap: floats from `in` to the tap's input pixel
  const int64_t* tap_w;   // per tap: floats from `w` to the tap's 16 x 16 block
  int ntaps;              // 0 gives zeros (a stride phase that no tap reaches)
  int Cb;                 // input channel blocks
  const float* w;         // weights at (output block j = 0, input block 0)
  int64_t w_cb, w_kb;     // floats between input blocks, between output blocks
  float* out;             // output at (block 0, tile pixel 0)
  int64_t out_px, out_kb; // floats between tile pixels, between output blocks
  const float* bias;      // KV*16 values, or nullptr for zero
  bool relu;
  bool accumulate;        // out += the convolution (bias null): the accumulators start from out
  // Per output block j: stats[j*32 + l] = sum over the tile's QT pixels of output lane l, and
  // stats[j*32 + 16 + l] its sum of squares (float32, QT <= 16 terms); nullptr: none.
  float* stats;
  // The data gradient feeding a training batchnorm (the batchnorm's backward then skips its sums
  // pass): per output block j, bn_sums[j*32 + l] = sum over the tile's QT pixels of m * g of lane l,
  // and bn_sums[j*32 + 16 + l] = sum of m * g * (x - mean), where g is the value stored, x the
  // batchnorm's input at the same pixel (bn_x + t*out_px + j*bn_x_kb) and m = (x * ma + mb > 0)
  // (the fused ReLU's mask, as the batchnorm forms it) when bn_relu, else 1. bn_c: per block j,
  // [mean 16][ma 16][mb 16] at bn_c + j*48. Float32, QT <= 16 terms; nullptr bn_sums: none.
  float* bn_sums;
  const float* bn_x;
  int64_t bn_x_kb;
  const float* bn_c;
  bool bn_relu;
};

// One kernel tap's weight gradient for one (output block, input block) pair, accumulated over a
// sweep of output pixels of `images` images:
//   dw[c][k] += sum_{i, p<P, q<Q} x[i*x_img + (p*sh)*x_row + q*sw*16 + c] * dy[i*dy_img + p*dy_row + q*16 + k].
// `x` points at the tap's first input pixel, `dy` at output pixel (0, 0).
struct WgradTile {
  const float* x;
  int64_t x_row, x_img;
  const float* dy;
  int64_t dy_row, dy_img;
  int64_t images;
  int64_t P, Q, sh, sw;
  float* dw;  // 16 x 16 block, accumulated into
  // kv (1 or up to Isa::wgrad_kv) output blocks at once, dy_kb and dw_kb floats apart: each input
  // value broadcast then feeds kv FMAs, each dy vector 16 / kv fewer broadcasts
  int kv;
  int64_t dy_kb, dw_kb;
  float* db;  // kv*16 bias-gradient sums of dy, accumulated into; nullptr: none
};

using ConvTileFn = void (*)(const ConvTile&);
using WgradTileFn = void (*)(const WgradTile&);
// The stem's weight gradient over one output row (conv2d_direct_kernels.h, wgrad_stem).
using WgradStemFn = void (*)(const float* x, const int64_t* tap_x, int ntaps, int64_t sw,
                             const float* dy, int64_t Q, float* dw, float* db);
// One image row between the layouts: `in` holds nc <= 16 channel rows of W floats, `plane` floats
// apart; `out` holds W pixels of 16 channels (channels past nc zero), and back.
using PackRowFn = void (*)(const float* in, int64_t plane, int nc, int64_t W, float* out);
using UnpackRowFn = void (*)(const float* in, int nc, int64_t W, float* out, int64_t plane);

// 1x1 convolutions on NCHW planes (conv2d_direct_kernels.h, pw_rows / pw_dots): L counts vectors of
// 16 pixels (the caller pads rows to whole vectors).
//   rows: c[m*ldc + p] = sum_{j<J} a[m*lda + j] * b[j*ldb + p], m < M, p < 16 L
//   dots: acc[(k*CI + i)*16 + l] += sum_{n<images, v<L} d[n*dimg + k*ldd + 16v + l] * x[n*ximg + i*ldx + 16v + l]
using PwRowsFn = void (*)(const float* a, int64_t lda, int64_t M, int64_t J, const float* b, int64_t ldb, int64_t L,
                          float* c, int64_t ldc);
using PwDotsFn = void (*)(const float* d, int64_t ldd, int64_t dimg, int64_t K, const float* x, int64_t ldx,
                          int64_t ximg, int64_t CI, int64_t L, int64_t images, float* acc);
using PwRowsTileFn = void (*)(const float* a, int64_t lda, int64_t J, const float* b, int64_t ldb, float* c,
                              int64_t ldc);
using PwDotsTileFn = void (*)(const float* d, int64_t ldd, int64_t dimg, const float* x, int64_t ldx, int64_t ximg,
                              int64_t L, int64_t images, float* acc, int64_t ldacc);

// What one instruction set offers. conv(kv, qt, sw) is the micro-kernel for kv output blocks
// (1..max_kv) and qt pixels (1..max_qt(kv)) whose input pixels are sw*16 floats apart (sw 1 or 2;
// any other stride runs qt = 1 tiles, where the stride does not matter). conv_stem: the same for
// the stem's tiles, one channel per input pixel (zero-bordered NCHW input).
struct Isa {
  const char* name;
  int max_kv;
  int max_qt[3];  // by kv (index 0 unused)
  ConvTileFn (*conv)(int kv, int qt, int sw);
  ConvTileFn (*conv_stem)(int kv, int qt, int sw);
  WgradTileFn wgrad;
  WgradStemFn wgrad_stem;
  int stem_taps;  // taps one wgrad_stem call takes
  int wgrad_kv;   // output blocks one wgrad call may take
  PackRowFn pack;
  UnpackRowFn unpack;
  ConvTileFn (*conv_bn)(int kv, int qt, int sw);  // conv's tiles with the batchnorm sums epilogue
  PwRowsFn pw_rows;
  PwDotsFn pw_dots;
};

// Each is null where the compiler could not build that instruction set (non-x86 hosts).
const Isa* isa_avx512();
const Isa* isa_avx2();
const Isa* isa_portable();

}  // namespace ft::cpu::direct
