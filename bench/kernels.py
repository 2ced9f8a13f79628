"""Kernel bench entries: each declares the bytes it must move and the FLOPs it must do, runs every
available fasttrain backend (checked against the NumPy reference first) and PyTorch when importable."""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

import numpy as np

from fasttrain import backend as B

from .harness import call_time, make_record, matched_probe_calls, probed_from_samples, time_interleaved, torch_or_none

PROBE = "probe:"  # the names of the bandwidth probes among a row's interleaved implementations


@dataclass
class Entry:
    name: str
    shape: tuple
    nbytes: float
    flops: float
    inputs: Callable[[], dict]                 # fresh float32 inputs (same seed every call)
    run: Callable[[Callable, dict], None]      # (kernel lookup: op -> fn, arrays) -> writes outputs
    outputs: tuple[str, ...]                   # names in the arrays dict compared with the reference
    # (torch, arrays) -> zero-arg callable: PyTorch's default call ("torch"), or a dict of variants
    # ("torch": default, "torch-fused": fused optimizer, "torch-cl": channels_last) timed side by side
    torch: Callable[[object, dict], Callable] | dict | None = None
    ops: tuple[str, ...] = ()
    rtol: float = 1e-4
    # more of our implementations timed in the same interleaved group: name -> (arrays -> zero-arg
    # callable), e.g. "cpp-nchw": the NCHW kernels beside a blocked-layout row
    variants: dict | None = None
    # the arrays (names in inputs()) the timed kernels read or write: the working set the bandwidth
    # limit is probed at. Default: all of inputs(); a row whose inputs() also holds arrays only the
    # reference or PyTorch use names its own, or the limit is probed at a working set larger than
    # the kernel's (one that spills from the last-level cache while the kernel runs from it)
    touched: tuple[str, ...] | None = None
    # True: every array the timed kernels write is distinct from the arrays they read (a fresh output:
    # BN, ReLU, pooling), so each written line costs a read for ownership that an in-place update
    # never pays, and the row is held to the best out-of-place probe at its working set
    # (harness.Probed). False (the default: in-place updates such as the optimizer steps, kernels that
    # write next to nothing such as a weight gradient, and the FLOP-bound conv rows): the best of all
    # probes, in-place ones included
    writes_fresh: bool = False
    # True: the timed kernels only read (they write a few floats, as a depthwise weight gradient), so the
    # row is held to the read-only probe (a sum) at its working set: the in-place probes count write
    # bytes, which travel beside the reads and which such a kernel has none of (harness.Probed)
    reads_only: bool = False

    def torch_variants(self) -> dict:
        if self.torch is None:
            return {}
        return self.torch if isinstance(self.torch, dict) else {"torch": self.torch}


def _rng_inputs(shapes: dict, seed=0, positive=()):
    rng = np.random.default_rng(seed)
    out = {}
    for k, shape in shapes.items():
        a = rng.standard_normal(shape, dtype=np.float32)
        out[k] = np.abs(a) if k in positive else a
    return out


# ---- optimizers ---------------------------------------------------------------------------------

def _adam_entry(n, decoupled):
    name = "adamw" if decoupled else "adam"
    hyper = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8)

    def run(k, a):
        k("adam_step")(a["p"], a["g"], a["m"], a["v"], hyper["lr"], hyper["beta1"], hyper["beta2"], hyper["eps"],
                       1 - 0.9 ** 3, 1 - 0.999 ** 3, 0.0, 0.0, 1e-2 if decoupled else 0.0)

    def torch_fn(torch, a, fused):
        p = torch.nn.Parameter(torch.from_numpy(a["p"].copy()))
        p.grad = torch.from_numpy(a["g"].copy())
        cls = torch.optim.AdamW if decoupled else torch.optim.Adam
        opt = cls([p], lr=1e-3, weight_decay=1e-2 if decoupled else 0.0, fused=fused)
        return opt.step

    # FLOPs (for the roofline): the moments 3 + 4, bias corrections 2, sqrt + eps + divide + scale + update 5,
    # and the decoupled decay 2 more
    return Entry(name, (n,), 28.0 * n, (16.0 if decoupled else 14.0) * n,
                 lambda: _rng_inputs({"p": n, "g": n, "m": n, "v": n}, positive=("v",)),
                 run, ("p", "m", "v"), {"torch": partial(torch_fn, fused=None), "torch-fused": partial(torch_fn, fused=True)},
                 ("adam_step",), rtol=1e-5)


def _amsgrad_entry(n):
    def run(k, a):
        k("adam_amsgrad_step")(a["p"], a["g"], a["m"], a["v"], a["vmax"], 1e-3, 0.9, 0.999, 1e-8, 1 - 0.9 ** 3,
                               1 - 0.999 ** 3, 0.0, 0.0, 0.0)

    def torch_fn(torch, a):
        p = torch.nn.Parameter(torch.from_numpy(a["p"].copy()))
        p.grad = torch.from_numpy(a["g"].copy())
        opt = torch.optim.Adam([p], lr=1e-3, amsgrad=True, fused=True)
        return opt.step

    # reads p, g, m, v, vmax; writes p, m, v, vmax
    return Entry("adam_amsgrad", (n,), 36.0 * n, 0.0,
                 lambda: _rng_inputs({"p": n, "g": n, "m": n, "v": n, "vmax": n}, positive=("v", "vmax")),
                 run, ("p", "m", "v", "vmax"), {"torch-fused": torch_fn}, ("adam_amsgrad_step",), rtol=1e-5)


