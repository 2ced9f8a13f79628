"""A/B of the blocked depthwise kernels (csrc/cpu/depthwise_blocked*.cpp) between two builds of
fasttrain._C in one process: a saved copy of the baseline's extension module (--base PATH) against
the installed one, interleaved (bench.harness.time_interleaved), on the bench rows' shapes and
arrays (bench/kernels.py _depthwise_blocked_entry: x with a halo equal to the padding, dy and dx
without). Also checks that the two builds agree (to float32 tolerance: a new summation order moves
the weight gradient's last bits).
--stream adds the out-of-place stream probe (c = a + b) over the part's bytes, x with its halo, as a
third contender (for bwd_weight, which only reads, the read-only probe stream_sum, as the bench): new/stream
is then the fraction of that probe's bandwidth the new build reaches.
python bench/dev/dw_blocked_ab.py --base /tmp/dw_base/_C.so [--threads 1] [--parts fwd,bwd_data,bwd_weight,fwd_bwd] [--stream]"""
import argparse
import importlib.machinery
import importlib.util
import statistics
import time

import numpy as np

import fasttrain as ft
import fasttrain._C as C
from bench.harness import time_interleaved
from fasttrain.kernels.blocked import to_blocked
from fasttrain.nn.layout import aligned_empty

SHAPES = [(64, 64, 32, 32, 1), (128, 32, 32, 32, 2), (128, 64, 16, 16, 1), (128, 128, 8, 8, 1),
          (128, 256, 8, 8, 2), (128, 256, 4, 4, 1)]


def load_base(path):
    # the module's init function is PyInit__C: the spec's last name component must be "_C"
    loader = importlib.machinery.ExtensionFileLoader("dwbase._C", path)
    spec = importlib.util.spec_from_file_location("dwbase._C", path, loader=loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--parts", default="bwd_weight,fwd_bwd")
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--shapes", default="")
    ap.add_argument("--isa", default="")
    ap.add_argument("--stream", action="store_true", help="also time the out-of-place stream probe over the part's bytes")
    a = ap.parse_args()
    B = load_base(a.base)
    mods = {"base": B, "new": C}
    if a.threads:
        for m in mods.values():
            m.set_num_threads(a.threads)
        ft.set_num_threads(a.threads)
    if a.isa:
        for m in mods.values():
            m.set_conv2d_isa(a.isa)
    clock = time.thread_time if a.threads == 1 else time.perf_counter
    shapes = [SHAPES[int(i)] for i in a.shapes.split(",")] if a.shapes else SHAPES
    rng = np.random.default_rng(0)
    for N, Cc, H, W, s in shapes:
        P = Q = (H + 2 - 3) // s + 1
        cb = -(-Cc // 16)
        x = rng.standard_normal((N, Cc, H, W), dtype=np.float32)
        w = rng.standard_normal((Cc, 1, 3, 3), dtype=np.float32)
        b = rng.standard_normal(Cc, dtype=np.float32)
        dy = rng.standard_normal((N, Cc, P, Q), dtype=np.float32)
        # inputs on a 64-byte line too, as the bench rows copy them: to_blocked's arrays can start 16 bytes
        # past one, and then every pixel load spans two lines. Even so, the two builds are not timed
        # alike: 64x64x32x32 fwd read new/base 1.13 at 2 threads (load 1.7) with the forward's code
        # unchanged between them; for a change a knob can switch, dw_env_ab.py (one module) is fairer
        xb, dyb = aligned_empty(to_blocked(x, 1).shape), aligned_empty(to_blocked(dy).shape)
        xb[...], dyb[...] = to_blocked(x, 1), to_blocked(dy)
        geo = (s, s, 1, 1)
        # x counted with its halo (the bytes the kernels read)
        xbytes, ybytes = 4.0 * N * cb * 16 * (H + 2) * (W + 2), 4.0 * N * cb * 16 * P * Q

        def nbytes_of(part):
            return 3 * xbytes + 2 * ybytes if part == "fwd_bwd" else xbytes + ybytes
        for part in a.parts.split(","):
            fns, outs = {}, {}
            for name, m in mods.items():
                # outputs on a 64-byte line, as the layers (and the bench rows) allocate them
                o = dict(yb=aligned_empty((N, cb, P, Q, 16)), dxb=aligned_empty((N, cb, H, W, 16)),
                         dw=np.zeros_like(w), db=np.zeros_like(b))
                outs[name] = o

                def f(m=m, o=o):
                    o["dw"][...] = 0
                    o["db"][...] = 0
                    if part == "fwd":
                        m.depthwise_blocked_fwd(xb, w, b, o["yb"], *geo, False, halo_x=1)
                    elif part == "bwd_data":
                        m.depthwise_blocked_bwd_data(dyb, w, o["dxb"], *geo)
                    elif part == "bwd_weight":
                        m.depthwise_blocked_bwd_weight(xb, dyb, o["dw"], o["db"], *geo, halo_x=1)
                    else:
                        m.depthwise_blocked_fwd(xb, w, b, o["yb"], *geo, False, halo_x=1)
                        m.depthwise_blocked_bwd(xb, dyb, w, o["dxb"], o["dw"], o["db"], *geo, halo_x=1)
                fns[name] = f
            if a.stream and part == "bwd_weight":  # it only reads: the read-only probe (the bench's limit)
                n2 = max(int(nbytes_of(part)) // 8, 1024)
                s2 = [np.ones(n2, np.float32) for _ in range(2)]
                fns["stream"] = lambda s2=s2: C.stream_sum(*s2)
            elif a.stream:  # the out-of-place stream probe over the part's bytes (c = a + b: 2 reads, 1 write)
                n3 = max(int(nbytes_of(part)) // 12, 1024)
                s3 = [np.ones(n3, np.float32) for _ in range(3)]
                fns["stream"] = lambda s3=s3: C.stream_add(*s3)
            res = time_interleaved(fns, {k: a.repeat for k in fns}, clock=clock)
            keys = {"fwd": ("yb",), "bwd_data": ("dxb",), "bwd_weight": ("dw", "db")}.get(part, ("yb", "dxb", "dw", "db"))
            for k in keys:
                ref, got = outs["base"][k], outs["new"][k]
                err = float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-30))
                assert err < 1e-5, f"{part} {k}: builds differ by {err:.2e}"
            nbytes = nbytes_of(part)
            med = {k: statistics.median(v) for k, v in res.items()}
            row = "  ".join(f"{k} {1e3 * v:7.3f} ms ({nbytes / v / 1e9:5.1f} GB/s)" for k, v in med.items())
            if a.stream:
                row += f"  new/stream {med['stream'] / med['new']:.0%}"
            print(f"{(N, Cc, H, W, s)} {part:10s} {row}  new/base {med['new'] / med['base']:.3f}", flush=True)


if __name__ == "__main__":
    main()
