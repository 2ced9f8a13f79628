"""conv2d per op and forward + backward: C++ im2col, C++ Winograd, PyTorch CPU, NumPy reference.

    python -m bench.conv_algos [--repeat 7] [--rounds 2] [--threads 2] [--shapes 64,64,32,32,64 ...]

Shapes are (N, C, H, W, K), 3x3 stride 1 padding 1 (bench/kernels.py's conv2d entries by default).
The backends are timed in turn within one process, for `rounds` rounds, so a burst of load on a
shared machine hits them alike; each figure is the smallest median over the rounds (ms). The C++
algorithm is forced with fasttrain._C.set_conv2d_algo ("auto": what the kernels pick by
themselves, the row the ratios to torch and numpy use); "auto" is restored at the end.
"""
from __future__ import annotations

import argparse
import statistics

import numpy as np

import fasttrain as ft
from fasttrain import backend as B

from .harness import time_fn, torch_or_none

SHAPES = [(64, 64, 32, 32, 64), (128, 3, 32, 32, 32), (32, 128, 16, 16, 128)]
OPS = ("fwd", "bwd_data", "bwd_weight")


def _arrays(N, C, H, W, K):
    rng = np.random.default_rng(0)
    a = {"x": rng.standard_normal((N, C, H, W)), "w": rng.standard_normal((K, C, 3, 3)) * np.sqrt(2 / (9 * C)),
         "b": rng.standard_normal(K), "dy": rng.standard_normal((N, K, H, W))}
    a = {k: v.astype(np.float32) for k, v in a.items()}
    a.update(y=np.empty((N, K, H, W), np.float32), dx=np.empty((N, C, H, W), np.float32),
             dw=np.zeros((K, C, 3, 3), np.float32), db=np.zeros(K, np.float32))
    return a


def _ops(kernel, a):
    """The three kernel calls, each a no-argument function; kernel(op) gives the implementation."""
    fwd, bwd_data, bwd_weight = (kernel(f"conv2d_{op}") for op in OPS)
    return {"fwd": lambda: fwd(a["x"], a["w"], a["b"], a["y"], 1, 1, 1, 1, False),
            "bwd_data": lambda: bwd_data(a["dy"], a["w"], a["dx"], 1, 1, 1, 1),
            "bwd_weight": lambda: bwd_weight(a["x"], a["dy"], a["dw"], a["db"], 1, 1, 1, 1)}


def _torch_ops(torch, a, K):
    x, w, b, dy = (torch.from_numpy(a[k]) for k in ("x", "w", "b", "dy"))
    conv_bwd = torch.ops.aten.convolution_backward
    args = (dy, x, w, [K], [1, 1], [1, 1], [1, 1], False, [0, 0], 1)
    xg = x.clone().requires_grad_(True)
    wg, bg = w.clone().requires_grad_(True), b.clone().requires_grad_(True)

    def fwd_bwd():
        xg.grad = wg.grad = bg.grad = None
        torch.conv2d(xg, wg, bg, 1, 1).backward(dy)
    return {"fwd": lambda: torch.conv2d(x, w, b, 1, 1), "bwd_data": lambda: conv_bwd(*args, [True, False, False]),
            "bwd_weight": lambda: conv_bwd(*args, [False, True, True]), "fwd+bwd": fwd_bwd}


def run(shapes, repeat, rounds, numpy_too=True):
    from fasttrain import _C as C
    C.set_num_threads(ft.settings.num_threads)  # the module may load after set_num_threads
    torch = torch_or_none()
    if torch is not None:
        torch.set_num_threads(ft.settings.num_threads)
    cpp = lambda op: getattr(C, op)  # noqa: E731
    ref = lambda op: B.kernel(op, backend="numpy")  # noqa: E731
    for shape in shapes:
        a = _arrays(*shape)
        best: dict[tuple[str, str], float] = {}

        def note(who, op, fn, rep):
            med = statistics.median(time_fn(fn, repeat=rep, warmup=1)) * 1e3
            best[who, op] = min(best.get((who, op), float("inf")), med)

        for _ in range(rounds):
            for algo in ("auto", "im2col", "winograd"):
                C.set_conv2d_algo(algo)
                ops = _ops(cpp, a)
                for op, fn in ops.items():
                    note(algo, op, fn, repeat)
                note(algo, "fwd+bwd", lambda: [f() for f in ops.values()], repeat)
            if torch is not None:
                for op, fn in _torch_ops(torch, a, shape[4]).items():
                    note("torch", op, fn, repeat)
            if numpy_too:
                ops = _ops(ref, a)
                note("numpy", "fwd+bwd", lambda: [f() for f in ops.values()], 3)
        C.set_conv2d_algo("auto")
        print(f"(N, C, H, W, K) = {shape}, {ft.settings.num_threads} threads, ms (smallest median of {rounds} rounds)")
        cols = OPS + ("fwd+bwd",)
        print(f"  {'':9}" + "".join(f"{c:>12}" for c in cols))
        for who in ("auto", "im2col", "winograd", "torch", "numpy"):
            if any((who, c) in best for c in cols):
                print(f"  {who:9}" + "".join(f"{best[who, c]:12.1f}" if (who, c) in best else f"{'':12}" for c in cols))
        auto = best["auto", "fwd+bwd"]
        ratios = [f"im2col/winograd {best['im2col', 'fwd+bwd'] / best['winograd', 'fwd+bwd']:.2f}x"]
        ratios += [f"{who}/auto {best[who, 'fwd+bwd'] / auto:.2f}x" for who in ("torch", "numpy")
                   if (who, "fwd+bwd") in best]
        print("  " + ", ".join(ratios), flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-numpy", action="store_true", help="skip the (slow) NumPy reference")
    ap.add_argument("--shapes", nargs="*", default=None, help="N,C,H,W,K (3x3, stride 1, padding 1)")
    args = ap.parse_args(argv)
    if args.threads:
        ft.set_num_threads(args.threads)
    shapes = [tuple(int(v) for v in s.split(",")) for s in args.shapes] if args.shapes else SHAPES
    run(shapes, args.repeat, args.rounds, not args.no_numpy)


if __name__ == "__main__":
    main()
