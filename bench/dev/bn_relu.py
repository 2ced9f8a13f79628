"""Interleaved timing of BatchNorm + ReLU forward and backward: the fused kernels (relu=True, dy
masked by the saved output), the separate batchnorm and relu kernels, and torch BatchNorm2d then
ReLU, in one process, rounds alternating so machine load hits all alike.

Usage: python bench/dev/bn_relu.py [--shape 64 64 32 32] [--rounds 15] [--backend cpp] [--threads N]
"""
import argparse
import time

import numpy as np

import fasttrain
from fasttrain import backend as B
from fasttrain import settings


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", type=int, nargs=4, default=[64, 64, 32, 32])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--backend", default="cpp")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        fasttrain.set_num_threads(args.threads)
    N, C, H, W = args.shape
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, C, H, W), dtype=np.float32)
    dy = rng.standard_normal((N, C, H, W), dtype=np.float32)
    g, b = np.ones(C, np.float32), np.zeros(C, np.float32)
    y, pre, dpre, dx = (np.empty_like(x) for _ in range(4))
    mean, inv, dg, db = (np.zeros(C, np.float32) for _ in range(4))
    k = {op: B.kernel(op, backend=args.backend)
         for op in ("batchnorm_fwd_train", "batchnorm_bwd", "relu_fwd", "relu_bwd")}

    def fused():
        k["batchnorm_fwd_train"](x, g, b, 1e-5, y, mean, inv, True)
        k["batchnorm_bwd"](x, dy, g, mean, inv, dx, dg, db, y)

    def separate():
        k["batchnorm_fwd_train"](x, g, b, 1e-5, pre, mean, inv)
        k["relu_fwd"](pre, y)
        k["relu_bwd"](pre, dy, dpre)
        k["batchnorm_bwd"](x, dpre, g, mean, inv, dx, dg, db)

    variants = {"fused": fused, "separate": separate}
    try:
        import torch
        torch.set_num_threads(settings.num_threads)
        bn = torch.nn.BatchNorm2d(C)
        tx = torch.from_numpy(x).requires_grad_(True)
        tdy = torch.from_numpy(dy)

        def torch_step():
            tx.grad = None
            bn.zero_grad()
            torch.relu(bn(tx)).backward(tdy)
        variants["torch"] = torch_step
    except ImportError:
        pass
    times = {v: [] for v in variants}
    for _ in range(args.rounds):
        for v, fn in variants.items():
            fn()  # warm
            t0 = time.perf_counter()
            fn()
            times[v].append(time.perf_counter() - t0)
    med = {v: float(np.median(t)) * 1e3 for v, t in times.items()}
    print(f"BN+ReLU fwd+bwd {N}x{C}x{H}x{W}, backend {args.backend}, threads {settings.num_threads}, "
          f"{args.rounds} rounds, median ms: " + "  ".join(f"{v} {t:.3f}" for v, t in med.items()))
    print(f"separate/fused {med['separate'] / med['fused']:.2f}x" +
          (f"  torch/fused {med['torch'] / med['fused']:.2f}x" if "torch" in med else ""))


if __name__ == "__main__":
    main()
