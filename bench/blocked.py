"""Bench entries for the blocked layout's memory-bound kernels (csrc/cpu/blocked.cpp) at the working
sets of CIFAR ResNet-20 at batch 128 (its three stages: 16 x 32 x 32, 32 x 16 x 16, 64 x 8 x 8).

Each row times, interleaved: our blocked kernel ("cpp"), the NCHW kernel doing the same work on
the same data ("cpp-nchw", where one exists) and PyTorch channels_last ("torch-cl", where it has a
counterpart). Bytes are the traffic of our passes over the blocked arrays: every pass reads and
writes 16-channel blocks (pad lanes included), and an output with a halo is written whole, its zero
halo included (the kernels write it so that callers may allocate with np.empty): a batch norm's
output carries a 1-pixel halo, as when it feeds a 3x3 convolution, 1.13x / 1.27x / 1.56x the
interior at 32x32 / 16x16 / 8x8. The working set (and so the bandwidth limit probed for the row) is
that of the blocked arrays only. Every row writes fresh arrays (Entry.writes_fresh): it is held to
the best out-of-place probe at its working set.
"""
from __future__ import annotations

import numpy as np

from fasttrain import backend as B
from fasttrain.kernels import blocked as ref
from fasttrain.nn.layout import aligned_empty, aligned_zeros

from .kernels import Entry

RESNET20_STAGES = [(128, 16, 32, 32), (128, 32, 16, 16), (128, 64, 8, 8)]
f32 = np.float32


# Blocked arrays start on a 64-byte line, as the layers allocate them (fasttrain.nn.layout.aligned_empty).
def _blocked(shape, seed, halo=0):
    b = ref.to_blocked(np.random.default_rng(seed).standard_normal(shape, dtype=f32), halo)
    out = aligned_empty(b.shape)
    out[...] = b
    return out


