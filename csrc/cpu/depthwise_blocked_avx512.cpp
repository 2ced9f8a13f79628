// The blocked depthwise row kernels for AVX-512 (F + FMA): one zmm is one 16-channel pixel.
// Built with AVX-512 flags (CMakeLists.txt) and run only when the CPU reports them at run time.
#include "depthwise_blocked.h"

#if defined(__AVX512F__) && defined(__FMA__)
#include <immintrin.h>

#include "depthwise_blocked_kernels.h"

namespace ft::cpu::dwb {
namespace {

struct V512 {
  using T = __m512;
  static constexpr int kW = 16;
  static T zero() { return _mm512_setzero_ps(); }
  static constexpr bool kSmallRows = true;
  static constexpr int kCols = 8;
  static T load(const float* p) { return _mm512_loadu_ps(p); }
  // a masked-off load never faults, so p may lie past the array
  static T load_if(const float* p, bool ok) { return _mm512_maskz_loadu_ps(static_cast<__mmask16>(-int(ok)), p); }
  static void store(float* p, T v) { _mm512_storeu_ps(p, v); }
  static void stream(float* p, T v) { _mm512_stream_ps(p, v); }  // p on a 64-byte line
  static void fence() { _mm_sfence(); }
  static T fma(T acc, T a, T b) { return _mm512_fmadd_ps(a, b, acc); }
  static T add(T a, T b) { return _mm512_add_ps(a, b); }
  static T relu(T v) { return _mm512_max_ps(_mm512_setzero_ps(), v); }  // max(0, NaN) = NaN
};

const Isa kIsa = make_isa<V512>("avx512");

}  // namespace

const Isa* isa_avx512() { return &kIsa; }

}  // namespace ft::cpu::dwb

#else

namespace ft::cpu::dwb {
const Isa* isa_avx512() { return nullptr; }
}  // namespace ft::cpu::dwb

#endif
