"""Transfer learning and checkpoint formats: a checkpoint loaded into a model with a new head,
frozen parameters bit-identical after training steps while the head trains, the arena group
split; CLI --init-from/--freeze-except; safetensors checkpoints (metadata, resume) next to .npz."""
import json

import numpy as np
import pytest

import fasttrain as ft
from fasttrain import models
from fasttrain.cli import main
from fasttrain.train import Trainer, load_checkpoint, save_checkpoint
from fasttrain.train.checkpoint import read_checkpoint
from fasttrain.train.transfer import freeze_except, load_pretrained, parameterized_layers, replace_head


def _cnn(classes=10, seed=0):
    m = models.simple_cnn(1, classes, 8, width=4, dropout=0.0)
    return m, ft.ParamArena.for_model(m, seed=seed)


def _batch(n=16, classes=10, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 1, 8, 8)).astype(np.float32), rng.integers(0, classes, n)


def test_load_pretrained_new_head_and_freeze(tmp_path):
    src, arena_src = _cnn(10, seed=1)
    save_checkpoint(tmp_path / "src.npz", src, arena_src, meta={"config": {}})
    model, arena = _cnn(4, seed=2)          # a new task with 4 classes
    fresh_head = np.array(model[-1].weight.data)
    info = load_pretrained(model, arena, tmp_path / "src.npz")
    assert set(info["skipped"]) == {"7.weight", "7.bias"}
    for p in arena.params:
        if p.name.startswith("7."):
            continue
        np.testing.assert_array_equal(p.data, arena_src.named()[p.name].data)
    np.testing.assert_array_equal(model[-1].weight.data, fresh_head)   # head keeps its fresh init
    frozen = freeze_except(model, arena, 1)                           # only the head trains
    assert set(frozen) == {p.name for p in arena.params} - {"7.weight", "7.bias"}
    # groups stay contiguous, cover the arena, trainable ones first in each section
    spans = sorted((g.start, g.stop) for g in arena.groups)
    assert spans[0][0] == 0 and spans[-1][1] == arena.size and all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    assert {g.name for g in arena.groups} == {"decay", "decay_frozen", "no_decay", "no_decay_frozen"}
    before = arena.data.copy()
    opt = ft.optim.Adam(arena, lr=1e-2, weight_decay=1e-2)
    tr = Trainer(model, arena, opt, ft.losses.SoftmaxCrossEntropy(), progress=False)
    x, y = _batch(classes=4)
    for _ in range(5):
        tr.train_step(x, y)
    for p in arena.params:
        s = arena.slice_of(p)
        if p.frozen:
            np.testing.assert_array_equal(arena.data[s], before[s], err_msg=p.name)
        else:
            assert not np.array_equal(arena.data[s], before[s]), p.name


def test_freeze_last_two_layers_and_errors():
    model, arena = _cnn()
    layers = [p for p, _ in parameterized_layers(model)]
    assert layers == ["0", "1", "3", "4", "7"]   # conv, BN(+ReLU), pool, conv, BN(+ReLU), pool, flatten, head
    frozen = freeze_except(model, arena, 2)      # BN "4" and the head train
    assert {n.split(".")[0] for n in frozen} == {"0", "1", "3"}
    with pytest.raises(ValueError, match=r"freeze_except\(n\)"):
        freeze_except(*_cnn(), 6)


