// The blocked-layout kernels for AVX2 + FMA: a 16-lane vector is two ymm. Built with its flags
// (CMakeLists.txt) and run only when the CPU reports them (blocked.cpp follows set_conv2d_isa).
#include "blocked.h"

#if defined(__AVX2__) && defined(__FMA__)
#include "blocked_kernels.h"

namespace ft::cpu::blocked {
namespace {
constexpr Isa kIsa = make_isa("avx2");
}  // namespace
const Isa* isa_avx2() { return &kIsa; }
}  // namespace ft::cpu::blocked

#else

namespace ft::cpu::blocked {
const Isa* isa_avx2() { return nullptr; }
}  // namespace ft::cpu::blocked

#endif
