"""Every learning-rate schedule of fasttrain.schedules, snapshot ensembles and every augmentation
are reachable from the command line and TOML (what the README promises)."""
import json
import math

import pytest

from fasttrain import schedules
from fasttrain.cli import main
from fasttrain.config import make_config
from fasttrain.train.augmentation import AUGMENTATIONS
from fasttrain.train.run import SCHEDULES, make_schedule, snapshot_steps

SPE = 10  # steps per epoch


@pytest.mark.parametrize("name, expected", [
    ("constant", lambda s: 0.1),
    ("step", lambda s: 0.1 * 0.5 ** (s // 20)),
    ("exponential", lambda s: 0.1 * 0.5 ** (s / 20)),
    ("inverse_time", lambda s: 0.1 / (1 + 0.5 * s / 20)),
    ("cosine", lambda s: 0.01 + 0.045 * (1 + math.cos(math.pi * min(s, 60) / 60))),
    ("linear", lambda s: 0.1 + (0.01 - 0.1) * min(s, 60) / 60),
    ("inverse_sqrt", lambda s: 0.1 * math.sqrt(1 / max(s, 1))),
    ("cosine_restarts", lambda s: 0.01 + 0.045 * (1 + math.cos(math.pi * (s % 20) / 20))),
])
def test_every_schedule_from_the_config(name, expected):
    cfg = make_config({"schedule": name, "lr": 0.1, "lr_decay": 0.5, "decay_epochs": 2, "min_lr": 0.01,
                       "epochs": 6})
    sched = make_schedule(cfg, 6 * SPE, SPE)
    for s in (0, 1, 7, 19, 20, 33, 59, 60, 75):
        assert sched(s) == pytest.approx(expected(s), rel=1e-12), (name, s)


def test_the_list_is_every_schedule_of_the_library():
    assert set(SCHEDULES) == set(schedules._BY_NAME)


def test_warmup_composes_with_any_schedule():
    cfg = make_config({"schedule": "step", "lr": 0.1, "warmup_steps": 4, "decay_epochs": 1, "lr_decay": 0.5})
    sched = make_schedule(cfg, 100, SPE)
    assert [round(sched(s), 12) for s in (0, 2, 4, 10)] == [0.0, 0.05, 0.1, 0.05]


def test_snapshot_steps_are_the_sgdr_cycle_ends():
    cfg = make_config({"schedule": "cosine_restarts", "decay_epochs": 1, "restart_mult": 2.0, "snapshots": 2})
    assert snapshot_steps(cfg, 70, SPE) == [10, 30, 70]
    assert snapshot_steps(cfg, 69, SPE) == [10, 30]


def test_toml_reaches_sgdr_snapshots_and_every_augmentation(tmp_path, capsys):
    (tmp_path / "c.toml").write_text(
        'schedule = "cosine_restarts"\nsnapshots = 2\ndecay_epochs = 1\nepochs = 3\nlimit = 200\n'
        'dataset = "synthetic_cifar"\nmodel = "mlp"\nmonitor_every = 0\nplot = false\n'
        f'augment = {json.dumps(list(AUGMENTATIONS))}\n')
    assert main(["train", "--config", str(tmp_path / "c.toml"), "--run-dir", str(tmp_path / "r"), "--quiet"]) == 0
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["snapshot_steps"] == [14, 21] and 0 <= summary["snapshot_val_acc"] <= 1  # 200 / 32 -> 7 steps/epoch
    assert "snapshot ensemble of 2 (steps [14, 21]): validation accuracy" in out


@pytest.mark.parametrize("flags, message", [
    (["--snapshots", "2"], "--snapshots: expected --schedule cosine_restarts with it"),
    (["--schedule", "cosine_restarts", "--snapshots", "2", "--decay-epochs", "20", "--epochs", "3"],
     "--decay-epochs: expected at most epochs = 3"),
    (["--lr-decay", "0"], "--lr-decay: expected a finite number > 0 and <= 1, got 0.0"),
    (["--restart-mult", "0.5"], "--restart-mult: expected a finite number >= 1, got 0.5"),
    (["--min-lr", "1"], "--min-lr: expected at most lr = 0.003"),
])
def test_schedule_option_errors(flags, message, capsys, tmp_path):
    assert main(["train", *flags, "--run-dir", str(tmp_path / "r")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
