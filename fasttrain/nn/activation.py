"""Activation layers: ReLU, LeakyReLU, ELU, Sigmoid, Tanh, PReLU, Maxout.

Element-wise layers call the activation kernels through the registry (docs/KERNELS.md) and cache
only what their backward needs: the input x (ReLU, LeakyReLU, ELU, PReLU) or the output y
(Sigmoid, Tanh, whose derivatives are cheapest in terms of y).
"""
from __future__ import annotations

import numpy as np

from ..backend import kernel
from ._util import check_params
from .layout import Blocked, with_halo
from .module import Module

_FLOATS = (np.float32, np.float64)


def _check_input(layer: Module, x):
    if getattr(x, "dtype", None) not in _FLOATS:
        raise TypeError(f"{layer.name}: expected a float32 or float64 array, got "
                        f"{getattr(x, 'dtype', type(x).__name__)}")
    # kernels take C-contiguous arrays (np.* dispatches to CuPy for GPU arrays)
    return np.ascontiguousarray(x)


def _check_grad(layer: Module, dy, shape):
    if layer.cache is None:
        raise RuntimeError(f"{layer.name}.backward: call forward first")
    if tuple(dy.shape) != tuple(shape):
        raise ValueError(f"{layer.name}.backward: expected dy of shape {tuple(shape)} (the forward output), "
                         f"got {tuple(dy.shape)}")
    return np.ascontiguousarray(dy)


class _Elementwise(Module):
    """y = f(x) by `<op>_fwd`; backward by `<op>_bwd` given the cached x (or y when uses_output)."""

    op = ""
    uses_output = False
    #: f(0) == 0: on a blocked array (fasttrain/nn/layout.py) the zero halo and pad lanes stay zero,
    #: so the flat kernel runs on it as it is
    keeps_zero = True

    def _args(self):
        return ()

    def takes_blocked(self, x) -> bool:
        return self.keeps_zero

    def forward(self, x):
        if isinstance(x, Blocked):
            y = x.like(self._forward(x.data))
            self.cache = y if self.uses_output else x
            return y
        return self._forward(x)

    def _forward(self, x):
        x = _check_input(self, x)
        y = np.empty_like(x)
        kernel(f"{self.op}_fwd", like=x)(x, y, *self._args())
        self.cache = y if self.uses_output else x
        return y

    def backward(self, dy):
        saved = self.cache
        if isinstance(saved, Blocked):
            if not isinstance(dy, Blocked) or dy.shape != saved.shape:
                raise ValueError(f"{self.name}.backward: expected dy {saved.shape} in the blocked layout (the "
                                 f"forward output's), got {getattr(dy, 'shape', type(dy).__name__)}")
            dy = with_halo(dy, saved.halo).data   # the product with a zero halo stays zero
            dx = np.empty_like(dy)
            kernel(f"{self.op}_bwd", like=dy)(saved.data, dy, dx, *self._args())
            return saved.like(dx)
        dy = _check_grad(self, dy, getattr(saved, "shape", None))
        dx = np.empty_like(dy)
        kernel(f"{self.op}_bwd", like=dy)(saved, dy, dx, *self._args())
        return dx


class ReLU(_Elementwise):
    op = "relu"


class LeakyReLU(_Elementwise):
    """Maas, Hannun, Ng 2013: a small slope alpha for x < 0 keeps units from dying.
    `negative_slope` is PyTorch's name for alpha (the same default, 0.01)."""

    op = "leaky_relu"

    def __init__(self, alpha: float | None = None, negative_slope: float | None = None):
        super().__init__()
        if alpha is not None and negative_slope is not None:
            raise TypeError(f"LeakyReLU: got both alpha={alpha!r} and negative_slope={negative_slope!r} (PyTorch's "
                            "name for the same slope); give one")
        slope = alpha if alpha is not None else negative_slope
        self.alpha = 0.01 if slope is None else float(slope)

    def _args(self):
        return (self.alpha,)

    def extra_repr(self):
        return f"alpha={self.alpha}"


