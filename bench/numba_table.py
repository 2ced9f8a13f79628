"""Numba kernels beside the C++ and NumPy ones, and Numba's compile and cache-load times.

    python -m bench.numba_table [--quick] [--repeat 5] [--compile-only | --no-compile]

Table: for each entry of bench/kernels.py (same sizes, same correctness check against the NumPy
reference first), the median of `repeat` timed calls per backend, and the ratios numba/cpp and
numba/numpy (below 1 = Numba faster). All figures come from this one run.

Compile times: for each numba module, a fresh process with NUMBA_CACHE_DIR pointing at an empty
directory imports the module and calls every op once on tiny arrays (cold: JIT compile + cache
write); a second fresh process with the same cache directory does the same (warm: cache load).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from fasttrain import backend as B

from . import kernels
from .harness import time_fn

BACKENDS = ("numpy", "cpp", "numba")


def table(quick: bool, repeat: int, log=print) -> list[dict]:
    rows = []
    for entry in kernels.entries(quick):
        avail = kernels._backends_for(entry)
        row = {"name": entry.name, "shape": str(entry.shape)}
        for backend in BACKENDS:
            if backend not in avail:
                continue
            kernels._check(entry, backend)
            arrays = entry.inputs()
            fns = {op: B.kernel(op, backend=backend) for op in entry.ops}
            samples = time_fn(lambda: entry.run(fns.__getitem__, arrays), repeat=repeat, warmup=1)
            row[backend] = float(np.median(samples))
        rows.append(row)
        log(_fmt(row), flush=True)
    return rows


def _fmt(row) -> str:
    def ms(b):
        return f"{row[b] * 1e3:10.3f}" if b in row else f"{'-':>10}"

    def ratio(a, b):
        return f"{row[a] / row[b]:8.2f}" if a in row and b in row else f"{'-':>8}"

    return (f"{row['name']:<18} {row['shape'][:22]:<22} {ms('numpy')} {ms('cpp')} {ms('numba')} "
            f"{ratio('numba', 'cpp')} {ratio('numba', 'numpy')}")


HEADER = (f"{'kernel':<18} {'shape':<22} {'numpy ms':>10} {'cpp ms':>10} {'numba ms':>10} "
          f"{'nb/cpp':>8} {'nb/numpy':>8}")

# One call of every op of a family on tiny float32 arrays (what a first training step triggers).
_EXERCISE = r'''
import sys, time, json
t0, c0 = time.perf_counter(), time.process_time()
import numpy as np
import importlib
family = sys.argv[1]
m = importlib.import_module("fasttrain.kernels.numba." + family)
t_import = time.perf_counter() - t0
f = np.float32
r = np.random.default_rng(0)
def a(*s): return r.standard_normal(s).astype(f)
t1 = time.perf_counter()
if family == "optim":
    p, g, s1, s2 = a(10), a(10), np.abs(a(10)) + 1, np.abs(a(10)) + 1
    m.sgd_step(p, g, .1, 0., 0.); m.momentum_step(p, g, s1, .1, .9, 0., 0., 0.); m.nesterov_step(p, g, s1, .1, .9, 0., 0., 0.)
    m.adagrad_step(p, g, s1, .1, 1e-8, 0., 0.); m.rmsprop_step(p, g, s1, .1, .9, 1e-8, 0., 0.)
    m.rmsprop_centered_step(p, g, s1, s2 * 0, .1, .9, 1e-8, 0., 0.)
    m.adam_step(p, g, s1, s2, .1, .9, .99, 1e-8, .1, .01, 0., 0., 0.)
elif family == "dropout":
    x = a(10); y = np.empty_like(x)
    m.dropout_fwd(x, y, .5, 1, 2, 3); m.dropout_bwd(x, y, .5, 1, 2, 3); m.dropout_mask(np.empty(10, np.uint8), .5, 1, 2, 3)
elif family == "activations":
    x, dy = a(2, 3, 4), a(2, 3, 4); y = np.empty_like(x)
    for op in ("relu", "sigmoid", "tanh"):
        getattr(m, op + "_fwd")(x, y); getattr(m, op + "_bwd")(x, dy, y)
    for op in ("leaky_relu", "elu"):
        getattr(m, op + "_fwd")(x, y, .1); getattr(m, op + "_bwd")(x, dy, y, .1)
    al = np.abs(a(3)); m.prelu_fwd(x, al, y); m.prelu_bwd(x, al, dy, y, np.zeros(3, f))
elif family == "batchnorm":
    x, dy = a(2, 3, 4, 4), a(2, 3, 4, 4); y = np.empty_like(x); g, b = np.ones(3, f), np.zeros(3, f)
    mu, inv = np.empty(3, f), np.empty(3, f)
    m.batchnorm_fwd_train(x, g, b, 1e-5, y, mu, inv); m.batchnorm_fwd_eval(x, g, b, mu, inv, 1e-5, y)
    m.batchnorm_bwd(x, dy, g, mu, inv, y, np.zeros(3, f), np.zeros(3, f))
elif family == "pooling":
    x = a(2, 3, 4, 4); y = np.empty((2, 3, 2, 2), f); am = np.empty(y.shape, np.int64); dx = np.empty_like(x)
    m.maxpool2d_fwd(x, y, am, 2, 2, 2, 2, 0, 0); m.maxpool2d_bwd(y, am, dx)
    m.avgpool2d_fwd(x, y, 2, 2, 2, 2, 0, 0); m.avgpool2d_bwd(y, dx, 2, 2, 2, 2, 0, 0)
elif family == "losses":
    m.softmax_xent(a(4, 5), np.array([0, 1, 2, 4]), np.empty((4, 5), f))
elif family == "linear":
    x, w, b, dy = a(4, 3), a(5, 3), a(5), a(4, 5)
    m.linear_fwd(x, w, b, np.empty((4, 5), f)); m.linear_bwd(x, w, dy, np.empty_like(x), np.zeros_like(w), np.zeros(5, f))
elif family == "conv2d":
    x, w, b, dy = a(2, 3, 5, 5), a(4, 3, 3, 3), a(4), a(2, 4, 5, 5)
    m.conv2d_fwd(x, w, b, np.empty((2, 4, 5, 5), f), 1, 1, 1, 1, False)
    m.conv2d_bwd_data(dy, w, np.empty_like(x), 1, 1, 1, 1); m.conv2d_bwd_weight(x, dy, np.zeros_like(w), np.zeros(4, f), 1, 1, 1, 1)
print(json.dumps({"import_s": t_import, "first_calls_s": time.perf_counter() - t1, "cpu_s": time.process_time() - c0}))
'''


def compile_times(log=print, families=None) -> list[dict]:
    rows = []
    for family in families or [f for f in B.FAMILIES if f not in B.CPP_ONLY_FAMILIES]:
        with tempfile.TemporaryDirectory() as cache:
            env = dict(os.environ, NUMBA_CACHE_DIR=cache)
            got = {}
            for phase in ("cold", "warm"):
                t0 = time.perf_counter()
                out = subprocess.run([sys.executable, "-c", _EXERCISE, family], env=env, capture_output=True,
                                     text=True, timeout=600)
                wall = time.perf_counter() - t0
                if out.returncode != 0:
                    raise RuntimeError(f"compile_times({family}, {phase}): {out.stderr[-2000:]}")
                rec = json.loads(out.stdout.strip().splitlines()[-1])
                got[phase] = rec["import_s"] + rec["first_calls_s"]
                got[phase + "_cpu_s"] = rec["cpu_s"]
                got[phase + "_process_s"] = wall
        row = {"family": family, **got}
        rows.append(row)
        log(f"{family:<12} {got['cold']:8.2f} {got['warm']:8.2f} {got['cold_process_s']:10.2f} {got['warm_process_s']:10.2f}"
            f" {got['cold_cpu_s']:9.2f} {got['warm_cpu_s']:9.2f}", flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the small sizes of bench/kernels.py")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--compile-only", action="store_true")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--families", default="", help="comma-separated numba modules to compile-time (default: all)")
    args = ap.parse_args(argv)
    if "numba" not in B.backends() or B.backends()["numba"] != "available":
        print(f"numba backend unavailable: {B.backends()['numba']}")
        return 1
    from fasttrain import settings
    print(f"threads: {settings.num_threads}")
    if not args.compile_only:
        print(HEADER)
        print("-" * len(HEADER))
        table(args.quick, args.repeat)
    if not args.no_compile:
        print("\ncompile (cold cache) and cache load (warm), seconds: import + first call of every op;")
        print("process = whole fresh interpreter incl. numpy/fasttrain import; cpu = CPU seconds of import +")
        print("first calls (steadier than wall time on a shared machine: compiling is single-threaded)")
        print(f"{'family':<12} {'cold':>8} {'warm':>8} {'cold proc':>10} {'warm proc':>10} {'cold cpu':>9} {'warm cpu':>9}")
        compile_times(families=[f for f in args.families.split(",") if f] or None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