def _empty_blocked(n, c, h, w, halo=0):
    return aligned_empty((n, -(-c // 16), h + 2 * halo, w + 2 * halo, 16))


def _bytes(n, c, h, w, halo=0):
    """Bytes of one blocked float32 array: what a pass reading or writing it whole moves."""
    return 4.0 * n * -(-c // 16) * 16 * (h + 2 * halo) * (w + 2 * halo)


def _bn_inputs(n, c, h, w, residual):
    a = {"xb": _blocked((n, c, h, w), 0), "dyb": _blocked((n, c, h, w), 1), "yb": aligned_zeros((n, -(-c // 16), h + 2, w + 2, 16)),
         "dxb": _empty_blocked(n, c, h, w), "gamma": np.ones(c, f32), "beta": np.zeros(c, f32),
         "mean": np.empty(c, f32), "invstd": np.empty(c, f32), "dgamma": np.zeros(c, f32), "dbeta": np.zeros(c, f32)}
    if residual:
        a["res"] = _blocked((n, c, h, w), 7)
        a["dres"] = _empty_blocked(n, c, h, w)
    return a


def _nchw(a, c, names, halos=None):
    """NCHW copies of the named blocked arrays (interior, real channels), for the cpp-nchw variant;
    halos: name -> halo (default 0)."""
    return {k: np.ascontiguousarray(ref.from_blocked(a[k], c, (halos or {}).get(k, 0))) for k in names}


def _torch_bn(c, residual):
    def make(torch, a):
        cl = torch.channels_last
        bn = torch.nn.BatchNorm2d(c)
        x = torch.from_numpy(ref.from_blocked(a["xb"], c).copy()).contiguous(memory_format=cl).requires_grad_(True)
        dy = torch.from_numpy(ref.from_blocked(a["dyb"], c).copy()).contiguous(memory_format=cl)
        r = (torch.from_numpy(ref.from_blocked(a["res"], c).copy()).contiguous(memory_format=cl).requires_grad_(True)
             if residual else None)

        def step():
            x.grad = None
            bn.zero_grad()
            if residual:
                r.grad = None
                torch.relu(bn(x) + r).backward(dy)
            else:
                torch.relu(bn(x)).backward(dy)
        return step
    return make


def _bn_entry(n, c, h, w, residual):
    """relu(BN(x) [+ residual]) forward (statistics computed) and backward (ReLU mask, dres), called as
    the layer calls them: without a residual the backward recomputes the mask from x (beta)."""
    def run(k, a):
        k("batchnorm_blocked_fwd_train")(a["xb"], a["gamma"], a["beta"], 1e-5, a["yb"], a["mean"], a["invstd"], True,
                                         a.get("res"), halo_y=1)
        mask = {"y": a["yb"], "halo_y": 1} if residual else {"beta": a["beta"]}
        k("batchnorm_blocked_bwd")(a["xb"], a["dyb"], a["gamma"], a["mean"], a["invstd"], a["dxb"], a["dgamma"],
                                   a["dbeta"], dres=a.get("dres"), **mask)

    def nchw(a):
        d = _nchw(a, c, ("xb", "dyb", "yb", "dxb") + (("res", "dres") if residual else ()), {"yb": 1})
        fwd, bwd = B.kernel("batchnorm_fwd_train", backend="cpp"), B.kernel("batchnorm_bwd", backend="cpp")

        def step():
            fwd(d["xb"], a["gamma"], a["beta"], 1e-5, d["yb"], a["mean"], a["invstd"], True, residual=d.get("res"))
            bwd(d["xb"], d["dyb"], a["gamma"], a["mean"], a["invstd"], d["dxb"], a["dgamma"], a["dbeta"], d["yb"],
                dres=d.get("dres"))
        return step

    size = n * c * h * w
    # fwd: statistics read x; apply reads x (+ res), writes y with its halo. bwd: the sums pass reads
    # x, dy (+ y's interior, writing g to dres); the dx pass reads x and dy (or g from dres), writes dx.
    # FLOPs: BN's 17 (+ the add) per element
    arrays = 10 if residual else 7
    return Entry("blocked_bn_add_relu" if residual else "blocked_bn_relu", (n, c, h, w),
                 arrays * _bytes(n, c, h, w) + _bytes(n, c, h, w, 1),
                 (18.0 if residual else 17.0) * size, lambda: _bn_inputs(n, c, h, w, residual), run,
                 ("yb", "dxb", "mean", "invstd", "dgamma", "dbeta") + (("dres",) if residual else ()),
                 {"torch-cl": _torch_bn(c, residual)}, ("batchnorm_blocked_fwd_train", "batchnorm_blocked_bwd"),
                 rtol=1e-3, variants={"cpp-nchw": nchw}, writes_fresh=True)


def _bn_stats_entry(n, c, h, w):
    """The forward when the convolution's epilogue already summed x: one pass, read x, write y."""
    def inputs():
        a = _bn_inputs(n, c, h, w, False)
        x = ref.from_blocked(a["xb"], c).astype(np.float64)
        a["stats"] = np.stack([x.sum(axis=(0, 2, 3)), (x * x).sum(axis=(0, 2, 3))])
        return a

    def run(k, a):
        k("batchnorm_blocked_fwd_train")(a["xb"], a["gamma"], a["beta"], 1e-5, a["yb"], a["mean"], a["invstd"], True,
                                         None, a["stats"], halo_y=1)

    size = n * c * h * w
    return Entry("blocked_bn_relu_fwd_stats", (n, c, h, w), _bytes(n, c, h, w) + _bytes(n, c, h, w, 1), 3.0 * size,
                 inputs, run, ("yb", "mean", "invstd"), None, ("batchnorm_blocked_fwd_train",), rtol=1e-4,
                 writes_fresh=True)


def _bn_eval_entry(n, c, h, w):
    def inputs():
        a = _bn_inputs(n, c, h, w, False)
        a["rvar"] = np.ones(c, f32)
        return a

    def run(k, a):
        k("batchnorm_blocked_fwd_eval")(a["xb"], a["gamma"], a["beta"], a["beta"], a["rvar"], 1e-5, a["yb"], True,
                                        halo_y=1)

    def nchw(a):
        d = _nchw(a, c, ("xb", "yb"), {"yb": 1})
        fn = B.kernel("batchnorm_fwd_eval", backend="cpp")
        return lambda: fn(d["xb"], a["gamma"], a["beta"], a["beta"], a["rvar"], 1e-5, d["yb"], True)

    def torch_fn(torch, a):
        bn = torch.nn.BatchNorm2d(c).eval()
        x = torch.from_numpy(ref.from_blocked(a["xb"], c).copy()).contiguous(memory_format=torch.channels_last)

        def step():
            with torch.no_grad():
                torch.relu_(bn(x))
        return step

    size = n * c * h * w
    return Entry("blocked_bn_relu_eval", (n, c, h, w), _bytes(n, c, h, w) + _bytes(n, c, h, w, 1), 3.0 * size,
                 inputs, run, ("yb",), {"torch-cl": torch_fn}, ("batchnorm_blocked_fwd_eval",), rtol=1e-5,
                 variants={"cpp-nchw": nchw}, writes_fresh=True)


def _pool_entry(n, c, h, w, kind):
    """2x2 stride-2 max or average pooling, forward and backward."""
    p, q = h // 2, w // 2

    def inputs():
        a = {"xb": _blocked((n, c, h, w), 0), "dyb": _blocked((n, c, p, q), 1), "yb": _empty_blocked(n, c, p, q),
             "dxb": _empty_blocked(n, c, h, w)}
        if kind == "max":
            a["argmax"] = np.empty(a["yb"].shape, np.uint8)
        return a

    def run(k, a):
        if kind == "max":
            k("maxpool2d_blocked_fwd")(a["xb"], a["yb"], a["argmax"], 2, 2, 2, 2, 0, 0)
            k("maxpool2d_blocked_bwd")(a["dyb"], a["argmax"], a["dxb"], 2, 2, 2, 2, 0, 0)
        else:
            k("avgpool2d_blocked_fwd")(a["xb"], a["yb"], 2, 2, 2, 2, 0, 0)
            k("avgpool2d_blocked_bwd")(a["dyb"], a["dxb"], 2, 2, 2, 2, 0, 0)

    def nchw(a):
        d = _nchw(a, c, ("xb", "dyb", "yb", "dxb"))
        if kind == "max":   # the tap form, as MaxPool2d runs on NCHW arrays
            taps = np.empty(d["yb"].shape, np.uint8)
            fwd, bwd = B.kernel("maxpool2d_taps_fwd", backend="cpp"), B.kernel("maxpool2d_taps_bwd", backend="cpp")
            return lambda: (fwd(d["xb"], d["yb"], taps, 2, 2, 2, 2, 0, 0), bwd(d["dyb"], taps, d["dxb"], 2, 2, 2, 2, 0, 0))
        fwd, bwd = B.kernel("avgpool2d_fwd", backend="cpp"), B.kernel("avgpool2d_bwd", backend="cpp")
        return lambda: (fwd(d["xb"], d["yb"], 2, 2, 2, 2, 0, 0), bwd(d["dyb"], d["dxb"], 2, 2, 2, 2, 0, 0))

    def torch_fn(torch, a):
        cl = torch.channels_last
        x = torch.from_numpy(ref.from_blocked(a["xb"], c).copy()).contiguous(memory_format=cl).requires_grad_(True)
        dy = torch.from_numpy(ref.from_blocked(a["dyb"], c).copy()).contiguous(memory_format=cl)
        f = torch.nn.functional.max_pool2d if kind == "max" else torch.nn.functional.avg_pool2d

        def step():
            x.grad = None
            f(x, 2).backward(dy)
        return step

    xs, xb, yb = n * c * h * w, _bytes(n, c, h, w), _bytes(n, c, p, q)
    # fwd reads x, writes y; bwd reads dy, writes dx; max pooling also writes its one-byte taps (the
    # window's tap per output element) in the forward and reads them in the backward. (The taps were
    # once counted as an int64 argmax, 2 floats' worth each way: 25 % more bytes than the blocked
    # kernel moves, which inflated its % of the limit.)
    nbytes = 2 * xb + 2 * yb + (2 * yb / 4 if kind == "max" else 0.0)
    ops = (f"{kind}pool2d_blocked_fwd", f"{kind}pool2d_blocked_bwd")
    return Entry(f"blocked_{kind}pool2x2", (n, c, h, w), nbytes, 1.0 * xs, inputs, run, ("yb", "dxb"),
                 {"torch-cl": torch_fn}, ops, rtol=1e-6, variants={"cpp-nchw": nchw}, writes_fresh=True)


def _global_avgpool_entry(n, c, h, w):
    def inputs():
        return {"xb": _blocked((n, c, h, w), 0), "y": np.empty((n, c), f32),
                "dy": np.random.default_rng(1).standard_normal((n, c), dtype=f32), "dxb": _empty_blocked(n, c, h, w)}

    def run(k, a):
        k("global_avgpool_blocked_fwd")(a["xb"], a["y"], c)
        k("global_avgpool_blocked_bwd")(a["dy"], a["dxb"])

    def torch_fn(torch, a):
        x = torch.from_numpy(ref.from_blocked(a["xb"], c).copy()).contiguous(
            memory_format=torch.channels_last).requires_grad_(True)
        dy = torch.from_numpy(a["dy"])

        def step():
            x.grad = None
            torch.nn.functional.adaptive_avg_pool2d(x, 1).flatten(1).backward(dy)
        return step

    size = n * c * h * w
    # fwd reads x, bwd writes dx (y and dy: n x c floats)
    return Entry("blocked_global_avgpool", (n, c, h, w), 2 * _bytes(n, c, h, w), 1.0 * size, inputs, run, ("y", "dxb"),
                 {"torch-cl": torch_fn}, ("global_avgpool_blocked_fwd", "global_avgpool_blocked_bwd"), rtol=1e-5,
                 writes_fresh=True)


def _repad_entry(n, c, h, w):
    def inputs():
        return {"xb": _blocked((n, c, h, w), 0), "yb": _empty_blocked(n, c, h, w, 1)}

    # reads x, writes y with its zero halo
    return Entry("blocked_repad_0to1", (n, c, h, w), _bytes(n, c, h, w) + _bytes(n, c, h, w, 1), 0.0, inputs,
                 lambda k, a: k("blocked_repad")(a["xb"], c, 0, a["yb"], 1), ("yb",), None, ("blocked_repad",),
                 rtol=0, writes_fresh=True)


def entries(quick: bool) -> list[Entry]:
    stages = [(2, 17, 6, 8)] if quick else RESNET20_STAGES
    out = []
    for s in stages:
        out += [_bn_entry(*s, residual=False), _bn_entry(*s, residual=True), _bn_stats_entry(*s), _bn_eval_entry(*s)]
    for s in stages[:2]:
        out += [_pool_entry(*s, "max"), _pool_entry(*s, "avg")]
    return out + [_global_avgpool_entry(*stages[-1]), _repad_entry(*stages[0])]
