"""Gradient compression on the wire: a NumPy reference and C++ kernels (csrc/cpu/codecs.cpp).

A codec turns a flat float32 array of n values into `nbytes(n)` bytes and back:
- `fp16`: IEEE half (NumPy's cast rounds to nearest even; |x| > 65504 becomes inf).
- `bf16`: the top 16 bits of float32, rounded to nearest even with integer bit operations
  (the rounding used by TPU/Intel bfloat16 conversions); NaN stays NaN.
- `int8`, `int4`: QSGD-style (Alistarh et al. 2017, "QSGD: Communication-Efficient SGD via
  Gradient Quantization and Encoding") per-block linear quantization with a float32 scale per
  block of `block` values (scale = max|x| / levels) and stochastic rounding
  q = floor(x * (1 / scale) + u), u ~ U(0, 1), so E[decode(encode(x))] = x (unbiased to
  2^-17 of a step, see below).
  The uniforms come from Philox-4x32-10 (the dropout generator, fasttrain/kernels/dropout.py):
  each encode draws one 64-bit seed from the caller's np.random.Generator, and one Philox call
  (4 words of 32 bits) feeds 8 values with 16 bits each: u = (2 k + 1) * 2^-17 for a 16-bit k.
  Why 16 bits: Philox is most of the encode's cost (10 rounds of two 32x32->64 multiplies), and
  halving the calls per value doubles the int8/int4 encode speed. The price is resolution: u
  takes 2^16 equally spaced values centred in their cells, so P(round up) differs from the
  fraction by at most 2^-17 and E[decode(encode(x))] is off by at most 2^-17 of a quantization
  step (a relative 2^-17 / 127 of the block's max for int8), far below the quantization noise.
  Which bits feed which value is laid out for SIMD lanes (`philox_uniforms`: 16 consecutive
  Philox blocks fill 128 consecutive values, each word's low halves first), so the C++ kernel
  stores whole vectors without shuffles. C++ and NumPy encode the same bytes for the same
  generator state.
- `sign`: 1 bit per value with a per-block scale mean|x| (signSGD with a scale, Bernstein et al.
  2018; biased, so use it with `ErrorFeedback`, Karimireddy et al. 2019, "Error Feedback Fixes
  SignSGD"). The block sum has a fixed order (8 strided lanes, then a fixed tree) that the C++
  kernel repeats, so the scale is bit-identical too.
Layout of the block codecs: [float32 scale per block][payload]; scales first, so they stay
4-byte aligned when the encoded buffer is.

Implementation: the C++ kernels when fasttrain._C has them (`IMPL == "cpp"`), else this NumPy
code; `use_cpp(False)` forces the reference (tests compare the two byte for byte). Error feedback
is fused into the C++ encode (`encode(..., residual=r)`: encode x + r, leave r = what was lost).
The C++ Philox runs a hand-vectorized AVX-512 loop where the CPU has it, else a portable loop the
compiler vectorizes; FASTTRAIN_CODEC_SIMD=portable forces the latter (same bytes; for tests).
Throughput per core: `python -m bench.codecs` (C++ against this reference, one thread).
"""
from __future__ import annotations

import os

import numpy as np

from .. import backend as _backend
from ..kernels.dropout import philox4x32_ref

# Through the backend registry, not a bare import: the registry hands the module the package's
# thread count now and on every later ft.set_num_threads (a bare import ran the codecs with the
# OpenMP default until some other C++ kernel happened to load the module).
_C = _backend._load("cpp")  # None when the C++ module is not built: the NumPy reference then runs
if _C is not None and not hasattr(_C, "codec_int_encode"):
    _C = None

_use_cpp = _C is not None
# read by the C++ kernels once per process: "portable" forces the compiler-vectorized Philox loop
_SIMD = os.environ.get("FASTTRAIN_CODEC_SIMD", "auto")
if _SIMD not in ("auto", "portable"):
    raise ValueError(f"FASTTRAIN_CODEC_SIMD: expected 'auto' or 'portable', got {_SIMD!r}")
CODEC_STREAM = 0xC0DEC  # Philox counter word 3 of the codecs' stochastic rounding


