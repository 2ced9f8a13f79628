"""The blocked layout that flows between layers (fasttrain/nn/layout.py): a model's outputs, input
gradient, parameter gradients and batchnorm statistics with the flow on equal the flow off
(FASTTRAIN_LAYOUT=nchw: every layer on its own, the path the layer tests hold to the references
and gradcheck), in train and eval mode, on odd channel counts and batch 1, on every instruction
set of the direct engine; NCHW stays the public layout throughout."""
from __future__ import annotations

import numpy as np
import pytest

import fasttrain as ft
from fasttrain import models, nn, settings
from fasttrain.check import numeric_grad
from fasttrain.nn import layout

C = pytest.importorskip("fasttrain._C", reason="C++ module not built")

from cpp_isas import isa_params  # noqa: E402

f32 = np.float32


ISAS = isa_params(C)


@pytest.fixture(autouse=True)
def _cpp_backend():
    before = ft.backend.get_backend() if hasattr(ft.backend, "get_backend") else None
    ft.set_backend("cpp")
    yield
    ft.set_backend(before or "auto")
    C.set_conv2d_isa("auto")
    C.set_conv2d_algo("auto")
    settings.layout = "auto"


def _mixed(c=5):
    """Supported and unsupported layers interleaved (Sigmoid, Maxout, Dropout, a non-fused
    Residual with a bare-conv shortcut, 'same' padding with an even kernel, reflect padding, pools)."""
    return nn.Sequential(
        nn.Conv2d(c, 17, 3, padding=1), nn.BatchNorm2d(17), nn.LeakyReLU(0.1),
        nn.Conv2d(17, 17, 3, stride=2, padding=1, relu=True), nn.Sigmoid(),
        nn.Conv2d(17, 16, 3, padding=2), nn.MaxPool2d(2, stride=1),
        nn.Residual(nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)),
                    nn.Conv2d(16, 16, 1), post=nn.ELU()),
        nn.Conv2d(16, 18, 2, padding="same"), nn.Maxout(2), nn.Conv2d(9, 9, 3, padding=1, padding_mode="reflect"),
        nn.AvgPool2d(3, stride=1, padding=1), nn.Dropout(0.3, seed=1, layer_id=0),
        nn.GlobalAvgPool2d(), nn.Flatten(), nn.Linear(9, 4))


# (builder, input (C, H, W))
MODELS = {
    "resnet8": (lambda: models.resnet(8, 3, 10, width=16), (3, 9, 9)),
    "resnet20": (lambda: models.resnet(20, 3, 10, width=16), (3, 8, 8)),
    "resnet8_w5": (lambda: models.resnet(8, 5, 10, width=5), (5, 7, 7)),
    "convnet_classic": (lambda: models.convnet_classic(3, 10, 12, width=17), (3, 12, 12)),
    "simple_cnn": (lambda: models.simple_cnn(1, 10, 8, width=17), (1, 8, 8)),
    "mobilenet": (lambda: models.mobilenet(3, 10, width=0.25, blocks=models.MOBILENET_BLOCKS[:4]), (3, 8, 8)),
    "mixed": (_mixed, (5, 9, 9)),
}


def _run(name, batch, train, flow, seed=0):
    settings.layout = "auto" if flow else "nchw"
    build, chw = MODELS[name]
    model = build()
    arena = ft.ParamArena.for_model(model, seed=seed)
    model.train(train)
    rng = np.random.default_rng(seed + 1)
    x = rng.standard_normal((batch, *chw)).astype(f32)
    out = []
    for _ in range(2):  # a second step sees the running statistics the first updated
        y = model.forward(x)
        assert isinstance(y, np.ndarray), f"{name}: the model returned {type(y).__name__}, expected NCHW arrays"
        dy = np.random.default_rng(seed + 2).standard_normal(y.shape).astype(f32)
        arena.zero_grad()
        dx = model.backward(dy)
        assert isinstance(dx, np.ndarray) and dx.shape == x.shape
        buffers = [m.buffers[k].copy() for _, m in model.named_modules() if hasattr(m, "buffers") for k in m.buffers]
        out.append((y.copy(), dx.copy(), arena.grad.copy(), buffers))
    return model, out


def _close(a, b, what, tol=2e-4):
    scale = max(float(np.abs(b).max()), 1e-3)
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol * scale, err_msg=what)


def _blocked_convs(model):
    return sum(1 for _, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.cache and m.cache[3])


