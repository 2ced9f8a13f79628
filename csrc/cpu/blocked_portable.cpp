// The blocked-layout kernels with no instruction-set flags of their own: the path for CPUs without
// AVX2 and for non-x86 hosts (the compiler lowers the 16-lane vectors to what the target has).
#include "blocked.h"
#include "blocked_kernels.h"

namespace ft::cpu::blocked {
namespace {
constexpr Isa kIsa = make_isa("portable");
}  // namespace
const Isa* isa_portable() { return &kIsa; }
}  // namespace ft::cpu::blocked
