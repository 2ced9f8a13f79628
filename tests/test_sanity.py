"""fasttrain check: each check passes on a healthy model and fails (with its hint) on a broken
one: weights scaled up (initial loss), lr=0 (overfit), a wrong backward (gradient check); the
CLI exit code follows the verdicts."""
import math

import numpy as np
import pytest

import fasttrain as ft
from fasttrain import models, nn
from fasttrain.cli import main
from fasttrain.train.sanity import check_gradients, check_initial_loss, check_overfit


def _data(n=20, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 1, 8, 8)).astype(np.float32), np.arange(n) % 10


def _small_head_mlp(seed=0):
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10, init="xavier_normal"))
    ft.ParamArena.for_model(model, seed=seed)
    model[3].weight.data[...] *= 0.01   # the notes' small last layer: logits ~ 0, loss ~ ln(10)
    return model


def test_initial_loss_verdicts():
    x, y = _data(64)
    model = _small_head_mlp()
    r = check_initial_loss(model, x, y, 10)
    assert r.passed and r.value == pytest.approx(math.log(10), rel=0.05), r
    model[3].weight.data[...] *= 1000.0      # weights too large
    r = check_initial_loss(model, x, y, 10)
    assert not r.passed and "too large" in r.message and r.value > 2 * math.log(10)


def test_overfit_verdicts():
    x, y = _data(20)
    model = models.mlp(64, 10, hidden=(64,), dropout=0.0)
    arena = ft.ParamArena.for_model(model, seed=0)
    r = check_overfit(model, arena, x, y, lr=1e-2, max_steps=200)
    assert r.passed and "100%" in r.message
    model = models.mlp(64, 10, hidden=(64,), dropout=0.0)
    arena = ft.ParamArena.for_model(model, seed=0)
    r = check_overfit(model, arena, x, y, lr=0.0, max_steps=30)
    assert not r.passed and "30 steps" in r.message


class _BrokenReLU(nn.ReLU):
    def backward(self, dy):
        return super().backward(dy) * 1.5   # wrong by a factor


def test_gradient_check_catches_a_wrong_backward():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 1, 8, 8))
    y = np.array([3, 7])
    good = models.simple_cnn(1, 10, 8, width=4, dropout=0.0)
    ft.ParamArena.for_model(good, seed=0, dtype=np.float64)
    r = check_gradients(good, x, y)
    assert r.passed, r
    bad = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), _BrokenReLU(), nn.Linear(8, 10))
    ft.ParamArena.for_model(bad, seed=0, dtype=np.float64)
    r = check_gradients(bad, x, y)
    assert not r.passed and "1.weight" in r.message
    with pytest.raises(ValueError, match="float64"):
        m = models.mlp(64, 10)
        ft.ParamArena.for_model(m)
        check_gradients(m, x, y)


def test_cli_check_exit_codes(capsys):
    code = main(["check", "--model", "resnet8", "--limit", "64", "--threads", "1"])
    out = capsys.readouterr().out
    assert out.count("[PASS]") == 3 and code == 0, out
    code = main(["check", "--model", "resnet8", "--limit", "64", "--lr", "1e-9", "--overfit-steps", "5"])
    out = capsys.readouterr().out
    assert code != 0 and "[FAIL] overfit" in out and "FAILED" in out
