"""The MobileNet builder: its structure (depthwise-separable blocks), a forward/backward on
32x32 inputs, gradients checked in float64 on a tiny variant, and training from the CLI."""
import json

import numpy as np
import pytest

import fasttrain as ft
from fasttrain import models, nn
from fasttrain.cli import main


def test_structure_is_depthwise_separable():
    model = models.build("mobilenet", (3, 32, 32), 10)
    layers = [model[i] for i in range(len(model))]
    convs = [m for m in layers if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 + 2 * len(models.MOBILENET_BLOCKS)
    depthwise, pointwise = convs[1::2], convs[2::2]
    assert all(c.groups == c.in_channels == c.out_channels and c.kernel_size == (3, 3) for c in depthwise)
    assert all(c.groups == 1 and c.kernel_size == (1, 1) for c in pointwise)
    assert [c.stride[0] for c in depthwise] == [s for _, s in models.MOBILENET_BLOCKS]
    assert pointwise[-1].out_channels == 512   # 1024 at width 0.5
    # every conv is followed by its BN with the ReLU fused
    bns = [m for m in layers if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == len(convs) and all(b.relu for b in bns)


def test_forward_backward_on_cifar_sized_input():
    model = models.mobilenet(3, 10, width=0.25)
    arena = ft.ParamArena.for_model(model, seed=0)
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    logits = model.forward(x)
    assert logits.shape == (4, 10) and np.isfinite(logits).all()
    dx = model.backward(np.ones_like(logits))
    assert dx.shape == x.shape
    # every layer's weights received a gradient (the depthwise ones included)
    for p in arena.params:
        assert np.abs(p.grad).sum() > 0, p.name


@pytest.mark.parametrize("stride", [1, 2])
def test_separable_block_gradients(stride):
    # one block rather than a whole net: BN after BN makes a net nearly invariant to the earlier
    # BN's scale, and those near-zero gradients are all round-off in a finite difference
    block = nn.Sequential(*models._separable(4, 6, stride))
    ft.ParamArena.for_model(block, seed=1, dtype=np.float64)
    x = np.random.default_rng(2).standard_normal((3, 4, 7, 6))
    for r in ft.check.gradcheck(block, x, tol=1e-4):   # two BNs and ReLU kinks: round-off ~1e-5
        assert r.passed, str(r)


def test_bad_width():
    with pytest.raises(ValueError, match=r"mobilenet\(width\): expected a positive width multiplier, got 0"):
        models.mobilenet(width=0)


def test_cli_trains_mobilenet(tmp_path):
    run = tmp_path / "run"
    rc = main(["train", "--model", "mobilenet", "--epochs", "1", "--limit", "64", "--run-dir", str(run),
               "--quiet", "--no-plot"])
    assert rc == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] >= 1 and np.isfinite(summary["val_loss"] if "val_loss" in summary else 0.0)
    assert 'model = "mobilenet"' in (run / "config.toml").read_text()