def _compare(name, batch, train):
    m_on, on = _run(name, batch, train, True)
    _, off = _run(name, batch, train, False)
    for step, (a, b) in enumerate(zip(on, off)):
        _close(a[0], b[0], f"{name} step {step}: output")
        _close(a[1], b[1], f"{name} step {step}: input gradient")
        _close(a[2], b[2], f"{name} step {step}: parameter gradients")
        for u, v in zip(a[3], b[3]):
            _close(u, v, f"{name} step {step}: batchnorm running statistics")
    return _blocked_convs(m_on)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name,batch", [("resnet8", 3), ("resnet8", 1), ("resnet20", 2), ("convnet_classic", 3),
                                        ("simple_cnn", 2), ("mixed", 3), ("mixed", 1),
                                        ("resnet8_w5", 2)])
def test_flow_equals_nchw_forced_direct(name, batch, train):
    """Every groups-1 convolution on the direct engine (C=3, 5, 9, 17 included): the flow carries
    the blocked layout through the whole model. (Forcing 'direct' refuses depthwise convolutions,
    so mobilenet runs under the engine's own choice below.)"""
    C.set_conv2d_algo("direct")
    assert _compare(name, batch, train) > 0, "no convolution received a blocked input"


@pytest.mark.parametrize("name", ["resnet8", "convnet_classic", "mobilenet", "mixed"])
def test_flow_equals_nchw_auto(name):
    """The engine's own choice (direct only where it pays: on AVX-512, >= 8 channels, not 1x1)."""
    _compare(name, 2, True)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("algo", ["direct", "auto"])
def test_flow_follows_the_engine_on_every_isa(isa, algo):
    C.set_conv2d_isa(isa)
    C.set_conv2d_algo(algo)
    n = _compare("resnet8", 2, True)
    expected = C.conv2d_choice("fwd", 2, 16, 9, 9, 16, 3, 3, 1, 1, 1, 1, blocked=True) == "direct"
    assert (n > 0) == expected, f"isa {isa}, algo {algo}: {n} convolutions took blocked inputs"


def test_remembered_choice_follows_the_settings():
    """Conv2d remembers the engine's choice per shape; a later set_conv2d_algo / set_conv2d_isa or a
    backend switch must still change what the same layer runs."""
    conv = nn.Conv2d(16, 16, 3, padding=1)
    ft.ParamArena.for_model(conv)
    x = np.zeros((2, 16, 9, 9), f32)
    want = lambda op: C.conv2d_choice(op[len("conv2d_"):], 2, 16, 9, 9, 16, 3, 3, 1, 1, 1, 1)  # noqa: E731
    for algo in ("direct", "im2col", "winograd", "auto"):
        C.set_conv2d_algo(algo)
        for isa in ("portable", "auto"):
            C.set_conv2d_isa(isa)
            for op in ("conv2d_fwd", "conv2d_bwd_data", "conv2d_bwd_weight"):
                assert conv._choice(op, x, x.shape) == want(op), (algo, isa, op)
    ft.set_backend("numpy")
    assert conv._choice("conv2d_fwd", x, x.shape) is None   # the registry no longer runs fasttrain._C
    assert conv._choice("conv2d_fwd", x.astype(np.float64), x.shape) is None


def _conversions(model):
    """The layout conversions the containers made in the last forward, from their traces."""
    steps = []
    for _, m in model.named_modules():
        if isinstance(m, nn.Sequential):
            steps += m.cache or []
        elif isinstance(m, nn.Residual):
            steps += [s for trace in m.cache or () if trace for s in trace]
    return [s[0] for s in steps if s is not None]


@pytest.mark.parametrize("name", ["resnet8", "resnet20", "mobilenet", "convnet_classic"])
@pytest.mark.parametrize("algo", ["direct", "auto"])
def test_models_convert_once(name, algo, monkeypatch):
    """Nothing converts: the stem convolution reads the NCHW images and writes the blocked layout,
    1x1 and depthwise convolutions, batchnorm, the residual add and pooling keep it, and the global
    pool is the exit (its (N, C) output needs no conversion); only a flatten converts back, once.
    Every training batchnorm after a direct convolution gets its statistics from the convolution."""
    if name == "mobilenet" and algo == "direct":
        pytest.skip("forcing 'direct' refuses depthwise convolutions")
    if algo == "auto" and C.conv2d_isa() == "portable":
        pytest.skip("the engine keeps the portable kernels off the direct path by itself")
    C.set_conv2d_algo(algo)
    settings.layout = "auto"
    build, chw = MODELS[name]
    model = build()
    ft.ParamArena.for_model(model, seed=0)
    repads = []
    real = C.blocked_repad
    monkeypatch.setattr(C, "blocked_repad", lambda *a, **k: repads.append(a[2:]) or real(*a, **k))
    y = model.forward(np.random.default_rng(0).standard_normal((2, *chw)).astype(f32))
    model.backward(np.ones_like(y))
    if name.startswith("resnet"):   # producers write the halos their consumers read, both ways
        assert repads == []
    exit_ = ["to_nchw"] if name == "convnet_classic" else []
    assert _conversions(model) == exit_
    assert model[0].cache[3] == "stem"
    layers = [m for _, m in model.named_modules() if not m.children()]
    for conv, bn in zip(layers, layers[1:]):
        if isinstance(conv, nn.Conv2d) and conv.cache[3] == "direct" and isinstance(bn, nn.BatchNorm2d):
            assert isinstance(bn.cache[0], layout.Blocked) and bn.cache[0].stats is not None


