"""Bad input through the real command line (`python -m fasttrain train ...` as a subprocess): each
case exits with status 2 and ONE stderr line `fasttrain: error: ...` naming the flag, key,
variable or file, the value and what was expected; within 2 s (the checks run before any data is
loaded); no traceback (unless --debug / FASTTRAIN_DEBUG=1); and no run folder left behind."""
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fasttrain.backend import backend_status

MPIEXEC = Path(sys.executable).parent / "mpiexec"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Checkpoints written through the API (no training): an Adam simple_cnn and an mlp of the
    digits, a truncated and a random-bytes .npz, random bytes as .safetensors, a plain file."""
    import fasttrain as ft
    from fasttrain.config import Config
    from fasttrain.models import build
    from fasttrain.train.checkpoint import save_checkpoint

    d = tmp_path_factory.mktemp("files")
    for name, model_name in (("adam", "simple_cnn"), ("mlp", "mlp")):
        model = build(model_name, (1, 8, 8), 10)
        arena = ft.ParamArena.for_model(model, seed=0)
        opt = ft.optim.Adam(arena, lr=1e-3)
        cfg = Config(model=model_name).to_dict()
        save_checkpoint(d / f"{name}.npz", model, arena, opt, {"step": 0, "epoch": 0, "config": cfg,
                                                             "history": {"steps": [], "losses": [], "epochs": [],
                                                                         "initial_loss": None}})
    good = (d / "adam.npz").read_bytes()
    (d / "trunc.npz").write_bytes(good[: len(good) // 2])
    rng = np.random.default_rng(0)
    (d / "random.npz").write_bytes(rng.bytes(4096))
    (d / "random.safetensors").write_bytes(rng.bytes(4096))
    (d / "afile").write_text("not a folder\n")
    return d


# (flags, environment, what the line must contain)
CASES = [
    (["--lr", "-1"], {}, "--lr: expected a finite number > 0, got -1.0"),
    (["--lr", "nan"], {}, "--lr: expected a finite number > 0, got nan"),
    (["--lr", "inf"], {}, "--lr: expected a finite number > 0, got inf"),
    (["--batch-size", "0"], {}, "--batch-size: expected an integer >= 1, got 0"),
    (["--batch-size", "-5"], {}, "--batch-size: expected an integer >= 1, got -5"),
    (["--optimizer", "foo"], {}, "--optimizer: expected one of sgd, momentum, nesterov, adagrad, rmsprop, adam, adamw, "
                                 "got 'foo'"),
    (["--dataset", "foo"], {}, "--dataset: expected one of digits, "),
    (["--model", "foo"], {}, "--model: expected one of mlp, simple_cnn"),
    (["--augment", "flip,foo"], {}, "--augment: expected names from flip, "),
    (["--schedule", "foo"], {}, "--schedule: expected one of constant, "),
    ([], {"FASTTRAIN_BACKEND": "foo"}, "FASTTRAIN_BACKEND: expected one of auto, "),
    ([], {"FASTTRAIN_LAYOUT": "nhwc"}, "FASTTRAIN_LAYOUT: expected one of auto, nchw, got 'nhwc'"),
    ([], {"FASTTRAIN_THREADS": "abc"}, "FASTTRAIN_THREADS: expected a positive integer, got 'abc'"),
    ([], {"FASTTRAIN_THREADS": "-3"}, "FASTTRAIN_THREADS: expected a positive integer, got -3"),
    (["--threads", "0"], {}, "--threads: expected an integer >= 1 (CPU threads), got 0"),
    (["--val-fraction", "1.5"], {}, "--val-fraction: expected a finite number > 0 and < 1, got 1.5"),
    (["--val-fraction", "0"], {}, "--val-fraction: expected a finite number > 0 and < 1, got 0.0"),
    (["--weight-decay", "-1e-4"], {}, "--weight-decay: expected a finite number >= 0, got -0.0001"),
    (["--dropout", "2"], {}, "--dropout: expected a finite number >= 0 and < 1, got 2.0"),
    (["--mixup", "-0.2"], {}, "--mixup: expected a finite number >= 0, got -0.2"),
    (["--limit", "0"], {}, "--limit: expected an integer >= 1 (training examples to keep), got 0"),
    (["--checkpoint-format", "pt"], {}, "--checkpoint-format: expected one of npz, safetensors, got 'pt'"),
    (["--freeze-except", "100"], {}, "--freeze-except: expected an integer in 1..5 (model 'simple_cnn' has 5 "
                                     "parameterized layers), got 100"),
    (["--resume", "{d}/missing.npz"], {}, "--resume: expected an existing checkpoint file, got '{d}/missing.npz' "
                                          "(no such file)"),
    (["--resume", "{d}"], {}, "--resume: expected a checkpoint file, or a run folder holding checkpoint.npz or "
                              "checkpoint.safetensors, got the folder '{d}', which holds neither"),
    (["--resume", "{d}/adam.npz", "--optimizer", "sgd"], {}, "--optimizer: expected 'adam', the optimizer whose state "
                                                             "the checkpoint '{d}/adam.npz' holds"),
    (["--init-from", "README.md"], {}, "--init-from: expected a fasttrain checkpoint (.npz or .safetensors) or a PyTorch state_dict "
                                       "(.bin, .pt, .pth or .safetensors), got 'README.md'"),
    (["--run-dir", "{d}/afile"], {}, "--run-dir: expected a folder for the run's files, got '{d}/afile', which is a "
                                     "file"),
    (["--epochs", "0"], {}, "--epochs: expected an integer >= 1, got 0"),
    (["--epochs", "-1"], {}, "--epochs: expected an integer >= 1, got -1"),
    (["--resume", "{d}/trunc.npz"], {}, "--resume: expected a fasttrain checkpoint, got '{d}/trunc.npz': not a "
                                        "readable .npz checkpoint"),
    (["--init-from", "{d}/random.npz"], {}, "--init-from: expected a fasttrain checkpoint, got '{d}/random.npz': not a "
                                            "readable .npz checkpoint"),
    (["--resume", "{d}/random.safetensors"], {}, "--resume: expected a fasttrain checkpoint, got "
                                                 "'{d}/random.safetensors': not a readable safetensors file"),
    (["--resume", "{d}/mlp.npz", "--model", "simple_cnn"], {}, "--resume: expected a checkpoint of model 'simple_cnn' "
                                                               "on this data, got '{d}/mlp.npz' (a 'mlp' model): missing"),
    (["--init-from", "{d}/mlp.npz"], {}, "--init-from: expected a checkpoint of model 'simple_cnn'"),
    (["--compress", "foo"], {}, "--compress: expected one of none, fp16, bf16, int8, int4, sign, got 'foo'"),
    (["--compress", "int8"], {}, "--compress: expected --dist ring or mpi with it"),
    (["--data-path", "x"], {}, "--data-path: expected no data path with dataset 'digits'"),
    (["--dataset", "npz"], {}, "--data-path: expected the location of the 'npz' data"),
]
if backend_status("cuda") != "available":  # no GPU here: asking for one is a config error
    CASES += [(["--device", "cuda"], {}, "--device: expected a usable CUDA GPU, got 'cuda', but"),
              (["--backend", "cuda"], {}, "--backend: expected a usable CUDA GPU, got 'cuda', but")]


def _startup_seconds():
    """How long this machine takes right now to start Python and import the CLI: the 2 s bound
    is for a quiet machine (startup ~0.4 s here), scaled when other work slows everything."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import fasttrain.cli"], check=True, timeout=60)
    return time.perf_counter() - t0


