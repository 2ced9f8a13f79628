"""fasttrain.interop: PyTorch state_dicts into fasttrain models and back. The same ResNet-8 built
in PyTorch (defined here, torchvision-style names) round-trips its weights both ways, through
.pt and safetensors files, with the same eval-mode logits to float32 tolerance; the pairing
rules, errors and `fasttrain train --init-from` on a safetensors file PyTorch-style names work
without torch."""
import numpy as np
import pytest

import fasttrain as ft
from fasttrain import interop, models
from fasttrain.cli import main
from fasttrain.train.checkpoint import read_checkpoint


def _torch_resnet8(torch, width=16, num_classes=10):
    """ResNet-8 as models.resnet(8): a 3x3 stem conv-BN-ReLU, one basic block per stage (1x1 conv
    + BN shortcut where the shape changes), global average pool, linear."""
    nn = torch.nn

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.shortcut = None
            if stride != 1 or cin != cout:
                self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
            return torch.relu(y + (x if self.shortcut is None else self.shortcut(x)))

    class ResNet8(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            self.layer1 = nn.Sequential(Block(width, width, 1))
            self.layer2 = nn.Sequential(Block(width, 2 * width, 2))
            self.layer3 = nn.Sequential(Block(2 * width, 4 * width, 2))
            self.fc = nn.Linear(4 * width, num_classes)

        def forward(self, x):
            x = torch.relu(self.bn1(self.conv1(x)))
            x = self.layer3(self.layer2(self.layer1(x)))
            return self.fc(x.mean(dim=(2, 3)))

    return ResNet8()


def _randomize_torch(torch, model, seed=0):
    """Non-trivial BatchNorm statistics and affine parameters, so a swapped entry shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.num_batches_tracked.fill_(7)


def _ours(seed=0):
    model = models.resnet(8)
    arena = ft.ParamArena.for_model(model, seed=seed)
    return model, arena


def _x(seed=1):
    return np.random.default_rng(seed).standard_normal((4, 3, 16, 16)).astype(np.float32)


def _check_same_logits(torch, tmodel, model, x):
    tmodel.eval()
    model.eval()
    with torch.no_grad():
        want = tmodel(torch.from_numpy(x)).numpy()
    got = model.forward(x)
    # the images must give clearly different logits, or a swapped layer could pass unseen
    assert np.ptp(want, axis=0).max() > 0.1 * np.abs(want).max(), np.ptp(want, axis=0)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("fmt", [".pt", ".safetensors"])
def test_torch_to_fasttrain_same_logits(tmp_path, fmt, capsys):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    tmodel = _torch_resnet8(torch)
    for m in tmodel.modules():  # He init: torch's default one flattens the logits across images
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    _randomize_torch(torch, tmodel)
    path = tmp_path / f"resnet8{fmt}"
    if fmt == ".pt":
        torch.save(tmodel.state_dict(), path)
    else:
        from safetensors.torch import save_file

        save_file(tmodel.state_dict(), str(path))
    model, arena = _ours(seed=5)
    rows = interop.load_torch(model, arena, path)
    # every entry of ours is paired, num_batches_tracked ignored, and the table is printed
    assert len(rows) == sum(len(p.shape) >= 0 for p in arena.params) + 2 * 9
    pairs = {our: their for their, _, our, _, _ in rows}
    assert pairs["0.weight"] == "conv1.weight" and pairs["7.bias"] == "fc.bias"
    assert pairs["3.shortcut.1.running_var"] == "layer2.0.shortcut.1.running_var"
    assert pairs["4.body.3.weight"] == "layer3.0.bn2.weight"
    out = capsys.readouterr().out
    assert "layer2.0.conv1.weight" in out and "-> 3.body.0.weight" in out and "(32, 16, 3, 3)" in out
    _check_same_logits(torch, tmodel, model, _x())


@pytest.mark.parametrize("fmt", [".pt", ".safetensors"])
def test_fasttrain_to_torch_same_logits(tmp_path, fmt):
    torch = pytest.importorskip("torch")
    model, arena = _ours(seed=3)
    rng = np.random.default_rng(2)
    for _, m in model.named_modules():  # non-trivial statistics, as above
        if getattr(m, "buffers", None):
            m.buffers["running_mean"][...] = rng.standard_normal(m.num_features) * 0.1
            m.buffers["running_var"][...] = rng.uniform(0.5, 1.5, m.num_features)
    arena.data[...] += rng.standard_normal(arena.size).astype(np.float32) * 0.05
    tmodel = _torch_resnet8(torch)
    path = tmp_path / f"export{fmt}"
    interop.save_torch(model, path, like=tmodel)
    sd = torch.load(path, weights_only=True) if fmt == ".pt" else __import__("safetensors.torch").torch.load_file(
        str(path))
    tmodel.load_state_dict(sd, strict=True)
    _check_same_logits(torch, tmodel, model, _x(3))
    # and back: the exported file loads into a fresh fasttrain model with the same logits
    again, arena2 = _ours(seed=9)
    interop.load_torch(again, arena2, path, verbose=False)
    np.testing.assert_array_equal(arena2.data, arena.data)
    np.testing.assert_array_equal(again.eval().forward(_x(3)), model.eval().forward(_x(3)))


def test_export_without_target_uses_our_names_and_torch_layout():
    model, arena = _ours()
    sd = interop.torch_state_dict(model)
    assert list(sd)[:6] == ["0.weight", "1.weight", "1.bias", "1.running_mean", "1.running_var",
                            "1.num_batches_tracked"]
    assert sd["0.weight"].shape == (16, 3, 3, 3) and sd["7.weight"].shape == (10, 64)
    assert sd["1.num_batches_tracked"].dtype == np.int64
    # a model of the same architecture takes it back by order (names equal, nothing to guess)
    other, arena2 = _ours(seed=4)
    interop.load_torch(other, arena2, sd, verbose=False)
    np.testing.assert_array_equal(arena2.data, arena.data)


def _torch_style_mlp(rng, hidden=128, classes=5):
    """A PyTorch-style state_dict for models.mlp(64) written without torch: names fc1, fc2."""
    return {"fc1.weight": rng.standard_normal((hidden, 64)).astype(np.float32),
            "fc1.bias": rng.standard_normal(hidden).astype(np.float32),
            "fc2.weight": rng.standard_normal((classes, hidden)).astype(np.float32),
            "fc2.bias": rng.standard_normal(classes).astype(np.float32)}


def test_head_of_another_size_is_skipped_only_when_asked():
    sd = _torch_style_mlp(np.random.default_rng(0))
    model = models.mlp(64, 10)
    arena = ft.ParamArena.for_model(model)
    with pytest.raises(ValueError, match=r"fc2.weight has shape \(5, 128\), our 3.weight expects \(10, 128\)"):
        interop.load_torch(model, arena, sd, verbose=False)
    head = model.parameters()[-2].data.copy()
    rows = interop.load_torch(model, arena, sd, skip_mismatched=True, verbose=False)
    assert [r[4] for r in rows] == [False, False, True, True]
    np.testing.assert_array_equal(model.parameters()[0].data, sd["fc1.weight"])
    np.testing.assert_array_equal(model.parameters()[-2].data, head)


def test_unpairable_state_dict_names_what_is_left_and_mapping_fixes_it():
    rng = np.random.default_rng(0)
    sd = _torch_style_mlp(rng, classes=10)
    sd["extra.weight"] = rng.standard_normal((3, 3)).astype(np.float32)
    model = models.mlp(64, 10)
    arena = ft.ParamArena.for_model(model)
    with pytest.raises(ValueError, match=r"left in the state_dict: \[extra \{'weight': \(3, 3\)\}\]"):
        interop.load_torch(model, arena, sd, verbose=False)
    # two Linear layers of one signature would pair in order; a mapping pins them the other way
    sd2 = {"a.weight": np.ones((4, 4), np.float32), "b.weight": np.zeros((4, 4), np.float32)}
    two = ft.nn.Sequential(ft.nn.Linear(4, 4, bias=False), ft.nn.Linear(4, 4, bias=False))
    arena2 = ft.ParamArena.for_model(two)
    interop.load_torch(two, arena2, sd2, mapping={"a": "1", "b": "0"}, verbose=False)
    assert np.all(two.parameters()[0].data == 0) and np.all(two.parameters()[1].data == 1)
    with pytest.raises(KeyError, match="mapping"):
        interop.load_torch(two, arena2, sd2, mapping={"zz": "0"}, verbose=False)


def test_safetensors_names_pair_in_natural_order():
    """Safetensors sorts names ('layer.10' before 'layer.2'); natural order restores 2 < 10."""
    from fasttrain.interop import _natural_key

    names = ["layer.10.w", "layer.2.w", "layer.1.w"]
    assert sorted(names, key=_natural_key) == ["layer.1.w", "layer.2.w", "layer.10.w"]


def test_sorted_names_pair_in_the_forward_order_their_shapes_allow():
    """Sorted (safetensors) names put timm's 'blocks.0.bn1' before the stem's 'bn1', which runs
    first; both have 4 channels, so sorted order would swap them."""
    nn = ft.nn
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4),
                          *models._separable(4, 8, 1), nn.GlobalAvgPool2d(), nn.Flatten(), nn.Linear(8, 2))
    ft.ParamArena.for_model(model)
    bn = lambda name, c: {f"{name}.{e}": np.ones(c, np.float32)  # noqa: E731
                          for e in ("weight", "bias", "running_mean", "running_var")}
    sd = {"conv_stem.weight": np.ones((4, 3, 3, 3), np.float32), **bn("bn1", 4),
          "blocks.0.conv_dw.weight": np.ones((4, 1, 3, 3), np.float32), **bn("blocks.0.bn1", 4),
          "blocks.0.conv_pw.weight": np.ones((8, 4, 1, 1), np.float32), **bn("blocks.0.bn2", 8),
          "head.weight": np.ones((2, 8), np.float32), "head.bias": np.ones(2, np.float32)}
    want = [("conv_stem", "0"), ("bn1", "1"), ("blocks.0.conv_dw", "2"), ("blocks.0.bn1", "3"),
            ("blocks.0.conv_pw", "4"), ("blocks.0.bn2", "5"), ("head", "8")]
    assert interop.pairing(model, sd, ordered=False) == want
    # and with a head of another number of classes (transfer learning): still in forward order
    sd.update({"head.weight": np.ones((3, 8), np.float32), "head.bias": np.ones(3, np.float32)})
    assert interop.pairing(model, sd, ordered=False) == want


def test_cli_init_from_a_torch_safetensors_file(tmp_path):
    """--init-from takes a safetensors file with PyTorch names (no fasttrain metadata): the body
    is loaded, the head of another size keeps its initialization and trains."""
    from safetensors.numpy import save_file

    sd = _torch_style_mlp(np.random.default_rng(1), classes=5)
    src = tmp_path / "torch_mlp.safetensors"
    save_file(sd, str(src))
    assert interop.is_torch_file(src)
    dst = tmp_path / "dst"
    assert main(["train", "--quiet", "--model", "mlp", "--limit", "100", "--epochs", "1", "--no-plot",
                 "--init-from", str(src), "--freeze-except", "1", "--run-dir", str(dst)]) == 0
    a_dst, _ = read_checkpoint(dst / "checkpoint.npz")
    np.testing.assert_array_equal(a_dst["param/1.weight"], sd["fc1.weight"])   # loaded and frozen
    np.testing.assert_array_equal(a_dst["param/1.bias"], sd["fc1.bias"])
    assert a_dst["param/3.weight"].shape == (10, 128)                             # our own head


def test_cli_init_from_a_torch_file_of_another_model_is_a_config_error(tmp_path, capsys):
    from safetensors.numpy import save_file

    src = tmp_path / "other.safetensors"
    save_file({"conv.weight": np.zeros((4, 1, 3, 3), np.float32)}, str(src))
    assert main(["train", "--quiet", "--model", "mlp", "--limit", "100", "--epochs", "1", "--no-plot",
                 "--init-from", str(src), "--run-dir", str(tmp_path / "dst")]) == 2
    err = capsys.readouterr().err
    assert "init_from" in err.replace("-", "_") and "left in the state_dict: [conv {'weight': (4, 1, 3, 3)}]" in err


def test_read_errors():
    with pytest.raises(ValueError, match="expected a .safetensors, .pt, .pth or .bin file"):
        interop.save_state_dict({}, "x.npz")
    with pytest.raises(FileNotFoundError):
        interop.read_state_dict("/nonexistent/model.safetensors")
