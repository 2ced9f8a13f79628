"""Float32 exp, expm1 and tanh for the Numba kernels: the algorithm of csrc/include/fasttrain/vmath.h
(see its header for the method, the fit and the measured accuracy) written so that LLVM vectorizes
the loops that call them. math.exp / math.tanh lower to one scalar libm call per element, which
keeps every such loop scalar.

How the code stays vectorizable and exact:
- float32 throughout: every constant is an np.float32 (a Python float literal would promote the
  arithmetic to float64) and the helpers take and return float32.
- 2^n is written into the exponent bits through scalar `.view` (an LLVM bitcast, defined for every
  bit pattern including NaN's). Numba does integer arithmetic in int64; LLVM narrows it back to
  32-bit lanes where only the low 32 bits are kept (_pow2's add-and-shift) and where a shift
  applies to a sign-extended int32 (see exp_f32's n1).
- clamps are comparisons and selects, not min/max, so NaN passes through to the result.
- fastmath={'contract'} only: a * b + c may become one FMA, as in the C++ build (-ffp-contract=fast,
  which the accuracy bounds were measured with); no flag that assumes away NaN, inf or signed zero.
  Callers that want the FMAs in their own arithmetic pass the same flags (FASTMATH).
- error_model='numpy' on every function holding a division: under the default 'python' model each
  float division carries a zero-divisor check, a branch that keeps the loop scalar.
Checked over every float32 input: exp_f32, expm1_f32, tanh_f32 and sigmoid_f32 give the same bits
as vmath.h's functions in the C++ kernels (x86-64, both contracting to FMA), so vmath.h's measured
error bounds hold here (tests/test_vmath.py runs its checks on both backends).

Numba's on-disk cache keys a function on its own file only; the package's __init__ gives the kernel
modules that import this one its mtime when it is newer (`refresh_cache_stamps`), so an edit here
recompiles them on the next import.
"""
import math

import numba as nb
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

FASTMATH = {"contract"}

_f = np.float32

# Adding 1.5 * 2^23 rounds a float of magnitude < 2^22 to the nearest integer (ties to even) and
# leaves that integer in the low mantissa bits, so n needs no float -> int conversion.
_ROUND_SHIFT = _f(float.fromhex("0x1.8p23"))
_ROUND_SHIFT_BITS = int(np.array(_ROUND_SHIFT).view(np.int32))
_LOG2E = _f(float.fromhex("0x1.715476p+0"))
_LN2_HI = _f(float.fromhex("0x1.62e4p-1"))      # 16 significant bits: n * _LN2_HI is exact
_LN2_LO = _f(float.fromhex("0x1.7f7d1cp-20"))   # ln 2 - _LN2_HI
# q(r) with expm1(r) ~ r + r^2 q(r) on |r| <= ln2 / 2 (vmath.h: minimax fit, float coefficients)
_Q0 = _f(float.fromhex("0x1.fffffep-2"))
_Q1 = _f(float.fromhex("0x1.5554b4p-3"))
_Q2 = _f(float.fromhex("0x1.5556f4p-5"))
_Q3 = _f(float.fromhex("0x1.122548p-7"))
_Q4 = _f(float.fromhex("0x1.6b9a4cp-10"))

_ZERO, _HALF, _ONE, _TWO = _f(0.0), _f(0.5), _f(1.0), _f(2.0)
_X_MAX = _f(89.0)           # exp and expm1 are +inf from here on
_EXP_X_MIN = _f(-104.0)     # exp is 0 (below half the smallest subnormal) from here on
_EXPM1_X_MIN = _f(-30.0)    # exp(-30) is below half an ulp of 1: expm1 is -1 from here on

_jit = nb.njit(fastmath=FASTMATH, error_model="numpy", cache=True)


@_jit
def _reduce(x):
    """x = n ln2 + r with |r| <= ln2 / 2: (r, n), n an int64 (valid for |x| < 2^22 / log2 e)."""
    kn = x * _LOG2E + _ROUND_SHIFT
    n = kn - _ROUND_SHIFT
    r = x - n * _LN2_HI    # exact: n * _LN2_HI is exact and cancels against x
    r = r - n * _LN2_LO
    return r, np.int64(np.float32(kn).view(np.int32)) - _ROUND_SHIFT_BITS