def use_cpp(flag: bool = True) -> None:
    """Route codecs to the C++ kernels (True) or the NumPy reference (False)."""
    global _use_cpp
    if flag and _C is None:
        raise RuntimeError("codecs.use_cpp(True): fasttrain._C has no codec kernels (build the C++ module)")
    _use_cpp = bool(flag)


def impl() -> str:
    """'cpp' or 'numpy': which implementation the codecs run now."""
    return "cpp" if _use_cpp else "numpy"


def draw_seed(rng: np.random.Generator) -> int:
    """One 64-bit Philox key per encode, from the caller's generator."""
    return int(rng.integers(0, 1 << 64, dtype=np.uint64))


def philox_uniforms(n: int, seed: int) -> np.ndarray:
    """The codecs' u ~ U(0, 1) for values 0..n-1 (float32, 16-bit resolution, centred).

    Values come in groups of 128 fed by 16 Philox blocks: value 128 g + 64 h + 16 w + l takes
    half h (0: low 16 bits, 1: high) of word w of block c = 16 g + l, whose counter is
    (c lo, c hi, 0, CODEC_STREAM) under key (seed lo, seed hi); u = (2 k + 1) * 2^-17 for that
    16-bit k."""
    ngroups = -(-n // 128)
    c = np.arange(16 * ngroups, dtype=np.uint64)
    counter = np.stack([(c & np.uint64(0xFFFFFFFF)).astype(np.uint32), (c >> np.uint64(32)).astype(np.uint32),
                        np.zeros(c.size, np.uint32), np.full(c.size, CODEC_STREAM, np.uint32)], axis=1)
    key = np.array([seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF], np.uint32)
    w = philox4x32_ref(counter, key).reshape(ngroups, 16, 4).transpose(0, 2, 1)   # (g, w, l)
    k = np.stack([w & np.uint32(0xFFFF), w >> np.uint32(16)], axis=1).reshape(-1)[:n]  # (g, h, w, l)
    return (k * np.uint32(2) + np.uint32(1)).astype(np.float32) * np.float32(2.0 ** -17)


def _blocks(n: int, block: int) -> int:
    return -(-n // block)


def _padded_blocks(x: np.ndarray, block: int) -> np.ndarray:
    """x as a (blocks, block) float32 array, the tail padded with zeros."""
    nb = _blocks(x.size, block)
    if x.size == nb * block:
        return x.reshape(nb, block)
    xp = np.zeros(nb * block, np.float32)
    xp[:x.size] = x
    return xp.reshape(nb, block)


class Codec:
    name = "codec"

    def nbytes(self, n: int) -> int:
        raise NotImplementedError

    def encode(self, x: np.ndarray, out: np.ndarray, rng: np.random.Generator,
               residual: np.ndarray | None = None) -> None:
        """x: (n,) float32 -> out: (nbytes(n),) uint8 (4-byte aligned). With residual (n,)
        float32: encode x + residual and leave residual = (x + residual) - decode(out)."""
        seed = draw_seed(rng) if self.stochastic else 0
        if _use_cpp:
            self._encode_cpp(x, out, residual, seed)
            return
        if residual is None:
            self._encode_ref(x, out, seed)
            return
        v = x + residual
        self._encode_ref(v, out, seed)
        self._decode_ref(out, residual)
        np.subtract(v, residual, out=residual)

    def decode(self, data: np.ndarray, out: np.ndarray) -> None:
        """data: (nbytes(n),) uint8 -> out: (n,) float32."""
        if _use_cpp:
            self._decode_cpp(data, out)
        else:
            self._decode_ref(data, out)

    stochastic = False  # True: encode draws a Philox seed from rng

    def roundtrip(self, x: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32).ravel()
        buf = np.empty(self.nbytes(x.size), np.uint8)
        self.encode(x, buf, rng if rng is not None else np.random.default_rng())
        out = np.empty(x.size, np.float32)
        self.decode(buf, out)
        return out

    def ratio(self, n: int = 1 << 20) -> float:
        """Encoded bytes / float32 bytes for n values."""
        return self.nbytes(n) / (4.0 * n)

    def __repr__(self):
        return f"{type(self).__name__}()"


class FP16(Codec):
    name = "fp16"

    def nbytes(self, n):
        return 2 * n

    def _encode_ref(self, x, out, seed):
        # beyond fp16's range IEEE rounding gives +-inf, which is the codec's defined result
        with np.errstate(over="ignore"):
            np.copyto(out.view(np.float16), x, casting="same_kind")

    def _decode_ref(self, data, out):
        np.copyto(out, data.view(np.float16))

    def _encode_cpp(self, x, out, residual, seed):
        _C.codec_half_encode(x, out, residual, False)

    def _decode_cpp(self, data, out):
        _C.codec_half_decode(data, out, False)


class BF16(Codec):
    name = "bf16"

    def nbytes(self, n):
        return 2 * n

    def _encode_ref(self, x, out, seed):
        u = x.view(np.uint32)
        # round to nearest, ties to even: add 0x7FFF plus the lowest kept bit, then truncate
        rounded = (u + (np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))) >> np.uint32(16)
        nan = np.isnan(x)
        if nan.any():  # the addition could carry a NaN's payload into the sign; keep a quiet NaN
            rounded[nan] = (u[nan] >> np.uint32(16)) | np.uint32(0x0040)
        np.copyto(out.view(np.uint16), rounded, casting="unsafe")

    def _decode_ref(self, data, out):
        np.copyto(out.view(np.uint32), data.view(np.uint16).astype(np.uint32) << np.uint32(16))

    def _encode_cpp(self, x, out, residual, seed):
        _C.codec_half_encode(x, out, residual, True)

    def _decode_cpp(self, data, out):
        _C.codec_half_decode(data, out, True)


class _BlockCodec(Codec):
    def __init__(self, block: int = 256):
        if block < 1:
            raise ValueError(f"{type(self).__name__}(block={block}): expected a positive block size")
        self.block = int(block)

    def _split(self, data: np.ndarray, n: int):
        nb = _blocks(n, self.block)
        return data[:4 * nb].view(np.float32), data[4 * nb:]

    def __repr__(self):
        return f"{type(self).__name__}(block={self.block})"


class _StochasticInt(_BlockCodec):
    levels = 127  # q in [-levels, levels]
    bits = 8
    stochastic = True

    def _quantize(self, x, seed):
        xb = _padded_blocks(x, self.block)
        scale = np.abs(xb).max(axis=1) / np.float32(self.levels)
        inv = np.divide(np.float32(1), scale, out=np.zeros_like(scale), where=scale > 0)
        y = xb * inv[:, None]
        u = np.zeros(y.size, np.float32)
        u[:x.size] = philox_uniforms(x.size, seed)
        y += u.reshape(y.shape)
        np.floor(y, out=y)
        np.clip(y, -self.levels, self.levels, out=y)
        return scale, y.astype(np.int8).ravel()[:x.size]

    def _encode_cpp(self, x, out, residual, seed):
        _C.codec_int_encode(x, out, residual, self.block, self.bits, seed)

    def _decode_cpp(self, data, out):
        _C.codec_int_decode(data, out, self.block, self.bits)


class Int8(_StochasticInt):
    name = "int8"
    levels = 127

    def nbytes(self, n):
        return 4 * _blocks(n, self.block) + n

    def _encode_ref(self, x, out, seed):
        scales, payload = self._split(out, x.size)
        s, q = self._quantize(x, seed)
        scales[:] = s
        payload.view(np.int8)[:] = q

    def _decode_ref(self, data, out):
        scales, payload = self._split(data, out.size)
        q = payload.view(np.int8)
        nb = scales.size
        full = (out.size // self.block) * self.block
        np.multiply(q[:full].reshape(-1, self.block), scales[:full // self.block, None],
                    out=out[:full].reshape(-1, self.block))
        if full < out.size:
            np.multiply(q[full:], scales[nb - 1], out=out[full:])


class Int4(_StochasticInt):
    name = "int4"
    levels = 7
    bits = 4

    def nbytes(self, n):
        return 4 * _blocks(n, self.block) + (n + 1) // 2

    def _encode_ref(self, x, out, seed):
        scales, payload = self._split(out, x.size)
        s, q = self._quantize(x, seed)
        scales[:] = s
        nib = (q + 8).astype(np.uint8)  # 1..15
        if nib.size % 2:
            nib = np.append(nib, np.uint8(8))
        payload[:] = nib[0::2] | (nib[1::2] << np.uint8(4))

    def _decode_ref(self, data, out):
        scales, payload = self._split(data, out.size)
        n = out.size
        q = np.empty(2 * payload.size, np.int8)
        q[0::2] = (payload & np.uint8(0x0F)).view(np.int8)
        q[1::2] = (payload >> np.uint8(4)).view(np.int8)
        q -= 8
        per = np.repeat(scales, self.block)[:n]
        np.multiply(q[:n], per, out=out)


class Sign(_BlockCodec):
    name = "sign"

    def nbytes(self, n):
        return 4 * _blocks(n, self.block) + (n + 7) // 8

    def _encode_ref(self, x, out, seed):
        scales, payload = self._split(out, x.size)
        xb = _padded_blocks(x, self.block)
        nb = xb.shape[0]
        counts = np.full(nb, self.block, np.float32)
        if nb:  # n == 0 encodes to no bytes
            counts[-1] = x.size - self.block * (nb - 1)
        # mean |x| over the block's real values; the sum in a fixed order (8 strided lanes
        # accumulated in index order, then a fixed tree) that the C++ kernel repeats exactly
        w = -(-self.block // 8) * 8
        a = np.zeros((nb, w), np.float32)
        a[:, :self.block] = np.abs(xb)
        a = a.reshape(nb, w // 8, 8)
        lanes = np.zeros((nb, 8), np.float32)
        for k in range(w // 8):
            lanes += a[:, k, :]
        half = lanes[:, :4] + lanes[:, 4:]            # l0+l4, l1+l5, l2+l6, l3+l7
        total = (half[:, 0] + half[:, 2]) + (half[:, 1] + half[:, 3])
        scales[:] = total / counts
        payload[:] = np.packbits(x >= 0)

    def _encode_cpp(self, x, out, residual, seed):
        _C.codec_sign_encode(x, out, residual, self.block)

    def _decode_cpp(self, data, out):
        _C.codec_sign_decode(data, out, self.block)

    def _decode_ref(self, data, out):
        scales, payload = self._split(data, out.size)
        n = out.size
        bits = np.unpackbits(payload, count=n)
        per = np.repeat(scales, self.block)[:n]
        np.multiply(per, bits.astype(np.float32) * 2 - 1, out=out)


_CODECS = {"fp16": FP16, "bf16": BF16, "int8": Int8, "int4": Int4, "sign": Sign}


def get_codec(name) -> Codec | None:
    """A codec by name ('fp16', 'bf16', 'int8', 'int4', 'sign'); None or 'none' means no codec;
    a Codec or ErrorFeedback instance is returned as is."""
    if name is None or name == "none":
        return None
    if isinstance(name, (Codec, ErrorFeedback)):
        return name
    if name not in _CODECS:
        raise ValueError(f"codec: expected one of {sorted(_CODECS)} or 'none', got {name!r}")
    return _CODECS[name]()


class ErrorFeedback:
    """Keeps what the codec lost on this rank and adds it back before the next encode
    (Seide et al. 2014, 1-bit SGD; Karimireddy et al. 2019). The residual covers the whole flat
    buffer; the ring passes the offset of the range it encodes, so in the 'once' schedule each
    rank carries the residual of the chunks it owns."""

    def __init__(self, codec, size: int):
        self.codec = get_codec(codec)
        if self.codec is None or isinstance(self.codec, ErrorFeedback):
            raise ValueError(f"ErrorFeedback(codec={codec!r}): expected a codec")
        self.residual = np.zeros(int(size), np.float32)

    @property
    def name(self):
        return f"ef-{self.codec.name}"

    def nbytes(self, n):
        return self.codec.nbytes(n)

    def decode(self, data, out):
        self.codec.decode(data, out)

    def encode(self, x, out, rng, offset: int = 0):
        if offset < 0 or offset + x.size > self.residual.size:
            raise ValueError(f"ErrorFeedback.encode(offset={offset}, n={x.size}): outside the residual of size {self.residual.size}")
        self.codec.encode(x, out, rng, residual=self.residual[offset:offset + x.size])

    def state_dict(self) -> dict:
        return {"residual": self.residual.copy()}

    def load_state_dict(self, state: dict) -> None:
        r = np.asarray(state["residual"], np.float32)
        if r.shape != self.residual.shape:
            raise ValueError(f"ErrorFeedback.load_state_dict: expected residual shape {self.residual.shape}, got {r.shape}")
        self.residual[...] = r
