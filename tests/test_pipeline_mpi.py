"""Pipeline parallelism under a real MPI launcher: the Python API on S x D grids against
single-process training, a dying stage, and `fasttrain train --pipeline-stages` runs whose one
checkpoint a single process resumes (and the other way round)."""
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from test_dist_mpi import MPIEXEC, ROOT, mpirun

pytestmark = [pytest.mark.mpi, pytest.mark.skipif(not MPIEXEC.exists(), reason=f"no mpiexec beside {sys.executable}")]


@pytest.mark.parametrize("K,S,M,schedule", [(2, 2, 1, "gpipe"), (2, 2, 4, "1f1b"), (3, 3, 2, "gpipe"),
                                             (3, 3, 4, "1f1b"), (4, 2, 2, "1f1b"), (4, 2, 4, "gpipe")])
def test_pipeline_on_grid_equals_single_process(K, S, M, schedule):
    out = mpirun(K, "pipeline_check.py", str(S), str(M), schedule)
    assert out["stages"] == S and out["replicas"] == K // S
    if K == S:  # bit-identical to one process accumulating over the same micro-batches
        assert out["identical_to_accumulation"], out
    # every grid equals whole-batch steps within float32 reassociation (replicas: the gradient mean)
    assert out["max_diff_whole"] <= 1e-6 * out["scale"], out
    expected = [M] * S if schedule == "gpipe" else [min(S - s, M) for s in range(S)]
    assert out["peak_in_flight"] == expected, out


@pytest.mark.parametrize("fault", ["die", "kill"])
def test_dead_stage_ends_the_job(fault):
    # the first stage waits for the last one's gradients: the launcher must end it, not a hang
    t0 = time.monotonic()
    proc = mpirun(3, "pipeline_check.py", "3", "2", "1f1b", fault, timeout=120, check=False)
    assert proc.returncode != 0
    assert time.monotonic() - t0 < 60
    if fault == "die":
        assert "stage 2 died" in proc.stderr


