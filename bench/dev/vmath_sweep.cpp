// Exhaustive accuracy sweep of csrc/include/fasttrain/vmath.h: every float32 input in the ranges
// below (stride 1), error in ulps of the float32 result against libm in double precision.
// Build and run from the repository root, with the flags of the C++ module:
//   g++ -O3 -march=x86-64-v3 -ffp-contract=fast -fno-trapping-math -fopenmp-simd -std=c++17 \
//       -Icsrc/include bench/dev/vmath_sweep.cpp -o /tmp/vmath_sweep && /tmp/vmath_sweep [stride]
// (about 3 minutes on one core at stride 1).
#include <cmath>
#include <cstdio>
#include <cstring>
#include <cstdint>
#include <cstdlib>
#include "fasttrain/vmath.h"
using namespace ft::vmath;
static double ulp_of(double t) {
  double a = std::fabs(t);
  if (a < 0x1p-126) return 0x1p-149;
  int e; std::frexp(a, &e);  // a = m 2^e, m in [0.5,1)
  return std::ldexp(1.0, e - 24);
}
struct Stat { double maxerr = 0; float at = 0; double maxerr_sub = 0; float at_sub = 0; long bad = 0; };
template <class F, class G>
void sweep(const char* name, F f, G g, uint32_t lo_bits_pos, uint32_t hi_bits_pos, int stride) {
  Stat st;
  // both signs: positive bit patterns [lo, hi) and their negatives
  const int64_t B = 1 << 16;
  static float xs[1 << 16], ys[1 << 16];
  for (int sign = 0; sign < 2; ++sign) {
    for (int64_t b0 = lo_bits_pos; b0 < hi_bits_pos; b0 += B * stride) {
      int64_t cnt = 0;
      for (int64_t k = 0; k < B; ++k) {
        int64_t b = b0 + k * stride;
        if (b >= hi_bits_pos) break;
        uint32_t u = (uint32_t)b | (sign ? 0x80000000u : 0u);
        float x; std::memcpy(&x, &u, 4); xs[cnt++] = x;
      }
#pragma omp simd
      for (int64_t k = 0; k < cnt; ++k) ys[k] = f(xs[k]);
      for (int64_t k = 0; k < cnt; ++k) {
        double t = g((double)xs[k]);
        double y = ys[k];
        if (std::isnan(t) != std::isnan(y)) { st.bad++; continue; }
        if (std::isnan(t)) continue;
        if (std::isinf(t) || t > 3.4028234663852886e38 * (1 + 0x1p-25) || t < -3.4028234663852886e38 * (1 + 0x1p-25)) {
          // exact result overflows float: expect inf of the right sign
          if (!(std::isinf(y) && (y > 0) == (t > 0))) { st.bad++; if (st.bad < 5) printf("  %s overflow mismatch x=%a y=%a\n", name, xs[k], y); }
          continue;
        }
        if (std::isinf(y)) { st.bad++; if (st.bad < 5) printf("  %s spurious inf x=%a t=%a\n", name, xs[k], t); continue; }
        double e = std::fabs(y - t) / ulp_of(t);
        if (std::fabs(t) < 0x1p-126) { if (e > st.maxerr_sub) { st.maxerr_sub = e; st.at_sub = xs[k]; } }
        else if (e > st.maxerr) { st.maxerr = e; st.at = xs[k]; }
      }
    }
  }
  printf("%-8s max ulp err (normal results) %.4f at x=%a (%.9g); subnormal results %.4f at %a; bad %ld\n",
         name, st.maxerr, st.at, st.at, st.maxerr_sub, st.at_sub, st.bad);
}
// sigmoid as csrc/cpu/activations.cpp computes it
static float sigmoid(float x) {
  const float e = expf_approx(-std::fabs(x));
  return (x >= 0.f ? 1.f : e) / (1.f + e);
}

int main(int argc, char** argv) {
  int stride = argc > 1 ? atoi(argv[1]) : 1;
  sweep("sigmoid", [](float x) { return sigmoid(x); },
        [](double x) { double e = std::exp(-std::fabs(x)); return x >= 0 ? 1 / (1 + e) : e / (1 + e); }, 0, 0x42F00000u, stride);
  // 0 .. 128 for exp (covers +-104 and the overflow side)
  sweep("exp", [](float x) { return expf_approx(x); }, [](double x) { return std::exp(x); }, 0, 0x43000000u, stride);
  sweep("expm1", [](float x) { return expm1f_approx(x); }, [](double x) { return std::expm1(x); }, 0, 0x43000000u, stride);
  sweep("tanh", [](float x) { return tanhf_approx(x); }, [](double x) { return std::tanh(x); }, 0, 0x41400000u, stride);
  // specials
  float sp[] = {INFINITY, -INFINITY, NAN, -NAN, 88.72283f, 88.72284f, 89.f, 1000.f, -103.97f, -103.98f, -104.f, -1e30f, 0.f, -0.f, 1e-45f, -1e-45f};
  for (float x : sp) printf("x=%a exp=%a expm1=%a tanh=%a | ref exp=%a expm1=%a tanh=%a\n", x, expf_approx(x), expm1f_approx(x), tanhf_approx(x), (float)std::exp((double)x), (float)std::expm1((double)x), (float)std::tanh((double)x));
}
