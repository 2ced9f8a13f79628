// The blocked depthwise row kernels in plain C++ (no intrinsics): the path for CPUs without AVX2
// and for non-x86 hosts; the 16-lane loops are left to the compiler's vectorizer.
#include "depthwise_blocked.h"
#include "depthwise_blocked_kernels.h"

namespace ft::cpu::dwb {
namespace {

struct VScalar {
  struct T {
    float v[kBlock];
  };
  static constexpr int kW = kBlock;
  static constexpr bool kSmallRows = true;
  static constexpr int kCols = 8;
  static T zero() { return T{}; }
  static T load(const float* p) {
    T r;
    for (int i = 0; i < kBlock; ++i) r.v[i] = p[i];
    return r;
  }
  static T load_if(const float* p, bool ok) { return ok ? load(p) : zero(); }
  static void store(float* p, const T& v) {
    for (int i = 0; i < kBlock; ++i) p[i] = v.v[i];
  }
  static void stream(float* p, const T& v) { store(p, v); }
  static void fence() {}
  static T fma(const T& acc, const T& a, const T& b) {
    T r;
    for (int i = 0; i < kBlock; ++i) r.v[i] = acc.v[i] + a.v[i] * b.v[i];
    return r;
  }
  static T add(const T& a, const T& b) {
    T r;
    for (int i = 0; i < kBlock; ++i) r.v[i] = a.v[i] + b.v[i];
    return r;
  }
  static T relu(const T& v) {
    T r;
    for (int i = 0; i < kBlock; ++i) r.v[i] = v.v[i] < 0.f ? 0.f : v.v[i];
    return r;
  }
};

const Isa kIsa = make_isa<VScalar>("portable");

}  // namespace

const Isa* isa_portable() { return &kIsa; }

}  // namespace ft::cpu::dwb
