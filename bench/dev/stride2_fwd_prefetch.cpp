// The 3x3 stride-2 forward of the direct engine, 128 x 16 x 32 x 32 -> 32 (ResNet's first
// downsampling layer), outside the module: the same micro-kernel (conv2d_direct_kernels.h,
// 8 pixels x 2 output blocks, AVX-512) over the same tile order, with the input prefetch as the
// only variable, timed by the thread's CPU time (min of 7 passes over the batch):
//   mode 0: no software prefetch (the hardware's alone)
//   mode 1: with each row's first tile, the input rows the next output row reads first and its
//           output lines (the driver's scheme before, for every stride)
//   mode 2 DIST LOC: each tile its own columns of the rows output row p + DIST reads first, and
//           its output lines there (locality LOC: 3 = prefetcht0, 2 = t1, 1 = t2)
// N = 8 fits the input in L2: the kernel's rate with no memory in the way. FLUSH=1 in the
// environment writes 64 MB between passes (cold caches).
//
//   g++ -O3 -ffp-contract=fast -march=x86-64-v3 -mavx512f -mavx512bw -mavx512vl -mavx512dq -mfma \
//       -std=c++17 -Icsrc/cpu -Icsrc/include -o /tmp/s2fwd bench/dev/stride2_fwd_prefetch.cpp
//   /tmp/s2fwd 128 0; /tmp/s2fwd 128 1; /tmp/s2fwd 128 2 1 3; /tmp/s2fwd 8 0
//
// V512 repeats conv2d_direct_avx512.cpp's (that one is file-local).
#include <immintrin.h>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>
#include <ctime>
#include <algorithm>
#include "conv2d_direct.h"
namespace ft::cpu::direct { namespace {
struct V512 {
  using T = __m512;
  static constexpr int kWgradC = 16, kWgradKV = 2, kWgradC2 = 8, kStemTaps = 9;
  static T zero() { return _mm512_setzero_ps(); }
  static T load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, T v) { _mm512_storeu_ps(p, v); }
  static T fma(T acc, T w, const float* s) { return _mm512_fmadd_ps(w, _mm512_set1_ps(*s), acc); }
  static T relu(T v) { return _mm512_max_ps(v, _mm512_setzero_ps()); }
  static T add(T a, T b) { return _mm512_add_ps(a, b); }
  static T madd(T acc, T a, T b) { return _mm512_fmadd_ps(a, b, acc); }
  static T sub(T a, T b) { return _mm512_sub_ps(a, b); }
  static T positive(T c, T d) { return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(c, _mm512_setzero_ps(), _CMP_GT_OQ), d); }
};
}}
#include "conv2d_direct_kernels.h"
using namespace ft::cpu::direct;
static double now() { timespec t; clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }
int main(int argc, char** argv) {
  int N = atoi(argv[1]), mode = atoi(argv[2]), dist = argc > 3 ? atoi(argv[3]) : 1, loc = argc > 4 ? atoi(argv[4]) : 3;
  const int C = 16, H = 32, K = 32, R = 3, sh = 2, Hp = 34, Wp = 34, P = 16, Q = 16, Kb = 2;
  std::vector<float> x((size_t)N * Hp * Wp * 16, 0.5f), w(Kb * 9 * 256, 0.01f), y((size_t)N * Kb * P * Q * 16), bias(32, 0.f);
  std::vector<int64_t> tap_in(9), tap_w(9);
  for (int r = 0; r < 3; ++r) for (int s = 0; s < 3; ++s) { tap_in[r*3+s] = (r * Wp + s) * 16; tap_w[r*3+s] = (r*3+s) * 256; }
  ConvTile base{}; base.in_cb = Hp * Wp * 16; base.tap_in = tap_in.data(); base.tap_w = tap_w.data(); base.ntaps = 9; base.Cb = 1;
  base.w_cb = 9 * 256; base.w_kb = 9 * 256; base.out_px = 16; base.out_kb = P * Q * 16; base.bias = bias.data();
  auto fn = &conv_tile<V512, 2, 8, 2, 16, false>;
  std::vector<float> flush(64 << 20 >> 2);
  double best = 1e9;
  for (int rep = 0; rep < 7; ++rep) {
    if (getenv("FLUSH"))
      for (size_t i = 0; i < flush.size(); i += 16) flush[i] += 1;  // evict the caches
    double t0 = now();
    for (int n = 0; n < N; ++n) for (int p = 0; p < P; ++p) for (int q0 = 0; q0 < Q; q0 += 8) {
      if (mode == 1 && q0 == 0) {  // old: next row burst, t0
        int n1 = n, p1 = p + 1; if (p1 == P) ++n1, p1 = 0;
        if (n1 < N) { int lo = p1 == 0 ? 0 : 2 * p1 + 1, hi = 2 * p1 + 3;
          for (int r = lo; r < hi; ++r) for (int c = 0; c < 33; ++c) __builtin_prefetch(&x[(((size_t)n1 * Hp + r) * Wp + c) * 16], 0, 3);
          for (int kb = 0; kb < Kb; ++kb) for (int q = 0; q < Q; ++q) __builtin_prefetch(&y[((((size_t)n1 * Kb + kb) * P + p1) * Q + q) * 16], 1, 3); }
      }
      if (mode == 2) {  // per tile, dist rows ahead
        int n1 = n + (p + dist) / P, p1 = (p + dist) % P;
        if (n1 < N) { int lo = p1 == 0 ? 0 : 2 * p1 + 1, hi = 2 * p1 + 3;
          for (int r = lo; r < hi; ++r) for (int c = q0 * 2; c < std::min(Wp, q0 * 2 + 17); ++c) {
            const float* a = &x[(((size_t)n1 * Hp + r) * Wp + c) * 16];
            if (loc == 3) __builtin_prefetch(a, 0, 3); else if (loc == 2) __builtin_prefetch(a, 0, 2); else __builtin_prefetch(a, 0, 1); }
          for (int kb = 0; kb < Kb; ++kb) for (int q = q0; q < q0 + 8; ++q) __builtin_prefetch(&y[((((size_t)n1 * Kb + kb) * P + p1) * Q + q) * 16], 1, 3); }
      }
      ConvTile t = base;
      t.in = &x[(((size_t)n * Hp + p * sh) * Wp + q0 * 2) * 16];
      t.w = w.data(); t.out = &y[((((size_t)n * Kb) * P + p) * Q + q0) * 16];
      fn(t);
    }
    best = std::min(best, now() - t0);
  }
  double fl = 2.0 * N * K * C * 9 * P * Q;
  printf("N=%d mode=%d dist=%d loc=%d: %.3f ms %.0f GF\n", N, mode, dist, loc, best * 1e3, fl / best / 1e9);
}
