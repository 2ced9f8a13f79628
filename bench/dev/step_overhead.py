"""How much of a training step (forward, backward, Adam) on the C++ backend is not C++ kernel time:
the Python layers, NumPy glue, allocations and page faults around the kernels.

    python bench/dev/step_overhead.py [--nets resnet8 resnet20 ...] [--batches 128 32] [--rounds 7]
                                      [--threads 1] [--isa avx2] [--top N]
    (FASTTRAIN_LAYOUT=nchw in the environment: the same without the blocked layout flowing)

Per net and batch (medians over steps): the step's wall time, the time spent inside fasttrain._C
calls, the non-kernel time (step minus kernels, per step: wall, and the main thread's CPU time,
which a loaded machine inflates less: use --threads 1 there, so no kernel time hides in OpenMP
waits), and the minor page faults per step. --top N lists the N entry points with the most time.

--python-only MB: the Python between the kernels alone, resolvable on a loaded machine where the
step's noise is larger than it: after warm-up the compute kernels (STUBBED) return at once, so a
step runs only the layers' Python (the main thread's CPU time, median of --rounds x 10 steps; the
layout conversions still run, as layers read the arrays they return);
with MB > 0 each stub first reads an MB-sized array, as a real kernel streams its operands through
the caches, and that read's own time (measured alone, as many times) is subtracted: the Python
then runs as cold as between real kernels, which costs several times the warm figure.
"""
from __future__ import annotations

import argparse
import resource
import time
from collections import defaultdict

import numpy as np

import fasttrain as ft
from fasttrain import models
from layout_flow import make_step   # bench/dev is the script's directory, first on sys.path


class KernelTimer:
    """Wall and calling-thread CPU time spent inside fasttrain._C functions: every function of the
    module is replaced by a timing wrapper (~0.3 us a call) before the model is built, and the
    registry's cache is emptied so it hands out the wrappers."""

    def __init__(self):
        from fasttrain import _C, backend

        self.wall = 0.0
        self.cpu = 0.0
        self.per = defaultdict(float)
        self.per_cpu = defaultdict(float)
        self.calls = defaultdict(int)
        for name in dir(_C):
            fn = getattr(_C, name)
            if not name.startswith("_") and callable(fn) and not isinstance(fn, type):
                setattr(_C, name, self._wrap(name, fn))
        backend._cache.clear()

    def _wrap(self, name, fn):
        clock, cpu = time.perf_counter, time.thread_time

        def timed(*args, **kwargs):
            t, c = clock(), cpu()
            try:
                return fn(*args, **kwargs)
            finally:
                dt, dc = clock() - t, cpu() - c
                self.cpu += dc
                self.wall += dt
                self.per[name] += dt
                self.per_cpu[name] += dc
                self.calls[name] += 1
        timed.__name__ = name
        return timed

    def reset(self):
        self.wall = self.cpu = 0.0


def measure(net: str, batch: int, rounds: int, top: int, kt: KernelTimer):
    step = make_step(net, batch)
    for _ in range(8):   # warm-up: the heap grows to its steady size over the first few steps
        step()
    wall, kern, cpu, kcpu, faults = [], [], [], [], []
    kt.per.clear()
    kt.per_cpu.clear()
    kt.calls.clear()
    for _ in range(rounds):
        kt.reset()
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t, c = time.perf_counter(), time.thread_time()
        step()
        wall.append(time.perf_counter() - t)
        cpu.append(time.thread_time() - c)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
        kern.append(kt.wall)
        kcpu.append(kt.cpu)
    ms = lambda v: float(np.median(v)) * 1e3   # noqa: E731
    nk = ms(np.subtract(wall, kern))
    print(f"{net:16s} b{batch:<4d} step {ms(wall):7.2f} ms ({ms(cpu):7.2f} ms main-thread CPU)  kernels {ms(kern):7.2f} ms  non-kernel {nk:6.2f} ms wall "
          f"({nk / ms(wall):3.0%}), {ms(np.subtract(cpu, kcpu)):6.2f} ms main-thread CPU  "
          f"minor faults/step {int(np.median(faults))}", flush=True)
    for name, v in sorted(kt.per.items(), key=lambda kv: -kv[1])[:top]:
        print(f"    {name:36s} {v / rounds * 1e3:7.2f} ms wall {kt.per_cpu[name] / rounds * 1e3:7.2f} ms calling-thread CPU "
              f"({kt.per_cpu[name] / sum(kt.per_cpu.values()):4.0%} of kernel CPU)  {kt.calls[name] // rounds:4d} calls/step")