def train(k, run_dir, *flags, model=("--model", "mlp", "--dropout", "0")):
    """`fasttrain train` on digits (default: the MLP, no dropout, no batchnorm), under mpiexec when k > 1."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "fasttrain", "train", "--quiet", *model, "--limit", "200",
           "--batch-size", "20", "--schedule", "constant", "--threads", "1", "--monitor-every", "0", "--no-plot",
           "--run-dir", str(run_dir), *flags]
    if k > 1:
        cmd = [str(MPIEXEC), "-n", str(k)] + cmd
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with np.load(run_dir / "checkpoint.npz") as f:
        return {k: f[k] for k in f.files if k != "meta"}


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), f"{k}: max difference {np.abs(a[k] - b[k]).max()}"


@pytest.mark.parametrize("model", [("--model", "mlp", "--dropout", "0"),
                                   ("--model", "simple_cnn", "--dropout", "0.25")])  # batchnorm, dropout
def test_checkpoints_cross_between_pipelined_and_single_process(tmp_path, model):
    single2 = train(1, tmp_path / "single2", "--epochs", "2", model=model)
    # one micro-batch: the pipelined run is the single-process arithmetic, checkpoint included
    piped1 = train(2, tmp_path / "piped1", "--epochs", "1", "--pipeline-stages", "2", model=model)
    assert_same(piped1, train(1, tmp_path / "single1", "--epochs", "1", model=model))
    # a single process resumes the pipelined run's one checkpoint ...
    assert_same(train(1, tmp_path / "resumed1", "--epochs", "2", "--resume", str(tmp_path / "piped1/checkpoint.npz"),
                      model=model), single2)
    # ... and a pipelined run resumes a single-process checkpoint
    assert_same(train(2, tmp_path / "resumed2", "--epochs", "2", "--pipeline-stages", "2",
                      "--resume", str(tmp_path / "single1/checkpoint.npz"), model=model), single2)


def test_grid_of_two_pipelines_equals_two_data_parallel_ranks(tmp_path):
    # 2 stages x 2 replicas: each stage's gradient mean is the element-wise mean pure data
    # parallelism takes over the whole arena, so the runs agree bit for bit
    grid = train(4, tmp_path / "grid", "--epochs", "1", "--pipeline-stages", "2", "--dist", "ring")
    assert_same(grid, train(2, tmp_path / "dp", "--epochs", "1", "--dist", "ring"))


def test_bench_quick_runs_every_part():
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "bench/pipeline.py", "--quick"], capture_output=True, text=True,
                          timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    names = {r["name"] for r in records}
    assert names == {"bubble", "memory", "versus"}, names
    mem = {(r["schedule"], r["stage"]): r["peak_micro_batches"] for r in records if r["name"] == "memory"}
    assert [mem["1f1b", s] for s in range(4)] == [4, 3, 2, 1] and mem["gpipe", 0] == 8


def checkpoints(run_dir):
    """Every checkpoint file of a run (the last step's, the best epoch's), by file name."""
    out = {}
    for path in sorted(run_dir.glob("checkpoint*.npz")):
        with np.load(path) as f:
            out[path.name] = {k: f[k] for k in f.files if k != "meta"}
    return out


def test_buckets_on_the_grid_equal_data_parallelism(tmp_path):
    # 2 stages x 2 replicas, each stage's gradients in 1 KB buckets started during the last
    # micro-batch's backward: a mean of two values is the same in any bucketing, bit for bit
    grid = train(4, tmp_path / "grid", "--epochs", "1", "--pipeline-stages", "2", "--dist", "ring", "--bucket-kb", "1")
    assert_same(grid, train(2, tmp_path / "dp", "--epochs", "1", "--dist", "ring"))


@pytest.mark.parametrize("codec", ["sign", "int4"])
def test_error_feedback_on_the_grid_resumes_exactly(tmp_path, codec):
    # each stage keeps its replicas' residuals; the one checkpoint holds them in the whole model's
    # layout, (replicas, parameters), and a resumed run scatters them back
    flags = ("--pipeline-stages", "2", "--dist", "ring", "--compress", codec, "--micro-batches", "2")
    whole = train(4, tmp_path / "whole", "--epochs", "2", *flags)
    half = train(4, tmp_path / "half", "--epochs", "1", *flags)
    n = sum(v.size for k, v in half.items() if k.startswith("param/"))
    assert half["extra/ef_residual"].shape == (2, n) and np.abs(half["extra/ef_residual"]).max() > 0
    assert_same(train(4, tmp_path / "resumed", "--epochs", "2", *flags, "--resume", str(tmp_path / "half/checkpoint.npz")),
                whole)


@pytest.mark.parametrize("k,model", [(2, ("--model", "mlp", "--dropout", "0")),
                                     (3, ("--model", "simple_cnn", "--dropout", "0.25"))])
def test_trainer_features_cross_between_pipelined_and_single_process(tmp_path, k, model):
    # EMA, early stopping (its best epoch's weights and buffers), mixup and snapshot ensembles:
    # with one micro-batch the pipelined run is the single-process arithmetic, all its extras
    # included, and either kind of run resumes the other's checkpoint exactly
    flags = ("--ema-decay", "0.9", "--early-stopping", "1", "--min-delta", "0.5", "--mixup", "0.2",
             "--schedule", "cosine_restarts", "--decay-epochs", "1", "--snapshots", "2", "--augment", "flip")
    piped = f"--pipeline-stages={k}"
    train(1, tmp_path / "single2", "--epochs", "2", *flags, model=model)
    train(k, tmp_path / "piped1", "--epochs", "1", *flags, piped, model=model)
    train(1, tmp_path / "single1", "--epochs", "1", *flags, model=model)
    single2, piped1, single1 = (checkpoints(tmp_path / d) for d in ("single2", "piped1", "single1"))
    assert {"extra/ema/shadow", "extra/snapshot/0", "extra/best/weights"} <= set(piped1["checkpoint.npz"])
    for name in single1:
        assert_same(piped1[name], single1[name])
    # (the flags again: the helper's own --schedule would override the stored one)
    train(1, tmp_path / "resumed1", "--epochs", "2", *flags, "--resume", str(tmp_path / "piped1/checkpoint.npz"),
          model=model)
    train(k, tmp_path / "resumed2", "--epochs", "2", *flags, piped, "--resume",
          str(tmp_path / "single1/checkpoint.npz"), model=model)
    for run in ("resumed1", "resumed2"):
        got = checkpoints(tmp_path / run)
        assert got.keys() == single2.keys()
        for name in single2:
            assert_same(got[name], single2[name])
        summary = json.loads((tmp_path / run / "summary.json").read_text())
        assert summary["snapshot_val_acc"] == json.loads((tmp_path / "single2/summary.json").read_text())["snapshot_val_acc"]


def test_trainer_features_on_the_grid_equal_data_parallelism(tmp_path):
    # 2 stages x 2 replicas against 2 data-parallel ranks: replica 0's stages validate (EMA, early
    # stopping, the snapshot ensemble), the decision and the best weights reach replica 1
    flags = ("--epochs", "2", "--ema-decay", "0.9", "--early-stopping", "1", "--min-delta", "0.5", "--mixup", "0.2",
             "--schedule", "cosine_restarts", "--decay-epochs", "1", "--snapshots", "2", "--dist", "ring")
    train(4, tmp_path / "grid", *flags, "--pipeline-stages", "2")
    train(2, tmp_path / "dp", *flags)
    grid, dp = checkpoints(tmp_path / "grid"), checkpoints(tmp_path / "dp")
    assert grid.keys() == dp.keys() == {"checkpoint.npz", "checkpoint_best.npz"}
    for name in dp:
        assert_same(grid[name], dp[name])
    summaries = [json.loads((tmp_path / d / "summary.json").read_text()) for d in ("grid", "dp")]
    assert summaries[0]["snapshot_val_acc"] == summaries[1]["snapshot_val_acc"] is not None


def test_transfer_learning_on_the_grid(tmp_path):
    # --init-from loads the whole model on every rank before each stage keeps its part;
    # --freeze-except counts the whole model's layers: only the head trains, on stage 1 of 2
    start = train(1, tmp_path / "start", "--epochs", "1")
    flags = ("--epochs", "1", "--init-from", str(tmp_path / "start/checkpoint.npz"), "--freeze-except", "1",
             "--seed", "3")
    grid = train(4, tmp_path / "grid", *flags, "--pipeline-stages", "2", "--dist", "ring")
    assert_same(grid, train(2, tmp_path / "dp", *flags, "--dist", "ring"))
    params = [k for k in grid if k.startswith("param/")]
    head = max(params, key=lambda k: int(k.split("/")[1].split(".")[0]))
    for k in params:
        assert np.array_equal(grid[k], start[k]) != (k.split(".")[0] == head.split(".")[0]), k