def _cli(args, env, cwd):
    env = dict({k: v for k, v in os.environ.items() if k != "FASTTRAIN_DEBUG"}, **env)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "fasttrain", "train", *args], capture_output=True, text=True,
                          timeout=60, env=env, cwd=cwd)
    return proc, time.perf_counter() - t0


@pytest.mark.parametrize("flags, env, expected", CASES, ids=[" ".join(c[0]) or str(c[1]) for c in CASES])
def test_bad_input_is_one_line_exit_2(flags, env, expected, files, tmp_path):
    root = Path(__file__).resolve().parent.parent
    (tmp_path / "README.md").write_text((root / "README.md").read_text())
    args = [a.format(d=files) for a in flags]
    proc, elapsed = _cli(args, env, tmp_path)
    bound = 2.0
    if elapsed >= bound:  # a busy machine (shared CI, parallel builds): retry, against a scaled bound
        bound = 2.0 * max(1.0, _startup_seconds() / 0.4)
        proc, elapsed = _cli(args, env, tmp_path)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("fasttrain: error: "), proc.stderr
    assert expected.format(d=files) in lines[0], lines[0]
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert elapsed < bound, f"{elapsed:.2f} s (bound {bound:.1f} s)"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md"], "left files behind"


def test_debug_shows_the_traceback(tmp_path):
    proc, _ = _cli(["--lr", "-1", "--debug"], {}, tmp_path)
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "ConfigError" in proc.stderr
    proc, _ = _cli(["--lr", "-1"], {"FASTTRAIN_DEBUG": "1"}, tmp_path)
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_toml_keys_are_named_with_their_file(tmp_path):
    (tmp_path / "c.toml").write_text("lr = -2.0\n")
    proc, _ = _cli(["--config", "c.toml"], {}, tmp_path)
    assert proc.returncode == 2
    assert proc.stderr == "fasttrain: error: lr (in c.toml): expected a finite number > 0, got -2.0\n"


def test_silent_nonsense_is_an_error_or_a_warning(tmp_path):
    """Checked once the data is loaded (it needs the dataset's size), still before the run folder."""
    proc, _ = _cli(["--batch-size", "100000000"], {}, tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "--batch-size: expected at most 1438, the training examples of dataset 'digits'" in proc.stderr
    proc, _ = _cli(["--limit", "5", "--batch-size", "5", "--epochs", "1", "--quiet", "--no-plot",
                    "--monitor-every", "0"], {}, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "fasttrain: warning: 5 training examples for 10 classes" in proc.stderr
    assert not (tmp_path / "README.md").exists() and list(tmp_path.iterdir()) == [tmp_path / "runs"]


@pytest.mark.skipif(not MPIEXEC.exists(), reason=f"no mpiexec beside {sys.executable}")
def test_mpi_ranks_print_one_whole_line(tmp_path):
    cmd = [str(MPIEXEC), "-n", "2", sys.executable, "-m", "fasttrain", "train", "--dist", "mpi", "--lr", "-1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode != 0
    assert proc.stderr == "fasttrain: error: --lr: expected a finite number > 0, got -1.0\n", proc.stderr

