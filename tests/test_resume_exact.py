"""`fasttrain train --resume CKPT` continues the run the checkpoint came from: its config (flags
given again override, and say so), its run folder, and a result bit-identical to the run that
was never interrupted, with augmentation, mixup, a warmup + cosine schedule (or SGDR with a
snapshot ensemble), dropout, EMA and early stopping all on."""
import json

import numpy as np
import pytest

from fasttrain.cli import main
from fasttrain.train.checkpoint import read_checkpoint
from fasttrain.train.trainer import Trainer

COMMON = ["--epochs", "4", "--limit", "300", "--ema-decay", "0.9", "--early-stopping", "2", "--dropout", "0.3",
          "--monitor-every", "0", "--quiet", "--no-plot"]
RUNS = {"cosine": COMMON + ["--augment", "flip,crop", "--mixup", "0.2", "--schedule", "cosine", "--warmup-steps", "5"],
        "sgdr_snapshots": COMMON + ["--augment", "pca,cutout", "--schedule", "cosine_restarts", "--decay-epochs", "1",
                                    "--snapshots", "3"]}


class Crash(RuntimeError):
    pass


def _untimed(record: dict) -> dict:
    """An epoch record without its wall-clock numbers (the only thing a resume may change)."""
    return {k: v for k, v in record.items() if k not in ("images_per_s", "epoch_time_s")}


def _same_checkpoint(a, b):
    (arrays_a, meta_a), (arrays_b, meta_b) = read_checkpoint(a), read_checkpoint(b)
    assert sorted(arrays_a) == sorted(arrays_b)
    for k in arrays_a:
        assert np.array_equal(arrays_a[k], arrays_b[k]), k
    for k in ("step", "epoch", "ema"):
        assert meta_a.get(k) == meta_b.get(k), k
    best = [_untimed((m.get("best") or {}).get("record", {})) for m in (meta_a, meta_b)]
    assert best[0] == best[1]
    untimed = [[_untimed(r) for r in m["history"]["epochs"]] for m in (meta_a, meta_b)]
    assert untimed[0] == untimed[1] and len(untimed[0]) == meta_a["epoch"]
    assert meta_a["history"]["losses"] == meta_b["history"]["losses"]


