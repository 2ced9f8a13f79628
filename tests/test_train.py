"""Trainer: learning on a digits subset, metrics/checkpoint/plot files, the loss-explosion stop,
exact resume from a checkpoint; model builders' output shapes."""
import json

import numpy as np
import pytest

import fasttrain as ft
from fasttrain import models
from fasttrain.data import ChannelStandardizer, DataLoader, load_digits_dataset
from fasttrain.train import Trainer, TrainingDiverged


def _digits(n_train=400, batch_size=32, seed=0):
    ds = load_digits_dataset(seed=seed)
    norm = ChannelStandardizer().fit(ds.x_train[:n_train])
    train = DataLoader(norm(ds.x_train[:n_train]), ds.y_train[:n_train], batch_size, seed=seed)
    val = DataLoader(norm(ds.x_val), ds.y_val, 128, shuffle=False)
    return train, val


def _trainer(run_dir=None, lr=1e-2, model=None, **kw):
    model = model or models.simple_cnn(1, 10, 8, width=16, dropout=0.25)
    arena = ft.ParamArena.for_model(model, seed=0)
    opt = ft.optim.Adam(arena, lr=lr, weight_decay=1e-4)
    return Trainer(model, arena, opt, ft.losses.SoftmaxCrossEntropy(), run_dir=run_dir, progress=False, **kw)


