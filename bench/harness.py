"""Timing, machine limits and reporting shared by every bench entry.

Every figure is measured in the same run as what it is compared with: a ratio is two records of
one run, never a stored number. Records are JSON lines with at least: suite, name, backend, shape,
threads, median_s, min_s, max_s, bytes, flops, pct_of_limit.
"""
from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import NamedTuple

import numpy as np

import fasttrain as ft
from fasttrain import settings


@dataclass
class Record:
    suite: str
    name: str
    backend: str
    shape: str
    threads: int
    median_s: float
    min_s: float
    max_s: float
    bytes: float | None = None
    flops: float | None = None
    gbps: float | None = None
    gflops: float | None = None
    pct_of_limit: float | None = None
    limit: str | None = None
    ranks: int | None = None
    extra: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({k: v for k, v in asdict(self).items() if v is not None and v != {}})


def time_fn(fn, repeat: int = 7, warmup: int = 2, min_time: float = 0.0) -> list[float]:
    """Wall times of `repeat` calls after `warmup` calls. With min_time, each sample loops the
    call until at least min_time seconds have passed (for microsecond kernels)."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeat):
        n = 0
        t0 = time.perf_counter()
        while True:
            fn()
            n += 1
            elapsed = time.perf_counter() - t0
            if elapsed >= min_time:
                break
        samples.append(elapsed / n)
    return samples


def _low_quantile(times: list[float], q: float = 0.25) -> float:
    """The q-quantile of `times` (linear interpolation between order statistics)."""
    s = sorted(times)
    pos = q * (len(s) - 1)
    i = int(pos)
    return s[i] if i + 1 >= len(s) else s[i] + (s[i + 1] - s[i]) * (pos - i)


def time_interleaved(fns: dict, repeats: dict, warmup: int = 1, settle_s: float = 0.005,
                     min_time_s: float = 0.02, min_calls: int = 3, clock=time.perf_counter) -> dict:
    """Samples of several implementations of one thing, one burst of each per round with the order
    rotating, so that every side of a ratio runs under the same machine state: this shared VM's
    memory bandwidth drifts by up to 2x within seconds, which timing one implementation after the
    other turned into 30 % swings of a ratio between runs. repeats[name]: that implementation's
    sample count (a slow reference needs fewer); it sits out the later rounds. settle_s: a pause
    before each burst, outside the timing, so that the thread pool of the previous implementation
    (OpenMP workers spin for a while after a parallel region; torch, numba and our kernels each
    have their own) is idle and does not take cores from the next.

    A burst calls the implementation back to back until min_time_s has passed and it made
    min_calls calls (a single call when one call takes min_time_s or more), timing each call; its
    sample is the lower quartile of those calls. This VM sometimes adds ~4 ms to a call (a
    scheduler tick: waking a sleeping thread pool, a neighbour's burst), and the first call of a
    burst pays the wake-up of a pool that slept through the settle pause: a mean or a median of few
    calls turned such hits into 20-100 % errors on sub-20 ms rows, while the lower quartile of a
    burst is moved only when most of its calls are hit. Rows then report the median of the samples.
    clock: time.perf_counter (wall time), or time.thread_time for single-threaded work on a machine so
    overloaded that wall time measures the scheduler (the calling thread's CPU time only)."""
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
    samples = {name: [] for name in names}
    for i in range(max(repeats.values())):
        k = i % len(names)
        for name in names[k:] + names[:k]:
            if len(samples[name]) < repeats[name]:
                time.sleep(settle_s)
                times = []
                start = time.perf_counter()
                while True:
                    t0 = clock()
                    fns[name]()
                    t1 = clock()
                    times.append(t1 - t0)
                    if time.perf_counter() - start >= min_time_s and (len(times) >= min_calls or times[0] >= min_time_s):
                        break
                samples[name].append(_low_quantile(times))
    return samples


def make_record(suite, name, backend, shape, samples, nbytes=None, flops=None, limits=None, bandwidth=None,
                inplace_bandwidth=None, flops_limit=None, **extra) -> Record:
    """bandwidth: the limit in bytes/s for this record (from Limits.bandwidth_at, probed at the kernel's
    working set); default: the main-memory figure of `limits`. inplace_bandwidth: the best of all probes
    there (Probed.best), for extra["pct_of_inplace_limit"], the % against it (default: bandwidth, the
    same figure as pct_of_limit), kept beside pct_of_limit so the figure a fresh-output kernel was held
    to before the out-of-place limit stays visible. flops_limit: the FLOP/s roof for this record
    (default: limits.flops, the sgemm rate)."""
    med = statistics.median(samples)
    rec = Record(suite, name, backend, str(shape), settings.num_threads, med, min(samples), max(samples),
                 bytes=nbytes, flops=flops, extra=extra)
    if nbytes:
        rec.gbps = nbytes / med / 1e9
    if flops:
        rec.gflops = flops / med / 1e9
    if limits is not None:
        # A kernel is limited by whichever resource it would saturate first at the machine's peak.
        bandwidth = bandwidth or limits.bandwidth
        t_mem = nbytes / bandwidth if nbytes else 0.0
        t_flop = flops / (flops_limit or limits.flops) if flops else 0.0
        if t_mem or t_flop:
            rec.limit = "bandwidth" if t_mem >= t_flop else "flops"
            rec.pct_of_limit = 100.0 * max(t_mem, t_flop) / med
        if nbytes:
            rec.extra["limit_gbps"] = round(bandwidth / 1e9, 2)
            # the bandwidth share alone, also where the FLOPs (at the sgemm rate) set the limit: a
            # depthwise kernel in cache outruns sgemm's rate, so pct_of_limit there is not a bandwidth figure
            rec.extra["pct_of_bandwidth"] = round(100.0 * t_mem / med, 1)
            rec.extra["pct_of_inplace_limit"] = round(
                100.0 * max(nbytes / (inplace_bandwidth or bandwidth), t_flop) / med, 1)
    return rec


class Probed(NamedTuple):
    """The probes' bandwidths at one working set, bytes/s. out_of_place: the best of the probes that write
    a distinct array (c = a + b, b = s * a), the limit for a kernel whose outputs are fresh arrays: a core
    writing a line it does not own first reads it (read for ownership), which an in-place update never
    pays, so the in-place figure is one no fresh-output kernel can reach (non-temporal stores, which skip
    that read, lost 2x in cache). best: the best of all probes, in-place ones included, the limit for a
    kernel that updates its arrays in place (optimizer steps). read_only: the read-only probe (a sum: every
    byte read, none written), the limit for a kernel that only reads (a weight gradient writes a few
    floats): the in-place probes' counted bytes are 1/3 writes, which go out on the caches' write path
    beside the reads, so they count a bandwidth no read-only kernel can use (1 thread, 7-10 MB working
    set: sum 107-120 GB/s, in-place add 180-192 GB/s); 0.0 where it was not measured (then `best`). As
    STREAM, each probe counts the logical bytes of its arrays (a write is one write, its read for
    ownership is not counted)."""
    out_of_place: float
    best: float
    read_only: float = 0.0

    def max(self, other: "Probed") -> "Probed":
        return Probed(max(self.out_of_place, other.out_of_place), max(self.best, other.best),
                      max(self.read_only, other.read_only))

    def limit(self, writes_fresh: bool, reads_only: bool = False) -> float:
        if reads_only and self.read_only:
            return self.read_only
        return self.out_of_place if writes_fresh else self.best


@dataclass
class Limits:
    bandwidth: float   # bytes/s from main memory: the best STREAM probe over a working set far beyond the LLC
    flops: float       # FLOP/s of sgemm through the BLAS in use
    bandwidth_source: str
    flops_source: str
    probe_bandwidth: object = None  # working-set bytes -> Probed, measured when called (None: no probe)
    peaks: dict = field(default_factory=dict)  # instruction set ("avx512", "avx2") -> FMA-loop FLOP/s
    bandwidth_out_of_place: float | None = None  # main memory, the best out-of-place probe (None: = bandwidth)
    # working-set bytes -> the probes as calls (probe_calls), for a caller that times them in its own rounds,
    # interleaved with the kernel they limit (bench/kernels.py); None: it uses probe_bandwidth
    probe_calls: object = None

    @property
    def peak(self) -> float | None:
        """The widest instruction set's FMA peak: the ceiling for model-FLOP utilization."""
        return self.peaks.get("avx512") or self.peaks.get("avx2")

    def bandwidths_at(self, working_set: int | None) -> Probed:
        """The bandwidth limits for a kernel touching working_set bytes, measured now by the probes at
        that working set: the cache level the kernel streams from and the memory system's current
        state (on a shared VM it drifts by 2x within minutes) are both those of the kernel's own
        run. Without a working set or a probe: main-memory bandwidth from the start of the run."""
        if not working_set or self.probe_bandwidth is None:
            return Probed(self.bandwidth_out_of_place or self.bandwidth, self.bandwidth)
        return self.probe_bandwidth(int(working_set))

    def bandwidth_at(self, working_set: int | None, writes_fresh: bool = False) -> float:
        """The limit for a kernel at working_set bytes: the out-of-place probes' best when its outputs
        are fresh arrays (writes_fresh), else the best of all probes (Probed)."""
        return self.bandwidths_at(working_set).limit(writes_fresh)


def stream_sum_numpy(a, b):
    return float(np.add.reduce(a)) + float(np.add.reduce(b))


def _read_probe():
    """The read-only probe: the sum of two arrays (two input streams, as a weight gradient's x and dy; our
    C++ loop when built)."""
    try:
        from fasttrain import _C

        return _C.stream_sum
    except (ImportError, AttributeError):
        return stream_sum_numpy


def stream_add_numpy(a, b, c):
    np.add(a, b, out=c)


def stream_scale_numpy(a, b, s):
    np.multiply(a, s, out=b)


def _probes():
    """(add, scale, update3, source): c = a + b and b = s * a (out of place, c may also be a for the
    in-place add), and the 3-array in-place update (None without the C++ module)."""
    try:
        from fasttrain import _C

        return _C.stream_add, _C.stream_scale, _C.stream_update3, "cpp stream probes"
    except (ImportError, AttributeError):
        return stream_add_numpy, stream_scale_numpy, None, "numpy add (1 thread)"


def stream_probes(working_set: int) -> list:
    """Our STREAM-style probes over `working_set` bytes in total, as (name, zero-arg call, bytes it moves,
    out_of_place). Out of place (a fresh output array, whose lines cost a read for ownership on most
    CPUs): c = a + b (2 reads + 1 write) and b = s * a (1 read + 1 write, STREAM's scale). In place:
    a = a + b (the optimizer updates' pattern), and three arrays updated in place from a fourth (4 reads
    + 3 writes: an Adam step's traffic; more streams in flight can get more of the memory system)."""
    add, scale, update3, _ = _probes()
    n2, n3, n4 = (max(working_set // (4 * k), 1024) for k in (2, 3, 4))
    two, three = [np.ones(n2, np.float32) for _ in range(2)], [np.ones(n3, np.float32) for _ in range(3)]
    scaled = [np.ones(n2, np.float32) for _ in range(2)]
    probes = [("stream_add", lambda: add(*three), 12 * n3, True),
              ("stream_scale", lambda: scale(scaled[0], scaled[1], 3.0), 8 * n2, True),
              ("stream_add_inplace", lambda: add(two[0], two[1], two[0]), 12 * n2, False)]
    if update3 is not None:
        four = [np.ones(n4, np.float32) for _ in range(4)]
        probes.append(("stream_update3", lambda: update3(*four), 28 * n4, False))
    return probes


def stream_bandwidths(working_set: int, repeat: int = 7, records: list | None = None) -> Probed:
    """Best bytes/s of the probes (stream_probes) over `working_set` bytes, each counting the bytes it
    moves. The best sample of each approximates its sustainable peak; Probed holds the best
    out-of-place one, the best of all and the read-only one (the sum of two arrays of working_set bytes in all)."""
    source = _probes()[3]
    best = {}
    for name, probe, nbytes, out_of_place in stream_probes(working_set):
        samples = time_fn(probe, repeat=repeat, warmup=2)
        if records is not None:
            records.append(make_record("limits", name, source.split()[0], f"{working_set >> 20} MiB", samples,
                                       nbytes=nbytes, out_of_place=out_of_place))
        best[out_of_place] = max(best.get(out_of_place, 0.0), nbytes / min(samples))
    read, two = _read_probe(), [np.ones(max(working_set // 8, 1024), np.float32) for _ in range(2)]
    samples = time_fn(lambda: read(*two), repeat=repeat, warmup=2)
    nbytes = 2 * two[0].nbytes
    if records is not None:
        records.append(make_record("limits", "stream_sum", source.split()[0], f"{working_set >> 20} MiB", samples,
                                   nbytes=nbytes, out_of_place=False, read_only=True))
    read_only = nbytes / min(samples)
    return Probed(best[True], max(max(best.values()), read_only), read_only)


def probe_calls(working_set: int) -> list:
    """Every probe at `working_set` bytes as (name, zero-arg call, bytes it moves, kind), kind one of
    "out_of_place", "in_place", "read_only": the probes of stream_probes plus the read-only sum, for a
    caller that times them itself (interleaved with a kernel: Probed.from_samples)."""
    calls = [(name, fn, nbytes, "out_of_place" if oop else "in_place")
             for name, fn, nbytes, oop in stream_probes(working_set)]
    read, two = _read_probe(), [np.ones(max(working_set // 8, 1024), np.float32) for _ in range(2)]
    calls.append(("stream_sum", lambda: read(*two), 2 * two[0].nbytes, "read_only"))
    return calls


def call_time(fn, calls: int = 3) -> float:
    """The best of `calls` timed calls of fn after one untimed call (seconds)."""
    fn()
    best = float("inf")
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def matched_probe_calls(calls: list, seconds: float) -> list:
    """probe_calls' probes, each repeated back to back so that one call lasts about `seconds` (the kernel's
    call time): timed calls of different lengths are not hit alike on a loaded machine (a call longer than
    the scheduler's slice is nearly always preempted, a short one often not, and a burst's lower quartile
    then keeps clean probe calls beside hit kernel calls: 1 thread, load 9-10, a 3 ms BN row read 36-60 %
    against 0.5 ms probe calls). The declared bytes grow with the repeats."""
    out = []
    for name, fn, nbytes, kind in calls:
        reps = max(1, round(seconds / max(call_time(fn), 1e-9)))
        call = fn if reps == 1 else (lambda fn=fn, reps=reps: [fn() for _ in range(reps)])
        out.append((name, call, nbytes * reps, kind))
    return out


def probed_from_samples(calls: list, samples: dict) -> Probed:
    """The limits (Probed) from per-round samples of probe_calls' probes (samples[name]: seconds per call),
    each probe's rate taken from the MEDIAN of its samples: the statistic the kernel it limits is
    reported by, over the same rounds. (The best of a few samples, taken before and after the kernel,
    put a lucky quiet moment of the probe beside the kernel's typical one: on this shared VM that
    swung a row's % of limit by up to 2x between runs.)"""
    rate = {name: nbytes / statistics.median(samples[name]) for name, _, nbytes, _ in calls}
    kinds = {name: kind for name, _, _, kind in calls}
    oop = max(r for n, r in rate.items() if kinds[n] == "out_of_place")
    read_only = max((r for n, r in rate.items() if kinds[n] == "read_only"), default=0.0)
    return Probed(oop, max(rate.values()), read_only)


def _check_probes() -> None:
    add, scale, update3, _ = _probes()
    a, b, c, d = (np.full(1000003, v, np.float32) for v in (2.0, 0.0, 1.0, 1.0))
    out = np.empty_like(a)
    add(a, b, out)
    assert np.all(out == a), "stream_add gave a wrong result"
    scale(a, out, 1.5)
    assert np.all(out == 3.0), "stream_scale gave a wrong result"
    assert _read_probe()(a, c) == 3.0 * a.size, "stream_sum gave a wrong result"
    if update3 is not None:
        update3(a, b, c, d)
        assert np.all(b == 2.0) and np.all(c == 3.0) and np.all(d == 3.0), "stream_update3 gave a wrong result"


def fma_peaks(records: list, repeat: int = 5, iters: int = 2_000_000) -> dict:
    """FLOP/s of our register-only FMA loop per instruction set the CPU has (best of `repeat` runs, on
    the package's thread count), each added to `records` as a limits row. Empty without the C++ module.
    Many short runs, the best kept: on a shared machine most runs lose a core to someone else for part
    of their time, and only an undisturbed one measures the core."""
    try:
        from fasttrain import _C
    except ImportError:
        return {}
    peaks = {}
    for isa in ("avx512", "avx2"):
        if not _C.fma_isa_supported(isa):
            continue
        flops = 2.0 * 12 * (16 if isa == "avx512" else 8) * iters * settings.num_threads
        samples = [flops / _C.fma_peak_flops(isa, iters) for _ in range(repeat)]
        records.append(make_record("limits", f"fma_peak_{isa}", "cpp", "12 accumulators, registers only", samples,
                                   flops=flops))
        peaks[isa] = flops / min(samples)
    return peaks


def measure_limits(quick: bool = False) -> tuple[Limits, list[Record]]:
    """Main-memory bandwidth (our STREAM-style probes over 1 GiB, far beyond any last-level cache) and
    sgemm FLOP/s, measured now; kernels are later held to the bandwidth probed at their own working
    set (Limits.bandwidth_at). Uses our C++ probes (threads = the package setting) when built."""
    _check_probes()
    records = []
    main_memory = stream_bandwidths((16 << 20) if quick else (1 << 30), repeat=5 if quick else 9, records=records)
    source = _probes()[3]

    m = 512 if quick else 2048
    x = np.random.default_rng(0).standard_normal((m, m), dtype=np.float32)
    y = np.empty_like(x)
    samples = time_fn(lambda: np.matmul(x, x, out=y), repeat=3 if quick else 7)
    flops = 2.0 * m ** 3
    records.append(make_record("limits", "sgemm", "numpy-blas", f"{m}x{m}x{m}", samples, flops=flops))
    probe = (lambda ws: stream_bandwidths(ws, repeat=3)) if quick else stream_bandwidths
    peaks = fma_peaks(records, repeat=5 if quick else 60, iters=1_000_000)
    return (Limits(main_memory.best, flops / min(samples), source, "numpy matmul (OpenBLAS)", probe, peaks,
                   main_memory.out_of_place, probe_calls), records)


def print_table(records: list[Record], file=None) -> None:
    header = f"{'suite':<10} {'name':<22} {'backend':<10} {'shape':<28} {'median ms':>10} {'GB/s':>7} {'GFLOP/s':>8} {'% limit':>8}"
    print(header, file=file)
    print("-" * len(header), file=file)
    for r in records:
        gb = f"{r.gbps:7.1f}" if r.gbps else " " * 7
        gf = f"{r.gflops:8.1f}" if r.gflops else " " * 8
        pct = f"{r.pct_of_limit:7.1f}%" if r.pct_of_limit is not None else " " * 8
        print(f"{r.suite:<10} {r.name:<22} {r.backend:<10} {r.shape[:28]:<28} {r.median_s * 1e3:10.3f} {gb} {gf} {pct}",
              file=file)


OURS = ("cpp", "cpp-nchw", "numba", "cuda", "numba-cuda", "ring")  # cpp-nchw: NCHW kernels beside a blocked row


def is_torch_cpu(backend: str) -> bool:
    """PyTorch on the CPU: "torch" (its defaults: NCHW, foreach optimizers) or a tuned variant
    ("torch-cl": channels_last, "torch-fused": fused optimizer, "torch-compile")."""
    return backend == "torch" or (backend.startswith("torch-") and "cuda" not in backend)


def _groups(records) -> dict:
    groups: dict[tuple, dict[str, Record]] = {}
    for r in records:
        if r.suite != "memory":  # their times are not the measurement
            groups.setdefault((r.suite, r.name, r.shape), {})[r.backend] = r
    return groups


def fastest_torch(by_backend: dict) -> Record | None:
    """The fastest PyTorch CPU variant measured for one workload: what every ratio is taken against."""
    torch_recs = [r for b, r in by_backend.items() if is_torch_cpu(b)]
    return min(torch_recs, key=lambda r: r.median_s) if torch_recs else None


def ratios(records: list[Record]) -> list[dict]:
    """For each (name, shape), every backend's speed relative to every alternative measured in the run,
    plus one row against the fastest PyTorch variant (vs "torch-best", naming which variant won)."""
    out = []
    for (suite, name, shape), by_backend in _groups(records).items():
        best = fastest_torch(by_backend)
        for ours in OURS:
            if ours not in by_backend:
                continue
            for alt, rec in by_backend.items():
                if alt != ours:
                    out.append({"suite": suite, "name": name, "shape": shape, "ours": ours, "vs": alt,
                                "speedup": rec.median_s / by_backend[ours].median_s})
            if best is not None:
                out.append({"suite": suite, "name": name, "shape": shape, "ours": ours, "vs": "torch-best",
                            "variant": best.backend, "speedup": best.median_s / by_backend[ours].median_s})
    return out


def annotate_vs_torch(records: list[Record]) -> None:
    """Write into each of our records (extra) its speedup over the fastest PyTorch variant of the same
    workload (vs_torch_best, torch_best naming the variant) and over PyTorch's defaults (vs_torch_default),
    so the JSON lines carry the honest ratio next to the flattering one."""
    for by_backend in _groups(records).values():
        best = fastest_torch(by_backend)
        if best is None:
            continue
        for ours in OURS:
            if ours in by_backend:
                rec = by_backend[ours]
                rec.extra["vs_torch_best"] = round(best.median_s / rec.median_s, 3)
                rec.extra["torch_best"] = best.backend
                if "torch" in by_backend:
                    rec.extra["vs_torch_default"] = round(by_backend["torch"].median_s / rec.median_s, 3)


def write_jsonl(path, records: list[Record]) -> None:
    """One JSON record per line; the folder is made if missing (bench/out/ is not in the repository)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        for r in records:
            f.write(r.to_json() + "\n")


def torch_or_none():
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(settings.num_threads)
    return torch


__all__ = ["Record", "Limits", "Probed", "stream_bandwidths", "stream_probes", "probe_calls", "matched_probe_calls", "call_time", "probed_from_samples", "time_fn", "time_interleaved", "make_record", "measure_limits", "print_table", "ratios",
           "annotate_vs_torch", "fastest_torch", "write_jsonl", "torch_or_none", "ft"]


def mpiexec_records(ranks: int, script, args, timeout_s: float = 1800, env: dict | None = None) -> list[dict]:
    """Run `mpiexec -n ranks python -m mpi4py script args` (the mpiexec beside this Python; the
    mpi4py runner aborts every rank when one raises) and return the JSON lines it printed. A
    failed launch exits with the command's stderr tail, naming the script and the rank count."""
    import subprocess
    import sys
    from pathlib import Path

    cmd = [str(Path(sys.executable).parent / "mpiexec"), "-n", str(ranks), sys.executable, "-m", "mpi4py",
           str(script), *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env,
                          cwd=Path(__file__).resolve().parents[1])
    if proc.returncode != 0:
        sys.exit(f"{Path(script).name}: mpiexec -n {ranks} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def load_extension_build(path):
    """Another build of fasttrain._C (the .so at `path`, e.g. of the commit before a change) as a
    module beside this tree's, for A/B timing in one process. Its init symbol is PyInit__C, so
    the module name must end in "._C"."""
    import importlib.machinery
    import importlib.util

    loader = importlib.machinery.ExtensionFileLoader("fasttrain_base._C", str(path))
    spec = importlib.util.spec_from_file_location("fasttrain_base._C", str(path), loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module
