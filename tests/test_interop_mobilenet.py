"""MobileNet through fasttrain.interop, with PyTorch as the oracle: the same network built in
PyTorch (its channels, strides and groups read from our model, under torchvision-style names that
pair with ours only through the module signatures) takes our exported weights and gives the same
logits in eval and train mode, the same running statistics after a training forward, and the same
input and parameter gradients of a cross-entropy loss; and its weights load back into ours with the
same logits, from timm-style names in a safetensors file too. Depthwise weights (C, 1, 3, 3) and
pointwise ones (K, C, 1, 1) are what ResNet-8's round trip does not cover. On the cpp backend
(blocked layout flow on) and the numpy reference."""
import numpy as np
import pytest

import fasttrain as ft
from fasttrain import interop, models, nn, settings

torch = pytest.importorskip("torch")

from test_interop import _randomize_torch  # noqa: E402


@pytest.fixture(params=["cpp", "numpy"])
def backend(request):
    if request.param == "cpp":
        pytest.importorskip("fasttrain._C", reason="C++ module not built")
    before, layout = ft.backend.get_backend(), settings.layout
    ft.set_backend(request.param)
    settings.layout = "auto"   # the blocked layout flows between layers wherever the engine runs it
    yield request.param
    ft.set_backend(before)
    settings.layout = layout


def _ours(seed=0):
    """The CLI's MobileNet (all 13 blocks, so the safetensors names run past features.9)."""
    model = models.build("mobilenet", (3, 32, 32), 10)
    return model, ft.ParamArena.for_model(model, seed=seed)


def _torch_twin(model, timm_names=False):
    """Our MobileNet in PyTorch, every convolution's geometry copied from ours. Names as in
    torchvision: features.0 (conv, BN, ReLU), features.i.{depthwise, bn1, pointwise, bn2},
    classifier; with timm_names as in timm: conv_stem, bn1, blocks.i.{...}, classifier."""
    tnn = torch.nn
    layers = [model[i] for i in range(len(model))]
    assert isinstance(layers[-1], nn.Linear) and isinstance(layers[-3], nn.GlobalAvgPool2d), layers[-3:]
    convs = layers[:-3]
    assert len(convs) % 4 == 2, "expected a conv-BN stem, then (depthwise, BN, pointwise, BN) blocks"

    def conv(c):
        return tnn.Conv2d(c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding, c.dilation,
                          c.groups, bias=c.has_bias)

    def bn(b):
        assert b.relu, "every BN of our MobileNet carries the fused ReLU"
        return tnn.BatchNorm2d(b.num_features, eps=b.eps, momentum=b.momentum)

    class Block(tnn.Module):
        def __init__(self, dw, bn1, pw, bn2):
            super().__init__()
            assert dw.groups == dw.in_channels == dw.out_channels and pw.groups == 1
            self.depthwise, self.bn1, self.pointwise, self.bn2 = conv(dw), bn(bn1), conv(pw), bn(bn2)

        def forward(self, x):
            x = torch.relu(self.bn1(self.depthwise(x)))
            return torch.relu(self.bn2(self.pointwise(x)))

    class MobileNet(tnn.Module):
        def __init__(self):
            super().__init__()
            blocks = [Block(*convs[i:i + 4]) for i in range(2, len(convs), 4)]
            if timm_names:
                self.conv_stem, self.bn1, self.blocks = conv(convs[0]), bn(convs[1]), tnn.Sequential(*blocks)
            else:
                self.features = tnn.Sequential(tnn.Sequential(conv(convs[0]), bn(convs[1]), tnn.ReLU()), *blocks)
            head = layers[-1]
            self.classifier = tnn.Linear(head.in_features, head.out_features)

        def forward(self, x):
            x = self.blocks(torch.relu(self.bn1(self.conv_stem(x)))) if timm_names else self.features(x)
            return self.classifier(x.mean(dim=(2, 3)))

    return MobileNet()


def _randomize_twin(tmodel, seed=0):
    """He-initialized convolutions (PyTorch's default init shrinks the signal through 27 conv-BN
    layers until every image gives the same eval logits, which would hide any mix-up) and
    non-trivial BN statistics and affine parameters."""
    torch.manual_seed(seed)
    for m in tmodel.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    _randomize_torch(torch, tmodel, seed)


def _x(seed=1, n=4):
    return np.random.default_rng(seed).standard_normal((n, 3, 32, 32)).astype(np.float32)


def _close(got, want, what, tol):
    want = np.asarray(want)
    if want.ndim == 2:   # logits: they must depend on the image, or the comparison shows little
        assert np.ptp(want, axis=0).max() > 0.2 * np.abs(want).max(), f"{what}: the same for every image"
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * max(float(np.abs(want).max()), 1e-3), err_msg=what)


def _randomize_ours(model, arena, seed=2):
    """Non-trivial BN statistics and parameters off their initialization (BN weights 1, biases 0)."""
    rng = np.random.default_rng(seed)
    for _, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            m.buffers["running_mean"][...] = rng.standard_normal(m.num_features) * 0.1
            m.buffers["running_var"][...] = rng.uniform(0.5, 1.5, m.num_features)
    arena.data[...] += rng.standard_normal(arena.size).astype(np.float32) * 0.05