# the entry points that compute into given arrays (stubbed by --python-only); the rest answer questions the
# layers ask or return the arrays they make (the layout conversions)
STUBBED = ("conv2d_blocked_fwd", "conv2d_blocked_bwd_data", "conv2d_blocked_bwd_weight", "conv2d_stem_",
           "batchnorm_blocked_", "batchnorm_update_running", "stream_add", "adam", "maxpool2d_blocked_",
           "avgpool2d_blocked_", "global_avgpool_blocked_", "blocked_repad", "depthwise_blocked_", "dropout_",
           "linear_", "softmax_xent")


def python_only(net: str, batch: int, rounds: int, mb: float):
    from fasttrain import _C, backend

    step = make_step(net, batch, check_finite=False)
    for _ in range(3):
        step()
    big = np.ones(max(1, int(mb * (1 << 18))), np.float32)
    calls = [0]

    def stub(*args, **kwargs):   # the loss kernel's value is the only result a layer reads
        calls[0] += 1
        if mb > 0:
            big.sum()
        return 0.0
    real = {name: getattr(_C, name) for name in dir(_C) if name.startswith(STUBBED)}
    try:
        for name in real:
            setattr(_C, name, stub)
        backend._cache.clear()
        for _ in range(3):
            step()
        steps, touch = [], []
        for _ in range(rounds * 10):
            calls[0] = 0
            c = time.thread_time()
            step()
            steps.append(time.thread_time() - c)
            n = calls[0]
            c = time.thread_time()
            for _ in range(n if mb > 0 else 0):
                big.sum()
            touch.append(time.thread_time() - c)
    finally:
        for name, f in real.items():
            setattr(_C, name, f)
        backend._cache.clear()
    py = np.median(np.subtract(steps, touch)) * 1e3
    print(f"{net:16s} b{batch:<4d} python between the kernels {py:6.3f} ms/step "
          f"({n} stubbed calls{f', each reading {mb:g} MB first' if mb > 0 else ', warm caches'})", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--nets", nargs="+", default=["resnet8", "resnet20", "convnet_classic", "mobilenet"],
                    choices=models.MODEL_NAMES)
    ap.add_argument("--batches", nargs="+", type=int, default=[128, 32])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--top", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2,
                    help="1 on a loaded machine: the CPU times then hold without OpenMP's waits between threads")
    ap.add_argument("--isa", choices=("auto", "avx512", "avx2", "portable"), default="auto",
                    help="the direct engine's instruction set (fasttrain._C.set_conv2d_isa)")
    ap.add_argument("--python-only", type=float, default=None, metavar="MB",
                    help="time only the Python between the kernels (module docstring); MB > 0: cold caches")
    args = ap.parse_args()
    ft.set_backend("cpp")
    ft.set_num_threads(args.threads)
    from fasttrain import _C

    _C.set_conv2d_isa(args.isa)
    if args.python_only is not None:
        for net in args.nets:
            for batch in args.batches:
                python_only(net, batch, args.rounds, args.python_only)
        return
    kt = KernelTimer()
    for net in args.nets:
        for batch in args.batches:
            measure(net, batch, args.rounds, args.top, kt)


if __name__ == "__main__":
    main()
