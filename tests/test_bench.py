"""The bench suite runs end to end on tiny sizes, so it cannot rot; timings are not asserted."""
import json
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = {"suite", "name", "backend", "shape", "threads", "median_s", "min_s", "max_s"}


@pytest.mark.timeout(300)
def test_bench_quick_writes_records_chart_and_report(tmp_path):
    out = tmp_path / "bench.jsonl"
    png = tmp_path / "bench.png"
    md = tmp_path / "RESULTS.md"
    proc = subprocess.run([sys.executable, "-m", "bench", "kernels", "--quick", "--json", str(out), "--png", str(png),
                           "--results", str(md)], cwd=ROOT, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    names = {(r["suite"], r["name"]) for r in records}
    assert ("limits", "stream_add") in names and ("limits", "sgemm") in names
    assert ("limits", "stream_update3") in names  # the C++ module is built in every install
    assert ("limits", "fma_peak_avx2") in names or not _C_has_avx2()
    for r in records:
        assert REQUIRED <= set(r), r
        assert 0 < r["min_s"] <= r["median_s"] <= r["max_s"]
    kernels = [r for r in records if r["suite"] == "kernels"]
    # every kernel entry ran at least the reference and reports its share of the machine limit
    assert {r["name"] for r in kernels} >= {"adam", "rmsprop", "dropout_fwd_bwd", "batchnorm_fwd_bwd",
                                            "softmax_xent", "conv2d_fwd_bwd"}
    assert all("pct_of_limit" in r for r in kernels)
    assert png.stat().st_size > 1000 and "Ratios" in md.read_text()
    if any(r["backend"].startswith("torch") for r in kernels):
        # every ratio is also taken against the fastest PyTorch variant, named in the record
        ours = [r for r in kernels if r["backend"] == "cpp" and r["name"] in ("adam", "conv2d_fwd_bwd")]
        assert ours and all(r["extra"]["torch_best"].startswith("torch") for r in ours)
        assert {r["backend"] for r in kernels if r["name"] == "adam"} >= {"torch", "torch-fused"}
        assert {r["backend"] for r in kernels if r["name"] == "conv2d_fwd_bwd"} >= {"torch", "torch-cl"}
        assert "Kernels against PyTorch (fastest variant" in md.read_text()
    convs = [r for r in kernels if r["name"] == "conv2d_fwd_bwd" and r["backend"] == "cpp"]
    assert all("pct_of_peak" in r["extra"] for r in convs) or "fma_peak_avx2" not in str(names)


def _C_has_avx2():
    C = pytest.importorskip("fasttrain._C", reason="C++ module not built")
    return C.fma_isa_supported("avx2")


@pytest.mark.timeout(300)
def test_bench_train_quick_reports_images_per_second(tmp_path):
    out = tmp_path / "train.jsonl"
    proc = subprocess.run([sys.executable, "-m", "bench", "train", "--quick", "--json", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    train = [r for r in records if r["suite"] == "train"]
    assert {r["name"] for r in train} == {"convnet_classic_step", "resnet8_step", "mobilenet_step"}
    assert all(r["extra"]["images_per_s"] > 0 and r["flops"] > 0 for r in train)
    memory = [r for r in records if r["suite"] == "memory"]
    assert "cpp" in {r["backend"] for r in memory}
    assert all(r["extra"]["peak_rss_mib"] >= r["extra"]["rss_before_steps_mib"] > 0 for r in memory)
    if any(r["backend"].startswith("torch") for r in train):
        assert {r["backend"] for r in train} >= {"cpp", "torch", "torch-cl"}
        assert all(r["extra"]["vs_torch_best"] > 0 for r in train if r["backend"] == "cpp")


def test_useful_flops_counts_direct_convolution():
    """The MFU numerator: 3 products per conv/linear layer (forward, weight and input gradients),
    2 for the layer reading the images; here a 3x3 conv (C=3 -> K=4 on 6x5, padding 1) then a linear."""
    import fasttrain as ft
    from bench.train import useful_flops

    model = ft.nn.Sequential(ft.nn.Conv2d(3, 4, 3, padding=1), ft.nn.Flatten(), ft.nn.Linear(4 * 6 * 5, 7))
    conv = 2.0 * 2 * 4 * 6 * 5 * 3 * 9  # batch 2
    linear = 2.0 * 2 * 7 * 4 * 6 * 5
    assert useful_flops(model, (2, 3, 6, 5)) == pytest.approx(2 * conv + 3 * linear)
    assert model[0].forward.__func__ is ft.nn.Conv2d.forward  # the counting wrappers are gone


@pytest.mark.parametrize("net", ["convnet_classic", "resnet8", "resnet20", "mobilenet"])
def test_torch_twin_has_our_parameter_count(net):
    """The PyTorch comparator builds the same network: same parameters (count and shapes)."""
    torch = pytest.importorskip("torch")
    from bench.train import build_ours, torch_model

    ours = sorted(tuple(p.shape) for p in build_ours(net).parameters())
    theirs = sorted(tuple(p.shape) for p in torch_model(torch, net).parameters())
    assert ours == theirs


@pytest.mark.timeout(300)
def test_bench_collectives_quick_pairs_ring_with_mpi(tmp_path):
    out = tmp_path / "coll.jsonl"
    proc = subprocess.run([sys.executable, "-m", "bench", "collectives", "--quick", "--json", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    coll = [r for r in records if r["suite"] == "collectives"]
    assert {r["backend"] for r in coll} >= {"ring", "mpi"}
    assert "ring vs mpi" in proc.stdout


@pytest.mark.timeout(300)
def test_bench_gpu_quick_runs_or_says_why_not(tmp_path):
    """Without CuPy or a GPU the GPU suite is skipped with the reason (exit 0); on the GPU machine
    it writes the device limits and the cuda records, each checked against the reference."""
    out = tmp_path / "gpu.jsonl"
    proc = subprocess.run([sys.executable, "-m", "bench", "gpu", "--quick", "--json", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    gpu = [json.loads(line) for line in out.read_text().splitlines() if '"suite": "gpu"' in line]
    if "gpu suite skipped:" in proc.stdout:
        assert gpu == []
    else:
        names = {(r["name"], r["backend"]) for r in gpu}
        assert {("d2d_copy", "cupy"), ("sgemm_fp32", "cublas"), ("adam", "cuda"), ("conv2d_fwd_bwd", "cuda")} <= names
        assert all(REQUIRED <= set(r) for r in gpu)


@pytest.mark.timeout(120)
def test_bench_conv_algos_runs_on_a_tiny_shape():
    pytest.importorskip("fasttrain._C", reason="C++ module not built")
    proc = subprocess.run([sys.executable, "-m", "bench.conv_algos", "--repeat", "1", "--rounds", "1",
                           "--shapes", "2,16,6,5,17", "2,3,6,5,17"], cwd=ROOT, capture_output=True, text=True,
                          timeout=100)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for row in ("auto", "im2col", "winograd", "direct", "direct-blocked", "wino-blocked", "stem", "numpy"):
        assert f"\n  {row} " in proc.stdout, proc.stdout
    # with PyTorch installed the stem row gets its first-layer ratio (the header always names torch-cl)
    has_torch = importlib.util.find_spec("torch") is not None
    assert ("torch-cl/stem" in proc.stdout) == has_torch, proc.stdout
    assert "im2col/winograd" in proc.stdout and "numpy/auto" in proc.stdout


@pytest.mark.parametrize("n", [1, 7, 17, 1000003])
def test_stream_probes_compute_what_they_count(n):
    """The bandwidth probes divide bytes by time, so they must really read and write every element."""
    C = pytest.importorskip("fasttrain._C", reason="C++ module not built")
    rng = np.random.default_rng(n)
    a, b, c, d = (rng.standard_normal(n).astype(np.float32) for _ in range(4))
    want_b, want_c, want_d = b + a, c + a, d + a
    C.stream_update3(a, b, c, d)
    np.testing.assert_array_equal(b, want_b)
    np.testing.assert_array_equal(c, want_c)
    np.testing.assert_array_equal(d, want_d)
    out = np.empty_like(a)
    C.stream_add(a, b, out)
    np.testing.assert_array_equal(out, a + b)
    # the read-only probe: the sum of every element of both (float32 partials summed in double, a float32 result)
    want = float(a.astype(np.float64).sum() + out.astype(np.float64).sum())
    assert C.stream_sum(a, out) == pytest.approx(want, rel=1e-5, abs=1e-4 * np.sqrt(n))
    with pytest.raises(ValueError):
        C.stream_sum(a, a[:-1])
    with pytest.raises(ValueError, match="distinct"):
        C.stream_update3(a, b, b, d)


def test_results_header_says_a_run_was_loaded_only_above_the_core_count(monkeypatch):
    from bench import run as bench_run

    monkeypatch.setattr(bench_run.os, "cpu_count", lambda: 2)
    assert bench_run._load_note("1.5", "2.0").startswith("(at most the core count")
    assert bench_run._load_note("1.5", "2.1").startswith("(above the core count")
    assert bench_run._load_note("7.0", "n/a").startswith("(above the core count")
    assert bench_run._load_note("n/a", "n/a") == "(not available on this system)"


def test_fresh_output_rows_are_held_to_the_out_of_place_probes(monkeypatch):
    """A row whose kernels write fresh arrays (writes_fresh) gets the best out-of-place probe at its working
    set as its limit; an in-place row (the default) the best of all probes; both keep the % against the
    best of all in extra["pct_of_inplace_limit"]."""
    from bench import harness, kernels

    seen = []

    def probe(ws):
        seen.append(ws)
        return harness.Probed(out_of_place=1e6, best=4e6)  # slow, so every % is large (extra rounds to 0.1)

    def entry(name, fresh):
        def inputs():
            return {"x": np.ones(1000, np.float32), "y": np.empty(1000, np.float32)}
        return kernels.Entry(name, (1000,), 8000.0, 0.0, inputs, lambda k, a: k("relu_fwd")(a["x"], a["y"]), ("y",),
                             None, ("relu_fwd",), rtol=0, writes_fresh=fresh)

    monkeypatch.setattr(kernels, "entries", lambda quick: [entry("fresh_row", True), entry("inplace_row", False)])
    limits = harness.Limits(2e9, 1e12, "test", "test", probe)
    records = kernels.run(limits, quick=True, log=lambda *a: None, only=["_row"])
    assert seen and all(ws == 8000 for ws in seen)  # probed at the row's working set (x and y)
    by = {}
    for r in records:
        by.setdefault(r.name, []).append(r)
    assert set(by) == {"fresh_row", "inplace_row"}
    for r in by["fresh_row"]:
        assert r.extra["limit_probes"] == "out-of-place"
        assert r.pct_of_limit == pytest.approx(100.0 * 8000 / 1e6 / r.median_s)
        assert r.extra["pct_of_inplace_limit"] == pytest.approx(100.0 * 8000 / 4e6 / r.median_s, abs=0.051)
    for r in by["inplace_row"]:
        assert r.extra["limit_probes"] == "all"
        assert r.pct_of_limit == pytest.approx(100.0 * 8000 / 4e6 / r.median_s)
        assert r.extra["pct_of_inplace_limit"] == pytest.approx(r.pct_of_limit, abs=0.051)
    # without a probe (no working set), main memory: the out-of-place figure for fresh rows
    assert harness.Limits(2e9, 1e12, "t", "t", None, bandwidth_out_of_place=1.5e9).bandwidth_at(None, True) == 1.5e9
    assert harness.Limits(2e9, 1e12, "t", "t", None, bandwidth_out_of_place=1.5e9).bandwidth_at(None) == 2e9


def test_read_only_rows_are_held_to_the_read_only_probe(monkeypatch):
    """A row whose kernels only read (reads_only, the depthwise weight gradient) gets the read-only probe at
    its working set as its limit, not the best of all probes (whose in-place figures count write bytes); a
    Probed without a read-only figure (0.0) falls back to the best of all."""
    from bench import harness, kernels

    def inputs():
        return {"x": np.ones(1000, np.float32), "y": np.empty(1000, np.float32)}
    row = kernels.Entry("read_row", (1000,), 8000.0, 0.0, inputs, lambda k, a: k("relu_fwd")(a["x"], a["y"]), ("y",),
                        None, ("relu_fwd",), rtol=0, reads_only=True)
    monkeypatch.setattr(kernels, "entries", lambda quick: [row])
    limits = harness.Limits(2e9, 1e12, "test", "test", lambda ws: harness.Probed(1e6, 4e6, 2e6))
    records = kernels.run(limits, quick=True, log=lambda *a: None, only=["_row"])
    assert records
    for r in records:
        assert r.extra["limit_probes"] == "read-only"
        assert r.pct_of_limit == pytest.approx(100.0 * 8000 / 2e6 / r.median_s)
        assert r.extra["pct_of_inplace_limit"] == pytest.approx(100.0 * 8000 / 4e6 / r.median_s, abs=0.051)
    assert harness.Probed(1e6, 4e6).limit(False, reads_only=True) == 4e6
    assert harness.Probed(1e6, 4e6, 2e6).max(harness.Probed(3e6, 1e6, 1e6)) == harness.Probed(3e6, 4e6, 2e6)


def test_records_keep_the_bandwidth_share_where_flops_set_the_limit():
    """pct_of_bandwidth is bytes / limit / time even where the FLOPs at the sgemm rate bind (limit 'flops')."""
    from bench import harness

    limits = harness.Limits(1e9, 1e9, "t", "t")
    rec = harness.make_record("kernels", "k", "cpp", (1,), [0.5, 0.5, 0.5], nbytes=1e8, flops=4e8, limits=limits)
    assert rec.limit == "flops" and rec.pct_of_limit == pytest.approx(80.0)
    assert rec.extra["pct_of_bandwidth"] == pytest.approx(20.0)


def test_flop_roof_is_the_fma_peak_except_for_convolutions(monkeypatch):
    """kernels.run holds a non-conv row's FLOPs to the FMA peak and a conv2d row's to the sgemm rate."""
    from bench import harness, kernels

    def entry(name):
        def inputs():
            return {"x": np.ones(1000, np.float32), "y": np.empty(1000, np.float32)}
        # 1e6 FLOPs on 8000 bytes: FLOP-bound at either roof with a 1 TB/s probe
        return kernels.Entry(name, (1000,), 8000.0, 1e6, inputs, lambda k, a: k("relu_fwd")(a["x"], a["y"]), ("y",),
                             None, ("relu_fwd",), rtol=0)

    monkeypatch.setattr(kernels, "entries", lambda quick: [entry("dw_row"), entry("conv2d_row")])
    limits = harness.Limits(1e12, 1e9, "t", "t", lambda ws: harness.Probed(1e12, 1e12), {"avx512": 4e9})
    records = kernels.run(limits, quick=True, log=lambda *a: None, only=["_row"])
    for r in records:
        roof = 1e9 if r.name == "conv2d_row" else 4e9
        assert r.limit == "flops" and r.pct_of_limit == pytest.approx(100.0 * 1e6 / roof / r.median_s)
        assert r.extra["flop_roof"] == ("sgemm" if r.name == "conv2d_row" else "fma_peak")


def test_stream_probes_split_out_of_place_from_in_place():
    """stream_bandwidths: the out-of-place figure is the best of c = a + b and b = s * a only, so it can
    never exceed the best of all probes; the records name every probe (the read-only sum too)."""
    from bench import harness

    records = []
    probed = harness.stream_bandwidths(1 << 20, repeat=2, records=records)
    names = {r.name: r for r in records}
    assert {"stream_add", "stream_scale", "stream_add_inplace"} <= set(names)
    oop = max(names[n].bytes / names[n].min_s for n in ("stream_add", "stream_scale"))
    assert probed.out_of_place == pytest.approx(oop)
    assert probed.best == pytest.approx(max(r.bytes / r.min_s for r in records)) and probed.best >= probed.out_of_place
    assert probed.read_only == pytest.approx(names["stream_sum"].bytes / names["stream_sum"].min_s)
    assert names["stream_scale"].extra["out_of_place"] and not names["stream_add_inplace"].extra["out_of_place"]


def test_probes_run_in_the_rows_rounds_and_count_by_medians(monkeypatch):
    """With Limits.probe_calls, each probe at the row's working set is one more implementation in the row's
    interleaved rounds (so limit and kernel see the same load), and the limit is each probe's MEDIAN rate,
    the statistic the kernel is reported by: not its best sample, which put a lucky quiet moment of the probe
    beside the kernel's typical one. Fresh rows take the best out-of-place probe, and the probes are not
    reported as rows of their own."""
    from bench import harness, kernels

    calls = []

    def probe(name):
        return lambda: calls.append(name)

    seen_ws = []

    def probe_calls(ws):
        seen_ws.append(ws)
        return [("stream_add", probe("add"), 3000, "out_of_place"), ("stream_scale", probe("scale"), 2000, "out_of_place"),
                ("stream_add_inplace", probe("inplace"), 6000, "in_place"), ("stream_sum", probe("sum"), 5000, "read_only")]

    # samples (s) the fake timing hands back: medians add 3e-6 (1e9 B/s; best 3e9), scale 1e-6 (2e9 B/s; best 1e10),
    # in-place 2e-6 (3e9 B/s), kernel 4e-6
    fixed = {"probe:stream_add": [1e-6, 3e-6, 9e-6], "probe:stream_scale": [2e-7, 1e-6, 5e-6],
             "probe:stream_add_inplace": [2e-6, 2e-6, 2e-6], "probe:stream_sum": [1e-6, 1e-6, 1e-6]}

    def fake_interleaved(fns, repeats, warmup=1):
        for fn in fns.values():
            fn()
        return {k: list(fixed.get(k, [1e-6, 4e-6, 8e-6])) for k in fns}

    def inputs():
        return {"x": np.ones(1000, np.float32), "y": np.empty(1000, np.float32)}
    row = kernels.Entry("fresh_row", (1000,), 8000.0, 0.0, inputs, lambda k, a: k("relu_fwd")(a["x"], a["y"]), ("y",),
                        None, ("relu_fwd",), rtol=0, writes_fresh=True)
    monkeypatch.setattr(kernels, "entries", lambda quick: [row])
    monkeypatch.setattr(kernels, "time_interleaved", fake_interleaved)
    matched = []
    monkeypatch.setattr(kernels, "matched_probe_calls", lambda calls, seconds: matched.append(seconds) or calls)
    limits = harness.Limits(2e9, 1e12, "test", "test", None, probe_calls=probe_calls)
    records = kernels.run(limits, quick=True, log=lambda *a: None, only=["_row"])
    assert seen_ws == [8000] and sorted(set(calls)) == ["add", "inplace", "scale", "sum"]
    assert len(matched) == 1 and matched[0] > 0  # matched to the kernel's call time
    assert records and all(r.backend in ("cpp", "numba", "numpy") for r in records)
    for r in records:
        assert r.median_s == 4e-6
        assert r.extra["limit_gbps"] == 2.0  # the best out-of-place median rate (scale's), not its best sample
        assert r.pct_of_limit == pytest.approx(100.0 * 8000 / 2e9 / 4e-6)
        assert r.extra["pct_of_inplace_limit"] == pytest.approx(100.0 * 8000 / 5e9 / 4e-6, abs=0.051)  # best of all
        assert r.extra["limit_timing"].startswith("probes in the same rounds")
    probed = harness.probed_from_samples(probe_calls(1), {k[6:]: v for k, v in fixed.items()})
    assert probed == harness.Probed(2e9, 5e9, 5e9)


def test_probe_calls_cover_every_kind_at_the_working_set():
    """probe_calls: the out-of-place, in-place and read-only probes over the given working set. A probe that
    writes fresh arrays or only reads counts each of its arrays' bytes once, so it declares the working set;
    an in-place one reads and writes its updated arrays, so it declares more (1.5x for a = a + b)."""
    from bench import harness

    ws = 3 << 20
    calls = harness.probe_calls(ws)
    assert {kind for _, _, _, kind in calls} == {"out_of_place", "in_place", "read_only"}
    for name, fn, nbytes, kind in calls:
        fn()
        if kind == "in_place":
            assert 1.4 * ws <= nbytes <= 1.8 * ws, name
        else:
            assert 0.99 * ws <= nbytes <= 1.01 * ws, name


def test_matched_probe_calls_last_as_long_as_the_kernel(monkeypatch):
    """A probe call shorter than the kernel's is repeated back to back until it lasts about as long (so a loaded
    machine's preemptions hit both alike), and its declared bytes grow with the repeats; a longer one runs once."""
    from bench import harness

    count = {"short": 0, "long": 0}

    def short():
        count["short"] += 1

    def long():
        count["long"] += 1

    monkeypatch.setattr(harness, "call_time", lambda fn: 0.0026 if fn is short else 0.03)
    calls = harness.matched_probe_calls([("short", short, 100, "out_of_place"), ("long", long, 100, "in_place")], 0.02)
    by = {name: (fn, nbytes, kind) for name, fn, nbytes, kind in calls}
    assert by["short"][1] == 800 and by["long"][1] == 100 and by["short"][2] == "out_of_place"  # round(0.02 / 0.0026)
    by["short"][0]()
    by["long"][0]()
    assert count == {"short": 8, "long": 1}