class ELU(_Elementwise):
    """Clevert, Unterthiner, Hochreiter 2016: alpha * (exp(x) - 1) for x <= 0."""

    op = "elu"

    def __init__(self, alpha: float = 1.0):
        super().__init__()
        if not alpha > 0:
            raise ValueError(f"ELU(alpha): expected alpha > 0, got {alpha!r}")
        self.alpha = float(alpha)

    def _args(self):
        return (self.alpha,)

    def extra_repr(self):
        return f"alpha={self.alpha}"


class Sigmoid(_Elementwise):
    op = "sigmoid"
    uses_output = True
    keeps_zero = False   # sigmoid(0) = 1/2


class Tanh(_Elementwise):
    op = "tanh"
    uses_output = True


def _constant(value):
    def init(shape, rng, dtype):
        return np.full(shape, value, dtype=dtype)
    return init


class PReLU(Module):
    """He, Zhang, Ren, Sun 2015 ("Delving deep into rectifiers"): a learned negative slope per
    channel, initialized to 0.25 and excluded from weight decay (decay would pull it to 0,
    i.e. towards plain ReLU, which the paper avoids)."""

    def __init__(self, num_channels: int, init: float = 0.25):
        super().__init__()
        if not isinstance(num_channels, (int, np.integer)) or num_channels < 1:
            raise ValueError(f"PReLU(num_channels): expected a positive int, got {num_channels!r}")
        self.num_channels = int(num_channels)
        self.alpha = self.add_param("alpha", (self.num_channels,), _constant(float(init)), decay=False)

    def extra_repr(self):
        return f"num_channels={self.num_channels}"

    def forward(self, x):
        x = _check_input(self, x)
        if x.ndim < 2 or x.shape[1] != self.num_channels:
            raise ValueError(f"PReLU(num_channels={self.num_channels}): expected input (N, {self.num_channels}, ...), "
                             f"got {tuple(x.shape)}")
        check_params(f"PReLU(num_channels={self.num_channels})", self, x)
        y = np.empty_like(x)
        kernel("prelu_fwd", like=x)(x, self.alpha.data, y)
        self.cache = x
        return y

    def backward(self, dy):
        x = self.cache
        dy = _check_grad(self, dy, getattr(x, "shape", None))
        dx = np.empty_like(dy)
        kernel("prelu_bwd", like=dy)(x, self.alpha.data, dy, dx, self.alpha.grad)
        return dx


class Maxout(Module):
    """Goodfellow et al. 2013, "Maxout networks": channel (feature) axis 1 is split into groups
    of `pieces` consecutive channels; each output channel is the max of its group.
    x: (N, C, ...) with C % pieces == 0 -> y: (N, C // pieces, ...).
    Backward routes dy to the first maximal piece of each group (a valid subgradient)."""

    def __init__(self, pieces: int):
        super().__init__()
        if not isinstance(pieces, (int, np.integer)) or pieces < 1:
            raise ValueError(f"Maxout(pieces): expected a positive int, got {pieces!r}")
        self.pieces = int(pieces)

    def extra_repr(self):
        return f"pieces={self.pieces}"

    def _grouped_shape(self, shape):
        n, c = shape[0], shape[1]
        return (n, c // self.pieces, self.pieces) + tuple(shape[2:])

    def forward(self, x):
        x = _check_input(self, x)
        if x.ndim < 2 or x.shape[1] % self.pieces:
            raise ValueError(f"Maxout(pieces={self.pieces}): expected input (N, C, ...) with C divisible by "
                             f"{self.pieces}, got {tuple(x.shape)}")
        g = x.reshape(self._grouped_shape(x.shape))
        arg = np.argmax(g, axis=2)                        # (N, C/k, ...): winning piece per group
        y = np.ascontiguousarray(np.take_along_axis(g, np.expand_dims(arg, 2), axis=2).squeeze(2))
        self.cache = (x.shape, arg)
        return y

    def backward(self, dy):
        if self.cache is None:
            raise RuntimeError(f"{self.name}.backward: call forward first")
        shape, arg = self.cache
        dy = _check_grad(self, dy, arg.shape)
        pieces = np.arange(self.pieces).reshape((1, 1, -1) + (1,) * (len(shape) - 2))
        winner = np.expand_dims(arg, 2) == pieces         # one-hot over the piece axis
        dx = np.where(winner, np.expand_dims(dy, 2), 0).astype(dy.dtype)
        return dx.reshape(shape)
