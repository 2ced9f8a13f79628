// Dropout's per-instruction-set block loops (dropout.cpp picks one; docs/KERNELS.md).
#pragma once
#include <cstdint>

namespace ft::cpu::dropout {

// y[4b..4b+3] = keep ? x * scale : +0 for blocks [b0, b0 + done), done the largest multiple of 16
// blocks it can take (0 where the file was built without AVX-512); the caller does the rest.
int64_t scale_blocks_avx512(const float* x, float* y, int64_t b0, int64_t b1, float scale, uint32_t k0,
                            uint32_t k1, uint32_t step, uint32_t layer, uint32_t t);

}  // namespace ft::cpu::dropout
