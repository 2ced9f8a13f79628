// Kernels on the channel-blocked activation layout that flows between the direct convolutions:
// an activation of logical shape (N, C, H, W) is [N][Cb][H + 2h][W + 2h][16], Cb = ceil(C/16),
// channel c at block c / 16, lane c % 16, with a zero border of h pixels (the halo) that lets a
// producer write straight into the padded buffer the next 3x3 convolution reads. Pad lanes
// (channels >= C of the last block) are zero in every array.
//
// The per-plane work (one image x one block of 16 channels) is written once over 16-lane vectors
// (blocked_kernels.h) and compiled once per instruction set (blocked_{avx512,avx2,portable}.cpp);
// blocked.cpp holds what does not depend on it: argument geometry, threads, the deterministic
// reductions and halo zeroing, and follows the direct convolution's choice (set_conv2d_isa).
#pragma once
#include <cstdint>

namespace ft::cpu::blocked {

constexpr int kLanes = 16;

// One plane of a blocked array: `p` at interior pixel (0, 0), rows `row` floats apart.
struct In {
  const float* p;
  int64_t row;
};
struct Out {
  float* p;
  int64_t row;
};

// One pooling sweep over an H x W interior into P x Q (windows start at p*sh - ph; taps dh, dw apart).
struct PoolGeom {
  int64_t H, W, P, Q, kh, kw, sh, sw, ph, pw, dh, dw;
  bool count_include_pad;
  bool disjoint = false;  // no pixel in two windows (average pooling's backward then stores)
};

// What one instruction set provides. Vectors of 16 floats (a, b, shift, mu, k, m1, m2) hold one
// channel block's per-channel constants, pad lanes zero.
struct Isa {
  const char* name;
  // sums over the plane of d = x - shift and d^2, stored to s[16] and s2[16]
  void (*bn_sums)(In x, int64_t H, int64_t W, const float* shift, double* s, double* s2);
  // y = x * a + b (+ res when res.p) then max(0, .) when relu
  void (*bn_apply)(In x, In res, Out y, int64_t H, int64_t W, const float* a, const float* b, bool relu);
  // g = dy, masked by the fused ReLU when y.p (y > 0) or ma (x * ma + mb > 0, the forward's map):
  // sums of g and g * (x - mu), stored to sdy[16] and sdyx[16]; g itself stored to gout when gout.p
  void (*bn_bwd_sums)(In x, In dy, In y, const float* ma, const float* mb, Out gout, int64_t H, int64_t W,
                      const float* mu, double* sdy, double* sdyx);
  // dx = k * (g - m1 - (x - mu) * m2), g as in bn_bwd_sums
  void (*bn_bwd_dx)(In x, In dy, In y, const float* ma, const float* mb, Out dx, int64_t H, int64_t W,
                    const float* mu, const float* k, const float* m1, const float* m2);
  // sums of x over the plane, stored to s[16]
  void (*plane_sum)(In x, int64_t H, int64_t W, double* s);
  // every pixel of the interior = v
  void (*plane_fill)(Out y, int64_t H, int64_t W, const float* v);
  // tap[16] per output pixel: the window tap r * kw + s of each lane's maximum
  void (*maxpool_fwd)(In x, Out y, uint8_t* tap, const PoolGeom& g);
  // dx = dy at each window's tap, 0 at its other real taps (windows must not overlap; pixels of no
  // window are left as they are). Returns false (and stops) at a tap that is not a real one.
  bool (*maxpool_bwd_tiled)(In dy, const uint8_t* tap, Out dx, const PoolGeom& g);
  // dx (zeroed by the caller) += dy at each window's tap; false (and stops) as above
  bool (*maxpool_bwd)(In dy, const uint8_t* tap, Out dx, const PoolGeom& g);
  void (*avgpool_fwd)(In x, Out y, const PoolGeom& g);
  // dx zeroed by the caller, or only its pixels of no window when g.disjoint
  void (*avgpool_bwd)(In dy, Out dx, const PoolGeom& g);
};

// Null where the compiler could not build that instruction set (as for the direct convolution).
const Isa* isa_avx512();
const Isa* isa_avx2();
const Isa* isa_portable();

}  // namespace ft::cpu::blocked