def _rmsprop_momentum_entry(n):
    def run(k, a):
        k("rmsprop_momentum_step")(a["p"], a["g"], a["s"], a["b"], 1e-3, 0.99, 1e-8, 0.9, 0.0, 0.0)

    def torch_fn(torch, a):
        p = torch.nn.Parameter(torch.from_numpy(a["p"].copy()))
        p.grad = torch.from_numpy(a["g"].copy())
        opt = torch.optim.RMSprop([p], lr=1e-3, alpha=0.99, eps=1e-8, momentum=0.9)
        return opt.step

    return Entry("rmsprop_momentum", (n,), 28.0 * n, 0.0,
                 lambda: _rng_inputs({"p": n, "g": n, "s": n, "b": n}, positive=("s",)),
                 run, ("p", "s", "b"), torch_fn, ("rmsprop_momentum_step",), rtol=1e-5)


def _rmsprop_entry(n):
    def run(k, a):
        k("rmsprop_step")(a["p"], a["g"], a["s"], 1e-3, 0.99, 1e-8, 0.0, 0.0)

    def torch_fn(torch, a):
        p = torch.nn.Parameter(torch.from_numpy(a["p"].copy()))
        p.grad = torch.from_numpy(a["g"].copy())
        opt = torch.optim.RMSprop([p], lr=1e-3, alpha=0.99, eps=1e-8)
        return opt.step

    return Entry("rmsprop", (n,), 20.0 * n, 0.0, lambda: _rng_inputs({"p": n, "g": n, "s": n}, positive=("s",)),
                 run, ("p", "s"), torch_fn, ("rmsprop_step",), rtol=1e-5)


def _momentum_entry(n):
    def run(k, a):
        k("momentum_step")(a["p"], a["g"], a["v"], 1e-2, 0.9, 0.0, 1e-4, 0.0)

    def torch_fn(torch, a):
        p = torch.nn.Parameter(torch.from_numpy(a["p"].copy()))
        p.grad = torch.from_numpy(a["g"].copy())
        opt = torch.optim.SGD([p], lr=1e-2, momentum=0.9, weight_decay=1e-4)
        return opt.step

    return Entry("sgd_momentum", (n,), 20.0 * n, 0.0, lambda: _rng_inputs({"p": n, "g": n, "v": n}),
                 run, ("p", "v"), torch_fn, ("momentum_step",), rtol=1e-5)


# ---- element-wise and reductions ----------------------------------------------------------------

def _dropout_entry(n):
    def run(k, a):
        k("dropout_fwd")(a["x"], a["y"], 0.5, 1234, 7, 3)
        k("dropout_bwd")(a["dy"], a["dx"], 0.5, 1234, 7, 3)

    def inputs():
        a = _rng_inputs({"x": n, "dy": n})
        a["y"] = np.empty(n, np.float32)
        a["dx"] = np.empty(n, np.float32)
        return a

    def torch_fn(torch, a):
        x = torch.from_numpy(a["x"]).requires_grad_(True)
        dy = torch.from_numpy(a["dy"])

        def step():
            x.grad = None
            torch.nn.functional.dropout(x, 0.5, True).backward(dy)
        return step

    # fwd reads x, writes y; bwd reads dy, writes dx (no mask stored or read)
    return Entry("dropout_fwd_bwd", (n,), 16.0 * n, 0.0, inputs, run, ("y", "dx"), torch_fn,
                 ("dropout_fwd", "dropout_bwd"), rtol=0, writes_fresh=True)


def _relu_entry(n):
    def inputs():
        a = _rng_inputs({"x": n})
        a["y"] = np.empty(n, np.float32)
        return a

    def torch_fn(torch, a):
        x = torch.from_numpy(a["x"])
        y = torch.from_numpy(a["y"])
        return lambda: torch.clamp_min(x, 0, out=y)

    return Entry("relu_fwd", (n,), 8.0 * n, 1.0 * n, inputs, lambda k, a: k("relu_fwd")(a["x"], a["y"]),
                 ("y",), torch_fn, ("relu_fwd",), rtol=0, writes_fresh=True)


def _exp_activation_entry(op, n, torch_op):
    # sigmoid/tanh forward: one exp per element (fasttrain/vmath.h in the C++ backend)
    def inputs():
        a = _rng_inputs({"x": n})
        a["x"] *= 4
        a["y"] = np.empty(n, np.float32)
        return a

    def torch_fn(torch, a):
        x = torch.from_numpy(a["x"])
        y = torch.from_numpy(a["y"])
        fn = getattr(torch, torch_op)
        return lambda: fn(x, out=y)

    return Entry(op, (n,), 8.0 * n, 0.0, inputs, lambda k, a: k(op)(a["x"], a["y"]), ("y",), torch_fn, (op,),
                 rtol=1e-5, writes_fresh=True)


