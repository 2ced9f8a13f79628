"""GPU bench suite (`python -m bench gpu`): the device's limits and the CUDA kernels against them.

Measured in one run on the GPU machine (skipped, with the reason, where CuPy or a GPU is missing):
- limits: device-to-device copy bandwidth (a 1 GiB cupy copy; bytes = read + write) and fp32
  GEMM FLOP/s (cuBLAS through cupy.matmul; CuPy leaves TF32 off unless CUPY_TF32=1);
- every kernel entry of bench/kernels.py that has a CUDA version, at GPU sizes, for the backends
  `cuda` (our CUDA C++, fasttrain._cuda), `numba-cuda` (fasttrain/kernels/numba/cuda_*.py, the same
  formulas) and `torch-cuda` (torch.optim.Adam(fused=True), cuDNN convolution and batchnorm with
  TF32 off, torch dropout), each checked against the NumPy reference before and after timing.

Times come from CUDA events around `repeat` back-to-back calls on CuPy's current stream (torch
work is timed on torch's current stream the same way), median over several such samples.
Targets (issue 5): optimizers >= 85 % of the copy bandwidth (Adam moves 28 B/param), batchnorm
>= 70 %, dropout >= 80 %, conv2d >= 0.5x cuDNN, Adam at least as fast as torch's fused Adam.
"""
from __future__ import annotations

import importlib

import numpy as np

from fasttrain import backend as B

from . import kernels as K
from .harness import Limits, make_record

# numba-cuda modules and the ops each provides (they take a trailing `stream` argument)
_NUMBA_CUDA = ("cuda_optim", "cuda_dropout", "cuda_batchnorm", "cuda_activations")


def gpu_or_reason():
    """(cupy, None) when the cuda backend can run here, else (None, why not)."""
    try:
        import cupy
    except ImportError as exc:
        return None, f"CuPy is not importable ({exc})"
    status = B.backends()["cuda"]
    if status != "available":
        return None, status
    return cupy, None


def _events_timer(cupy, fn, repeat: int, inner: int, warmup: int = 2) -> list[float]:
    """Seconds per call: `inner` calls between two CUDA events, `repeat` samples."""
    for _ in range(warmup):
        fn()
    cupy.cuda.get_current_stream().synchronize()
    samples = []
    for _ in range(repeat):
        start, stop = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        for _ in range(inner):
            fn()
        stop.record()
        stop.synchronize()
        samples.append(cupy.cuda.get_elapsed_time(start, stop) / 1e3 / inner)
    return samples


def _torch_timer(torch, fn, repeat: int, inner: int, warmup: int = 2) -> list[float]:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    samples = []
    for _ in range(repeat):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(inner):
            fn()
        stop.record()
        stop.synchronize()
        samples.append(start.elapsed_time(stop) / 1e3 / inner)
    return samples


def measure_limits(cupy, quick: bool, repeat: int) -> tuple[Limits, list]:
    n = (16 << 20) if quick else (256 << 20)  # 1 GiB of float32: far beyond the 50 MB L2
    src = cupy.ones(n, cupy.float32)
    dst = cupy.empty_like(src)
    samples = _events_timer(cupy, lambda: dst.__setitem__(Ellipsis, src), repeat, 5)
    if not bool((dst == src).all()):
        raise AssertionError("bench gpu: the device-to-device copy gave a wrong result")
    copy_bytes = 2.0 * 4 * n
    records = [make_record("gpu", "d2d_copy", "cupy", n, samples, nbytes=copy_bytes)]
    m = 1024 if quick else 8192
    a = cupy.random.default_rng(0).standard_normal((m, m), dtype=cupy.float32)
    c = cupy.empty_like(a)
    samples = _events_timer(cupy, lambda: cupy.matmul(a, a, out=c), repeat, 3)
    flops = 2.0 * m ** 3
    records.append(make_record("gpu", "sgemm_fp32", "cublas", f"{m}x{m}x{m}", samples, flops=flops))
    limits = Limits(copy_bytes / records[0].min_s, flops / records[1].min_s,
                    "cupy device-to-device copy", "cupy.matmul fp32 (cuBLAS, TF32 off)")
    return limits, records


def _entries(quick: bool) -> list:
    if quick:
        return [K._adam_entry(1 << 16, False), K._dropout_entry(1 << 16), K._batchnorm_entry(4, 8, 9, 7),
                K._conv_entry(2, 3, 8, 8, 4)]
    n_opt = 100_000_000
    return [K._adam_entry(n_opt, False), K._adam_entry(n_opt, True), K._rmsprop_entry(n_opt),
            K._dropout_entry(1 << 26), K._relu_entry(1 << 26), K._batchnorm_entry(256, 64, 32, 32),
            K._softmax_xent_entry(8192, 1000),
            K._conv_entry(64, 64, 32, 32, 64), K._conv_entry(128, 3, 32, 32, 32), K._conv_entry(32, 128, 16, 16, 128)]


def _numba_cuda_lookup(cupy):
    """op -> numba-cuda kernel on CuPy's current stream, or None when numba-cuda lacks the op."""
    try:
        mods = [importlib.import_module(f"fasttrain.kernels.numba.{m}") for m in _NUMBA_CUDA]
    except ImportError:
        return None

    def lookup(op):
        for m in mods:
            fn = getattr(m, op, None)
            if fn is not None:
                return lambda *args: fn(*args, stream=cupy.cuda.get_current_stream().ptr)
        return None
    return lookup


def _to_device(cupy, arrays: dict) -> dict:
    return {k: cupy.asarray(v) if isinstance(v, np.ndarray) else v for k, v in arrays.items()}