@pytest.mark.parametrize("run", sorted(RUNS))
def test_resume_is_bit_identical_to_the_uninterrupted_run(run, tmp_path, monkeypatch, capsys):
    FLAGS = RUNS[run]
    monkeypatch.chdir(tmp_path)
    assert main(["train", *FLAGS, "--run-dir", "whole"]) == 0

    save = Trainer.save

    def crash_after_epoch_2(self, path):
        save(self, path)
        if self.epoch == 2:
            raise Crash("simulated crash right after the epoch-2 checkpoint")

    monkeypatch.setattr(Trainer, "save", crash_after_epoch_2)
    assert main(["train", *FLAGS, "--run-dir", "cut"]) == 1
    monkeypatch.setattr(Trainer, "save", save)
    assert json.loads(open("cut/metrics.jsonl").readlines()[-1])["epoch"] == 2
    capsys.readouterr()

    # nothing but the checkpoint: the augmentation, schedule, EMA... come from the run's config
    assert main(["train", "--resume", "cut/checkpoint.npz", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "fasttrain: note: resuming cut/checkpoint.npz with the config of its run; the run continues in cut" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut", "whole"]  # no new run folder
    _same_checkpoint("whole/checkpoint.npz", "cut/checkpoint.npz")
    _same_checkpoint("whole/checkpoint_best.npz", "cut/checkpoint_best.npz")
    whole, cut = (json.load(open(f"{d}/summary.json")) for d in ("whole", "cut"))
    assert whole["val_acc"] == cut["val_acc"] and whole["steps"] == cut["steps"] and whole["epochs"] == 4
    assert whole.get("snapshot_val_acc") == cut.get("snapshot_val_acc")
    assert whole.get("snapshot_steps") == cut.get("snapshot_steps") == ([20, 30, 40] if "snapshots" in run else None)


def test_resume_overrides_are_printed_and_applied(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    flags = ["--limit", "100", "--monitor-every", "0", "--quiet", "--no-plot", "--augment", "flip"]
    assert main(["train", *flags, "--epochs", "1", "--run-dir", "r"]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", "r/checkpoint.npz", "--epochs", "2", "--schedule", "cosine"]) == 0
    err = capsys.readouterr().err
    assert "fasttrain: note: --epochs overrides the run's epochs = 1 with 2" in err
    assert "--schedule overrides" not in err  # given again, but the run's own value
    saved = (tmp_path / "r" / "config.toml").read_text()
    assert 'augment = ["flip"]' in saved and "epochs = 2" in saved
    assert json.load(open("r/summary.json"))["epochs"] == 2


def test_resume_into_another_folder_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    flags = ["--limit", "100", "--monitor-every", "0", "--quiet", "--no-plot", "--epochs", "1"]
    assert main(["train", *flags, "--run-dir", "a"]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", "a/checkpoint.npz", "--epochs", "2", "--run-dir", "b"]) == 0
    assert "the run continues in b" in capsys.readouterr().err
    assert json.load(open("b/summary.json"))["epochs"] == 2


def test_plain_api_resume_after_other_models_is_bit_identical(tmp_path):
    """Dropout, DropConnect and stochastic depth built without a layer_id: a model rebuilt in the
    same process after other models were built resumes with the masks the first one drew."""
    import fasttrain as ft
    from fasttrain.train.checkpoint import load_checkpoint, save_checkpoint

    nn = ft.nn

    def build():
        return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Dropout(0.5),
                             nn.StochasticDepth(nn.Residual(nn.Sequential(nn.Linear(16, 16), nn.Dropout(0.3)),
                                                            post=nn.ReLU()), 0.5),
                             nn.DropConnectLinear(16, 4, p=0.5))

    rng = np.random.default_rng(0)
    X, Y = rng.standard_normal((4, 8, 12)).astype(np.float32), rng.integers(0, 4, (4, 8))
    loss = ft.losses.SoftmaxCrossEntropy()

    def steps(model, arena, opt, start, stop):
        for s in range(start, stop):
            model.set_step(s)
            arena.zero_grad()
            model.backward(loss(model.forward(X[s]), Y[s])[1])
            opt.step()

    model = build()
    arena = ft.ParamArena.for_model(model, seed=1)
    opt = ft.optim.Momentum(arena, lr=0.1)
    steps(model, arena, opt, 0, 2)
    save_checkpoint(tmp_path / "half.npz", model, arena, opt)
    steps(model, arena, opt, 2, 4)
    for _ in range(3):                       # other models, drawing from nothing process-wide
        build()
    again = build()
    arena2 = ft.ParamArena.for_model(again, seed=5)
    opt2 = ft.optim.Momentum(arena2, lr=0.1)
    load_checkpoint(tmp_path / "half.npz", again, arena2, opt2)
    steps(again, arena2, opt2, 2, 4)
    assert np.array_equal(arena2.data, arena.data)


@pytest.mark.parametrize("run, stop_after", [("cosine", 13), ("sgdr_snapshots", 20)])
def test_ctrl_c_mid_epoch_saves_a_checkpoint_that_resumes_exactly(run, stop_after, tmp_path, monkeypatch, capsys):
    """The first Ctrl-C lets the step finish and writes the checkpoint, mid-epoch (step 13: epoch 2,
    batch 5 of 8) or at an epoch's last batch (step 20 is SGDR's first snapshot too); resuming it
    gives the uninterrupted run's bits."""
    import signal

    FLAGS = RUNS[run]
    monkeypatch.chdir(tmp_path)
    assert main(["train", *FLAGS, "--run-dir", "whole"]) == 0

    step = Trainer.train_step

    def ctrl_c_at(self, xb, yb):
        out = step(self, xb, yb)
        if self.step == stop_after:
            signal.raise_signal(signal.SIGINT)   # the handler only sets the flag: the loop stops after this step
        return out

    monkeypatch.setattr(Trainer, "train_step", ctrl_c_at)
    assert main(["train", *FLAGS, "--run-dir", "cut"]) == 130
    monkeypatch.setattr(Trainer, "train_step", step)
    err = capsys.readouterr().err
    assert f"interrupted at step {stop_after} (epoch" in err
    assert "the state is saved in cut/checkpoint.npz: `fasttrain train --resume cut` continues the run exactly" in err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler   # the CLI's handler is gone again
    _, meta = read_checkpoint("cut/checkpoint.npz")
    assert meta["step"] == stop_after and meta["history"]["steps"][-1] == stop_after
    assert main(["train", "--resume", "cut", "--quiet"]) == 0
    _same_checkpoint("whole/checkpoint.npz", "cut/checkpoint.npz")
    _same_checkpoint("whole/checkpoint_best.npz", "cut/checkpoint_best.npz")
    whole, cut = (json.load(open(f"{d}/summary.json")) for d in ("whole", "cut"))
    assert whole["val_acc"] == cut["val_acc"] and whole["steps"] == cut["steps"]
    # every step's metrics line is written once: the interrupted run's, then the resumed run's
    steps = [json.loads(line)["step"] for line in open("cut/metrics.jsonl") if '"loss"' in line and '"epoch"' in line
             and "train_loss" not in line]
    assert steps == list(range(1, whole["steps"] + 1))


def test_second_ctrl_c_aborts_at_once(tmp_path, monkeypatch, capsys):
    import signal

    monkeypatch.chdir(tmp_path)
    step = Trainer.train_step

    def two_presses(self, xb, yb):
        out = step(self, xb, yb)
        if self.step == 3:
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)   # raises KeyboardInterrupt here, inside the step
        return out

    monkeypatch.setattr(Trainer, "train_step", two_presses)
    assert main(["train", "--epochs", "2", "--limit", "300", "--quiet", "--no-plot", "--run-dir", "r"]) == 130
    err = capsys.readouterr().err
    assert "fasttrain: error: interrupted" in err and "saved" not in err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
