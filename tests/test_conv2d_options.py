"""Conv2d options (groups, dilation, padding='same'|'valid', padding_mode): the reference against naive loops,
every backend (and every C++ algorithm that takes the shape) against the reference and against
torch.nn.functional.conv2d, gradient checks of the layer, bad arguments."""
import itertools

import numpy as np
import pytest

from fasttrain import ParamArena, backend
from fasttrain.check import gradcheck
from fasttrain.nn import Conv2d

# (N, C, H, W, K, groups, (R, S), stride, padding, dilation): channels 1/3/5/17, groups from 1 to
# depthwise (with channel multipliers 1, 2 and 3), dilation 1/2 (also per axis), stride 1/2 (also
# per axis), odd and non-square images, padding larger than the kernel's reach
CONFIGS = [
    (2, 1, 7, 6, 1, 1, (3, 3), (1, 1), (1, 1), (2, 2)),
    (2, 3, 9, 8, 3, 3, (3, 3), (1, 1), (1, 1), (1, 1)),
    (1, 3, 9, 7, 6, 3, (3, 3), (2, 2), (1, 1), (2, 2)),
    (2, 5, 8, 9, 5, 5, (3, 3), (2, 1), (0, 2), (1, 2)),
    (2, 17, 9, 9, 17, 17, (3, 3), (1, 1), (2, 2), (2, 2)),
    (1, 17, 11, 10, 51, 17, (5, 5), (1, 1), (2, 2), (1, 1)),
    (2, 6, 7, 7, 4, 2, (3, 3), (1, 1), (1, 1), (1, 1)),
    (2, 15, 8, 7, 10, 5, (3, 2), (2, 2), (1, 0), (2, 1)),
    (1, 4, 5, 6, 6, 2, (1, 1), (1, 1), (0, 0), (1, 1)),
    (2, 5, 6, 6, 5, 5, (3, 3), (1, 1), (3, 3), (1, 1)),
    (1, 4, 9, 9, 8, 4, (2, 2), (1, 2), (0, 1), (3, 1)),
    # rows wide enough for every chunk width of the C++ depthwise kernel (16 + 4 + 1, 16 + 2 + 1)
    (1, 3, 6, 21, 3, 3, (3, 3), (1, 1), (1, 1), (1, 1)),
    (2, 2, 5, 37, 4, 2, (3, 3), (2, 2), (1, 1), (1, 1)),
    # depthwise maps narrower than 8 (the C++ kernel's channel-interleaved path), channel counts
    # that leave a partial block of 8, stride 2, dilation, padding beyond the kernel's reach
    (2, 11, 5, 4, 11, 11, (3, 3), (2, 2), (1, 1), (1, 1)),
    (3, 9, 4, 4, 9, 9, (3, 3), (1, 1), (1, 1), (1, 1)),
    (1, 17, 6, 5, 17, 17, (3, 2), (1, 2), (2, 1), (2, 1)),
    (2, 16, 2, 2, 16, 16, (3, 3), (1, 1), (1, 1), (1, 1)),
]
IDS = ["n{}c{}-{}x{}-k{}-g{}-r{}-s{}-p{}-d{}".format(*c) for c in CONFIGS]