def _check(cupy, entry, lookup, label: str) -> None:
    ref = entry.inputs()
    entry.run(lambda op: B.kernel(op, backend="numpy"), ref)
    got = _to_device(cupy, entry.inputs())
    entry.run(lookup, got)
    for name in entry.outputs:
        want, have = ref[name], cupy.asnumpy(got[name])
        scale = max(float(np.abs(want).max()) if want.size else 0.0, 1e-30)
        err = float(np.abs(want.astype(np.float64) - have).max()) / scale if want.size else 0.0
        if err > max(entry.rtol, 1e-6):
            raise AssertionError(f"bench gpu {entry.name} [{label}]: output {name} differs from the reference "
                                 f"(max error {err:.2e} relative to max |ref|)")


def _torch_cuda(torch, entry, arrays):
    """A zero-argument torch step on the GPU for the entry, or None where torch has no counterpart."""
    dev = torch.device("cuda")
    t = {k: torch.from_numpy(v).to(dev) for k, v in arrays.items() if isinstance(v, np.ndarray)}
    name = entry.name
    if name in ("adam", "adamw", "rmsprop"):
        p = torch.nn.Parameter(t["p"])
        p.grad = t["g"]
        if name == "rmsprop":
            opt = torch.optim.RMSprop([p], lr=1e-3, alpha=0.99, eps=1e-8, foreach=True)
        else:
            cls = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
            opt = cls([p], lr=1e-3, weight_decay=1e-2 if name == "adamw" else 0.0, fused=True)
        return opt.step
    if name == "dropout_fwd_bwd":
        x = t["x"].requires_grad_(True)

        def step():
            x.grad = None
            torch.nn.functional.dropout(x, 0.5, True).backward(t["dy"])
        return step
    if name == "relu_fwd":
        return lambda: torch.clamp_min(t["x"], 0, out=t["y"])
    if name == "softmax_xent":
        x, y = t["logits"].requires_grad_(True), t["labels"]

        def step():
            x.grad = None
            torch.nn.functional.cross_entropy(x, y).backward()
        return step
    if name == "batchnorm_fwd_bwd":
        return _module_fwd_bwd(torch.nn.BatchNorm2d(entry.shape[1]).to(dev), t["x"], t["dy"])
    if name == "conv2d_fwd_bwd":
        n, c, h, w, k = entry.shape
        return _module_fwd_bwd(torch.nn.Conv2d(c, k, 3, padding=1).to(dev), t["x"], t["dy"])
    return None


def _module_fwd_bwd(module, x, dy):
    """module(x) forward and backward with dy, gradients cleared first: one training step's work."""
    x = x.requires_grad_(True)

    def step():
        x.grad = None
        module.zero_grad()
        module(x).backward(dy)
    return step


def run(quick: bool = False, repeat: int = 7, log=print) -> list:
    cupy, why = gpu_or_reason()
    if cupy is None:
        log(f"  gpu suite skipped: {why}")
        return []
    limits, records = measure_limits(cupy, quick, repeat)
    log(f"  limits: d2d copy {limits.bandwidth / 1e9:.0f} GB/s, fp32 GEMM {limits.flops / 1e12:.1f} TFLOP/s")
    try:
        import torch

        torch.backends.cudnn.allow_tf32 = False        # a fair fp32 comparison (issue 5)
        torch.backends.cuda.matmul.allow_tf32 = False
        if not torch.cuda.is_available():
            torch = None
    except ImportError:
        torch = None
    numba_lookup = _numba_cuda_lookup(cupy)
    inner = 3 if quick else 10
    for entry in _entries(quick):
        backends = [("cuda", lambda op: B.kernel(op, backend="cuda"))]
        if numba_lookup is not None and all(numba_lookup(op) is not None for op in entry.ops):
            backends.append(("numba-cuda", numba_lookup))
        for label, lookup in backends:
            _check(cupy, entry, lookup, label)
            arrays = _to_device(cupy, entry.inputs())
            kernels = {op: lookup(op) for op in entry.ops}
            samples = _events_timer(cupy, lambda: entry.run(kernels.__getitem__, arrays), repeat, inner)
            _check(cupy, entry, lookup, label)
            records.append(make_record("gpu", entry.name, label, entry.shape, samples,
                                       entry.nbytes or None, entry.flops or None, limits))
            log(f"  {entry.name:<20} {label:<10} {records[-1].median_s * 1e3:9.3f} ms")
        if torch is not None:
            step = _torch_cuda(torch, entry, entry.inputs())
            if step is not None:
                samples = _torch_timer(torch, step, repeat, inner)
                records.append(make_record("gpu", entry.name, "torch-cuda", entry.shape, samples,
                                           entry.nbytes or None, entry.flops or None, limits))
                log(f"  {entry.name:<20} torch-cuda {records[-1].median_s * 1e3:9.3f} ms")
    return records


def summary(records: list) -> list[str]:
    """The issue's targets as lines: % of the copy bandwidth per kernel, ratios vs torch/cuDNN."""
    by = {(r.name, r.shape, r.backend): r for r in records if r.suite == "gpu"}
    lines = []
    for (name, shape, backend), r in by.items():
        if backend in ("cuda", "numba-cuda") and r.pct_of_limit is not None:
            line = f"{name} {shape} [{backend}]: {r.pct_of_limit:.0f}% of {r.limit}"
            alt = by.get((name, shape, "torch-cuda"))
            if alt is not None:
                line += f", {alt.median_s / r.median_s:.2f}x torch-cuda"
            lines.append(line)
    return lines


__all__ = ["run", "summary", "gpu_or_reason", "measure_limits"]
