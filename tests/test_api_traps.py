"""The Python API's traps: forward before binding, a model bound to a second arena, and the README's
own training loop (it must run, and its Dropout must draw a fresh mask at every step)."""
import pathlib
import re

import numpy as np
import pytest

import fasttrain as ft
from fasttrain.train.checkpoint import load_checkpoint, save_checkpoint

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _small_cnn(dropout=0.25):
    # a fixed layer_id: auto ids count the Dropout layers built so far in the process, and a
    # resumed model must key its masks as the saved one did
    return ft.nn.Sequential(ft.nn.Conv2d(1, 4, 3, padding=1), ft.nn.BatchNorm2d(4), ft.nn.ReLU(),
                            ft.nn.MaxPool2d(2), ft.nn.Flatten(), ft.nn.Dropout(dropout, layer_id=1),
                            ft.nn.Linear(4 * 4 * 4, 3))


@pytest.mark.parametrize("layer,x", [
    (lambda: _small_cnn(), np.ones((2, 1, 8, 8), np.float32)),
    (lambda: ft.nn.Linear(4, 3), np.ones((2, 4), np.float32)),
    (lambda: ft.nn.BatchNorm1d(4), np.ones((2, 4), np.float32)),
    (lambda: ft.nn.PReLU(4), np.ones((2, 4), np.float32)),
    (lambda: ft.nn.DropConnectLinear(4, 3), np.ones((2, 4), np.float32)),
], ids=["cnn", "linear", "batchnorm", "prelu", "dropconnect"])
def test_forward_before_binding_raises_one_clear_error(layer, x):
    with pytest.raises(RuntimeError, match=r"not bound to a ParamArena; call ft\.ParamArena\.for_model\(model\)") as e:
        layer().forward(x)
    assert "\n" not in str(e.value) and len(str(e.value)) < 200      # one line, not a signature dump


def test_input_of_another_dtype_than_the_arena_names_both():
    model = _small_cnn()
    ft.ParamArena.for_model(model)
    with pytest.raises(TypeError, match="input dtype float64 differs from the parameters' float32"):
        model.forward(np.ones((2, 1, 8, 8)))


def _step(model, opt, arena, x, y):
    logits = model.forward(x)
    _, dlogits = ft.losses.SoftmaxCrossEntropy()(logits, y)
    arena.zero_grad()
    model.backward(dlogits)
    opt.step()


def test_second_arena_the_old_optimizer_refuses_and_the_new_one_trains():
    model = _small_cnn()
    first = ft.ParamArena.for_model(model, seed=0)
    old_opt = ft.optim.SGD(first, lr=0.1)
    x = np.random.default_rng(0).standard_normal((6, 1, 8, 8)).astype(np.float32)
    y = np.arange(6) % 3
    _step(model, old_opt, first, x, y)                 # fine while the first arena is the model's
    second = ft.ParamArena.for_model(model, seed=1)
    assert model.arena is second
    with pytest.raises(RuntimeError, match="bound to another ParamArena.*build the optimizer on the new arena"):
        old_opt.step()
    before = model[0].weight.data.copy()
    _step(model, ft.optim.SGD(second, lr=0.1), second, x, y)
    assert not np.array_equal(model[0].weight.data, before)     # the weights the model reads moved
    assert np.shares_memory(model[0].weight.data, second.data)


def test_binding_a_submodule_elsewhere_also_retires_the_whole_models_arena():
    model = _small_cnn()
    arena = ft.ParamArena.for_model(model)
    opt = ft.optim.Adam(arena, lr=1e-3)
    ft.ParamArena.for_model(model[6])                  # only the classifier moves
    with pytest.raises(RuntimeError, match="bound to another ParamArena"):
        opt.step()


def _readme_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README.md has no python example"
    return blocks[0]


def test_readme_python_example_trains_with_a_fresh_dropout_mask_per_step(capsys):
    scope: dict = {}
    exec(compile(_readme_example(), "README.md", "exec"), scope)
    model, loss_fn = scope["model"], scope["loss_fn"]
    steps = scope["step"] + 1
    assert steps >= 2, "the README example should train for several steps"
    dropouts = [m for _, m in model.named_modules() if isinstance(m, ft.nn.Dropout)]
    assert dropouts and all(d.step == steps for d in dropouts)     # one draw per step, by itself
    # the masks of consecutive steps differ: replay steps 0 and 1 of the first dropout layer
    d = dropouts[0]
    h = np.ones((32, 64), np.float32)
    masks = []
    for s in (0, 1):
        d.set_step(s)
        masks.append(d.forward(h) != 0)
    assert not np.array_equal(*masks)
    assert "loss" in capsys.readouterr().out
    assert np.isfinite(float(scope["loss"])) and loss_fn is not None


def test_plain_loop_resume_from_a_checkpoint_repeats_the_same_masks(tmp_path):
    """No trainer, no set_step: the dropout counter is in the checkpoint, so 3 + 3 steps with a
    save and load in between end bit-identical to 6 steps."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((8, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 3, 8)

    def fresh():
        model = _small_cnn(dropout=0.5)
        arena = ft.ParamArena.for_model(model, seed=7)
        return model, arena, ft.optim.Adam(arena, lr=1e-2)

    model, arena, opt = fresh()
    for _ in range(6):
        _step(model, opt, arena, x, y)
    straight = arena.data.copy()

    model, arena, opt = fresh()
    for _ in range(3):
        _step(model, opt, arena, x, y)
    save_checkpoint(tmp_path / "ck.npz", model, arena, opt)
    model, arena, opt = fresh()
    load_checkpoint(tmp_path / "ck.npz", model, arena, opt)
    assert model[5].step == 3
    for _ in range(3):
        _step(model, opt, arena, x, y)
    np.testing.assert_array_equal(arena.data, straight)
