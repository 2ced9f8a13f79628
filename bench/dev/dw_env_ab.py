"""Interleaved A/B of bench kernel rows under settings of environment variables the C++ kernels read
per call (a dev knob compiled in for one experiment): each setting a burst of the row, rotating.
python bench/dev/dw_env_ab.py "FT_X=0;FT_X=2" dw_blocked_fwd:64,64,32 [--threads 1] [--torch] [--cpu-time]"""
import argparse
import os
import statistics
import time

import fasttrain as ft
import fasttrain._C as C
from bench import kernels as K
from bench.harness import time_interleaved


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("settings", help="';'-separated settings, each ','-separated VAR=value (empty: none)")
    ap.add_argument("rows", nargs="+", help="name[:shape prefix], e.g. dw_blocked_fwd:64,64,32")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--torch", action="store_true")
    ap.add_argument("--cpu-time", action="store_true",
                    help="time every thread's CPU time (process_time) at any thread count: less hurt by a loaded "
                         "machine's preemption than wall time, though it counts OpenMP's spin at the barriers")
    a = ap.parse_args()
    ft.set_num_threads(a.threads)
    C.set_num_threads(a.threads)  # the raw module has its own setting (ft.set_num_threads does not reach it)
    clock = time.process_time if a.cpu_time else time.thread_time if a.threads == 1 else time.perf_counter
    settings = [dict(kv.split("=") for kv in s.split(",") if kv) for s in a.settings.split(";")]
    names = {v for s in settings for v in s}
    for e in K.entries(quick=False):
        shape = ",".join(map(str, e.shape))
        if not any(e.name == r.split(":")[0] and shape.startswith(r.split(":")[1] if ":" in r else "") for r in a.rows):
            continue
        arrays = e.inputs()
        fns = {}
        for s in settings:
            def f(s=s):
                for v in names:
                    os.environ.pop(v, None)
                os.environ.update(s)
                e.run(lambda op: getattr(C, op), arrays)
            fns[";".join(f"{k}={v}" for k, v in s.items()) or "base"] = f
        if a.torch and e.torch:
            import torch
            torch.set_num_threads(a.threads)
            tf = e.torch["torch-cl"] if isinstance(e.torch, dict) else e.torch
            fns["torch-cl"] = tf(torch, e.inputs())
        res = time_interleaved(fns, {k: a.repeat for k in fns}, clock=clock)
        med = {k: (min if os.environ.get("AB_MIN") else statistics.median)(v) for k, v in res.items()}
        base = next(iter(med.values()))
        print(f"{e.name} {e.shape}: " + "  ".join(f"{k} {1e3 * v:.3f} ms ({base / v:.2f}x, {e.nbytes / v / 1e9:.0f} GB/s)"
                                                   for k, v in med.items()), flush=True)
        for v in names:
            os.environ.pop(v, None)


if __name__ == "__main__":
    main()
