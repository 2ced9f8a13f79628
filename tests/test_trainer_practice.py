"""Trainer options: early stopping restores the best epoch's weights and BN statistics; EMA
evaluation validates with the averaged weights; augmentation per batch is seeded by (seed, step)
and mixup trains on mixed batches; config/CLI `augment` as a list; `fasttrain bench` forwarding."""
import json

import numpy as np
import pytest

import fasttrain as ft
from fasttrain import models
from fasttrain.cli import build_parser, main, resolve_config
from fasttrain.data import DataLoader
from fasttrain.train import EMA, Trainer
from fasttrain.train.augmentation import batch_rng, build_augment


def _loaders(n=96, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 1, 8, 8)).astype(np.float32)
    y = (x[:, 0, :4].sum(axis=(1, 2)) > 0).astype(np.int64)
    xv = rng.standard_normal((40, 1, 8, 8)).astype(np.float32)
    yv = rng.integers(0, 2, 40)            # random validation labels: val_loss gets worse as it overfits
    return DataLoader(x, y, 16, seed=seed), DataLoader(xv, yv, 64, shuffle=False)


def _trainer(tmp_path=None, lr=3e-2, **kw):
    model = models.simple_cnn(1, 2, 8, width=4, dropout=0.0)
    arena = ft.ParamArena.for_model(model, seed=0)
    return Trainer(model, arena, ft.optim.Adam(arena, lr=lr), ft.losses.SoftmaxCrossEntropy(), run_dir=tmp_path,
                   progress=False, plot=False, **kw)


def test_early_stopping_restores_best(tmp_path):
    train, val = _loaders()
    tr = _trainer(tmp_path, early_stopping=2)
    snapshots = {}
    real_eval = tr.evaluate

    def spy(loader):  # remember the weights and BN buffers each epoch was validated with
        snapshots[tr.epoch + 1] = (tr.arena.data.copy(), {k: v.copy() for k, v in tr.model[1].buffers.items()})
        return real_eval(loader)

    tr.evaluate = spy
    hist = tr.fit(train, val, epochs=30)
    losses = [e["val_loss"] for e in hist.epochs]
    best = int(np.argmin(losses)) + 1
    assert tr.epoch < 30 and tr.epoch == best + 2               # stopped after 2 epochs without improvement
    assert tr.best_record["epoch"] == best
    np.testing.assert_array_equal(tr.arena.data, snapshots[best][0])
    np.testing.assert_array_equal(tr.model[1].buffers["running_mean"], snapshots[best][1]["running_mean"])
    assert real_eval(val)[0] == pytest.approx(losses[best - 1])
    events = [json.loads(s).get("event") for s in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert "early_stop" in events and "restored_best" in events
    # the best weights go to checkpoint_best.npz; checkpoint.npz stays the last epoch's, to resume
    fresh = _trainer()
    ft.train.load_checkpoint(tmp_path / "checkpoint_best.npz", fresh.model, fresh.arena)
    np.testing.assert_array_equal(fresh.arena.data, snapshots[best][0])
    ft.train.load_checkpoint(tmp_path / "checkpoint.npz", fresh.model, fresh.arena)
    np.testing.assert_array_equal(fresh.arena.data, snapshots[tr.epoch][0])
    with pytest.raises(ValueError, match="early_stopping"):
        _trainer(early_stopping=0)


def test_min_delta_counts_small_improvements_as_none():
    train, val = _loaders()
    tr = _trainer(early_stopping=1, min_delta=1e9)    # nothing is an improvement after epoch 1
    tr.fit(train, val, epochs=10)
    assert tr.epoch == 2 and tr.best_record["epoch"] == 1


def test_ema_evaluation_uses_averaged_weights():
    train, val = _loaders()
    tr = _trainer(ema_decay=0.9)
    hist = tr.fit(train, val, epochs=2)
    rec = hist.epochs[-1]
    raw = tr.evaluate(val)
    assert rec["val_loss_raw"] == pytest.approx(raw[0])
    # an EMA maintained by hand over the same steps gives the reported val_loss
    tr2 = _trainer()
    ema = EMA(tr2.arena, 0.9)
    for epoch in range(2):
        for xb, yb in train.batches(epoch):
            tr2.train_step(xb, yb)
            ema.update()
    with ema.swap():
        assert tr2.evaluate(val)[0] == pytest.approx(rec["val_loss"])
    assert rec["val_loss"] != pytest.approx(rec["val_loss_raw"])


def test_augment_per_batch_seeded_and_mixup():
    aug = build_augment(["flip", "crop"], (1, 8, 8))
    assert [type(t).__name__ for t in aug.transforms] == ["RandomHorizontalFlip", "RandomCrop"]
    assert aug.transforms[1].padding == (1, 1)
    with pytest.raises(ValueError, match="unknown name 'rotate'"):
        build_augment(["rotate"], (1, 8, 8))
    x = np.random.default_rng(0).standard_normal((16, 1, 8, 8)).astype(np.float32)
    y = np.arange(16) % 2
    seen = []

    def recorder(xb, rng):
        out = aug(xb, rng)
        seen.append(out)
        return out

    tr = _trainer(augment=recorder, seed=7)
    tr.train_step(x, y)
    tr.train_step(x, y)
    np.testing.assert_array_equal(seen[0], aug(x, batch_rng(7, 0)))   # step 0's generator
    np.testing.assert_array_equal(seen[1], aug(x, batch_rng(7, 1)))
    assert not np.array_equal(seen[0], seen[1]) and not np.array_equal(seen[0], x)
    # mixup: the model sees lam*x + (1-lam)*x[perm] and the loss mixes both label sets
    from fasttrain.data import Mixup, mixup_loss

    tr = _trainer(mixup_alpha=0.4, seed=3)
    ref = _trainer(seed=3)
    loss, _ = tr.train_step(x, y)
    xm, ya, yb, lam = Mixup(0.4)(x, y, batch_rng(3, 0))
    expect, _ = mixup_loss(ref.loss_fn, ref.model.forward(xm), ya, yb, lam)
    assert 0 < lam < 1 and loss == pytest.approx(expect, rel=1e-5)


def test_config_augment_list_from_flag_and_toml(tmp_path):
    cfg = resolve_config(build_parser().parse_args(["train", "--augment", "flip,crop", "--mixup", "0.2"]))
    assert cfg.augment == ["flip", "crop"] and cfg.mixup == 0.2
    p = tmp_path / "c.toml"
    p.write_text('augment = ["crop"]\nearly_stopping = 3\n')
    cfg = resolve_config(build_parser().parse_args(["train", "--config", str(p)]))
    assert cfg.augment == ["crop"] and cfg.early_stopping == 3
    p.write_text('augment = "crop"\n')
    with pytest.raises(ValueError, match="list of strings"):
        resolve_config(build_parser().parse_args(["train", "--config", str(p)]))


def test_cli_bench_forwards_arguments(monkeypatch):
    import sys
    import types

    got = []
    fake = types.ModuleType("bench.run")
    fake.main = lambda argv: got.append(argv) or 5
    pkg = types.ModuleType("bench")
    pkg.run = fake
    monkeypatch.setitem(sys.modules, "bench", pkg)
    monkeypatch.setitem(sys.modules, "bench.run", fake)
    assert main(["bench", "--quick", "kernels"]) == 5 and got == [["--quick", "kernels"]]