def test_first_layer_without_input_gradient():
    """The trainer switches the data's gradient off (set_needs_input_grad(False)): the stem then
    skips it on the flow too, and every parameter gradient is unchanged."""
    C.set_conv2d_algo("direct")
    grads = []
    for needs in (True, False):
        model = models.resnet(8, 3, 10, width=16)
        arena = ft.ParamArena.for_model(model, seed=0)
        model.set_needs_input_grad(needs)
        y = model.forward(np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(f32))
        arena.zero_grad()
        dx = model.backward(np.ones_like(y))
        assert (dx is None) == (not needs)
        grads.append(arena.grad.copy())
    _close(grads[1], grads[0], "parameter gradients")


def test_single_layers_stay_nchw():
    """A layer called on its own takes and returns NCHW, whatever the setting."""
    C.set_conv2d_algo("direct")
    x = np.random.default_rng(0).standard_normal((2, 16, 6, 6)).astype(f32)
    for layer in (nn.Conv2d(16, 16, 3, padding=1), nn.Conv2d(16, 16, 1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2), nn.AvgPool2d(2), nn.GlobalAvgPool2d(),
                  nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16, relu=True))):
        if layer.parameters():
            ft.ParamArena.for_model(layer, seed=0)
        y = layer.forward(x)
        assert isinstance(y, np.ndarray)
        assert isinstance(layer.backward(np.ones_like(y)), np.ndarray)


def test_blocked_finite_differences():
    """A float32 central-difference check of the blocked path itself (the NCHW path it is compared
    with above is gradchecked in float64 by the layer tests): eval mode, a few probed entries."""
    C.set_conv2d_algo("direct")
    settings.layout = "auto"
    model = nn.Sequential(nn.Conv2d(3, 17, 3, padding=1), nn.BatchNorm2d(17, relu=True),
                          nn.Residual(nn.Sequential(nn.Conv2d(17, 17, 3, padding=1), nn.BatchNorm2d(17)),
                                      post=nn.ReLU()),
                          nn.AvgPool2d(2), nn.GlobalAvgPool2d())
    arena = ft.ParamArena.for_model(model, seed=3)
    model.eval()
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 6, 6)).astype(f32)
    r = rng.standard_normal((2, 17)).astype(f32)
    arena.zero_grad()
    model.forward(x)
    assert _blocked_convs(model) == 2
    dx = model.backward(r)

    def loss():
        return float(np.sum(model.forward(x).astype(np.float64) * r))
    num = numeric_grad(loss, x, eps=1e-2, max_checks=12, seed=5).reshape(-1)
    for i in np.flatnonzero(~np.isnan(num)):
        assert abs(num[i] - dx.reshape(-1)[i]) <= 2e-3 + 2e-2 * abs(num[i]), (i, num[i], dx.reshape(-1)[i])


def test_layout_setting_is_validated(monkeypatch):
    monkeypatch.setenv("FASTTRAIN_LAYOUT", "blocked-ish")
    with pytest.raises(ValueError, match="FASTTRAIN_LAYOUT: expected one of auto, nchw, got 'blocked-ish'"):
        settings._env_layout()


