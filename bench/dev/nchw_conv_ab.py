"""Interleaved A/B of the NCHW conv2d entry points (fwd, bwd_data, bwd_weight) between an older
build of fasttrain._C and this one: each side runs in its own process (the two modules cannot share
one), the processes alternating round by round; per process the min of 7 timed calls of each op
(two calls per sample), reported as the median over rounds. One thread times CPU time
(time.process_time, with OpenBLAS held to one thread too), so a loaded machine inflates it less.

    cp .venv/lib/python3.11/site-packages/fasttrain/_C*.so /tmp/old/pkg/ft/   # before rebuilding
    ln -s $PWD/.venv/lib/python3.11/site-packages/scipy_openblas32 /tmp/old/pkg/  # the .so's RUNPATH
    python bench/dev/nchw_conv_ab.py /tmp/old/pkg/ft/_C.cpython-311-x86_64-linux-gnu.so \\
        --shape 128,32,16,16,64,1,2,0 [--threads 1] [--rounds 5]

--shape: N,C,H,W,K,R,stride,pad (square kernel, same stride and padding on both axes)."""
import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = r'''
import sys, time, json, importlib.util
import numpy as np
if sys.argv[1] != "new":   # the old build, loaded from its file under the module's own name
    spec = importlib.util.spec_from_file_location("fasttrain._C", sys.argv[1])
    C = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(C)
else:
    import fasttrain._C as C
nt = int(sys.argv[3])
C.set_num_threads(nt)
N, Cc, H, W, K, R, s, pad = (int(v) for v in sys.argv[2].split(","))
P, Q = (H + 2 * pad - R) // s + 1, (W + 2 * pad - R) // s + 1
rng = np.random.default_rng(0)
x = rng.standard_normal((N, Cc, H, W), dtype=np.float32)
w = rng.standard_normal((K, Cc, R, R), dtype=np.float32)
b = rng.standard_normal(K, dtype=np.float32)
dy = rng.standard_normal((N, K, P, Q), dtype=np.float32)
y, dx = np.empty((N, K, P, Q), np.float32), np.empty_like(x)
dw, db = np.zeros_like(w), np.zeros_like(b)
clock = time.process_time if nt == 1 else time.perf_counter
ops = {"fwd": lambda: C.conv2d_fwd(x, w, b, y, s, s, pad, pad, False),
       "bwd_data": lambda: C.conv2d_bwd_data(dy, w, dx, s, s, pad, pad),
       "bwd_weight": lambda: C.conv2d_bwd_weight(x, dy, dw, db, s, s, pad, pad)}
res = {k: [] for k in ops}
for _ in range(7):
    for k, f in ops.items():
        f()
        t = clock()
        f()
        f()
        res[k].append((clock() - t) / 2)
print(json.dumps({k: min(v) for k, v in res.items()}))
'''


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("old", help="the older build's _C*.so (its RUNPATH must find scipy_openblas32)")
    ap.add_argument("--shape", default="128,32,16,16,64,1,2,0")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(args.threads), OMP_NUM_THREADS=str(args.threads))
    out = {"old": [], "new": []}
    for _ in range(args.rounds):
        for side in out:
            run = subprocess.run([sys.executable, "-c", CHILD, args.old if side == "old" else "new", args.shape,
                                  str(args.threads)], capture_output=True, text=True, env=env, check=True)
            out[side].append(json.loads(run.stdout))
    print(f"shape {args.shape}, {args.threads} thread(s), ms ({'CPU' if args.threads == 1 else 'wall'} time, "
          f"median over {args.rounds} processes of each one's min)")
    for side, runs in out.items():
        print(f"  {side}  " + "  ".join(f"{k} {statistics.median(r[k] for r in runs) * 1e3:.3f}" for k in runs[0]))


if __name__ == "__main__":
    main()