def _batchnorm_inputs(N, C, H, W, extra_activations):
    a = _rng_inputs({"x": (N, C, H, W), "dy": (N, C, H, W)})
    a.update({name: np.empty((N, C, H, W), np.float32) for name in ("y", "dx", *extra_activations)})
    a.update(gamma=np.ones(C, np.float32), beta=np.zeros(C, np.float32), mean=np.empty(C, np.float32),
             invstd=np.empty(C, np.float32), dgamma=np.zeros(C, np.float32), dbeta=np.zeros(C, np.float32))
    return a


def _batchnorm_torch(C, relu):
    return {"torch": _batchnorm_torch_variant(C, relu, False), "torch-cl": _batchnorm_torch_variant(C, relu, True)}


def _batchnorm_torch_variant(C, relu, channels_last):
    def torch_fn(torch, a):
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        bn = torch.nn.BatchNorm2d(C)
        x = torch.from_numpy(a["x"]).contiguous(memory_format=fmt).requires_grad_(True)
        dy = torch.from_numpy(a["dy"]).contiguous(memory_format=fmt)

        def step():
            x.grad = None
            bn.zero_grad()
            y = bn(x)
            (torch.relu(y) if relu else y).backward(dy)
        return step
    return torch_fn


def _batchnorm_entry(N, C, H, W):
    n = N * C * H * W

    def inputs():
        return _batchnorm_inputs(N, C, H, W, ())

    def run(k, a):
        k("batchnorm_fwd_train")(a["x"], a["gamma"], a["beta"], 1e-5, a["y"], a["mean"], a["invstd"])
        k("batchnorm_bwd")(a["x"], a["dy"], a["gamma"], a["mean"], a["invstd"], a["dx"], a["dgamma"], a["dbeta"])

    # fwd: stats pass reads x, normalize pass reads x and writes y; bwd: reduction pass reads x, dy,
    # dx pass reads x, dy and writes dx.
    # FLOPs (roofline): statistics 4, normalize 2, backward sums 4, dx 5 per element
    return Entry("batchnorm_fwd_bwd", (N, C, H, W), 4.0 * n * 8, 15.0 * n, inputs, run, ("y", "dx"),
                 _batchnorm_torch(C, relu=False),
                 ("batchnorm_fwd_train", "batchnorm_bwd"), rtol=1e-3, writes_fresh=True)


def _batchnorm_relu_entry(N, C, H, W, fused):
    # BN + ReLU forward and backward: fused (relu=True, dy masked by the saved output) or as the
    # separate batchnorm and relu kernels; torch: BatchNorm2d then ReLU.
    n = N * C * H * W

    def inputs():
        return _batchnorm_inputs(N, C, H, W, ("pre", "dpre"))

    def run(k, a):
        if fused:
            k("batchnorm_fwd_train")(a["x"], a["gamma"], a["beta"], 1e-5, a["y"], a["mean"], a["invstd"], True)
            k("batchnorm_bwd")(a["x"], a["dy"], a["gamma"], a["mean"], a["invstd"], a["dx"], a["dgamma"], a["dbeta"],
                               a["y"])
        else:
            k("batchnorm_fwd_train")(a["x"], a["gamma"], a["beta"], 1e-5, a["pre"], a["mean"], a["invstd"])
            k("relu_fwd")(a["pre"], a["y"])
            k("relu_bwd")(a["pre"], a["dy"], a["dpre"])
            k("batchnorm_bwd")(a["x"], a["dpre"], a["gamma"], a["mean"], a["invstd"], a["dx"], a["dgamma"],
                               a["dbeta"])

    # fused: stats pass reads x, normalize pass reads x, writes y; bwd passes read x, dy, y (twice),
    # the second writes dx: 10 arrays. Unfused adds relu fwd (2) and bwd (3) and reads dpre instead of dy, y.
    name = "bn_relu_fused" if fused else "bn_then_relu"
    ops = ("batchnorm_fwd_train", "batchnorm_bwd") + (() if fused else ("relu_fwd", "relu_bwd"))
    return Entry(name, (N, C, H, W), 4.0 * n * (10 if fused else 13), (17.0 if fused else 18.0) * n, inputs, run,
                 ("y", "dx"),
                 _batchnorm_torch(C, relu=True) if fused else None, ops, rtol=1e-3, writes_fresh=True)


def _bn_add_relu_entry(N, C, H, W):
    # a ResNet block's tail, relu(BN(x) + shortcut), forward and backward (with the shortcut's
    # gradient): ours fused into BN's passes (residual= / dres=); torch: BatchNorm2d, +, ReLU
    n = N * C * H * W

    def inputs():
        a = _batchnorm_inputs(N, C, H, W, ("dres",))
        a["res"] = np.random.default_rng(7).standard_normal((N, C, H, W), dtype=np.float32)
        return a

    def run(k, a):
        k("batchnorm_fwd_train")(a["x"], a["gamma"], a["beta"], 1e-5, a["y"], a["mean"], a["invstd"], True,
                                 residual=a["res"])
        k("batchnorm_bwd")(a["x"], a["dy"], a["gamma"], a["mean"], a["invstd"], a["dx"], a["dgamma"], a["dbeta"],
                           a["y"], dres=a["dres"])

    def torch_variant(channels_last):
        def torch_fn(torch, a):
            fmt = torch.channels_last if channels_last else torch.contiguous_format
            bn = torch.nn.BatchNorm2d(C)
            x = torch.from_numpy(a["x"]).contiguous(memory_format=fmt).requires_grad_(True)
            r = torch.from_numpy(a["res"]).contiguous(memory_format=fmt).requires_grad_(True)
            dy = torch.from_numpy(a["dy"]).contiguous(memory_format=fmt)

            def step():
                x.grad = r.grad = None
                bn.zero_grad()
                torch.relu(bn(x) + r).backward(dy)
            return step
        return torch_fn

    # stats reads x; normalize reads x, res, writes y; bwd sums read x, dy, y; dx pass reads x, dy, y and
    # writes dx, dres: 12 arrays. FLOPs: BN's 15 + the add 1 per element
    return Entry("bn_add_relu_fused", (N, C, H, W), 4.0 * n * 12, 16.0 * n, inputs, run, ("y", "dx", "dres"),
                 {"torch": torch_variant(False), "torch-cl": torch_variant(True)},
                 ("batchnorm_fwd_train", "batchnorm_bwd"), rtol=1e-3, writes_fresh=True)


