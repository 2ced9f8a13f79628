"""needs_input_grad: the network's first layer skips its data gradient (no one reads the gradient
of the data), with the same parameter gradients; the trainer switches it off for the model."""
import numpy as np
import pytest

import fasttrain as ft

f32 = np.float32


def _net():
    return ft.nn.Sequential(ft.nn.Conv2d(3, 8, 3, padding=1), ft.nn.ReLU(), ft.nn.Flatten(), ft.nn.Linear(8 * 6 * 6, 4))


@pytest.mark.parametrize("algo", ["auto", "im2col", "direct"])
def test_first_conv_skips_dx_with_same_param_grads(algo):
    C = pytest.importorskip("fasttrain._C") if algo != "auto" else None
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 6, 6)).astype(f32)
    dy = rng.standard_normal((2, 4)).astype(f32)
    grads, outs = [], []
    before = C.conv2d_algo() if C else None
    try:
        if C:
            C.set_conv2d_algo(algo)
        for needs in (True, False):
            net = _net()
            arena = ft.ParamArena.for_model(net, seed=3)
            net.set_needs_input_grad(needs)
            assert net[0].needs_input_grad is needs and net[1].needs_input_grad is True
            net.forward(x)
            arena.zero_grad()
            outs.append(net.backward(dy))
            grads.append([p.grad.copy() for p in arena.params])
    finally:
        if C:
            C.set_conv2d_algo(before)
    assert outs[0].shape == x.shape and outs[1] is None
    for a, b in zip(*grads):
        np.testing.assert_array_equal(a, b)


def test_trainer_turns_off_the_models_input_grad():
    from fasttrain.train.trainer import Trainer

    rng = np.random.default_rng(1)
    net = _net()
    arena = ft.ParamArena.for_model(net, seed=0)
    opt = ft.optim.SGD(arena, lr=0.01)
    trainer = Trainer(net, arena, opt, ft.losses.SoftmaxCrossEntropy(),
                      progress=False, plot=False, checkpoint=False, monitor_every=None)
    x = rng.standard_normal((4, 3, 6, 6)).astype(f32)
    y = rng.integers(0, 4, 4)
    trainer.train_step(x, y)
    assert net.needs_input_grad is False and net[0].needs_input_grad is False
    assert all(p.grad is not None and np.isfinite(p.grad).all() for p in arena.params)
