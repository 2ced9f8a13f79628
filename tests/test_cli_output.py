"""What the command line prints: the default settings cause no warning, the command-center
summary appears once, only rank 0 prints under MPI, and the help texts are complete."""
import subprocess
import sys
from pathlib import Path

import pytest

MPIEXEC = Path(sys.executable).parent / "mpiexec"


def _train(args, cwd, launcher=()):
    cmd = [*launcher, sys.executable, "-m", "fasttrain", "train", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=cwd)


def test_default_settings_cause_no_warning(tmp_path):
    """Three epochs of the default run cover what used to warn: Adam's first steps (update/weight
    0.3 at step 0) and the end of the cosine decay (lr -> 0, updates -> 0)."""
    proc = _train(["--epochs", "3", "--quiet", "--no-plot"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "WARNING" not in out and "warning:" not in out, out
    assert out.count("command center:") == 1, out
    assert proc.stdout.strip().splitlines()[-1].startswith("final validation accuracy")


def test_a_far_off_lr_still_warns(tmp_path):
    proc = _train(["--epochs", "2", "--quiet", "--no-plot", "--lr", "1e-7", "--schedule", "constant",
                   "--monitor-every", "10"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "the learning rate is probably too low" in proc.stderr


@pytest.mark.skipif(not MPIEXEC.exists(), reason=f"no mpiexec beside {sys.executable}")
def test_only_rank_0_prints_under_mpi(tmp_path):
    proc = _train(["--dist", "ring", "--epochs", "1", "--limit", "400", "--quiet", "--no-plot", "--monitor-every", "1",
                   "--no-lr-scaling",
                   "--lr", "1e-7", "--schedule", "constant"], tmp_path, launcher=(str(MPIEXEC), "-n", "2"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "[rank 1]" not in out, out
    assert out.count("command center:") == 1 and out.count("final validation accuracy") == 1, out
    assert "too low" in out  # rank 0 still warns


def test_help_texts_are_whole():
    top = subprocess.run([sys.executable, "-m", "fasttrain", "--help"], capture_output=True, text=True, timeout=60)
    assert top.returncode == 0 and "one process or many under mpiexec." in top.stdout
    tune = subprocess.run([sys.executable, "-m", "fasttrain", "tune", "--help"], capture_output=True, text=True,
                          timeout=60).stdout
    for flag in ("--coarse-trials", "--fine-trials", "--coarse-epochs", "--fine-epochs", "--lr-range", "--wd-range"):
        about = tune[tune.index("\n  " + flag):].split("\n  --")[1]  # the option's entry, help included
        assert "(default:" in " ".join(about.split()), (flag, about)
