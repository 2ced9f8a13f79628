"""Interleaved C++ vs Numba timing of dropout (forward and backward separately) and the optimizer
updates, for checking the "Numba within 1.3x of C++" target of the kernel families.

    python bench/dev/numba_vs_cpp.py [--threads 2] [--runs 21] [--rounds 3] [--only dropout,momentum]

Each round times every (kernel, backend) pair once per run, alternating backends run by run, so a
burst of load from other processes hits both sides alike; the figure per pair is the median over
all runs of all rounds, and the ratio numba/cpp is of those medians. Beside wall time, the process
CPU time of each call (all threads; run with OMP_WAIT_POLICY=passive so idle workers do not spin):
on a machine shared with other jobs a descheduled thread stretches the wall time of a parallel call
but not its CPU time, so the CPU ratio is the steadier measure of the kernels' own work. Outputs are
compared with the C++ ones (bit for bit for dropout) before timing.
"""
import argparse
import time

import numpy as np

import fasttrain as ft
from fasttrain import backend as B

N_DROP = 4_194_304
N_OPT = 10_000_000


def _arrays(n, names, seed=0):
    rng = np.random.default_rng(seed)
    # second-moment states must be non-negative
    return {k: np.abs(rng.standard_normal(n, dtype=np.float32)) if k in ("v", "s") else
            rng.standard_normal(n, dtype=np.float32) for k in names}


def cases():
    """name -> (make arrays, call(kernel lookup, arrays), names of the outputs compared)"""
    return {
        "dropout_fwd": (lambda: _arrays(N_DROP, ("x", "y")),
                        lambda k, a: k("dropout_fwd")(a["x"], a["y"], 0.5, 1234, 7, 3), ("y",), 0.0),
        "dropout_bwd": (lambda: _arrays(N_DROP, ("dy", "dx")),
                        lambda k, a: k("dropout_bwd")(a["dy"], a["dx"], 0.5, 1234, 7, 3), ("dx",), 0.0),
        "adam": (lambda: _arrays(N_OPT, ("p", "g", "m", "v")),
                 lambda k, a: k("adam_step")(a["p"], a["g"], a["m"], a["v"], 1e-3, 0.9, 0.999, 1e-8, 0.1, 0.001,
                                             1e-4, 0.0, 0.0), ("p", "m", "v"), 1e-5),
        "adamw": (lambda: _arrays(N_OPT, ("p", "g", "m", "v")),
                  lambda k, a: k("adam_step")(a["p"], a["g"], a["m"], a["v"], 1e-3, 0.9, 0.999, 1e-8, 0.1, 0.001,
                                              0.0, 0.0, 1e-2), ("p", "m", "v"), 1e-5),
        "rmsprop": (lambda: _arrays(N_OPT, ("p", "g", "s")),
                    lambda k, a: k("rmsprop_step")(a["p"], a["g"], a["s"], 1e-3, 0.99, 1e-8, 0.0, 0.0),
                    ("p", "s"), 1e-5),
        "sgd_momentum": (lambda: _arrays(N_OPT, ("p", "g", "v")),
                         lambda k, a: k("momentum_step")(a["p"], a["g"], a["v"], 1e-2, 0.9, 0.0, 1e-4, 0.0),
                         ("p", "v"), 1e-5),
    }


def _check(name, make, call, outs, rtol):
    got = {}
    for backend in ("cpp", "numba"):
        a = make()
        call(lambda op: B.kernel(op, backend=backend), a)
        got[backend] = a
    for o in outs:
        x, y = got["cpp"][o], got["numba"][o]
        ok = np.array_equal(x.view(np.uint32), y.view(np.uint32)) if rtol == 0 else np.allclose(x, y, rtol=rtol,
                                                                                              atol=1e-6)
        if not ok:
            raise SystemExit(f"{name}: numba output {o!r} differs from cpp")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=21)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", default="")
    args = ap.parse_args()
    ft.set_num_threads(args.threads)
    todo = cases()
    if args.only:
        todo = {k: v for k, v in todo.items() if k in args.only.split(",")}
    print(f"threads {args.threads}, {args.rounds} rounds x {args.runs} runs, interleaved cpp/numba")
    print(f"{'kernel':<14} {'cpp ms':>9} {'numba ms':>9} {'nb/cpp':>7} {'cpp cpu':>9} {'nb cpu':>9} "
          f"{'nb/cpp':>7}   per-round nb/cpp (wall)")
    for name, (make, call, outs, rtol) in todo.items():
        _check(name, make, call, outs, rtol)
        a = make()
        fns = {b: (lambda op, b=b: B.kernel(op, backend=b)) for b in ("cpp", "numba")}
        for b in fns:  # warm up
            call(fns[b], a)
        samples = {"cpp": [], "numba": []}
        cpu = {"cpp": [], "numba": []}
        per_round = []
        for _ in range(args.rounds):
            rs = {"cpp": [], "numba": []}
            for i in range(args.runs):
                order = ("cpp", "numba") if i % 2 == 0 else ("numba", "cpp")
                for b in order:
                    c0 = time.process_time()
                    t0 = time.perf_counter()
                    call(fns[b], a)
                    rs[b].append(time.perf_counter() - t0)
                    cpu[b].append(time.process_time() - c0)
            per_round.append(np.median(rs["numba"]) / np.median(rs["cpp"]))
            for b in rs:
                samples[b] += rs[b]
        c, n = np.median(samples["cpp"]) * 1e3, np.median(samples["numba"]) * 1e3
        cc, nc = np.median(cpu["cpp"]) * 1e3, np.median(cpu["numba"]) * 1e3
        print(f"{name:<14} {c:9.3f} {n:9.3f} {n / c:7.2f} {cc:9.3f} {nc:9.3f} {nc / cc:7.2f}   "
              + " ".join(f"{r:.2f}" for r in per_round), flush=True)


if __name__ == "__main__":
    main()
