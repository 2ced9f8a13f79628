"""Gradient compression on the wire, vectorized NumPy.

A codec turns a flat float32 array of n values into `nbytes(n)` bytes and back:
- `fp16`: IEEE half (NumPy's cast rounds to nearest even; |x| > 65504 becomes inf).
- `bf16`: the top 16 bits of float32, rounded to nearest even with integer bit operations
  (the rounding used by TPU/Intel bfloat16 conversions); NaN stays NaN.
- `int8`, `int4`: QSGD-style (Alistarh et al. 2017, "QSGD: Communication-Efficient SGD via
  Gradient Quantization and Encoding") per-block linear quantization with a float32 scale per
  block of `block` values (scale = max|x| / levels) and stochastic rounding
  q = floor(x / scale + u), u ~ U[0, 1), so E[decode(encode(x))] = x (unbiased).
- `sign`: 1 bit per value with a per-block scale mean|x| (signSGD with a scale, Bernstein et al.
  2018; biased, so use it with `ErrorFeedback`, Karimireddy et al. 2019, "Error Feedback Fixes
  SignSGD").
Layout of the block codecs: [float32 scale per block][payload]; scales first, so they stay
4-byte aligned when the encoded buffer is.
"""
from __future__ import annotations

import numpy as np


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

    def encode(self, x: np.ndarray, out: np.ndarray, rng: np.random.Generator) -> None:
        """x: (n,) float32 -> out: (nbytes(n),) uint8."""
        raise NotImplementedError

    def decode(self, data: np.ndarray, out: np.ndarray) -> None:
        """data: (nbytes(n),) uint8 -> out: (n,) float32."""
        raise NotImplementedError

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

    def encode(self, x, out, rng):
        np.copyto(out.view(np.float16), x, casting="same_kind")

    def decode(self, data, out):
        np.copyto(out, data.view(np.float16))


class BF16(Codec):
    name = "bf16"

    def nbytes(self, n):
        return 2 * n

    def encode(self, x, out, rng):
        u = x.view(np.uint32)
        # round to nearest, ties to even: add 0x7FFF plus the lowest kept bit, then truncate
        rounded = (u + (np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))) >> np.uint32(16)
        nan = np.isnan(x)
        if nan.any():  # the addition could carry a NaN's payload into the sign; keep a quiet NaN
            rounded[nan] = (u[nan] >> np.uint32(16)) | np.uint32(0x0040)
        np.copyto(out.view(np.uint16), rounded, casting="unsafe")

    def decode(self, data, out):
        np.copyto(out.view(np.uint32), data.view(np.uint16).astype(np.uint32) << np.uint32(16))


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

    def _quantize(self, x, rng):
        xb = _padded_blocks(x, self.block)
        scale = np.abs(xb).max(axis=1) / np.float32(self.levels)
        inv = np.divide(np.float32(1), scale, out=np.zeros_like(scale), where=scale > 0)
        y = xb * inv[:, None]
        y += rng.random(y.shape, dtype=np.float32)
        np.floor(y, out=y)
        np.clip(y, -self.levels, self.levels, out=y)
        return scale, y.astype(np.int8).ravel()[:x.size]


class Int8(_StochasticInt):
    name = "int8"
    levels = 127

    def nbytes(self, n):
        return 4 * _blocks(n, self.block) + n

    def encode(self, x, out, rng):
        scales, payload = self._split(out, x.size)
        s, q = self._quantize(x, rng)
        scales[:] = s
        payload.view(np.int8)[:] = q

    def decode(self, data, out):
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

    def nbytes(self, n):
        return 4 * _blocks(n, self.block) + (n + 1) // 2

    def encode(self, x, out, rng):
        scales, payload = self._split(out, x.size)
        s, q = self._quantize(x, rng)
        scales[:] = s
        nib = (q + 8).astype(np.uint8)  # 1..15
        if nib.size % 2:
            nib = np.append(nib, np.uint8(8))
        payload[:] = nib[0::2] | (nib[1::2] << np.uint8(4))

    def decode(self, data, out):
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

    def encode(self, x, out, rng):
        scales, payload = self._split(out, x.size)
        xb = _padded_blocks(x, self.block)
        counts = np.full(xb.shape[0], self.block, np.float32)
        counts[-1] = x.size - self.block * (xb.shape[0] - 1)
        scales[:] = np.abs(xb).sum(axis=1) / counts  # mean |x| over the block's real values
        payload[:] = np.packbits(x >= 0)

    def decode(self, data, out):
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
        res = self.residual[offset:offset + x.size]
        v = x + res
        self.codec.encode(v, out, rng)
        self.codec.decode(out, res)
        np.subtract(v, res, out=res)

    def state_dict(self) -> dict:
        return {"residual": self.residual.copy()}

    def load_state_dict(self, state: dict) -> None:
        r = np.asarray(state["residual"], np.float32)
        if r.shape != self.residual.shape:
            raise ValueError(f"ErrorFeedback.load_state_dict: expected residual shape {self.residual.shape}, got {r.shape}")
        self.residual[...] = r
