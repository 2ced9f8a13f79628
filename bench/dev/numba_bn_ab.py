"""A/B of the Numba batchnorm kernels against an older revision of them (default: before the
shifted-sum variance), on the bench entry's work (batchnorm_fwd_train + batchnorm_bwd), rounds
interleaved and alternating in order so machine load hits both alike. Reports wall-time medians
and minima, and process CPU time (steadier on a shared machine: waiting for a core is not counted).

Usage: python bench/dev/numba_bn_ab.py [--rev db5d5b4^] [--shape 64 64 32 32] [--rounds 100]
(run with NUMBA_NUM_THREADS=1 for a single-thread CPU-time comparison)
"""
import argparse
import importlib
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

import fasttrain.kernels.numba.batchnorm as current

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_revision(rev: str):
    """The module fasttrain/kernels/numba/batchnorm.py as of git revision `rev`, imported under its
    own name from a temporary folder (Numba's cache needs a module it can import again)."""
    source = subprocess.run(["git", "show", f"{rev}:fasttrain/kernels/numba/batchnorm.py"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout
    folder = tempfile.mkdtemp(prefix="bn_ab_")
    with open(os.path.join(folder, "bn_before.py"), "w") as f:
        f.write(source)
    sys.path.insert(0, folder)
    return importlib.import_module("bn_before")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rev", default="db5d5b4^")
    ap.add_argument("--shape", type=int, nargs=4, default=[64, 64, 32, 32])
    ap.add_argument("--rounds", type=int, default=100)
    args = ap.parse_args()
    before = load_revision(args.rev)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(args.shape, dtype=np.float32)
    dy = rng.standard_normal(args.shape, dtype=np.float32)
    y, dx = np.empty_like(x), np.empty_like(x)
    c = args.shape[1]
    g, b = np.ones(c, np.float32), np.zeros(c, np.float32)
    m, inv, dg, db = (np.zeros(c, np.float32) for _ in range(4))

    def step(mod, bwd):
        mod.batchnorm_fwd_train(x, g, b, 1e-5, y, m, inv)
        if bwd:
            mod.batchnorm_bwd(x, dy, g, m, inv, dx, dg, db)

    mods = {"before": before, "now": current}
    for mod in mods.values():
        for _ in range(3):
            step(mod, True)
    wall = {(k, bwd): [] for k in mods for bwd in (True, False)}
    cpu = {key: [] for key in wall}
    for r in range(args.rounds):
        for bwd in (True, False):
            for name in (("before", "now") if r % 2 == 0 else ("now", "before")):
                t, p = time.perf_counter(), time.process_time()
                step(mods[name], bwd)
                wall[(name, bwd)].append(time.perf_counter() - t)
                cpu[(name, bwd)].append(time.process_time() - p)
    for bwd in (True, False):
        what = "fwd_train+bwd" if bwd else "fwd_train"
        for label, table, stat in (("wall median", wall, np.median), ("wall min", wall, np.min),
                                   ("cpu median", cpu, np.median)):
            a, n = stat(table[("before", bwd)]) * 1e3, stat(table[("now", bwd)]) * 1e3
            print(f"{what:14s} {label:11s} before {a:7.2f} ms  now {n:7.2f} ms  now/before {n / a:.3f}")


if __name__ == "__main__":
    main()