@_jit
def _expm1_reduced(r):
    """expm1(r) for |r| <= ln2 / 2, accurate in relative terms down to r -> 0."""
    q = (((_Q4 * r + _Q3) * r + _Q2) * r + _Q1) * r + _Q0
    return r + (r * r) * q


@_jit
def _pow2(n):
    """2^n as a float32 for integer -126 <= n <= 127."""
    return np.int32((n + 127) << 23).view(np.float32)


@_jit
def exp_f32(x):
    """exp(x) for float32 x. +inf -> +inf, -inf -> 0, NaN -> NaN; overflows to +inf exactly above
    ln(FLT_MAX), subnormal results rounded once (vmath.h expf_approx)."""
    # comparisons rather than min/max, so NaN passes through; the clamps keep n in [-150, 128]
    x = _X_MAX if x > _X_MAX else x
    x = _EXP_X_MIN if x < _EXP_X_MIN else x
    r, n = _reduce(x)
    p = _ONE + _expm1_reduced(r)
    # 2^n as two factors that are both normal for every n in [-150, 128]: the product overflows
    # and underflows (with one rounding into the subnormals) exactly where exp does.
    # n1 = floor(n / 2), shifted as kn's bits n + _ROUND_SHIFT_BITS (positive, even bias): a shift
    # of a sign-extended int32 that LLVM does in 32-bit lanes; n >> 1 itself stays in 64-bit lanes
    # and the exp loop took 1.35x as long
    n1 = ((n + _ROUND_SHIFT_BITS) >> 1) - (_ROUND_SHIFT_BITS >> 1)
    return p * _pow2(n1) * _pow2(n - n1)


@_jit
def expm1_f32(x):
    """exp(x) - 1 for float32 x, accurate in relative terms near 0. +inf -> +inf, -inf -> -1,
    NaN -> NaN (vmath.h expm1f_approx)."""
    x = _X_MAX if x > _X_MAX else x
    x = _EXPM1_X_MIN if x < _EXPM1_X_MIN else x
    r, n = _reduce(x)
    p = _expm1_reduced(r)
    # 2^n (p + 1) - 1 = 2 (h p + (h - 1/2)) with h = 2^(n-1): h stays normal for n in [-43, 128]
    # and h - 1/2 is exact while it matters (|n| <= 24); the final doubling overflows like expm1
    h = _pow2(n - 1)
    scaled = _TWO * (h * p + (h - _HALF))
    return p if n == 0 else scaled


@_jit
def tanh_f32(x):
    """tanh(x) = sign(x) * -u / (2 + u) with u = expm1(-2|x|) in (-1, 0]: no cancellation near 0,
    and u = -1 exactly for |x| >= ~9 gives +-1. NaN -> NaN, tanh(-0) = -0."""
    u = expm1_f32(-_TWO * abs(x))
    return math.copysign(-u / (_TWO + u), x)


@_jit
def sigmoid_f32(x):
    """1 / (1 + exp(-x)) computing only e = exp(-|x|) in (0, 1], so nothing overflows; one
    division with the numerator selected (e * (1 / (1 + e)) would add a rounding)."""
    e = exp_f32(-abs(x))
    return (_ONE if x >= _ZERO else e) / (_ONE + e)


@intrinsic
def fmax(typingctx, a, b):
    """C's fmax for two floats of one type (LLVM's llvm.maxnum): the larger, a NaN operand ignored
    (NaN only if both are). A loop `m = fmax(m, x[j])` vectorizes as a max reduction; the select
    `x[j] if x[j] > m else m` does not (LLVM reorders it only under the no-NaN flag, which would make
    a NaN input undefined behaviour), and max() / np.maximum lower to scalar compare-and-branch
    code. llvm.maximum (NaN-propagating) vectorizes too but measured 1.3x slower for the row max of
    softmax_xent (it also orders -0 < +0, with a blend per vector)."""
    if not (isinstance(a, types.Float) and a == b):
        return None

    def codegen(context, builder, sig, args):
        lty = args[0].type
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(lty, [lty, lty]),
                                            f"llvm.maxnum.f{a.bitwidth}")
        return builder.call(fn, args)

    return a(a, b), codegen
