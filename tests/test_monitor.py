"""Command center: update/weight ratios against a hand computation from the arena, activation
statistics and dead-ReLU fractions against a NumPy forward, warnings when the ratio is far off,
records in metrics.jsonl, the summary; the children's forward is restored after sampling."""
import json

import numpy as np
import pytest

import fasttrain as ft
from fasttrain import nn
from fasttrain.train import Trainer
from fasttrain.train.monitor import Monitor
from fasttrain.data import DataLoader


def _mlp(seed=0):
    model = nn.Sequential(nn.Linear(7, 13), nn.ReLU(), nn.Linear(13, 3))
    arena = ft.ParamArena.for_model(model, seed=seed)
    return model, arena


def test_update_ratio_activations_dead_relu_match_numpy():
    model, arena = _mlp()
    rng = np.random.default_rng(1)
    x = rng.standard_normal((11, 7)).astype(np.float32)
    # make units 0..4 of the hidden layer dead: large negative bias
    model[0].bias.data[:5] = -100.0
    mon = Monitor(model, arena, every=1)
    before = {p.name: np.array(p.data, dtype=np.float64) for p in arena.params}
    mon.begin()
    h = model.forward(x)
    mon.unhook()
    assert "forward" not in vars(model[0]) and "forward" not in vars(model[1])
    arena.data[...] += np.linspace(-1e-3, 1e-3, arena.size, dtype=np.float32)  # a fake "update"
    rec = mon.end(step=0, loss=1.0)
    for p in arena.params:
        w = before[p.name]
        if not np.any(w):  # zero weights (a fresh bias): no meaningful ratio, left out
            assert p.name not in rec["update_ratio"]
            continue
        expected = np.linalg.norm(np.array(p.data, np.float64) - w) / np.linalg.norm(w)
        assert rec["update_ratio"][p.name] == pytest.approx(expected, rel=1e-4)
    # hidden ReLU output by hand
    w0, b0 = before["0.weight"], before["0.bias"]
    b0[:5] = -100.0
    a = np.maximum(x.astype(np.float64) @ w0.T + b0, 0)
    st = rec["activations"]["1:ReLU"]
    assert st["mean"] == pytest.approx(a.mean(), rel=1e-4) and st["std"] == pytest.approx(a.std(), rel=1e-4)
    assert st["dead"] == pytest.approx(np.mean(~(a > 0).any(axis=0)))
    assert st["dead"] >= 5 / 13
    assert rec["activations"]["2:Linear"]["mean"] == pytest.approx(float(np.mean(h)), rel=1e-4, abs=1e-6)
    assert "dead" not in rec["activations"]["0:Linear"]


def _loader(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 7)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0)
    return DataLoader(x, y, 16, seed=seed)


def _fit(tmp_path, lr, every=2, **kw):
    model, arena = _mlp()
    opt = ft.optim.SGD(arena, lr=lr)
    tr = Trainer(model, arena, opt, ft.losses.SoftmaxCrossEntropy(), run_dir=tmp_path, progress=False,
                 plot=False, checkpoint=False, monitor_every=every, **kw)
    tr.fit(_loader(), None, epochs=2)
    return tr, [json.loads(s) for s in (tmp_path / "metrics.jsonl").read_text().splitlines()]


def test_trainer_logs_samples_every_n_steps_and_summary(tmp_path):
    tr, lines = _fit(tmp_path, lr=1e-3, every=3)
    mon = [r for r in lines if r.get("event") == "monitor"]
    assert [r["step"] for r in mon] == [0, 3, 6]          # 8 steps, sampled every 3
    assert all(r["grad_norm"] > 0 and set(r["update_ratio"]) >= {"0.weight", "2.weight"} for r in mon)
    summary = [r for r in lines if r.get("event") == "monitor_summary"]
    assert len(summary) == 1 and summary[0]["samples"] == 3
    assert "update/weight" in Monitor.format_summary(summary[0])


def test_ratio_warnings_far_off(tmp_path):
    tr, _ = _fit(tmp_path / "hi", lr=0.5, explode_factor=1e6)
    assert any("too high" in w for w in tr.monitor.warnings)
    tr, _ = _fit(tmp_path / "lo", lr=1e-9)
    assert any("too low" in w for w in tr.monitor.warnings)
    tr, _ = _fit(tmp_path / "ok", lr=1e-2)
    assert not any("update/weight" in w for w in tr.monitor.warnings)


def test_monitor_off_and_argument_errors(tmp_path):
    model, arena = _mlp()
    tr = Trainer(model, arena, ft.optim.SGD(arena, lr=1e-2), ft.losses.SoftmaxCrossEntropy(), progress=False,
                 monitor_every=None)
    assert tr.monitor is None
    tr.fit(_loader(), None, epochs=1)
    with pytest.raises(ValueError, match="every"):
        Monitor(model, arena, every=0)
