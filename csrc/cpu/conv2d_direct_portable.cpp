// The direct-convolution micro-kernels in plain C++ (no intrinsics): the path for CPUs without
// AVX2 and for non-x86 hosts; the compiler vectorizes the 16-lane loops where it can.
#include "conv2d_direct.h"
#include "conv2d_direct_kernels.h"

namespace ft::cpu::direct {
namespace {

struct VScalar {
  struct T {
    float v[kBlock];
  };
  static constexpr int kWgradC = 4;
  static constexpr int kWgradKV = 1;
  static constexpr int kStemTaps = 4;
  static T zero() { return T{}; }
  static T load(const float* p) {
    T r;
    for (int i = 0; i < kBlock; ++i) r.v[i] = p[i];
    return r;
  }
  static void store(float* p, const T& v) {
    for (int i = 0; i < kBlock; ++i) p[i] = v.v[i];
  }
  static T fma(const T& acc, const T& w, const float* s) {
    T r;
    const float b = *s;
    for (int i = 0; i < kBlock; ++i) r.v[i] = acc.v[i] + w.v[i] * b;
    return r;
  }
  static T relu(const T& v) {
    T r;
    for (int i = 0; i < kBlock; ++i) r.v[i] = v.v[i] > 0.f ? v.v[i] : 0.f;
    return r;
  }
  static T add(const T& a, const T& b) {
    T r;
    for (int i = 0; i < kBlock; ++i) r.v[i] = a.v[i] + b.v[i];
    return r;
  }
  static T madd(const T& acc, const T& a, const T& b) {
    T r;
    for (int i = 0; i < kBlock; ++i) r.v[i] = acc.v[i] + a.v[i] * b.v[i];
    return r;
  }
  static T sub(const T& a, const T& b) {
    T r;
    for (int i = 0; i < kBlock; ++i) r.v[i] = a.v[i] - b.v[i];
    return r;
  }
  static T positive(const T& c, const T& d) {
    T r;
    for (int i = 0; i < kBlock; ++i) r.v[i] = c.v[i] > 0.f ? d.v[i] : 0.f;
    return r;
  }
};

const Isa kIsa{"portable", 1, {0, 4, 0}, &pick_conv<VScalar, 4, 0, kBlock>,
               &pick_conv<VScalar, 4, 0, 1>, &wgrad_tile<VScalar>, &wgrad_stem<VScalar>, VScalar::kStemTaps,
               VScalar::kWgradKV,
               &pack_row<VScalar>, &unpack_row<VScalar>, &pick_conv<VScalar, 4, 0, kBlock, true>,
               &pw_rows<VScalar, 4, 1>, &pw_dots<VScalar, 2, 2>};

}  // namespace

const Isa* isa_portable() { return &kIsa; }

}  // namespace ft::cpu::direct
