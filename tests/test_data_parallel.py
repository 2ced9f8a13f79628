"""Data-parallel training (fasttrain.parallel.data_parallel): pieces in one process (threads as ranks),
then whole runs under `mpiexec -n K` as subprocesses with timeouts (marked mpi)."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fasttrain.data import DataLoader
from fasttrain.parallel import LocalComm, ThreadWorld
from fasttrain.parallel.data_parallel import DataParallel, ShardedLoader, scaled_lr, world_comm
from fasttrain.parallel.fingerprint import CollectiveMismatch, Fingerprint

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = Path(__file__).parent / "mpi_scripts"
MPIEXEC = Path(sys.executable).parent / "mpiexec"
FAST = ["--monitor-every", "0", "--quiet", "--no-plot"]


# ---- in one process --------------------------------------------------------------------------

@pytest.mark.parametrize("n,k,bs", [(1437, 2, 32), (1437, 3, 32), (10, 3, 4), (7, 7, 1), (100, 1, 33)])
def test_sharded_loader_slices_the_shared_permutation(n, k, bs):
    x = np.arange(n, dtype=np.float32)[:, None]
    loader = DataLoader(x, np.arange(n), bs, shuffle=True, seed=5, prefetch=0)
    for epoch in (0, 3):
        shards = [ShardedLoader(loader, r, k) for r in range(k)]
        seen = [np.concatenate([xb[:, 0] for xb, _ in s.batches(epoch)]).astype(int) for s in shards]
        assert len({len(s) for s in shards}) == 1  # every rank the same number of batches
        assert all(len(v) == n // k for v in seen)
        together = np.concatenate(seen)
        assert len(set(together)) == len(together)  # disjoint
        assert np.array_equal(together, loader.order(epoch)[:k * (n // k)])
    assert not np.array_equal(ShardedLoader(loader, 0, k).indices(0), ShardedLoader(loader, 0, k).indices(1)) or n // k < 2


def test_sharded_loader_rejects_bad_rank_and_too_few_examples():
    loader = DataLoader(np.zeros((2, 1), np.float32), np.zeros(2), 1)
    with pytest.raises(ValueError, match="rank=3"):
        ShardedLoader(loader, 3, 2)
    with pytest.raises(ValueError, match="2 examples cannot be split over 3"):
        ShardedLoader(loader, 0, 3)


def test_scaled_lr_linear_rule_with_one_epoch_warmup():
    assert scaled_lr(0.1, 4, 0, 50) == (0.4, 50)
    assert scaled_lr(0.1, 4, 7, 50) == (0.4, 7)      # the user's warmup wins
    assert scaled_lr(0.1, 1, 0, 50) == (0.1, 0)      # one rank: unchanged
    assert scaled_lr(0.1, 4, 0, 50, enabled=False) == (0.1, 0)


def test_fingerprint_mismatch_raises_on_every_rank_with_both_tags():
    def body(comm):
        fp = Fingerprint(comm, every=1)
        fp.check("allreduce_grad", 10, np.float32, step=0)
        try:
            fp.check("allreduce_grad", 10 + comm.rank, np.float32, step=1)
        except CollectiveMismatch as exc:
            return str(exc)
        return None

    msgs = ThreadWorld(2).run(body)
    assert msgs[0] == msgs[1] and msgs[0] is not None
    assert "rank 0: allreduce_grad(10 x float32)" in msgs[0] and "rank 1: allreduce_grad(11 x float32)" in msgs[0]


def test_fingerprint_checks_only_every_nth_call():
    def body(comm):
        fp = Fingerprint(comm, every=3)
        for i in range(7):
            fp.check("x", 1, step=i)
        return fp.checks

    assert ThreadWorld(2).run(body) == [3, 3]  # calls 0, 3, 6


class _Arena:
    def __init__(self, values):
        self.data = np.asarray(values, np.float32)
        self.grad = np.zeros_like(self.data)
        self.size = self.data.size
        self.params = []


class _Model:
    def named_modules(self):
        return [("", self)]


def test_setup_broadcasts_rank0_parameters_and_verifies():
    def body(comm):
        arena = _Arena(np.arange(5) + 10 * comm.rank)
        dp = DataParallel(comm, _Model(), arena)
        dp.setup()
        return arena.data.copy()

    out = ThreadWorld(3).run(body)
    for a in out:
        np.testing.assert_array_equal(a, np.arange(5, dtype=np.float32))


def test_verify_identical_names_each_ranks_hash():
    def body(comm):
        arena = _Arena(np.full(4, comm.rank))
        with pytest.raises(RuntimeError, match=r"parameters differ across ranks after the test \(rank 0: \w+, rank 1: \w+\)"):
            DataParallel(comm, _Model(), arena).verify_identical("the test")
        return True

    assert ThreadWorld(2).run(body) == [True, True]


def test_synchronous_gradient_mean_over_thread_ranks():
    def body(comm):
        arena = _Arena(np.zeros(7))
        arena.grad[...] = np.arange(7) * (comm.rank + 1)
        dp = DataParallel(comm, _Model(), arena, compress="int8", seed=1)
        dp.after_backward(0)
        return arena.grad.copy(), dp.bytes_sent

    (g0, b0), (g1, b1) = ThreadWorld(2).run(body)
    np.testing.assert_array_equal(g0, g1)
    np.testing.assert_allclose(g0, np.arange(7) * 1.5, atol=6 * 3 / 127)  # one int8 step of max |x|
    assert b0 > 0


@pytest.mark.parametrize("K", [2, 3])
def test_synchronous_gradient_mean_hop_schedule(K):
    from fasttrain.parallel import wire_bytes

    n = 1031
    def body(comm):
        arena = _Arena(np.zeros(n))
        arena.grad[...] = np.linspace(-1, 1, n) * (comm.rank + 1)
        dp = DataParallel(comm, _Model(), arena, compress="int8", seed=1, compress_schedule="hop", segment_bytes=4 * 300)
        dp.after_backward(0)
        return arena.grad.copy(), dp.bytes_sent, dp.describe()

    outs = ThreadWorld(K).run(body)
    assert all(np.array_equal(outs[0][0], g) for g, _, _ in outs[1:])
    # K encodes in a chain (hop_bounds.py): partial sums up to K * 1, each encode within 1/127 of its block max
    mean = np.linspace(-1, 1, n) * (K + 1) / 2
    np.testing.assert_allclose(outs[0][0], mean, atol=(K + 1) / 2 * K * (1 / 127) * 1.01)
    for r, (_, sent, text) in enumerate(outs):
        assert sent == wire_bytes(n, K, codec="int8", rank=r, schedule="hop", segment_bytes=4 * 300)
        assert "codec int8 (quantized hop)" in text


def _mlp_step(comm, bucket_bytes, k_total):
    """One data-parallel backward of a small MLP (this rank's batch), with or without buckets."""
    import fasttrain as ft
    from fasttrain import models

    model = models.mlp(13, 5, hidden=(11, 7))
    arena = ft.ParamArena.for_model(model, seed=0)
    rng = np.random.default_rng([comm.rank, k_total])
    x, y = rng.standard_normal((6, 13)).astype(np.float32), rng.integers(0, 5, 6)
    dp = DataParallel(comm, model, arena, bucket_bytes=bucket_bytes)
    dp.setup()
    arena.zero_grad()
    _, d = ft.losses.SoftmaxCrossEntropy()(model.forward(x), y)
    dp.backward(model, d, 0)
    dp.finish()
    return arena.grad.copy(), dp.bytes_sent, dp.allreduces


@pytest.mark.parametrize("K", [2, 3])
@pytest.mark.parametrize("bucket_bytes", [4, 60, 1 << 20])
def test_bucketed_backward_gives_the_gradient_mean(K, bucket_bytes):
    """Buckets started layer by layer during backward average the same gradient as one all-reduce
    after it, on every rank: bit for bit with K = 2 (a sum of two numbers has one order), to
    float32 rounding otherwise (bucket boundaries move the chunk, so the order, of a value's sum)."""
    from fasttrain.parallel import wire_bytes
    from fasttrain.parallel.ring import segment_bounds

    plain = ThreadWorld(K).run(lambda c: _mlp_step(c, 0, K))
    bucketed = ThreadWorld(K).run(lambda c: _mlp_step(c, bucket_bytes, K))
    n = plain[0][0].size
    for r, ((g, sent, calls), (g_ref, _, _)) in enumerate(zip(bucketed, plain)):
        np.testing.assert_allclose(g, g_ref, rtol=1e-6, atol=1e-7)
        if K == 2:
            np.testing.assert_array_equal(g, g_ref)
        assert calls == 1
        assert sent == sum(wire_bytes(b - a, K, rank=r) for a, b in segment_bounds(0, n, max(1, bucket_bytes // 4)))
    assert all(np.array_equal(bucketed[0][0], g) for g, _, _ in bucketed[1:])


def test_bucket_schedule_starts_each_bucket_once_after_its_last_gradient():
    import fasttrain as ft
    from fasttrain import models
    from fasttrain.parallel.data_parallel import bucket_schedule
    from fasttrain.parallel.ring import segment_bounds

    model = models.simple_cnn(1, 10, 8, width=4)
    arena = ft.ParamArena.for_model(model, seed=0)
    bounds = segment_bounds(0, arena.size, 37)
    plan = bucket_schedule(model, arena, bounds)
    assert sorted(b for bs in plan.values() for b in bs) == list(range(len(bounds)))
    names = [p.name for p in arena.params]
    owner = {id(p): li for li, (_, layer) in enumerate(model._children)
             for _, m in layer.named_modules() for p in m._params.values()}
    for li, buckets in plan.items():
        for b in buckets:
            a, e = bounds[b]
            layers = [owner[id(p)] for p, off in zip(arena.params, arena.offsets) if off < e and off + p.size > a]
            assert min(layers) == li  # complete exactly when the lowest owning layer's backward ran
    assert [p.name for p in arena.params] == names  # the checkpoint names are left alone


@pytest.mark.parametrize("average_state", [False, True])
def test_local_sgd_averages_optimizer_state_when_asked(average_state):
    import fasttrain as ft
    from fasttrain import models

    def body(comm):
        model = models.mlp(5, 3, hidden=(4,))
        arena = ft.ParamArena.for_model(model, seed=0)
        opt = ft.optim.Adam(arena, lr=1e-2)
        for k, v in opt.state.items():
            v[...] = np.arange(v.size) * (comm.rank + 1) + len(k)
        dp = DataParallel(comm, model, arena, local_sgd=2, optimizer=opt, average_optimizer_state=average_state)
        dp.after_step(2)   # a sync step
        return {k: v.copy() for k, v in opt.state.items()}, dp.bytes_sent, arena.size

    from fasttrain.parallel import wire_bytes

    outs = ThreadWorld(3).run(body)
    for r, (state, sent, n) in enumerate(outs):
        for k, v in state.items():
            scale = 2.0 if average_state else r + 1   # mean of ranks' factors 1, 2, 3
            np.testing.assert_allclose(v, np.arange(v.size) * scale + len(k), rtol=1e-6)
        # the parameters, plus Adam's two moments packed into one more all-reduce
        assert sent == wire_bytes(n, 3, rank=r) + (wire_bytes(2 * n, 3, rank=r) if average_state else 0)


def test_bad_combinations_name_the_keys():
    comm_arena = (LocalComm(), _Arena(np.zeros(3)))
    with pytest.raises(ValueError, match="dist: expected one of"):
        DataParallel(LocalComm(), _Model(), comm_arena[1], backend="nccl")
    with pytest.raises(ValueError, match="compress='int8' with dist='mpi'"):
        DataParallel(LocalComm(), _Model(), comm_arena[1], backend="mpi", compress="int8")
    with pytest.raises(ValueError, match="compress='sign' with local_sgd=4"):
        DataParallel(LocalComm(), _Model(), comm_arena[1], compress="sign", local_sgd=4)
    with pytest.raises(ValueError, match="compress: expected one of"):
        DataParallel(LocalComm(), _Model(), comm_arena[1], compress="int3")
    with pytest.raises(ValueError, match=r"compress_schedule: expected one of \('once', 'hop'\), got 'twice'"):
        DataParallel(LocalComm(), _Model(), comm_arena[1], compress="int8", compress_schedule="twice")
    with pytest.raises(ValueError, match="bucket_bytes=4096 .* needs dist='ring' without local SGD, got dist='mpi'"):
        DataParallel(LocalComm(), _Model(), comm_arena[1], backend="mpi", bucket_bytes=4096)
    with pytest.raises(ValueError, match="local_sgd=2"):
        DataParallel(LocalComm(), _Model(), comm_arena[1], local_sgd=2, bucket_bytes=4096)
    with pytest.raises(ValueError, match="Sequential model one by one; got a _Model"):
        DataParallel(LocalComm(), _Model(), comm_arena[1], bucket_bytes=4096)
    with pytest.raises(ValueError, match="average_optimizer_state=True: .* expected local_sgd > 0 and an optimizer"):
        DataParallel(LocalComm(), _Model(), comm_arena[1], average_optimizer_state=True)
    with pytest.raises(ValueError, match="bucket_bytes: expected an integer >= 0"):
        DataParallel(LocalComm(), _Model(), comm_arena[1], bucket_bytes=-1)


def test_error_feedback_default_on_for_sign_and_int4_only():
    def make(compress, ef=None):
        return DataParallel(LocalComm(), _Model(), _Arena(np.zeros(3)), compress=compress, error_feedback=ef)
    assert make("sign").error_feedback and make("int4").error_feedback
    assert not make("int8").error_feedback and make("int8", True).error_feedback
    assert not make("none", True).error_feedback


def test_dist_none_under_a_multi_rank_launch_is_an_error(monkeypatch):
    monkeypatch.setenv("PMI_SIZE", "2")
    with pytest.raises(ValueError, match="dist='none' but the job was launched with 2 ranks"):
        world_comm("none")


def test_single_process_dist_ring_is_the_plain_run(tmp_path):
    """--dist ring without mpirun goes through LocalComm: same batches, same lr, same result."""
    from fasttrain.cli import build_parser, resolve_config
    from fasttrain.train.run import run as train

    flags = ["--epochs", "2", "--limit", "300", "--monitor-every", "0", "--no-plot"]
    out = []
    for extra in ([], ["--dist", "ring"]):
        cfg = resolve_config(build_parser().parse_args(["train", *flags, *extra, "--run-dir", str(tmp_path / str(len(out)))]))
        out.append(train(cfg, progress=False))
    assert out[0]["val_acc"] == out[1]["val_acc"] and out[0]["val_loss"] == out[1]["val_loss"]
    assert out[1]["ranks"] == 1 and out[1]["bytes_sent_per_rank"] == 0


# ---- under mpiexec ---------------------------------------------------------------------------

_skip = pytest.mark.skipif(not MPIEXEC.exists(), reason=f"no mpiexec beside {sys.executable}")


def needs_mpi(fn):
    return pytest.mark.mpi(_skip(fn))


def _env():
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def mpirun(k, args, timeout=300, runner=True):
    cmd = [str(MPIEXEC), "-n", str(k), sys.executable] + (["-m", "mpi4py"] if runner else []) + list(args)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_env(), cwd=ROOT)
    proc.elapsed = time.perf_counter() - t0
    return proc


def run_json(k, script, *args, timeout=300):
    proc = mpirun(k, [str(SCRIPTS / script), *args], timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])




@pytest.fixture(scope="module")
def single_process(tmp_path_factory):
    d = tmp_path_factory.mktemp("single")
    proc = subprocess.run([sys.executable, "-m", "fasttrain", "train", *FAST, "--run-dir", str(d)],
                          capture_output=True, text=True, timeout=300, env=_env(), cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((d / "summary.json").read_text())


@needs_mpi
@pytest.mark.parametrize("backend", ["ring", "mpi"])
def test_k2_reaches_single_process_accuracy_on_digits(backend, single_process, tmp_path):
    proc = mpirun(2, ["-m", "fasttrain", "train", *FAST, "--dist", backend, "--run-dir", str(tmp_path)], runner=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    s = json.loads((tmp_path / "summary.json").read_text())
    assert s["ranks"] == 2 and s["epochs"] == single_process["epochs"]
    assert abs(s["val_acc"] - single_process["val_acc"]) <= 0.005, (s["val_acc"], single_process["val_acc"])
    assert s["lr_run"] == pytest.approx(2 * 3e-3)
    assert "final validation accuracy" in proc.stdout and proc.stdout.count("final validation accuracy") == 1
    # rank 0 only writes files; the bytes counter is the ring's 2(K-1)/K of the arena per step
    assert {p.name for p in tmp_path.iterdir()} >= {"summary.json", "checkpoint.npz", "metrics.jsonl", "config.toml"}
    assert s["bytes_sent_per_rank"] == s["allreduces"] * 4 * s["params"]  # K=2: n/2 out in each phase


@needs_mpi
@pytest.mark.parametrize("k,compress", [(3, "none"), (3, "int8"), (2, "sign")])
def test_ranks_bit_identical_after_training_and_codecs_converge(k, compress, tmp_path):
    out = run_json(k, "train_run.py", "--epochs", "8", "--dist", "ring", "--compress", compress,
                   "--monitor-every", "0", "--no-plot", "--run-dir", str(tmp_path))
    assert len(out["hashes"]) == k and len(set(out["hashes"])) == 1, out["hashes"]
    assert out["val_acc"] >= 0.95, out
    if compress == "sign":  # error feedback is on by default; every rank's residual is in the checkpoint
        from fasttrain.train.checkpoint import read_checkpoint

        arrays, _ = read_checkpoint(tmp_path / "checkpoint.npz")
        res = arrays["extra/ef_residual"]
        assert res.shape == (k, out["params"]) and np.abs(res).max() > 0
        assert not np.array_equal(res[0], res[1])  # per rank


@needs_mpi
def test_buckets_overlapping_backward_train_bit_identically(tmp_path):
    """K = 2 (every value a sum of two numbers, so bucket boundaries cannot change a bit): a run
    whose gradient buckets are all-reduced during backward ends with the parameters of a run that
    all-reduces after backward."""
    runs = {}
    for kb in (0, 16):
        runs[kb] = run_json(2, "train_run.py", "--epochs", "2", "--dist", "ring", "--bucket-kb", str(kb),
                            "--monitor-every", "0", "--no-plot", "--run-dir", str(tmp_path / str(kb)))
    assert len(set(runs[16]["hashes"])) == 1
    assert runs[16]["hashes"] == runs[0]["hashes"]
    assert runs[16]["allreduces"] == runs[0]["allreduces"] and runs[16]["val_acc"] == runs[0]["val_acc"]


@needs_mpi
@pytest.mark.parametrize("k,compress,extra", [(2, "int8", []), (3, "sign", ["--bucket-kb", "16"])])
def test_resumed_data_parallel_run_equals_the_uninterrupted_one(k, compress, extra, tmp_path):
    """Error-feedback residuals (every rank's, from rank 0's checkpoint) and the stochastic
    rounding stream (keyed by seed, rank, step) resume with the run: one epoch, a checkpoint and
    a resumed second epoch end with the parameters of two epochs in one go, on every rank."""
    flags = ["--dist", "ring", "--compress", compress, "--error-feedback", "--schedule", "constant", "--monitor-every", "0",
             "--no-plot", *extra]
    whole = run_json(k, "train_run.py", "--epochs", "2", *flags, "--run-dir", str(tmp_path / "whole"))
    run_json(k, "train_run.py", "--epochs", "1", *flags, "--run-dir", str(tmp_path / "first"))
    resumed = run_json(k, "train_run.py", "--epochs", "2", *flags, "--resume", str(tmp_path / "first" / "checkpoint.npz"),
                       "--run-dir", str(tmp_path / "resumed"))
    assert len(set(resumed["hashes"])) == 1
    assert resumed["hashes"] == whole["hashes"]


@needs_mpi
def test_hop_schedule_trains_like_once_with_fewer_bytes(tmp_path):
    """K = 2, int8: quantizing every reduce-scatter send too reaches the 'once' schedule's
    accuracy on digits with fewer bytes on the wire, ranks end bit-identical."""
    from fasttrain.parallel import wire_bytes

    runs = {}
    for sched in ("once", "hop"):
        runs[sched] = run_json(2, "train_run.py", "--epochs", "8", "--dist", "ring", "--compress", "int8",
                               "--compress-schedule", sched, "--monitor-every", "0", "--no-plot",
                               "--run-dir", str(tmp_path / sched))
    for sched, out in runs.items():
        assert len(set(out["hashes"])) == 1, (sched, out["hashes"])
        assert out["val_acc"] >= 0.95, (sched, out)
        assert out["bytes_sent_per_rank"] == out["allreduces"] * wire_bytes(out["params"], 2, codec="int8",
                                                                            schedule=sched)
    assert abs(runs["hop"]["val_acc"] - runs["once"]["val_acc"]) <= 0.02, runs
    assert runs["hop"]["bytes_sent_per_rank"] < 0.5 * runs["once"]["bytes_sent_per_rank"]


@needs_mpi
def test_hop_schedule_sign_saves_every_ranks_residual(tmp_path):
    from fasttrain.train.checkpoint import read_checkpoint

    out = run_json(3, "train_run.py", "--epochs", "8", "--dist", "ring", "--compress", "sign",
                   "--compress-schedule", "hop", "--monitor-every", "0", "--no-plot", "--run-dir", str(tmp_path))
    assert len(set(out["hashes"])) == 1 and out["val_acc"] >= 0.9, out
    res = read_checkpoint(tmp_path / "checkpoint.npz")[0]["extra/ef_residual"]
    # hop: every rank keeps a residual for every value (it sends or owns each one), not just its chunk
    assert res.shape == (3, out["params"]) and (np.abs(res) > 0).mean(axis=1).min() > 0.9


@needs_mpi
def test_local_sgd_h1_equals_synchronous_training(tmp_path):
    out = run_json(2, "train_local_sgd_h1.py", str(tmp_path))
    assert out["identical_keys"] and out["steps"] >= 5
    assert out["max_diff"] <= 1e-5 * max(1.0, out["scale"]), out


@needs_mpi
def test_local_sgd_h4_converges_and_ends_identical(tmp_path):
    out = run_json(2, "train_run.py", "--epochs", "8", "--dist", "ring", "--local-sgd", "4", "--local-sgd-warmup", "10",
                   "--monitor-every", "0", "--no-plot", "--run-dir", str(tmp_path))
    assert len(set(out["hashes"])) == 1 and out["val_acc"] >= 0.95, out


@needs_mpi
def test_killed_rank_ends_the_job_in_bounded_time(tmp_path):
    proc = mpirun(2, [str(SCRIPTS / "train_kill.py"), "10", *FAST, "--epochs", "50", "--dist", "ring",
                      "--run-dir", str(tmp_path)], timeout=120, runner=False)
    assert "SIGKILL at step 10" in proc.stderr
    assert proc.returncode != 0
    assert proc.elapsed < 60, proc.elapsed


@needs_mpi
def test_exception_on_one_rank_aborts_with_its_message(tmp_path):
    proc = mpirun(2, [str(SCRIPTS / "train_raise.py"), *FAST, "--epochs", "50", "--dist", "ring",
                      "--run-dir", str(tmp_path)], timeout=120, runner=False)
    assert proc.returncode != 0 and proc.elapsed < 60
    assert "rank 1 of 2 (host " in proc.stderr
    assert "failed, aborting the job: ValueError: deliberate failure inside step 5 on rank 1" in proc.stderr


@needs_mpi
def test_collective_mismatch_mid_run_fails_fast_with_fingerprint(tmp_path):
    proc = mpirun(2, [str(SCRIPTS / "train_mismatch.py"), *FAST, "--epochs", "50", "--dist", "ring",
                      "--fingerprint-every", "1", "--run-dir", str(tmp_path)], timeout=120, runner=False)
    assert proc.returncode != 0 and proc.elapsed < 60
    assert "CollectiveMismatch: collective mismatch detected by fingerprint" in proc.stderr
    # the first rank to see the mismatch aborts the job; the other may be killed before it prints
    assert "at step 5" in proc.stderr or "at step 6" in proc.stderr


@needs_mpi
def test_different_models_on_two_ranks_fail_at_start(tmp_path):
    base = [sys.executable, "-m", "fasttrain", "train", *FAST, "--dist", "ring", "--run-dir", str(tmp_path)]
    cmd = [str(MPIEXEC), "-n", "1", *base, "--model", "simple_cnn", ":", "-n", "1", *base, "--model", "mlp"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=_env(), cwd=ROOT)
    assert proc.returncode != 0 and time.perf_counter() - t0 < 60
    assert "collective mismatch detected by fingerprint" in proc.stderr and "broadcast_params" in proc.stderr


@needs_mpi
@pytest.mark.parametrize("k,fault,rank,extra", [(2, "stop", 1, []), (3, "exit0", 0, []),
                                               (2, "stop", 0, ["--bucket-kb", "16"])])
def test_watchdog_names_a_stopped_or_vanished_rank_and_ends_the_job(k, fault, rank, extra, tmp_path):
    """A rank that stops (SIGSTOP) or leaves (sys.exit(0)) before a gradient all-reduce: every
    waiting rank prints one line naming it and the collective, and the job ends non-zero within
    the collective timeout plus 10 s (it used to hang forever)."""
    proc = mpirun(k, [str(SCRIPTS / "train_fault.py"), fault, f"rank:{rank}", "4", *FAST, "--epochs", "50", "--dist",
                      "ring", "--collective-timeout", "3", *extra, "--run-dir", str(tmp_path)], timeout=120, runner=False)
    assert proc.returncode != 0, proc.stderr[-3000:]
    assert proc.elapsed < 3 + 10 + 8, proc.elapsed  # + start-up and 4 steps
    lines = [ln for ln in proc.stderr.splitlines() if "did not reach" in ln]
    assert lines and len(lines) <= k - 1, proc.stderr[-3000:]
    for ln in lines:
        # with buckets the rank stops after its buckets were queued: the peer waits in one of them
        what = "(bucket " if extra else "(gradients, step 4) within 3 s"
        assert f"rank {rank} (host " in ln and "did not reach all-reduce #" in ln and what in ln, ln
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]


def test_collective_timeout_is_a_data_parallel_option():
    from fasttrain.config import make_config
    from fasttrain.validation import ConfigError, validate

    with pytest.raises(ConfigError, match="collective_timeout"):
        validate(make_config({"collective_timeout": 5.0}))
    with pytest.raises(ConfigError, match="collective_timeout"):
        validate(make_config({"collective_timeout": -1.0, "dist": "ring"}))
    validate(make_config({"collective_timeout": 0.0, "dist": "ring"}))
