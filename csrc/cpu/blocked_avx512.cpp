// The blocked-layout kernels for AVX-512 (F + FMA): a 16-lane vector is one zmm. Built with its flags
// (CMakeLists.txt) and run only when the CPU reports them (blocked.cpp follows set_conv2d_isa).
#include "blocked.h"

#if defined(__AVX512F__) && defined(__FMA__)
#include "blocked_kernels.h"

namespace ft::cpu::blocked {
namespace {
constexpr Isa kIsa = make_isa("avx512");
}  // namespace
const Isa* isa_avx512() { return &kIsa; }
}  // namespace ft::cpu::blocked

#else

namespace ft::cpu::blocked {
const Isa* isa_avx512() { return nullptr; }
}  // namespace ft::cpu::blocked

#endif