@pytest.mark.parametrize("freeze_bn_stats", [True, False])
def test_frozen_batchnorm_keeps_its_running_statistics(freeze_bn_stats):
    """A frozen BN layer normalizes with its running statistics in training too and leaves them
    alone (it is part of the fixed feature extractor); the trainable one keeps batch statistics."""
    model, arena = _cnn()
    frozen_bn, trained_bn = model[1], model[4]
    frozen_bn.buffers["running_mean"][...] = np.linspace(-0.5, 0.5, frozen_bn.num_features)
    frozen_bn.buffers["running_var"][...] = np.linspace(0.5, 2.0, frozen_bn.num_features)
    freeze_except(model, arena, 2, freeze_bn_stats=freeze_bn_stats)
    assert frozen_bn.use_running_stats is freeze_bn_stats and not trained_bn.use_running_stats
    before = {k: v.copy() for k, v in frozen_bn.buffers.items()}
    trained_before = trained_bn.buffers["running_mean"].copy()
    x, y = _batch(seed=3)
    h = model[0].forward(x)
    out_train = frozen_bn.forward(h)
    frozen_bn.eval()
    out_eval = frozen_bn.forward(h)
    frozen_bn.train()
    tr = Trainer(model, arena, ft.optim.SGD(arena, lr=1e-2), ft.losses.SoftmaxCrossEntropy(), progress=False)
    tr.train_step(x, y)
    assert not np.array_equal(trained_bn.buffers["running_mean"], trained_before)
    if freeze_bn_stats:
        np.testing.assert_array_equal(out_train, out_eval)
        for k, v in before.items():
            np.testing.assert_array_equal(frozen_bn.buffers[k], v)
    else:
        assert not np.array_equal(out_train, out_eval)
        assert not np.array_equal(frozen_bn.buffers["running_mean"], before["running_mean"])


def test_replace_head():
    model, _ = _cnn(10)
    new = replace_head(model, 3)
    assert model[-1] is new and new.out_features == 3 and new.in_features == 4 * 2 * 2 * 2
    arena = ft.ParamArena.for_model(model)
    assert model.forward(_batch(2)[0]).shape == (2, 3)
    assert arena.named()["7.weight"].shape == (3, 32)


def test_safetensors_checkpoint_roundtrip_and_metadata(tmp_path):
    model, arena = _cnn()
    opt = ft.optim.Adam(arena, lr=1e-3)
    tr = Trainer(model, arena, opt, ft.losses.SoftmaxCrossEntropy(), progress=False, config={"lr": 1e-3})
    x, y = _batch()
    for _ in range(3):
        tr.train_step(x, y)
    tr.save(tmp_path / "c.safetensors")
    tr.save(tmp_path / "c.npz")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "c.safetensors"), framework="numpy") as f:
        meta = json.loads(f.metadata()["fasttrain_meta"])
    assert meta["config"] == {"lr": 1e-3} and meta["step"] == 3
    a_st, m_st = read_checkpoint(tmp_path / "c.safetensors")
    a_np, m_np = read_checkpoint(tmp_path / "c.npz")
    assert m_st == m_np and set(a_st) == set(a_np)
    for k in a_np:
        np.testing.assert_array_equal(a_st[k], a_np[k], err_msg=k)
    # resume from safetensors continues bit-for-bit like the uninterrupted trainer
    m2, ar2 = _cnn(seed=5)
    tr2 = Trainer(m2, ar2, ft.optim.Adam(ar2, lr=1e-3), ft.losses.SoftmaxCrossEntropy(), progress=False)
    tr2.resume(tmp_path / "c.safetensors")
    tr.train_step(x, y)
    tr2.train_step(x, y)
    np.testing.assert_array_equal(ar2.data, arena.data)
    with pytest.raises(ValueError, match="extension"):
        save_checkpoint(tmp_path / "c.pt", model, arena)


def test_cli_init_from_freeze_except_safetensors(tmp_path):
    src = tmp_path / "src"
    assert main(["train", "--quiet", "--model", "mlp", "--limit", "100", "--epochs", "1", "--no-plot",
                 "--checkpoint-format", "safetensors", "--run-dir", str(src)]) == 0
    ckpt = src / "checkpoint.safetensors"
    assert ckpt.exists() and not (src / "checkpoint.npz").exists()
    dst = tmp_path / "dst"
    assert main(["train", "--quiet", "--model", "mlp", "--limit", "100", "--epochs", "1", "--no-plot",
                 "--init-from", str(ckpt), "--freeze-except", "1", "--run-dir", str(dst)]) == 0
    a_src, _ = read_checkpoint(ckpt)
    a_dst, _ = read_checkpoint(dst / "checkpoint.npz")
    np.testing.assert_array_equal(a_dst["param/1.weight"], a_src["param/1.weight"])   # frozen body
    assert not np.array_equal(a_dst["param/3.weight"], a_src["param/3.weight"])       # trained head