def _maxpool_entry(N, C, H, W, indices=False):
    """2x2 stride-2 max pooling, forward and backward: by default in tap form (one byte per output
    names the window's maximum: what MaxPool2d keeps), with indices=True the int64 flat argmax
    (MaxPool2d(return_indices=True))."""
    P, Q = H // 2, W // 2
    index = np.int64 if indices else np.uint8
    fwd, bwd = ("maxpool2d_fwd", "maxpool2d_bwd") if indices else ("maxpool2d_taps_fwd", "maxpool2d_taps_bwd")

    def inputs():
        a = _rng_inputs({"x": (N, C, H, W), "dy": (N, C, P, Q)})
        a.update(y=np.empty((N, C, P, Q), np.float32), index=np.empty((N, C, P, Q), index),
                 dx=np.empty((N, C, H, W), np.float32))
        return a

    def run(k, a):
        k(fwd)(a["x"], a["y"], a["index"], 2, 2, 2, 2, 0, 0)
        if indices:
            k(bwd)(a["dy"], a["index"], a["dx"])
        else:
            k(bwd)(a["dy"], a["index"], a["dx"], 2, 2, 2, 2, 0, 0)

    def torch_variant(channels_last):
        def torch_fn(torch, a):
            fmt = torch.channels_last if channels_last else torch.contiguous_format
            x = torch.from_numpy(a["x"]).contiguous(memory_format=fmt).requires_grad_(True)
            dy = torch.from_numpy(a["dy"]).contiguous(memory_format=fmt)

            def step():
                x.grad = None
                torch.nn.functional.max_pool2d(x, 2).backward(dy)
            return step
        return torch_fn

    # fwd reads x, writes y and the index; bwd reads dy and the index, writes dx. The index is one
    # byte per output in tap form, 8 (2 floats' worth) as an int64 argmax.
    q = N * C * P * Q
    nbytes = 4.0 * (2 * N * C * H * W + 2 * q) + 2 * q * np.dtype(index).itemsize
    return Entry("maxpool2x2_argmax_fwd_bwd" if indices else "maxpool2x2_fwd_bwd", (N, C, H, W), nbytes,
                 1.0 * N * C * H * W, inputs, run, ("y", "dx"),
                 {"torch": torch_variant(False), "torch-cl": torch_variant(True)}, (fwd, bwd), rtol=0,
                 writes_fresh=True)


def _softmax_xent_entry(N, C):
    def inputs():
        a = _rng_inputs({"logits": (N, C)})
        a["labels"] = np.random.default_rng(1).integers(0, C, N).astype(np.int64)
        a["dlogits"] = np.empty((N, C), np.float32)
        return a

    def torch_fn(torch, a):
        x = torch.from_numpy(a["logits"]).requires_grad_(True)
        y = torch.from_numpy(a["labels"])

        def step():
            x.grad = None
            torch.nn.functional.cross_entropy(x, y).backward()
        return step

    return Entry("softmax_xent", (N, C), 8.0 * N * C, 0.0, inputs,
                 lambda k, a: k("softmax_xent")(a["logits"], a["labels"], a["dlogits"]), ("dlogits",), torch_fn,
                 ("softmax_xent",), rtol=1e-4, writes_fresh=True)


def _softmax_xent_weighted_entry(N, C):
    def inputs():
        a = _rng_inputs({"logits": (N, C)})
        rng = np.random.default_rng(1)
        a["labels"] = rng.integers(0, C, N).astype(np.int64)
        a["labels"][::16] = -100  # some ignored rows
        a["weight"] = rng.uniform(0.5, 2.0, C).astype(np.float32)
        a["dlogits"] = np.empty((N, C), np.float32)
        a["row_loss"] = np.empty(N, np.float64)
        return a

    def run(k, a):
        k("softmax_xent_weighted")(a["logits"], a["labels"], a["weight"], 0.1, -100, 1.0 / N, a["dlogits"],
                                   a["row_loss"])

    def torch_fn(torch, a):
        x = torch.from_numpy(a["logits"]).requires_grad_(True)
        y, w = torch.from_numpy(a["labels"]), torch.from_numpy(a["weight"])

        def step():
            x.grad = None
            torch.nn.functional.cross_entropy(x, y, weight=w, label_smoothing=0.1).backward()
        return step

    return Entry("softmax_xent_weighted", (N, C), 12.0 * N * C, 0.0, inputs, run, ("dlogits", "row_loss"), torch_fn,
                 ("softmax_xent_weighted",), rtol=1e-4, writes_fresh=True)