def _out(h, w, rs, s, p, d):
    return tuple((n + 2 * pp - dd * (k - 1) - 1) // ss + 1 for n, k, ss, pp, dd in zip((h, w), rs, s, p, d))


def _inputs(cfg, dtype, seed=0):
    n, c, h, w, k, g, rs, s, p, d = cfg
    rng = np.random.default_rng(seed)
    P, Q = _out(h, w, rs, s, p, d)
    arrays = (rng.standard_normal((n, c, h, w)), rng.standard_normal((k, c // g, *rs)), rng.standard_normal(k),
              rng.standard_normal((n, k, P, Q)))
    return [a.astype(dtype) for a in arrays]


def naive(x, w, b, dy, s, p, d, groups):
    """y, dx, dw, db by direct loops over output positions and groups (each output position reads
    its dilated window; backward scatters dy back over the same taps)."""
    n, c, h, wd = x.shape
    k, cg, r, t = w.shape
    kg = k // groups
    xp = np.pad(x, ((0, 0), (0, 0), (p[0], p[0]), (p[1], p[1])))
    y = np.zeros(dy.shape)
    dxp, dw = np.zeros_like(xp), np.zeros_like(w)
    for i, j, g in itertools.product(range(dy.shape[2]), range(dy.shape[3]), range(groups)):
        win = (slice(None), slice(g * cg, (g + 1) * cg), slice(i * s[0], i * s[0] + d[0] * (r - 1) + 1, d[0]),
               slice(j * s[1], j * s[1] + d[1] * (t - 1) + 1, d[1]))
        ks = slice(g * kg, (g + 1) * kg)
        y[:, ks, i, j] = np.tensordot(xp[win], w[ks], axes=([1, 2, 3], [1, 2, 3])) + b[ks]
        dxp[win] += np.tensordot(dy[:, ks, i, j], w[ks], axes=([1], [0]))
        dw[ks] += np.tensordot(dy[:, ks, i, j], xp[win], axes=([0], [0]))
    return y, dxp[:, :, p[0]:p[0] + h, p[1]:p[1] + wd], dw, dy.sum(axis=(0, 2, 3))


def _run(call, x, w, b, dy, cfg, relu=False):
    *_, groups, _, s, p, d = cfg
    y = np.empty(dy.shape, x.dtype)
    call("conv2d_fwd")(x, w, b, y, *s, *p, relu, *d, groups)
    dx = np.empty_like(x)
    call("conv2d_bwd_data")(dy, w, dx, *s, *p, *d, groups)
    dw = np.full_like(w, 0.5)   # gradients accumulate into what is there
    db = np.full_like(b, 0.5)
    call("conv2d_bwd_weight")(x, dy, dw, db, *s, *p, *d, groups)
    return y, dx, dw - 0.5, db - 0.5


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_reference_matches_naive_loops(cfg):
    x, w, b, dy = _inputs(cfg, np.float64)
    got = _run(lambda op: backend.kernel(op, backend="numpy"), x, w, b, dy, cfg)
    for g, r, what in zip(got, naive(x, w, b, dy, *cfg[7:], cfg[5]), ("y", "dx", "dw", "db")):
        np.testing.assert_allclose(g, r, rtol=1e-12, atol=1e-12, err_msg=what)


def _cpp_algos():
    """(backend, C++ algorithm) pairs: every CPU backend, and the C++ one under each algorithm that
    takes grouped/dilated shapes ('auto' sends depthwise shapes to their own kernel)."""
    out = []
    for name in backend.available_backends_for("conv2d_fwd"):
        out += [(name, a) for a in ("auto", "im2col")] if name == "cpp" else [(name, None)]
    return out


@pytest.fixture
def algo():
    def set_algo(name):
        if name is not None:
            import fasttrain._C as C
            C.set_conv2d_algo(name)
    yield set_algo
    set_algo("auto") if "cpp" in backend.available_backends_for("conv2d_fwd") else None


def _close(got, want, label):
    for g, r, what in zip(got, want, ("y", "dx", "dw", "db")):
        np.testing.assert_allclose(g, r, rtol=2e-5, atol=2e-5 * max(1.0, float(np.abs(r).max(initial=0))),
                                   err_msg=f"{label} {what}")


@pytest.mark.parametrize("name,cpp_algo", _cpp_algos())
@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
@pytest.mark.parametrize("relu", [False, True])
def test_every_backend_matches_reference(name, cpp_algo, cfg, relu, algo):
    x, w, b, dy = _inputs(cfg, np.float32, seed=1)
    want = _run(lambda op: backend.kernel(op, backend="numpy"), *(a.astype(np.float64) for a in (x, w, b, dy)),
                cfg, relu)
    algo(cpp_algo)
    _close(_run(lambda op: backend.kernel(op, backend=name), x, w, b, dy, cfg, relu), want, f"{name}/{cpp_algo}")


@pytest.mark.parametrize("name,cpp_algo", _cpp_algos())
@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_every_backend_matches_torch(name, cpp_algo, cfg, algo):
    torch = pytest.importorskip("torch")
    x, w, b, dy = _inputs(cfg, np.float32, seed=2)
    *_, groups, _, s, p, d = cfg
    tx, tw, tb = (torch.from_numpy(a.astype(np.float64)).requires_grad_(True) for a in (x, w, b))
    ty = torch.nn.functional.conv2d(tx, tw, tb, stride=s, padding=p, dilation=d, groups=groups)
    ty.backward(torch.from_numpy(dy.astype(np.float64)))
    algo(cpp_algo)
    got = _run(lambda op: backend.kernel(op, backend=name), x, w, b, dy, cfg)
    _close(got, [t.detach().numpy() for t in (ty, tx.grad, tw.grad, tb.grad)], f"{name}/{cpp_algo} vs torch")


@pytest.mark.parametrize("nthreads", [1, 2, 3])
@pytest.mark.parametrize("cfg", [(3, 5, 9, 8, 10, 5, (3, 3), (1, 1), (1, 1), (1, 1)),
                                 (3, 19, 4, 4, 19, 19, (3, 3), (2, 2), (1, 1), (1, 1))], ids=["rows", "narrow"])
def test_depthwise_kernel_does_not_depend_on_thread_count(nthreads, cfg):
    C = pytest.importorskip("fasttrain._C", reason="C++ module not built")
    import fasttrain as ft
    from fasttrain import settings

    x, w, b, dy = _inputs(cfg, np.float32, seed=5)
    before = settings.num_threads
    try:
        ft.set_num_threads(1)
        one = _run(lambda op: getattr(C, op), x, w, b, dy, cfg)
        ft.set_num_threads(nthreads)
        many = _run(lambda op: getattr(C, op), x, w, b, dy, cfg)
    finally:
        ft.set_num_threads(before)
    for a, c in zip(one, many):
        np.testing.assert_array_equal(a, c)   # planes and channels are independent tasks: bit for bit


# ---- the layer ------------------------------------------------------------------------------------

@pytest.mark.parametrize("args,xs", [
    (dict(in_channels=4, out_channels=4, kernel_size=3, padding=1, groups=4), (2, 4, 5, 6)),
    (dict(in_channels=3, out_channels=6, kernel_size=3, stride=2, padding=2, dilation=2, groups=3), (2, 3, 7, 6)),
    (dict(in_channels=4, out_channels=6, kernel_size=(3, 2), padding="same", dilation=(1, 2), groups=2), (1, 4, 5, 5)),
    (dict(in_channels=2, out_channels=3, kernel_size=4, padding="same", bias=False), (2, 2, 5, 6)),
    (dict(in_channels=3, out_channels=3, kernel_size=(2, 3), padding="valid", groups=3, relu=True), (2, 3, 4, 5)),
])
def test_layer_gradcheck(args, xs):
    layer = Conv2d(**args)
    ParamArena.for_model(layer, dtype=np.float64, seed=3)
    x = np.random.default_rng(4).standard_normal(xs)
    for r in gradcheck(layer, x, tol=1e-6):
        assert r.passed, str(r)


@pytest.mark.parametrize("k,d,groups", [(3, 1, 1), (4, 1, 5), (2, 3, 1), (5, 2, 5), ((2, 3), (1, 2), 5)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_layer_padding_same_matches_torch(k, d, groups, dtype):
    """'same' keeps H x W; an even kernel span puts the extra padding at the bottom/right, as
    PyTorch does; the layer's gradients match torch's, on the default backend in float32."""
    torch = pytest.importorskip("torch")
    layer = Conv2d(5, 10, k, padding="same", dilation=d, groups=groups)
    ParamArena.for_model(layer, dtype=dtype, seed=6)
    layer.bias.data[...] = np.linspace(-1, 1, 10)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 5, 7, 8)).astype(dtype)
    y = layer.forward(x)
    assert y.shape == (2, 10, 7, 8)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = layer.backward(dy)
    assert dx.shape == x.shape
    tx = torch.from_numpy(x.astype(np.float64)).requires_grad_(True)
    tw = torch.from_numpy(layer.weight.data.astype(np.float64)).requires_grad_(True)
    tb = torch.from_numpy(layer.bias.data.astype(np.float64)).requires_grad_(True)
    ty = torch.nn.functional.conv2d(tx, tw, tb, padding="same", dilation=d, groups=groups)
    ty.backward(torch.from_numpy(dy.astype(np.float64)))
    tol = 1e-12 if dtype == np.float64 else 2e-5
    for got, want in ((y, ty), (dx, tx.grad), (layer.weight.grad, tw.grad), (layer.bias.grad, tb.grad)):
        want = want.detach().numpy()
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * max(1.0, np.abs(want).max()))


def test_layer_valid_is_zero_padding_and_repr():
    layer = Conv2d(4, 8, 3, padding="valid", dilation=2, groups=4)
    assert layer.padding == (0, 0)
    assert layer.weight.shape == (8, 1, 3, 3)
    assert "padding=valid, dilation=(2, 2), groups=4" in repr(layer)
    ParamArena.for_model(layer)
    assert layer.forward(np.zeros((1, 4, 9, 9), np.float32)).shape == (1, 8, 5, 5)


def test_grouped_weight_init_uses_the_group_fan_in():
    # He init: std = sqrt(2 / fan_in), fan_in = C/groups * R * S = 1 * 3 * 3 for a depthwise layer
    layer = Conv2d(64, 64, 3, groups=64)
    ParamArena.for_model(layer, seed=0)
    assert abs(float(layer.weight.data.std()) - np.sqrt(2 / 9)) < 0.05


@pytest.mark.parametrize("kwargs,match", [
    (dict(groups=2), r"groups must divide in_channels and out_channels, got groups=2"),
    (dict(groups=0), r"groups must be a positive int, got 0"),
    (dict(dilation=0), r"dilation must be an int >= 1 or a pair of them, got 0"),
    (dict(padding="full"), r"padding must be an int, a pair, 'same' or 'valid', got 'full'"),
    (dict(padding="same", stride=2), r"padding='same' needs stride 1.*got stride=\(2, 2\)"),
])
def test_layer_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Conv2d(3, 6, 3, **kwargs)


def test_layer_dilated_window_too_large():
    layer = Conv2d(2, 2, 3, dilation=3)
    ParamArena.for_model(layer)
    with pytest.raises(ValueError, match=r"too small for kernel \(3, 3\) \(span \(7, 7\) with dilation \(3, 3\)\)"):
        layer.forward(np.zeros((1, 2, 6, 6), np.float32))


@pytest.mark.parametrize("kwargs", [dict(), dict(stride=2), dict(groups=3)])
def test_window_too_large_in_a_network_names_the_layer(kwargs):
    """Inside a model the blocked-layout paths (the stem, strided, depthwise) say the same as a
    lone layer, not the kernel's or NumPy's words."""
    from fasttrain.nn import ReLU, Sequential

    model = Sequential(Conv2d(3, 3, 5, **kwargs), ReLU(), Conv2d(3, 4, 3))
    ParamArena.for_model(model)
    from fasttrain.backend import backend_status

    if backend_status("cpp") != "available":
        pytest.skip("no C++ backend: the NCHW path's check is test_layer_dilated_window_too_large's")
    with pytest.raises(ValueError, match=r"Conv2d\(in_channels=3\): input \(1, 3, 4, 4\) is too small for kernel "
                                         r"\(5, 5\)"):
        model.forward(np.zeros((1, 3, 4, 4), np.float32))


@pytest.mark.parametrize("op,args,match", [
    ("conv2d_fwd", "groups", r"conv2d_fwd\(groups\): expected a positive divisor of the input channels 4 and of "
                             r"the output channels 6, got 4"),
    ("conv2d_fwd", "w", r"conv2d_fwd\(w\): expected shape \(K, 2, R, S\) to match x \(1, 4, 5, 5\) with groups 2, "
                        r"got \(6, 4, 3, 3\)"),
    ("conv2d_fwd", "dil", r"conv2d_fwd\(dil_h, dil_w\): expected dilations >= 1, got \(0, 1\)"),
])
def test_cpp_binding_checks(op, args, match):
    C = pytest.importorskip("fasttrain._C", reason="C++ module not built")
    f = np.float32
    x, y, b = np.zeros((1, 4, 5, 5), f), np.zeros((1, 6, 3, 3), f), np.zeros(6, f)
    w, groups, dil = np.zeros((6, 2, 3, 3), f), 2, (1, 1)
    if args == "groups":
        w, groups = np.zeros((6, 1, 3, 3), f), 4
    elif args == "w":
        w = np.zeros((6, 4, 3, 3), f)
    else:
        dil = (0, 1)
    with pytest.raises(ValueError, match=match):
        C.conv2d_fwd(x, w, b, y, 1, 1, 0, 0, False, *dil, groups)


# ---- padding_mode ------------------------------------------------------------------------------------

PADDING_MODE_CASES = [  # (layer arguments, x shape): asymmetric padding, 'same' with an even kernel, strides
    (dict(in_channels=3, out_channels=4, kernel_size=3, padding=1), (2, 3, 5, 6)),
    (dict(in_channels=2, out_channels=3, kernel_size=(3, 2), padding=(2, 1), stride=2), (1, 2, 5, 4)),
    (dict(in_channels=4, out_channels=4, kernel_size=3, padding=2, groups=4, dilation=2), (1, 4, 6, 5)),
    (dict(in_channels=2, out_channels=2, kernel_size=4, padding="same"), (2, 2, 5, 7)),
]


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
@pytest.mark.parametrize("args,xs", PADDING_MODE_CASES)
def test_padding_mode_gradcheck(mode, args, xs):
    layer = Conv2d(**args, padding_mode=mode)
    ParamArena.for_model(layer, dtype=np.float64, seed=8)
    x = np.random.default_rng(9).standard_normal(xs)
    # 1e-5: some reflected pixels' gradients are ~1e-4 and central differences carry ~1e-10 of noise;
    # a wrong fold of the padding errs by O(1)
    for r in gradcheck(layer, x, tol=1e-5):
        assert r.passed, str(r)


@pytest.mark.parametrize("name", backend.available_backends_for("conv2d_fwd"))
@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate", "circular"])
@pytest.mark.parametrize("args,xs", PADDING_MODE_CASES)
def test_padding_mode_every_backend_matches_torch(name, mode, args, xs):
    torch = pytest.importorskip("torch")
    old = backend.get_backend()
    backend.set_backend(name)
    try:
        layer = Conv2d(**args, padding_mode=mode)
        ParamArena.for_model(layer, dtype=np.float32, seed=10)
        layer.bias.data[...] = np.linspace(-1, 1, layer.out_channels)
        rng = np.random.default_rng(11)
        x = rng.standard_normal(xs).astype(np.float32)
        y = layer.forward(x)
        dy = rng.standard_normal(y.shape).astype(np.float32)
        dx = layer.backward(dy)
    finally:
        backend.set_backend(old)
    a = {k: v for k, v in args.items() if k not in ("in_channels", "out_channels", "kernel_size")}
    tl = torch.nn.Conv2d(args["in_channels"], args["out_channels"], args["kernel_size"], padding_mode=mode,
                         dtype=torch.float64, **a)
    with torch.no_grad():
        tl.weight.copy_(torch.from_numpy(layer.weight.data.astype(np.float64)))
        tl.bias.copy_(torch.from_numpy(layer.bias.data.astype(np.float64)))
    tx = torch.from_numpy(x.astype(np.float64)).requires_grad_(True)
    ty = tl(tx)
    ty.backward(torch.from_numpy(dy.astype(np.float64)))
    for got, want in ((y, ty), (dx, tx.grad), (layer.weight.grad, tl.weight.grad), (layer.bias.grad, tl.bias.grad)):
        want = want.detach().numpy()
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5 * max(1.0, np.abs(want).max()))


def test_padding_mode_repr_and_errors():
    layer = Conv2d(2, 2, 3, padding=1, padding_mode="circular")
    assert "padding_mode='circular'" in repr(layer) and "padding_mode" not in repr(Conv2d(2, 2, 3))
    with pytest.raises(ValueError, match=r"padding_mode must be one of 'zeros', 'reflect', 'replicate', 'circular', "
                                         r"got 'mirror'"):
        Conv2d(2, 2, 3, padding_mode="mirror")
    layer = Conv2d(1, 1, 3, padding=2, padding_mode="reflect")
    ParamArena.for_model(layer)
    with pytest.raises(ValueError, match=r"padding_mode='reflect' needs padding < the input height 2, got padding "
                                         r"\(2, 2\)"):
        layer.forward(np.zeros((1, 1, 2, 5), np.float32))
    layer = Conv2d(1, 1, 3, padding=(0, 3), padding_mode="circular")
    ParamArena.for_model(layer)
    with pytest.raises(ValueError, match=r"padding_mode='circular' needs padding <= the input width 2"):
        layer.forward(np.zeros((1, 1, 4, 2), np.float32))
