// The direct-convolution micro-kernels for AVX-512 (F + FMA): one zmm holds a 16-channel block.
// Built with AVX-512 flags (CMakeLists.txt) and run only when the CPU reports avx512f at run time.
#include "conv2d_direct.h"

#if defined(__AVX512F__) && defined(__FMA__)
#include <immintrin.h>

#include "conv2d_direct_kernels.h"

namespace ft::cpu::direct {
namespace {

struct V512 {
  using T = __m512;
  static constexpr int kWgradC = 16;  // 16 accumulators + the dy vector: half the zmm file
  static T zero() { return _mm512_setzero_ps(); }
  static T load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, T v) { _mm512_storeu_ps(p, v); }
  static T fma(T acc, T w, const float* s) { return _mm512_fmadd_ps(w, _mm512_set1_ps(*s), acc); }
  static T relu(T v) { return _mm512_max_ps(v, _mm512_setzero_ps()); }
};

// 32 zmm: up to 24 accumulators (16 pixels x 1 block or 12 pixels x 2 blocks) + weights + broadcast; at 28 GCC spills.
const Isa kIsa{"avx512", 2, {0, 16, 12}, &pick_conv<V512, 16, 12>, &wgrad_tile<V512>};

}  // namespace

const Isa* isa_avx512() { return &kIsa; }

}  // namespace ft::cpu::direct

#else

namespace ft::cpu::direct {
const Isa* isa_avx512() { return nullptr; }
}  // namespace ft::cpu::direct

#endif