# ---- conv2d ---------------------------------------------------------------------------------------

def _conv_entry(N, C, H, W, K, R=3, stride=1, pad=1):
    P, Q = (H + 2 * pad - R) // stride + 1, (W + 2 * pad - R) // stride + 1

    def inputs():
        a = _rng_inputs({"x": (N, C, H, W), "w": (K, C, R, R), "b": (K,), "dy": (N, K, P, Q)})
        a["w"] *= np.float32(np.sqrt(2.0 / (C * R * R)))
        a.update(y=np.empty((N, K, P, Q), np.float32), dx=np.empty((N, C, H, W), np.float32),
                 dw=np.zeros((K, C, R, R), np.float32), db=np.zeros(K, np.float32))
        return a

    def run(k, a):
        k("conv2d_fwd")(a["x"], a["w"], a["b"], a["y"], stride, stride, pad, pad, False)
        k("conv2d_bwd_data")(a["dy"], a["w"], a["dx"], stride, stride, pad, pad)
        a["dw"][...] = 0
        a["db"][...] = 0
        k("conv2d_bwd_weight")(a["x"], a["dy"], a["dw"], a["db"], stride, stride, pad, pad)

    def torch_variant(channels_last):
        def torch_fn(torch, a):
            fmt = torch.channels_last if channels_last else torch.contiguous_format
            conv = torch.nn.Conv2d(C, K, R, stride=stride, padding=pad).to(memory_format=fmt)
            x = torch.from_numpy(a["x"]).contiguous(memory_format=fmt).requires_grad_(True)
            dy = torch.from_numpy(a["dy"]).contiguous(memory_format=fmt)

            def step():
                x.grad = None
                conv.zero_grad()
                conv(x).backward(dy)
            return step
        return torch_fn

    flops = 3 * 2.0 * N * K * C * R * R * P * Q  # forward, input gradient, weight gradient
    # compulsory traffic (roofline): x, dy and w read twice, y, dx and dw written once
    nbytes = 4.0 * 3 * (N * C * H * W + N * K * P * Q + K * C * R * R)
    return Entry("conv2d_fwd_bwd", (N, C, H, W, K, R, stride), nbytes, flops, inputs, run, ("y", "dx", "dw", "db"),
                 {"torch": torch_variant(False), "torch-cl": torch_variant(True)},
                 ("conv2d_fwd", "conv2d_bwd_data", "conv2d_bwd_weight"), rtol=2e-3)


def _depthwise_entry(N, C, H, W, R=3, stride=1, backward=True):
    """Depthwise R x R convolution (groups = C, padding R//2), as in MobileNet's separable blocks.
    Memory-bound (R*R/2 FLOPs per byte of fp32 moved per pass): its limit is the bandwidth of moving
    every operand once (fwd: x in, y out; bwd_data: dy in, dx out; bwd_weight: x and dy in).
    PyTorch runs it as its expert users do: channels_last (its fast depthwise layout on CPU)."""
    pad = R // 2
    P, Q = (H + 2 * pad - R) // stride + 1, (W + 2 * pad - R) // stride + 1
    geo = (stride, stride, pad, pad)

    def inputs():
        a = _rng_inputs({"x": (N, C, H, W), "w": (C, 1, R, R), "b": (C,), "dy": (N, C, P, Q)})
        a["w"] *= np.float32(np.sqrt(2.0 / (R * R)))
        a.update(y=np.empty((N, C, P, Q), np.float32), dx=np.empty((N, C, H, W), np.float32),
                 dw=np.zeros((C, 1, R, R), np.float32), db=np.zeros(C, np.float32))
        return a

    def run(k, a):
        k("conv2d_fwd")(a["x"], a["w"], a["b"], a["y"], *geo, False, 1, 1, C)
        if backward:
            k("conv2d_bwd_data")(a["dy"], a["w"], a["dx"], *geo, 1, 1, C)
            a["dw"][...] = 0
            a["db"][...] = 0
            k("conv2d_bwd_weight")(a["x"], a["dy"], a["dw"], a["db"], *geo, 1, 1, C)

    def torch_fn(torch, a):
        cl = torch.channels_last
        conv = torch.nn.Conv2d(C, C, R, stride=stride, padding=pad, groups=C).to(memory_format=cl)
        x = torch.from_numpy(a["x"]).contiguous(memory_format=cl).requires_grad_(backward)
        dy = torch.from_numpy(a["dy"]).contiguous(memory_format=cl)

        def step():
            if not backward:
                with torch.no_grad():
                    conv(x)
                return
            x.grad = None
            conv.zero_grad()
            conv(x).backward(dy)
        return step

    xb, yb = 4.0 * N * C * H * W, 4.0 * N * C * P * Q
    nbytes = xb + yb + ((yb + xb) + (xb + yb) if backward else 0.0)
    flops = (3 if backward else 1) * 2.0 * N * C * R * R * P * Q
    outputs = ("y", "dx", "dw", "db") if backward else ("y",)
    ops = ("conv2d_fwd", "conv2d_bwd_data", "conv2d_bwd_weight") if backward else ("conv2d_fwd",)
    # the forward alone touches x, w, b and y (dy and dx are the backward's)
    touched = None if backward else ("x", "w", "b", "y")
    return Entry("depthwise_fwd_bwd" if backward else "depthwise_fwd", (N, C, H, W, R, stride), nbytes, flops,
                 inputs, run, outputs, {"torch-cl": torch_fn}, ops, rtol=2e-4, touched=touched, writes_fresh=True)


