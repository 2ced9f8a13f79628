import numpy as np
import pytest

import fasttrain as ft
from fasttrain.check import gradcheck


def _resnet_block():
    # no bias before BN: BN removes it, its gradient is exactly 0 and only rounding noise is left
    body = ft.nn.Sequential(ft.nn.Conv2d(3, 3, 3, padding=1, bias=False), ft.nn.BatchNorm2d(3), ft.nn.Tanh(),
                            ft.nn.Conv2d(3, 3, 3, padding=1))
    return ft.nn.Residual(body, post=ft.nn.ELU())


def test_sequential_with_residual_passes_gradcheck():
    model = ft.nn.Sequential(ft.nn.Conv2d(2, 3, 3, stride=2, padding=2), _resnet_block(),
                             ft.nn.Residual(ft.nn.Sequential(ft.nn.Conv2d(3, 5, 3, stride=2, padding=1)),
                                            shortcut=ft.nn.Conv2d(3, 5, 1, stride=2)),
                             ft.nn.GlobalAvgPool2d(), ft.nn.Linear(5, 4))
    ft.ParamArena.for_model(model, dtype=np.float64, seed=1)
    x = np.random.default_rng(2).standard_normal((2, 2, 7, 5))
    for r in gradcheck(model, x, tol=1e-5):
        assert r.passed, str(r)


def test_parameter_names_follow_the_tree_and_arena_binds_them():
    model = ft.nn.Sequential(ft.nn.Linear(4, 3), ft.nn.ReLU(), _resnet_block())
    names = [p.name for p in model.parameters()]
    assert names[:2] == ["0.weight", "0.bias"]
    assert "2.body.1.weight" in names and "2.body.3.bias" in names and "2.body.0.bias" not in names
    arena = ft.ParamArena.for_model(model)
    assert set(arena.named()) == set(names)
    assert model.arena is arena


def test_train_eval_and_step_propagate_to_every_module():
    model = ft.nn.Sequential(ft.nn.Dropout(0.5, seed=1, layer_id=1), _resnet_block())
    model.eval()
    assert all(not m.training for _, m in model.named_modules())
    model.train()
    assert all(m.training for _, m in model.named_modules())
    model.set_step(17)
    assert all(m.step == 17 for _, m in model.named_modules())


def test_residual_shape_mismatch_is_a_clear_error():
    block = ft.nn.Residual(ft.nn.Conv2d(3, 4, 1))
    ft.ParamArena.for_model(block)
    with pytest.raises(ValueError, match="shortcut"):
        block.forward(np.zeros((1, 3, 2, 2), np.float32))


def test_gradients_accumulate_into_the_arena_for_shared_use():
    lin = ft.nn.Linear(3, 2)
    arena = ft.ParamArena.for_model(lin, dtype=np.float64)
    x = np.random.default_rng(0).standard_normal((4, 3))
    dy = np.ones((4, 2))
    lin.forward(x)
    lin.backward(dy)
    once = arena.grad.copy()
    lin.forward(x)
    lin.backward(dy)
    np.testing.assert_allclose(arena.grad, 2 * once)