def test_short_run_learns_and_writes_run_folder(tmp_path):
    train, val = _digits()
    trainer = _trainer(tmp_path)
    before = trainer.evaluate(val)[1]
    history = trainer.fit(train, val, epochs=3)
    after = history.epochs[-1]["val_acc"]
    assert after > 0.8 > before + 0.3, (before, after)   # chance is 0.1
    assert trainer.step == 3 * len(train) and trainer.epoch == 3
    lines = [json.loads(s) for s in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert sum("val_acc" in r for r in lines) == 3
    assert sum("loss" in r and "step" in r for r in lines) == 3 * len(train)
    assert (tmp_path / "checkpoint.npz").stat().st_size > 0
    assert (tmp_path / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_schedule_sets_lr_each_step():
    train, _ = _digits(n_train=64, batch_size=32)
    seen = []
    trainer = _trainer(schedule=lambda step: seen.append(step) or 1e-3 / (1 + step))
    trainer.fit(train, None, epochs=2)
    assert seen == [0, 1, 2, 3]
    assert trainer.optimizer.lr == pytest.approx(1e-3 / 4)


def test_loss_explosion_stops_with_lr_hint(tmp_path):
    train, val = _digits(n_train=400)
    trainer = _trainer(tmp_path, lr=1e4)
    with pytest.raises(TrainingDiverged, match="learning rate.*too high") as info:
        trainer.fit(train, val, epochs=5)
    h = info.value.history
    assert h.losses[-1] > 3 * h.initial_loss or not np.isfinite(h.losses[-1])
    assert trainer.epoch < 5
    last = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["event"] == "diverged"


def test_resume_is_exact(tmp_path):
    """Two epochs in one go == one epoch, a checkpoint, a fresh process state, one more epoch."""
    train, val = _digits(n_train=200)
    full = _trainer()
    full.fit(train, val, epochs=2)

    first = _trainer(tmp_path / "a")
    first.fit(train, val, epochs=1)
    resumed = _trainer()   # fresh model, arena, optimizer (different init would be overwritten)
    resumed.arena.data[...] = 0
    resumed.resume(tmp_path / "a" / "checkpoint.npz")
    assert resumed.epoch == 1 and resumed.step == len(train)
    resumed.fit(train, val, epochs=2)
    np.testing.assert_array_equal(resumed.arena.data, full.arena.data)
    assert resumed.history.losses == full.history.losses
    for key in ("running_mean", "running_var"):
        np.testing.assert_array_equal(resumed.model[1].buffers[key], full.model[1].buffers[key])


def test_resume_is_exact_with_ema_and_early_stopping(tmp_path):
    """The EMA of the weights and the early-stopping state (best epoch, its weights and BN
    statistics, patience count) travel in the checkpoint: a resumed run ends where one run does."""
    train, val = _digits(n_train=200)
    kw = dict(ema_decay=0.9, early_stopping=10)
    full = _trainer(**kw)
    full.fit(train, val, epochs=3)

    first = _trainer(tmp_path / "a", **kw)
    first.fit(train, val, epochs=2)
    resumed = _trainer(**kw)
    resumed.resume(tmp_path / "a" / "checkpoint.npz")
    np.testing.assert_array_equal(resumed.ema.shadow, first.ema.shadow)
    assert resumed.best_record == first.best_record and resumed._bad_epochs == first._bad_epochs
    resumed.fit(train, val, epochs=3)
    np.testing.assert_array_equal(resumed.ema.shadow, full.ema.shadow)
    np.testing.assert_array_equal(resumed.arena.data, full.arena.data)
    untimed = lambda rec: {k: v for k, v in rec.items() if k not in ("images_per_s", "epoch_time_s")}  # noqa: E731
    assert untimed(resumed.best_record) == untimed(full.best_record)
    assert [untimed(e) for e in resumed.history.epochs] == [untimed(e) for e in full.history.epochs]


def test_resume_with_ema_needs_a_checkpoint_with_one(tmp_path):
    train, _ = _digits(n_train=64)
    _trainer(tmp_path).fit(train, None, epochs=1)
    with pytest.raises(ValueError, match="keeps an EMA.*has none"):
        _trainer(ema_decay=0.9).resume(tmp_path / "checkpoint.npz")


def test_resume_rejects_a_different_model(tmp_path):
    train, _ = _digits(n_train=64)
    t = _trainer(tmp_path)
    t.fit(train, None, epochs=1)
    other = _trainer(model=models.mlp(64, 10, hidden=(16,)))
    with pytest.raises(KeyError):
        other.resume(tmp_path / "checkpoint.npz")


@pytest.mark.parametrize("build, shape", [
    (lambda: models.mlp(64, 10, hidden=(32, 16), dropout=0.1), (2, 1, 8, 8)),
    (lambda: models.simple_cnn(1, 10, 8), (2, 1, 8, 8)),
    (lambda: models.simple_cnn(3, 7, 20), (2, 3, 20, 20)),
    (lambda: models.convnet_classic(3, 10, 16, width=8), (2, 3, 16, 16)),
    (lambda: models.resnet(8, 3, 10, width=4), (2, 3, 16, 16)),
    (lambda: models.resnet(20, 3, 10, width=4), (1, 3, 8, 8)),
])
def test_model_builders_forward_backward_shapes(build, shape):
    model = build()
    arena = ft.ParamArena.for_model(model, seed=0)
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    logits = model.forward(x)
    assert logits.shape == (shape[0], 7 if shape[1:] == (3, 20, 20) else 10)
    dx = model.backward(np.ones_like(logits))
    assert dx.shape == shape
    assert np.abs(arena.grad).sum() > 0


def test_model_builder_errors():
    with pytest.raises(ValueError, match="6n\\+2"):
        models.resnet(10)
    with pytest.raises(ValueError, match="expected one of"):
        models.build("vgg99", (1, 8, 8), 10)


def test_resnet20_trains_on_synthetic_cifar():
    """The CIFAR ResNet-20 (3 stages x 3 basic blocks at 16/32/64 channels, 1x1-conv shortcuts where
    the shape changes) learns: Adam on one batch of synthetic CIFAR brings the loss well down."""
    from fasttrain.data import synthetic_cifar

    model = models.build("resnet20", (3, 32, 32), 10)
    convs = [m for _, m in model.named_modules() if isinstance(m, ft.nn.Conv2d)]
    assert len(convs) == 1 + 9 * 2 + 2  # stem, two per block, two projection shortcuts
    assert sorted({c.out_channels for c in convs}) == [16, 32, 64]
    arena = ft.ParamArena.for_model(model, seed=0)
    opt = ft.optim.Adam(arena, lr=3e-3)
    loss_fn = ft.losses.SoftmaxCrossEntropy()
    x, y = synthetic_cifar(32, seed=0)
    losses = []
    for step in range(8):
        model.set_step(step)
        arena.zero_grad()
        loss, dlogits = loss_fn(model.forward(x), y)
        model.backward(dlogits)
        opt.step()
        losses.append(float(loss))
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.7 * losses[0], losses