def test_stash_and_restore_cache_keep_the_flow():
    """A pipeline's micro-batches: two forwards, then the backwards in either order, equal the
    plain forward/backward of each."""
    C.set_conv2d_algo("direct")
    settings.layout = "auto"
    model = models.resnet(8, 3, 10, width=16)
    arena = ft.ParamArena.for_model(model, seed=0)
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((2, 3, 8, 8)).astype(f32) for _ in range(2)]
    ref = []
    for x in xs:
        y = model.forward(x)
        arena.zero_grad()
        ref.append((model.backward(np.ones_like(y)), arena.grad.copy()))
    stashes = []
    for x in xs:
        model.forward(x)
        stashes.append(model.stash_cache())
    for i in (1, 0):
        model.restore_cache(stashes[i])
        arena.zero_grad()
        dx = model.backward(np.ones((2, 10), f32))
        _close(dx, ref[i][0], "dx after restore_cache")
        _close(arena.grad, ref[i][1], "grads after restore_cache")


def test_shortcut_adds_into_the_body_gradient(monkeypatch):
    """A residual block's convolution shortcut (resnet8's 1x1 stride-2 ones, the mixed model's bare
    1x1) adds its data gradient into the body's (conv2d_blocked_bwd_data accumulate=True) instead of
    a separate sum; with an identity shortcut (resnet8's first block) the body's first convolution
    adds its data gradient into the residual gradient its closing batchnorm wrote. The gradients
    stay the NCHW path's (test_flow_equals_nchw_*)."""
    calls = []
    real = C.conv2d_blocked_bwd_data

    def spy(*args, **kw):
        calls.append(kw.get("accumulate", False))
        return real(*args, **kw)

    monkeypatch.setattr(C, "conv2d_blocked_bwd_data", spy)
    C.set_conv2d_algo("direct")
    for name, want in (("resnet8", 3), ("mixed", 1)):
        calls.clear()
        _run(name, 2, True, True)
        assert sum(calls) == 2 * want, f"{name}: {sum(calls)} accumulating data gradients in 2 steps, expected {2 * want}"
    adds = []
    real_add = C.stream_add
    monkeypatch.setattr(C, "stream_add", lambda *a: adds.append(1) or real_add(*a))
    _run("resnet20", 2, True, True)
    assert adds == [], "a residual gradient was summed by a separate pass"


def _on_a_line(a) -> bool:
    return a.ctypes.data % 64 == 0


def test_blocked_buffers_start_on_a_line():
    """Every buffer the flow allocates starts on a 64-byte line, so each 16-float pixel is one line
    (NumPy's allocator aligns to 16 bytes: without this, every pixel load would straddle two)."""
    for shape in [(1, 1, 1, 1, 0), (3, 17, 5, 7, 1), (2, 33, 31, 29, 2), (64, 64, 32, 32, 1)]:
        b = layout.empty(*shape)
        assert _on_a_line(b.data) and b.data.flags.c_contiguous and b.data.shape == layout.blocked_shape(*shape)
    for dtype, shape in [(np.float64, (3, 5)), (np.uint8, (7, 3)), (f32, (0, 16))]:
        a = layout.aligned_empty(shape, dtype)
        assert a.dtype == dtype and a.shape == shape and (_on_a_line(a) or a.size == 0)
    z = layout.aligned_zeros((5, 3, 7, 16))
    assert _on_a_line(z) and not z.any()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 17, 9, 11)).astype(f32)
    for halo in (0, 1, 2):   # the conversion allocates in C++ (its own aligned allocation)
        bh = layout.to_blocked(x, halo)
        assert _on_a_line(bh.data) and bh.data.flags.c_contiguous and bh.data.flags.writeable
        np.testing.assert_array_equal(layout.to_nchw(bh), x)
    b = layout.to_blocked(x, 1)
    for border in [(2, 2, 2, 2), (0, 0, 0, 0), (1, 2, 0, 1)]:   # the repad copy and the asymmetric one
        p = layout.padded(b, *border)
        assert _on_a_line(p)
        np.testing.assert_array_equal(p[:, :, border[0]:border[0] + 9, border[2]:border[2] + 11], b.interior())
    s = layout.add(b, b)
    assert _on_a_line(s.data)
    np.testing.assert_array_equal(s.data, 2 * b.data)


def test_mobilenet_activations_start_on_a_line():
    """The depthwise convolutions' inputs (written by the batchnorm before them) and outputs in the
    flow are line-aligned, forward and backward."""
    settings.layout = "auto"
    build, chw = MODELS["mobilenet"]
    model = build()
    ft.ParamArena.for_model(model, seed=0)
    y = model.forward(np.random.default_rng(0).standard_normal((2, *chw)).astype(f32))
    model.backward(np.ones_like(y))
    depthwise = [m for _, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.cache[3] == "depthwise"]
    if not depthwise:
        pytest.skip("the engine runs no depthwise convolution on the flow here")
    for conv in depthwise:
        assert _on_a_line(conv.cache[2].data)
