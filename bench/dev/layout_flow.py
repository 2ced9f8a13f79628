"""A/B of the blocked layout that flows between layers (fasttrain/nn/layout.py): training-step time
(forward, backward, Adam) with FASTTRAIN_LAYOUT=auto against nchw, interleaved in one process
(medians), then where the flowing step's time goes, per C++ entry point (cProfile's own time).

    python bench/dev/layout_flow.py resnet8 128 [--rounds 7] [--profile] [--isa avx2] [--threads N]
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import time

import numpy as np

import fasttrain as ft
from fasttrain import models, settings


def make_step(net: str, batch: int, check_finite: bool = True):
    """One training step (forward, backward, Adam) of `net` on a fixed random batch, as the trainer
    runs it; the backend and thread settings are the caller's. check_finite: the loss's (off when
    the kernels are stubbed out and the values are garbage)."""
    model = models.build(net, (3, 32, 32), 10)
    arena = ft.ParamArena.for_model(model, seed=0)
    model.set_needs_input_grad(False)   # as the trainer does: no gradient of the images
    opt = ft.optim.Adam(arena, lr=1e-3)
    loss_fn = ft.losses.SoftmaxCrossEntropy(check_finite=check_finite)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, batch)

    def step():
        _, d = loss_fn(model.forward(x), y)
        arena.zero_grad()
        model.backward(d)
        opt.step()
    return step


def time_settings(step, settings: dict, rounds: int, clock) -> dict:
    """Whole steps under several settings, interleaved step by step with the order rotating, so each
    setting meets the same machine state: {name: [seconds per step]}. settings: name -> a callable that
    puts that setting in place before its step; one warm-up step each first (buffers, remembered
    choices)."""
    names = list(settings)
    for name in names:
        settings[name]()
        step()
    times = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            settings[name]()
            t = clock()
            step()
            times[name].append(clock() - t)
    return times


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("net", choices=models.MODEL_NAMES)
    ap.add_argument("batch", type=int)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--profile", action="store_true", help="then profile 5 flowing steps")
    ap.add_argument("--isa", choices=("auto", "avx512", "avx2", "portable"), default="auto",
                    help="the direct engine's instruction set (both layouts)")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    ft.set_backend("cpp")
    if args.threads:
        ft.set_num_threads(args.threads)
    from fasttrain import _C

    _C.set_conv2d_isa(args.isa)
    step = make_step(args.net, args.batch)

    times = {"auto": [], "nchw": []}
    for mode in times:   # warm-up: buffers, page faults
        settings.layout = mode
        step()
        step()
    for _ in range(args.rounds):
        for mode in times:
            settings.layout = mode
            t = time.perf_counter()
            step()
            step()
            times[mode].append((time.perf_counter() - t) / 2 * 1e3)
    med = {k: float(np.median(v)) for k, v in times.items()}
    print(f"{args.net} batch {args.batch}: auto {med['auto']:.1f} ms, nchw {med['nchw']:.1f} ms, "
          f"nchw/auto {med['nchw'] / med['auto']:.2f}x (medians of {args.rounds}, interleaved)")
    if args.profile:
        settings.layout = "auto"
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(5):
            step()
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(15)


if __name__ == "__main__":
    main()
