"""The exp-based Numba kernels (sigmoid, tanh, ELU, softmax cross-entropy; fasttrain/kernels/numba/
_vmath.py) against the same modules at another git revision, the C++ and the NumPy ones.

    python bench/dev/numba_exp.py [--base-rev main] [--runs 9] [--rounds 3]    # timing
    python bench/dev/numba_exp.py --compile [--base-rev main] [--rounds 5]     # first-call times
    python bench/dev/numba_exp.py --sweep                                      # bits vs vmath.h

Timing: bench/kernels.py sizes (4M floats, 1024 x 1000 logits), every variant called once per run
in turn so load from other processes hits all alike; medians over all runs of all rounds. Outputs
are compared with the NumPy reference first. --compile: a fresh process per variant and phase,
cold (empty NUMBA_CACHE_DIR: compile + cache write) and warm (cache load), import + first call of
every op of the family. --sweep: the Numba exp/expm1/tanh/sigmoid against the C++ ones over all
2^32 float32 inputs, bit for bit (about 2 minutes).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

FAMILIES = ("activations", "losses")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def checkout_base(rev, where, cache=False):
    """The numba activations/losses (and _vmath, where it exists) at `rev`, as package `nbbase`
    under `where`, uncached unless `cache`."""
    pkg = os.path.join(where, "nbbase")
    os.makedirs(pkg)
    open(os.path.join(pkg, "__init__.py"), "w").close()
    for name in FAMILIES + ("_vmath",):
        out = subprocess.run(["git", "show", f"{rev}:fasttrain/kernels/numba/{name}.py"], cwd=ROOT,
                             capture_output=True, text=True)
        if out.returncode == 0:
            with open(os.path.join(pkg, f"{name}.py"), "w") as f:
                f.write(out.stdout if cache else out.stdout.replace("cache=True", "cache=False"))
    sys.path.insert(0, where)


def cases(base):
    from fasttrain import backend as B
    from fasttrain.kernels.numba import activations, losses
    rng = np.random.default_rng(0)
    n = 4_194_304
    x = (rng.standard_normal(n, dtype=np.float32) * 4)
    dy = rng.standard_normal(n, dtype=np.float32)
    y = np.empty_like(x)
    logits = rng.standard_normal((1024, 1000), dtype=np.float32)
    labels = rng.integers(0, 1000, 1024).astype(np.int64)
    d = np.empty_like(logits)
    mods = {"numpy": None, "cpp": None, "numba base": base, "numba": (activations, losses)}
    # (op, family index, arguments, the output among them)
    spec = [("sigmoid_fwd", 0, (x, y), y), ("tanh_fwd", 0, (x, y), y), ("elu_fwd", 0, (x, y, 0.7), y),
            ("elu_bwd", 0, (x, dy, y, 0.7), y), ("softmax_xent", 1, (logits, labels, d), d)]
    rows = []
    for op, fam, args, out in spec:
        fns = {name: B.kernel(op, backend=name) if m is None else getattr(m[fam], op) for name, m in mods.items()}
        rows.append((op, args, out, fns))
    return rows


def timing(args):
    import numba

    from fasttrain import settings
    with tempfile.TemporaryDirectory() as where:
        checkout_base(args.base_rev, where)
        import nbbase.activations
        import nbbase.losses
        rows = cases((nbbase.activations, nbbase.losses))
    print(f"threads {settings.num_threads} (numba {numba.get_num_threads()}); base = {args.base_rev}; "
          f"ms, median of {args.runs} runs x {args.rounds} rounds")
    print(f"{'kernel':<14}" + "".join(f"{k:>12}" for k in rows[0][3]) + f"{'new/base':>10}{'new/cpp':>9}")
    for op, a, out, fns in rows:
        want = None
        for name, f in fns.items():           # compiles, and checks every variant against NumPy's
            out.fill(np.nan)
            f(*a)
            want = out.copy() if want is None else want
            np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-6, err_msg=f"{op} {name}")
        t = {k: [] for k in fns}
        for _ in range(args.rounds):
            for _ in range(args.runs):
                for k, f in fns.items():
                    t0 = time.perf_counter()
                    f(*a)
                    t[k].append(time.perf_counter() - t0)
        med = {k: float(np.median(v)) * 1e3 for k, v in t.items()}
        print(f"{op:<14}" + "".join(f"{med[k]:12.3f}" for k in fns)
              + f"{med['numba'] / med['numba base']:10.3f}{med['numba'] / med['cpp']:9.2f}", flush=True)


_EXERCISE = r'''
import sys, time, json, importlib
t0, c0 = time.perf_counter(), time.process_time()
sys.path.insert(0, sys.argv[3])
import numpy as np
import fasttrain.kernels.numba   # the backend's thread setting, as in a training run
m = importlib.import_module(sys.argv[1] + "." + sys.argv[2])
r = np.random.default_rng(0)
def a(*s): return r.standard_normal(s).astype(np.float32)
if sys.argv[2] == "activations":
    x, dy = a(2, 3, 4), a(2, 3, 4); y = np.empty_like(x)
    for op in ("relu", "sigmoid", "tanh"):
        getattr(m, op + "_fwd")(x, y); getattr(m, op + "_bwd")(x, dy, y)
    for op in ("leaky_relu", "elu"):
        getattr(m, op + "_fwd")(x, y, .1); getattr(m, op + "_bwd")(x, dy, y, .1)
    al = np.abs(a(3)); m.prelu_fwd(x, al, y); m.prelu_bwd(x, al, dy, y, np.zeros(3, np.float32))
else:
    m.softmax_xent(a(4, 5), np.array([0, 1, 2, 4]), np.empty((4, 5), np.float32))
print(json.dumps({"wall": time.perf_counter() - t0, "cpu": time.process_time() - c0}))
'''


def compile_times(args):
    with tempfile.TemporaryDirectory() as where:
        checkout_base(args.base_rev, where, cache=True)   # NUMBA_CACHE_DIR below redirects the files
        res = {}
        for _ in range(args.rounds):
            for fam in FAMILIES:
                for ver, pkg in (("base", "nbbase"), ("new", "fasttrain.kernels.numba")):
                    with tempfile.TemporaryDirectory() as cache:
                        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
                        for phase in ("cold", "warm"):
                            out = subprocess.run([sys.executable, "-c", _EXERCISE, pkg, fam, where], env=env,
                                                 capture_output=True, text=True, check=True, cwd=ROOT)
                            res.setdefault((fam, ver, phase), []).append(json.loads(out.stdout.splitlines()[-1]))
    print(f"base = {args.base_rev}; s, median of {args.rounds}; import + first call of every op, fresh process")
    print(f"{'family':<12} {'ver':<5} {'cold wall':>9} {'cold cpu':>9} {'warm wall':>9} {'warm cpu':>9}")
    for fam in FAMILIES:
        for ver in ("base", "new"):
            def med(phase, key):
                return float(np.median([r[key] for r in res[(fam, ver, phase)]]))
            print(f"{fam:<12} {ver:<5} {med('cold', 'wall'):9.2f} {med('cold', 'cpu'):9.2f} "
                  f"{med('warm', 'wall'):9.2f} {med('warm', 'cpu'):9.2f}")


def sweep(_args):
    import numba as nb

    from fasttrain import _C
    from fasttrain.kernels.numba import _vmath, activations

    def loop(f):
        @nb.njit(parallel=True, error_model="numpy")
        def run(x, y):
            for i in nb.prange(x.size):
                y[i] = f(x[i])
        return run

    pairs = {"exp": (loop(_vmath.exp_f32), _C.vmath_exp), "expm1": (loop(_vmath.expm1_f32), _C.vmath_expm1),
             "tanh": (activations.tanh_fwd, _C.tanh_fwd), "sigmoid": (activations.sigmoid_fwd, _C.sigmoid_fwd)}
    chunk = 1 << 24
    for name, (numba_fn, cpp_fn) in pairs.items():
        differ, first = 0, None
        for c in range((1 << 32) // chunk):
            x = np.arange(c * chunk, (c + 1) * chunk, dtype=np.uint64).astype(np.uint32).view(np.float32)
            a, b = np.empty_like(x), np.empty_like(x)
            numba_fn(x, a)
            cpp_fn(x, b)
            same = (a.view(np.uint32) == b.view(np.uint32)) | (np.isnan(a) & np.isnan(b))
            if not same.all():
                differ += int((~same).sum())
                first = first if first is not None else x[~same][0]
        print(f"{name}: {differ} of 2^32 inputs give other bits than vmath.h"
              + (f" (first at x = {first!r})" if differ else ""), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base-rev", default="main", help="git revision of the modules to compare with")
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--rounds", type=int, default=3)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--compile", action="store_true")
    mode.add_argument("--sweep", action="store_true")
    args = ap.parse_args()
    (compile_times if args.compile else sweep if args.sweep else timing)(args)


if __name__ == "__main__":
    main()
