"""Interleaved timing of the exp-based C++ kernels (softmax cross-entropy, sigmoid, tanh, ELU):
this build against another build of fasttrain._C (e.g. the one before fasttrain/vmath.h, copied
aside) and PyTorch, in one process, rounds alternating so machine load hits all alike.

Usage: python bench/dev/exp_kernels.py [--base /path/to/old/_C.cpython-*.so] [--rounds 15]
Prints the median time per call of each variant and the ratios.
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import fasttrain  # noqa: E402
from bench.harness import load_extension_build  # noqa: E402
from fasttrain import _C  # noqa: E402


def cases(torch):
    rng = np.random.default_rng(0)
    N, C = 1024, 1000
    logits = rng.standard_normal((N, C), dtype=np.float32)
    labels = rng.integers(0, C, N).astype(np.int64)
    dl = np.empty_like(logits)
    n = 1 << 22
    x = rng.standard_normal(n, dtype=np.float32) * 4
    dy = rng.standard_normal(n, dtype=np.float32)
    y = np.empty_like(x)
    out = {
        "softmax_xent 1024x1000": (lambda m: m.softmax_xent(logits, labels, dl)),
        "sigmoid_fwd 4M": (lambda m: m.sigmoid_fwd(x, y)),
        "tanh_fwd 4M": (lambda m: m.tanh_fwd(x, y)),
        "elu_fwd 4M": (lambda m: m.elu_fwd(x, y, 1.0)),
        "elu_bwd 4M": (lambda m: m.elu_bwd(x, dy, y, 1.0)),
    }
    torch_fns = {}
    if torch is not None:
        tl = torch.from_numpy(logits).requires_grad_(True)
        tlab = torch.from_numpy(labels)
        tx, ty = torch.from_numpy(x), torch.from_numpy(y)

        def xent():
            tl.grad = None
            torch.nn.functional.cross_entropy(tl, tlab).backward()
        torch_fns = {
            "softmax_xent 1024x1000": xent,
            "sigmoid_fwd 4M": lambda: torch.sigmoid(tx, out=ty),
            "tanh_fwd 4M": lambda: torch.tanh(tx, out=ty),
            "elu_fwd 4M": lambda: torch.nn.functional.elu(tx),
        }
    return out, torch_fns


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default=None, help="path of another _C build to compare with")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        fasttrain.set_num_threads(args.threads)
    fasttrain.backends()
    variants = {"new": _C}
    if args.base:
        base = load_extension_build(args.base)
        base.set_num_threads(_C.num_threads())
        variants = {"base": base, "new": _C}
    try:
        import torch
        torch.set_num_threads(_C.num_threads())
    except ImportError:
        torch = None
    ours, theirs = cases(torch)
    times = {(c, v): [] for c in ours for v in list(variants) + (["torch"] if torch else [])}
    for _ in range(args.rounds):
        for case, fn in ours.items():
            calls = [(v, (lambda m=m: fn(m))) for v, m in variants.items()]
            if case in theirs:
                calls.append(("torch", theirs[case]))
            for v, call in calls:
                call()  # warm
                t0 = time.perf_counter()
                call()
                times[(case, v)].append(time.perf_counter() - t0)
    print(f"threads {_C.num_threads()}, {args.rounds} rounds, median ms per call")
    for case in ours:
        row = {v: np.median(times[(case, v)]) * 1e3 for v in list(variants) + ["torch"] if times.get((case, v))}
        text = "  ".join(f"{v} {t:8.3f}" for v, t in row.items())
        ratios = []
        if "base" in row:
            ratios.append(f"base/new {row['base'] / row['new']:.2f}x")
        if "torch" in row:
            ratios.append(f"torch/new {row['torch'] / row['new']:.2f}x")
        print(f"{case:<24} {text}   {'  '.join(ratios)}")


if __name__ == "__main__":
    main()
