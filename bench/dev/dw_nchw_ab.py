"""A/B of the NCHW depthwise kernels: the vector plane kernels (set_conv2d_isa avx512 / avx2) against
the plain C++ ones (portable) and torch channels_last, interleaved; optionally 1 thread with CPU time.
python bench/dev/dw_nchw_ab.py [--threads 1] [--parts fwd,bwd_data,bwd_weight]"""
import argparse
import statistics
import time

import numpy as np

import fasttrain as ft
import fasttrain._C as C
from bench.harness import time_interleaved

SHAPES = [(64, 64, 32, 32, 1), (128, 128, 16, 16, 1), (128, 256, 8, 8, 2), (128, 32, 32, 32, 2), (128, 256, 4, 4, 1),
          (128, 128, 8, 8, 1)]


def torch_fn(part, x, w, dy, stride, Cc, threads):
    import torch
    if threads:
        torch.set_num_threads(threads)
    cl = torch.channels_last
    tx = torch.from_numpy(x).contiguous(memory_format=cl)
    tw = torch.from_numpy(w).contiguous(memory_format=cl)
    tdy = torch.from_numpy(dy).contiguous(memory_format=cl)
    mask = {"bwd_data": [True, False, False], "bwd_weight": [False, True, True]}.get(part)

    def step():
        with torch.no_grad():
            if part == "fwd":
                torch.nn.functional.conv2d(tx, tw, None, stride, 1, 1, Cc)
            else:
                torch.ops.aten.convolution_backward(tdy, tx, tw, [Cc], [stride] * 2, [1, 1], [1, 1], False, [0, 0],
                                                    Cc, mask)
    return step


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--parts", default="fwd,bwd_data,bwd_weight")
    ap.add_argument("--isas", default="portable,avx512,avx2")
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--shapes", default="")
    ap.add_argument("--torch", action="store_true", help="also torch channels_last (the bench's torch-cl)")
    a = ap.parse_args()
    if a.threads:
        ft.set_num_threads(a.threads)
        C.set_num_threads(a.threads)  # the raw module has its own setting (ft.set_num_threads does not reach it)
    clock = time.thread_time if a.threads == 1 else time.perf_counter
    shapes = [SHAPES[int(i)] for i in a.shapes.split(",")] if a.shapes else SHAPES
    rng = np.random.default_rng(0)
    for N, Cc, H, W, s in shapes:
        P = Q = (H + 2 - 3) // s + 1
        x = rng.standard_normal((N, Cc, H, W), dtype=np.float32)
        w = rng.standard_normal((Cc, 1, 3, 3), dtype=np.float32)
        b = rng.standard_normal(Cc, dtype=np.float32)
        dy = rng.standard_normal((N, Cc, P, Q), dtype=np.float32)
        y = np.empty_like(dy); dx = np.empty_like(x); dw = np.zeros_like(w); db = np.zeros_like(b)
        geo = (s, s, 1, 1)
        ops = {"fwd": lambda: C.conv2d_fwd(x, w, b, y, *geo, False, 1, 1, Cc),
               "bwd_data": lambda: C.conv2d_bwd_data(dy, w, dx, *geo, 1, 1, Cc),
               "bwd_weight": lambda: C.conv2d_bwd_weight(x, dy, dw, db, *geo, 1, 1, Cc)}
        xb, yb = 4.0 * x.size, 4.0 * dy.size
        for part in a.parts.split(","):
            fns = {}
            for isa in a.isas.split(","):
                def f(isa=isa, op=ops[part]):
                    C.set_conv2d_isa(isa)
                    op()
                fns[isa] = f
            if a.torch and part in ("fwd", "bwd_data", "bwd_weight"):
                fns["torch-cl"] = torch_fn(part, x, w, dy, s, Cc, a.threads)
            res = time_interleaved(fns, {k: a.repeat for k in fns}, clock=clock)
            med = {k: statistics.median(v) for k, v in res.items()}
            base = med[a.isas.split(",")[0]]
            row = "  ".join(f"{k} {1e3 * v:7.3f} ms ({base / v:4.2f}x, {(xb + yb) / v / 1e9:5.1f} GB/s)"
                            for k, v in med.items())
            print(f"{(N, Cc, H, W, s)} {part:10s} {row}", flush=True)
    C.set_conv2d_isa("auto")


if __name__ == "__main__":
    main()