@pytest.mark.parametrize("fmt", [".pt", ".safetensors"])
def test_fasttrain_to_torch_same_logits_statistics_and_gradients(backend, tmp_path, fmt):
    model, arena = _ours(seed=3)
    _randomize_ours(model, arena)
    tmodel = _torch_twin(model)
    path = tmp_path / f"mobilenet{fmt}"
    interop.save_torch(model, path, like=tmodel)
    if fmt == ".pt":
        sd = torch.load(path, weights_only=True)
    else:
        from safetensors.torch import load_file

        sd = load_file(str(path))
    tmodel.load_state_dict(sd, strict=True)
    pairs = dict(interop.pairing(model, tmodel.state_dict()))
    # depthwise pairs with depthwise, under names that share nothing with ours
    assert pairs["features.1.depthwise"] == "2" and pairs["features.13.pointwise"] == "52"
    assert pairs["features.13.bn2"] == "53" and pairs["classifier"] == "56"
    assert tmodel.features[1].depthwise.weight.shape == (16, 1, 3, 3)

    x = _x(3)
    # eval: the running statistics
    tmodel.eval()
    with torch.no_grad():
        want = tmodel(torch.from_numpy(x)).numpy()
    _close(model.eval().forward(x), want, "eval logits", 1e-4)

    # train: the batch statistics, the running statistics they update, and one step's gradients
    tmodel.train()
    model.train()
    labels = np.arange(len(x)) % 10
    tx = torch.from_numpy(x).requires_grad_(True)
    tlogits = tmodel(tx)
    torch.nn.functional.cross_entropy(tlogits, torch.from_numpy(labels)).backward()
    logits = model.forward(x)
    _close(logits, tlogits.detach().numpy(), "train logits", 2e-4)
    _, dlogits = ft.losses.SoftmaxCrossEntropy()(logits, labels)
    arena.zero_grad()
    dx = model.backward(dlogits)
    _close(dx, tx.grad.numpy(), "input gradient", 2e-3)
    tmods, ours = dict(tmodel.named_modules()), dict(model.named_modules())
    if backend == "cpp" and pytest.importorskip("fasttrain._C").conv2d_isa() != "portable":
        # the engine's own choice away from the portable kernels: the depthwise convolutions ran blocked
        kinds = [m.cache[3] for m in ours.values() if isinstance(m, nn.Conv2d)]
        assert kinds.count("depthwise") == len(models.MOBILENET_BLOCKS), kinds
    for their, our in pairs.items():
        for entry, p in ours[our]._params.items():
            _close(p.grad, getattr(tmods[their], entry).grad.numpy(), f"{their}.{entry} -> {our} gradient", 2e-3)
        for entry, buf in (getattr(ours[our], "buffers", None) or {}).items():
            _close(buf, getattr(tmods[their], entry).numpy(), f"{their}.{entry} -> {our} after a train forward", 1e-4)


@pytest.mark.parametrize("fmt", [".pt", ".safetensors"])
def test_torch_to_fasttrain_same_logits(backend, tmp_path, fmt, capsys):
    model, arena = _ours(seed=5)
    tmodel = _torch_twin(model)
    _randomize_twin(tmodel)
    path = tmp_path / f"mobilenet{fmt}"
    if fmt == ".pt":
        torch.save(tmodel.state_dict(), path)
    else:
        from safetensors.torch import save_file

        save_file(tmodel.state_dict(), str(path))
    rows = interop.load_torch(model, arena, path)
    assert len(rows) == len(arena.params) + 2 * sum(isinstance(m, torch.nn.BatchNorm2d) for m in tmodel.modules())
    out = capsys.readouterr().out
    assert "features.11.depthwise.weight" in out and "(256, 1, 3, 3)" in out and "-> 42.weight" in out
    _same_logits_both_modes(tmodel, model, _x(4))


def _same_logits_both_modes(tmodel, model, x):
    for train in (False, True):
        tmodel.train(train)
        with torch.no_grad():
            want = tmodel(torch.from_numpy(x)).numpy()
        _close(model.train(train).forward(x), want, f"{'train' if train else 'eval'} logits", 2e-4)


def test_timm_names_from_safetensors_pair_in_forward_order(backend, tmp_path):
    """A safetensors file stores names sorted, and timm's 'blocks.0.bn1' sorts before the stem's
    'bn1', which runs first: in sorted order the two 16-channel BNs would swap (and the eval logits
    differ). The pairing reorders sibling modules to the forward order their shapes allow."""
    model, arena = _ours()
    tmodel = _torch_twin(model, timm_names=True)
    _randomize_twin(tmodel, seed=1)
    from safetensors.torch import save_file

    path = tmp_path / "timm.safetensors"
    save_file(tmodel.state_dict(), str(path))
    pairs = dict(interop.pairing(model, path))
    assert pairs["conv_stem"] == "0" and pairs["bn1"] == "1" and pairs["blocks.0.bn1"] == "3"
    assert pairs["blocks.10.depthwise"] == "42" and pairs["classifier"] == "56"
    interop.load_torch(model, arena, path, verbose=False)
    _same_logits_both_modes(tmodel, model, _x(5))
    # a mapping pins a pair by hand (here the other way round, and the logits show it)
    interop.load_torch(model, arena, path, mapping={"bn1": "3", "blocks.0.bn1": "1"}, verbose=False)
    with pytest.raises(AssertionError, match="eval logits"):
        _same_logits_both_modes(tmodel, model, _x(5))
