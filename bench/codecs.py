"""Gradient codec throughput per core (fasttrain/parallel/codecs.py): every codec's encode (plain and
with the fused error-feedback residual) and decode on ONE thread, C++ against the NumPy reference.

GB/s counts the float32 side only (4 * n bytes: read by encode, written by decode), the figure the
ring cares about (how fast a core turns a gradient into wire bytes and back); % of limit uses the
bytes really moved against the machine's bandwidth (all threads), so it is one core's share. Each C++ record is
checked byte for byte against the reference before and after its timed runs.
"""
from __future__ import annotations

import numpy as np

import fasttrain as ft
from fasttrain import settings
from fasttrain.parallel import codecs as C

from .harness import make_record, time_fn

CODECS = ("fp16", "bf16", "int8", "int4", "sign")
DIRECTIONS = ("encode", "encode_ef", "decode")
SEED = 20240817


def _arrays(codec, n):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(n, dtype=np.float32)
    r = (rng.standard_normal(n, dtype=np.float32) * np.float32(1e-2))
    data = np.empty(codec.nbytes(n), np.uint8)
    codec.encode(x, data, np.random.default_rng(SEED))  # a valid encoding for decode to read
    return {"x": x, "r0": r, "r": r.copy(), "data": data, "out": np.empty(codec.nbytes(n), np.uint8),
            "y": np.empty(n, np.float32)}


def _call(codec, direction, a):
    if direction == "decode":
        return lambda: codec.decode(a["data"], a["y"])
    if direction == "encode":
        return lambda: codec.encode(a["x"], a["out"], np.random.default_rng(SEED))
    # error feedback: the residual is overwritten each call; its values do not change the work done
    return lambda: codec.encode(a["x"], a["out"], np.random.default_rng(SEED), residual=a["r"])


def _result(codec, direction, a, impl):
    """The outputs of one fresh call under `impl` (residual restored first)."""
    C.use_cpp(impl == "cpp")
    a["r"][...] = a["r0"]
    _call(codec, direction, a)()
    if direction == "decode":
        return (a["y"].copy(),)
    return (a["out"].copy(), a["r"].copy()) if direction == "encode_ef" else (a["out"].copy(),)


def _check(name, codec, direction, a):
    ref, got = _result(codec, direction, a, "numpy"), _result(codec, direction, a, "cpp")
    for r, g in zip(ref, got):
        if r.tobytes() != g.tobytes():
            raise AssertionError(f"bench {name}: C++ differs from the NumPy reference")


def _record(name, impl, n, encoded, direction, samples, limits, working_set, bandwidth):
    """GB/s on the float32 side (4 n bytes); % of the bandwidth limit on the bytes really moved
    (x, the residual read and written back, the encoded bytes)."""
    rec = make_record("kernels", name, impl, (n,), samples, 4.0 * n, None, None, encoded_bytes=encoded)
    moved = {"encode": 4.0 * n + encoded, "encode_ef": 12.0 * n + encoded, "decode": 4.0 * n + encoded}[direction]
    rec.extra["moved_bytes"] = moved
    if limits is not None:
        rec.limit = "bandwidth"
        rec.pct_of_limit = 100.0 * moved / rec.median_s / bandwidth
        rec.extra.update(working_set_bytes=int(working_set), limit_gbps=round(bandwidth / 1e9, 2))
    return rec


def run(limits, quick: bool = False, repeat: int = 7, log=print) -> list:
    n = (1 << 16) if quick else (8 << 20)  # 32 MiB of float32
    has_cpp = C._C is not None
    saved_threads, saved_impl = settings.num_threads, C.impl()
    ft.set_num_threads(1)  # the figure is per core
    records = []
    try:
        for cname in CODECS:
            codec = C.get_codec(cname)
            a = _arrays(codec, n)
            working_set = sum(v.nbytes for v in a.values())
            # per core: the probe runs on one thread too (the caller set it above)
            bandwidth = limits.bandwidth_at(working_set) if limits is not None else None
            for direction in DIRECTIONS:
                name = f"codec_{cname}_{direction}"
                for impl in (["cpp"] if has_cpp else []) + ["numpy"]:
                    if impl == "cpp":
                        _check(name, codec, direction, a)
                    C.use_cpp(impl == "cpp")
                    reps = 3 if (quick or impl == "numpy") else repeat
                    samples = time_fn(_call(codec, direction, a), repeat=reps, warmup=1)
                    if impl == "cpp":
                        _check(name, codec, direction, a)
                    records.append(_record(name, impl, n, codec.nbytes(n), direction, samples, limits,
                                           working_set, bandwidth))
                    log(f"  {name:<20} {impl:<6} {records[-1].median_s * 1e3:9.3f} ms "
                        f"{records[-1].gbps:6.2f} GB/s/core")
    finally:
        ft.set_num_threads(saved_threads)
        C.use_cpp(saved_impl == "cpp")
    return records


def main(argv=None) -> int:
    """`python -m bench.codecs [--quick] [--repeat R] [--json PATH]`: this group alone."""
    import argparse

    from .harness import measure_limits, print_table, ratios, write_jsonl

    ap = argparse.ArgumentParser(prog="python -m bench.codecs", description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    limits, _ = measure_limits(quick=True)
    records = run(limits, quick=args.quick, repeat=args.repeat)
    print()
    print_table(records)
    for r in ratios(records):
        print(f"  {r['name']:<22} {r['ours']} vs {r['vs']}: {r['speedup']:6.1f}x")
    if args.json:
        write_jsonl(args.json, records)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