def _depthwise_blocked_entry(N, C, H, W, stride=1, part="fwd_bwd", R=3):
    """The depthwise kernels the models run: on the 16-channel-blocked layout that flows between
    layers (x with a zero halo equal to the padding, read in place; dy and the outputs without one),
    one part of the layer at a time or all of it (the forward, then the fused backward Conv2d runs).
    Memory-bound: the limit is moving each operand once per kernel (fwd: x in, y out; bwd_data: dy
    in, dx out; bwd_weight: x and dy in; fused backward: x and dy in, dx out). PyTorch runs the same
    part in channels_last (aten.convolution_backward with the one gradient asked for)."""
    from fasttrain.kernels.blocked import to_blocked
    from fasttrain.nn.layout import aligned_empty

    def _line_aligned(a):
        out = aligned_empty(a.shape, a.dtype)
        out[...] = a
        return out

    pad = R // 2
    P, Q = (H + 2 * pad - R) // stride + 1, (W + 2 * pad - R) // stride + 1
    geo = (stride, stride, pad, pad)
    cb = -(-C // 16)

    def inputs():
        a = _rng_inputs({"x": (N, C, H, W), "w": (C, 1, R, R), "b": (C,), "dy": (N, C, P, Q)})
        a["w"] *= np.float32(np.sqrt(2.0 / (R * R)))
        # the blocked arrays line-aligned, as the layers allocate them (fasttrain.nn.layout.empty)
        a.update(xb=_line_aligned(to_blocked(a["x"], pad)), dyb=_line_aligned(to_blocked(a["dy"])),
                 yb=aligned_empty((N, cb, P, Q, 16)), dxb=aligned_empty((N, cb, H, W, 16)),
                 dw=np.zeros((C, 1, R, R), np.float32), db=np.zeros(C, np.float32))
        return a

    def run(k, a):
        if part in ("fwd", "fwd_bwd"):
            k("depthwise_blocked_fwd")(a["xb"], a["w"], a["b"], a["yb"], *geo, False, halo_x=pad)
        if part == "bwd_data":
            k("depthwise_blocked_bwd_data")(a["dyb"], a["w"], a["dxb"], *geo)
        if part in ("bwd_weight", "fwd_bwd"):
            a["dw"][...] = 0
            a["db"][...] = 0
        if part == "bwd_weight":
            k("depthwise_blocked_bwd_weight")(a["xb"], a["dyb"], a["dw"], a["db"], *geo, halo_x=pad)
        if part == "fwd_bwd":   # as Conv2d runs it: both gradients in one pass over dy
            k("depthwise_blocked_bwd")(a["xb"], a["dyb"], a["w"], a["dxb"], a["dw"], a["db"], *geo, halo_x=pad)

    def torch_fn(torch, a):
        cl = torch.channels_last
        conv = torch.nn.Conv2d(C, C, R, stride=stride, padding=pad, groups=C).to(memory_format=cl)
        x = torch.from_numpy(a["x"]).contiguous(memory_format=cl).requires_grad_(part == "fwd_bwd")
        dy = torch.from_numpy(a["dy"]).contiguous(memory_format=cl)
        w = conv.weight.detach()
        mask = {"bwd_data": [True, False, False], "bwd_weight": [False, True, True]}.get(part)

        def step():
            if part == "fwd":
                with torch.no_grad():
                    conv(x)
            elif mask is not None:
                torch.ops.aten.convolution_backward(dy, x, w, [C], [stride] * 2, [pad] * 2, [1, 1], False, [0, 0], C,
                                                    mask)
            else:
                x.grad = None
                conv.zero_grad()
                conv(x).backward(dy)
        return step

    xb, yb = 4.0 * N * cb * 16 * H * W, 4.0 * N * cb * 16 * P * Q
    xh = 4.0 * N * cb * 16 * (H + 2 * pad) * (W + 2 * pad)  # x as read: its zero halo too
    # fwd_bwd: the forward (x in, y out) and the fused backward (x and dy in, dx out); dy is read
    # once for both gradients, so it is counted once
    nbytes = {"fwd": xh + yb, "bwd_data": yb + xb, "bwd_weight": xh + yb, "fwd_bwd": 2 * xh + xb + 2 * yb}[part]
    flops = (3 if part == "fwd_bwd" else 1) * 2.0 * N * C * R * R * P * Q
    outputs = {"fwd": ("yb",), "bwd_data": ("dxb",), "bwd_weight": ("dw", "db"), "fwd_bwd": ("yb", "dxb", "dw", "db")}
    ops = {"fwd": ("depthwise_blocked_fwd",), "bwd_data": ("depthwise_blocked_bwd_data",),
           "bwd_weight": ("depthwise_blocked_bwd_weight",)}.get(part, ("depthwise_blocked_fwd", "depthwise_blocked_bwd"))
    # the blocked arrays each part's kernels touch (x and dy in NCHW are PyTorch's inputs only)
    touched = {"fwd": ("xb", "w", "b", "yb"), "bwd_data": ("dyb", "w", "dxb"), "bwd_weight": ("xb", "dyb", "dw", "db"),
               "fwd_bwd": ("xb", "w", "b", "yb", "dyb", "dxb", "dw", "db")}[part]
    # every part but the weight gradient writes a fresh array; that one reads x and dy and writes C x 10
    # floats, so it is held to the read-only probe
    return Entry(f"dw_blocked_{part}", (N, C, H, W, R, stride), nbytes, flops, inputs, run, outputs[part],
                 {"torch-cl": torch_fn}, ops, rtol=2e-4, touched=touched, writes_fresh=part != "bwd_weight",
                 reads_only=part == "bwd_weight")


# MobileNet's depthwise layers (models.mobilenet at width 0.5, batch 128 on 32 x 32 images) that the
# blocked rows measure, plus the 64 x 64 x 32 x 32 reference shape: (N, C, H, W, stride)
DEPTHWISE_SHAPES = [(64, 64, 32, 32, 1), (128, 32, 32, 32, 2), (128, 64, 16, 16, 1), (128, 128, 8, 8, 1),
                    (128, 256, 8, 8, 2), (128, 256, 4, 4, 1)]


# Every distinct convolution of the CIFAR ResNet-20 at batch 128: (N, C, H, W, K, R, stride, pad)
RESNET20_CONVS = [(128, 3, 32, 32, 16, 3, 1, 1), (128, 16, 32, 32, 16, 3, 1, 1), (128, 16, 32, 32, 32, 3, 2, 1),
                  (128, 16, 32, 32, 32, 1, 2, 0), (128, 32, 16, 16, 32, 3, 1, 1), (128, 32, 16, 16, 64, 3, 2, 1),
                  (128, 32, 16, 16, 64, 1, 2, 0), (128, 64, 8, 8, 64, 3, 1, 1)]


def entries(quick: bool) -> list[Entry]:
    from . import blocked  # the blocked layout's rows (bench/blocked.py)

    return _nchw_entries(quick) + blocked.entries(quick)


def _nchw_entries(quick: bool) -> list[Entry]:
    if quick:
        return [_adam_entry(1 << 14, False), _rmsprop_entry(1 << 14), _dropout_entry(1 << 14),
                _relu_entry(1 << 14), _exp_activation_entry("sigmoid_fwd", 1 << 14, "sigmoid"),
                _exp_activation_entry("tanh_fwd", 1 << 14, "tanh"),
                _batchnorm_entry(2, 3, 5, 7), _batchnorm_relu_entry(2, 3, 5, 7, True),
                _batchnorm_relu_entry(2, 3, 5, 7, False), _bn_add_relu_entry(2, 3, 5, 7), _maxpool_entry(2, 3, 6, 8),
                _maxpool_entry(2, 3, 7, 9, indices=True),
                _softmax_xent_entry(8, 10), _softmax_xent_weighted_entry(8, 10), _conv_entry(2, 3, 8, 8, 4),
                _conv_entry(2, 5, 7, 7, 6, 1, 2, 0), _depthwise_entry(2, 5, 9, 8),
                _depthwise_blocked_entry(2, 17, 9, 8, 2)]
    n_opt = 10_000_000
    return [_adam_entry(n_opt, False), _adam_entry(n_opt, True), _amsgrad_entry(n_opt), _rmsprop_entry(n_opt),
            _rmsprop_momentum_entry(n_opt), _momentum_entry(n_opt), _dropout_entry(4_194_304), _relu_entry(16_777_216),
            _exp_activation_entry("sigmoid_fwd", 4_194_304, "sigmoid"),
            _exp_activation_entry("tanh_fwd", 4_194_304, "tanh"),
            _batchnorm_entry(64, 64, 32, 32), _batchnorm_relu_entry(64, 64, 32, 32, True),
            _batchnorm_relu_entry(64, 64, 32, 32, False),
            # ResNet-20's activations at batch 128 (stage 1: 16 x 32 x 32; stage 3: 64 x 8 x 8)
            _batchnorm_relu_entry(128, 16, 32, 32, True), _bn_add_relu_entry(128, 16, 32, 32),
            _bn_add_relu_entry(128, 64, 8, 8), _maxpool_entry(128, 32, 32, 32), _maxpool_entry(128, 32, 32, 32, indices=True),
            _softmax_xent_entry(1024, 1000), _softmax_xent_weighted_entry(1024, 1000),
            *(_conv_entry(*shape) for shape in RESNET20_CONVS),
            _depthwise_entry(64, 64, 32, 32, backward=False), _depthwise_entry(64, 64, 32, 32),
            _depthwise_entry(128, 128, 16, 16), _depthwise_entry(128, 256, 8, 8, stride=2),
            *(_depthwise_blocked_entry(*shape, part=part) for shape in DEPTHWISE_SHAPES
              for part in ("fwd", "bwd_data", "bwd_weight", "fwd_bwd"))]


def _backends_for(entry: Entry) -> list[str]:
    per_op = [set(B.available_backends_for(op)) for op in entry.ops]
    return [b for b in B.CPU_ORDER if all(b in s for s in per_op)]


def _check(entry: Entry, backend: str) -> None:
    ref = entry.inputs()
    entry.run(lambda op: B.kernel(op, backend="numpy"), ref)
    got = entry.inputs()
    entry.run(lambda op: B.kernel(op, backend=backend), got)
    for name in entry.outputs:
        scale = max(float(np.abs(ref[name]).max()) if ref[name].size else 0.0, 1e-30)
        err = float(np.abs(ref[name].astype(np.float64) - got[name]).max()) / scale if ref[name].size else 0.0
        if err > max(entry.rtol, 1e-6):
            raise AssertionError(f"bench {entry.name} [{backend}]: output {name} differs from the reference "
                                 f"(max error {err:.2e} relative to max |ref|)")


def _working_set(arrays: dict, touched=None) -> int:
    return sum(a.nbytes for k, a in arrays.items() if isinstance(a, np.ndarray) and (touched is None or k in touched))


def _limit_probes(entry) -> str:
    return "out-of-place" if entry.writes_fresh else "read-only" if entry.reads_only else "all"


def run(limits, quick: bool = False, repeat: int = 7, log=print, only=None) -> list:
    """only: substrings of row names; when given, the other rows (and the codecs) are skipped."""
    torch = torch_or_none()
    records = []
    for entry in entries(quick):
        if only and not any(s in entry.name for s in only):
            continue
        working_set = _working_set(entry.inputs(), entry.touched)
        # The probes at the row's working set are timed IN the row's rounds, as more implementations, so
        # limit and kernel see the same machine state and are summarized alike (medians; see
        # harness.probed_from_samples). A Limits without probe_calls: its probe_bandwidth before and after
        # the row (the better of the two), or without that the main-memory figure
        probes = (limits.probe_calls(working_set) if entry.nbytes and working_set and limits.probe_calls is not None
                  else [])
        before = limits.bandwidths_at(working_set) if entry.nbytes and not probes else None
        fns, repeats = {}, {}
        for backend in _backends_for(entry):
            _check(entry, backend)
            arrays = entry.inputs()
            kernels = {op: B.kernel(op, backend=backend) for op in entry.ops}  # lookups outside the timing
            fns[backend] = partial(entry.run, kernels.__getitem__, arrays)
            repeats[backend] = 3 if (quick or backend == "numpy") else repeat
        for variant, make in (entry.variants or {}).items():
            fns[variant] = make(entry.inputs())
            repeats[variant] = 3 if quick else repeat
        if torch is not None:
            for variant, make in entry.torch_variants().items():
                fns[variant] = make(torch, entry.inputs())
                repeats[variant] = 3 if quick else repeat
        if probes and fns:  # probe calls as long as the kernel's (harness.matched_probe_calls)
            ours = next((b for b in ("cpp", "cpp-nchw", "numba") if b in fns), next(iter(fns)))
            probes = matched_probe_calls(probes, call_time(fns[ours]))
        for name, fn, _, _ in probes:
            fns[PROBE + name] = fn
            repeats[PROBE + name] = 3 if quick else repeat
        samples = time_interleaved(fns, repeats, warmup=1)
        bandwidth = inplace = None
        timing = ("probes in the same rounds, medians" if probes else "probes before and after, best"
                  if limits.probe_bandwidth is not None and working_set else "main memory")
        if probes:
            probed = probed_from_samples(probes, {name: samples.pop(PROBE + name) for name, _, _, _ in probes})
            bandwidth, inplace = probed.limit(entry.writes_fresh, entry.reads_only), probed.best
        elif entry.nbytes:  # probes timed on their own (a Limits without probe_calls): the better of before and after
            probed = limits.bandwidths_at(working_set).max(before)
            bandwidth, inplace = probed.limit(entry.writes_fresh, entry.reads_only), probed.best
        for name in list(fns):
            if name.startswith(PROBE):
                del fns[name]
        # The FLOP roof: the sgemm rate for the convolutions (their % of sgemm is the figure; pct_of_peak
        # beside it), the FMA peak for every other kernel: ours are our own AVX-512 loops, and a depthwise
        # kernel in cache outran the sgemm rate (104-131 % of a "flops" limit that was not its roof)
        gemm = entry.name.startswith("conv2d")
        flop_roof = None if gemm else limits.peak
        for backend in fns:
            if backend in B.CPU_ORDER:
                _check(entry, backend)  # still correct after the timed runs (no state corruption)
            rec = make_record("kernels", entry.name, backend, entry.shape, samples[backend], entry.nbytes or None,
                              entry.flops or None, limits, bandwidth, inplace, flops_limit=flop_roof,
                              working_set_bytes=working_set, limit_probes=_limit_probes(entry),
                              limit_timing=timing,
                              flop_roof="fma_peak" if flop_roof else "sgemm")
            if gemm and limits.peak:  # the FMA-bound kernels
                rec.extra["pct_of_peak"] = round(100.0 * entry.flops / rec.median_s / limits.peak, 1)
            records.append(rec)
            log(f"  {entry.name:<20} {backend:<6} {records[-1].median_s * 1e3:9.3f} ms")
    if only:
        return records
    from . import codecs  # the dist gradient codecs, per core (not registry kernels)

    records += codecs.run(limits, quick=quick, repeat=repeat, log=log)
    return records
