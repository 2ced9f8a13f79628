"""conv2d: the reference against naive loops (float64), every backend against the
reference (float32), gradient checks of the layers, bad inputs."""
import numpy as np
import pytest

from fasttrain import ParamArena, backend
from fasttrain.check import gradcheck
from fasttrain.kernels import conv2d as ref
from fasttrain.nn import Conv2d, Flatten

# (x shape, w shape, (sh, sw), (ph, pw)): batch 1, prime channel counts, 1x1 and 5x3 kernels,
# stride 2 with odd sizes, padding 2, non-square images, a kernel as large as the padded input
CONFIGS = [
    ((1, 3, 5, 5), (4, 3, 3, 3), (1, 1), (1, 1)),
    ((2, 5, 7, 9), (3, 5, 5, 3), (2, 2), (2, 1)),
    ((3, 7, 6, 4), (7, 7, 1, 1), (1, 1), (0, 0)),
    ((2, 3, 9, 7), (5, 3, 3, 3), (2, 1), (0, 2)),
    ((1, 1, 4, 3), (2, 1, 4, 3), (1, 1), (0, 0)),
    ((2, 13, 11, 11), (17, 13, 3, 3), (2, 2), (1, 1)),
    ((0, 3, 5, 5), (2, 3, 3, 3), (1, 1), (1, 1)),   # empty batch is legal
]
IDS = [f"x{x}-w{w}-s{s}-p{p}" for x, w, s, p in CONFIGS]


def naive_conv(x, w, b, s, p):
    n, c, h, wd = x.shape
    k, _, r, t = w.shape
    P, Q = (h + 2 * p[0] - r) // s[0] + 1, (wd + 2 * p[1] - t) // s[1] + 1
    xp = np.pad(x, ((0, 0), (0, 0), (p[0], p[0]), (p[1], p[1])))
    y = np.zeros((n, k, P, Q))
    for i in range(P):
        for j in range(Q):
            patch = xp[:, :, i * s[0]:i * s[0] + r, j * s[1]:j * s[1] + t]
            y[:, :, i, j] = np.tensordot(patch, w, axes=([1, 2, 3], [1, 2, 3])) + b
    return y


def naive_conv_bwd(x, w, dy, s, p):
    """dx, dw, db by the same direct loops over output positions (each output position
    scatters its dy back over the window it read)."""
    n, c, h, wd = x.shape
    k, _, r, t = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (p[0], p[0]), (p[1], p[1])))
    dxp, dw = np.zeros_like(xp), np.zeros_like(w)
    for i in range(dy.shape[2]):
        for j in range(dy.shape[3]):
            win = (slice(None), slice(None), slice(i * s[0], i * s[0] + r), slice(j * s[1], j * s[1] + t))
            dxp[win] += np.tensordot(dy[:, :, i, j], w, axes=([1], [0]))
            dw += np.tensordot(dy[:, :, i, j], xp[win], axes=([0], [0]))
    return dxp[:, :, p[0]:p[0] + h, p[1]:p[1] + wd], dw, dy.sum(axis=(0, 2, 3))


def _inputs(xs, ws, s, p, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x, w, b = rng.standard_normal(xs), rng.standard_normal(ws), rng.standard_normal(ws[0])
    P = (xs[2] + 2 * p[0] - ws[2]) // s[0] + 1
    Q = (xs[3] + 2 * p[1] - ws[3]) // s[1] + 1
    dy = rng.standard_normal((xs[0], ws[0], P, Q))
    return [a.astype(dtype) for a in (x, w, b, dy)]


def _run(call, x, w, b, dy, s, p, relu=False):
    y = np.empty(dy.shape, x.dtype)
    call("conv2d_fwd")(x, w, b, y, *s, *p, relu)
    dx = np.empty_like(x)
    call("conv2d_bwd_data")(dy, w, dx, *s, *p)
    dw = np.full_like(w, 0.5)   # gradients accumulate into what is there
    db = np.full_like(b, 0.5)
    call("conv2d_bwd_weight")(x, dy, dw, db, *s, *p)
    return y, dx, dw - 0.5, db - 0.5


@pytest.mark.parametrize("xs,ws,s,p", CONFIGS, ids=IDS)
@pytest.mark.parametrize("relu", [False, True])
def test_reference_matches_naive_loops(xs, ws, s, p, relu):
    x, w, b, dy = _inputs(xs, ws, s, p, np.float64)
    y, dx, dw, db = _run(lambda op: backend.kernel(op, backend="numpy"), x, w, b, dy, s, p, relu)
    want = naive_conv(x, w, b, s, p)
    np.testing.assert_allclose(y, np.maximum(want, 0) if relu else want, rtol=1e-12, atol=1e-12)
    for g, r, what in zip((dx, dw, db), naive_conv_bwd(x, w, dy, s, p), ("dx", "dw", "db")):
        np.testing.assert_allclose(g, r, rtol=1e-12, atol=1e-12, err_msg=what)


@pytest.mark.parametrize("xs,ws,s,p", CONFIGS, ids=IDS)
def test_col2im_is_the_adjoint_of_im2col(xs, ws, s, p):
    """<im2col(x), c> == <x, col2im(c)> for random x and c: what the data gradient relies on."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal(xs)
    cols = ref.im2col_ref(x, ws[2], ws[3], *s, *p)
    P, Q = ref.out_size(xs[2], xs[3], ws[2], ws[3], *s, *p)
    assert cols.shape == (xs[0], xs[1], ws[2], ws[3], P, Q)
    c = rng.standard_normal(cols.shape)
    back = ref.col2im_ref(c, xs[2], xs[3], *s, *p)
    assert back.shape == xs
    np.testing.assert_allclose(np.sum(cols * c), np.sum(x * back), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", backend.available_backends_for("conv2d_fwd"))
@pytest.mark.parametrize("xs,ws,s,p", CONFIGS, ids=IDS)
@pytest.mark.parametrize("relu", [False, True])
def test_every_backend_matches_reference(name, xs, ws, s, p, relu):
    x, w, b, dy = _inputs(xs, ws, s, p, np.float32, seed=1)
    want = _run(lambda op: backend.kernel(op, backend="numpy"), *(a.astype(np.float64) for a in (x, w, b, dy)), s, p, relu)
    got = _run(lambda op: backend.kernel(op, backend=name), x, w, b, dy, s, p, relu)
    for g, r, what in zip(got, want, ("y", "dx", "dw", "db")):
        np.testing.assert_allclose(g, r, rtol=2e-4, atol=2e-4 * max(1.0, float(np.abs(r).max(initial=0))),
                                   err_msg=f"{name} {what}")


@pytest.mark.parametrize("args,xs", [
    (dict(in_channels=3, out_channels=4, kernel_size=3, padding=1), (1, 3, 5, 5)),
    (dict(in_channels=2, out_channels=3, kernel_size=(3, 2), stride=2, padding=2), (2, 2, 7, 6)),
    (dict(in_channels=5, out_channels=2, kernel_size=1, bias=False), (2, 5, 3, 4)),
    (dict(in_channels=3, out_channels=3, kernel_size=3, stride=2, padding=1, relu=True), (2, 3, 7, 5)),
])
def test_conv2d_layer_gradcheck(args, xs):
    layer = Conv2d(**args)
    ParamArena.for_model(layer, dtype=np.float64, seed=3)
    x = np.random.default_rng(4).standard_normal(xs)
    for r in gradcheck(layer, x, tol=1e-6):
        assert r.passed, str(r)


@pytest.mark.parametrize("relu,bias", [(False, True), (True, True), (True, False)])
def test_conv2d_layer_float32_on_default_backend(relu, bias):
    """The layer through `kernel(op, like=x)` (the fastest built backend) against the naive loops;
    backward with relu=True masks dy where the output is not positive."""
    layer = Conv2d(5, 4, (3, 2), stride=(2, 1), padding=(1, 2), bias=bias, relu=relu)
    arena = ParamArena.for_model(layer, seed=2)
    if bias:
        layer.bias.data[...] = np.linspace(-0.5, 0.5, 4)  # a zero bias would hide a missing bias add
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 5, 7, 6)).astype(np.float32)
    y = layer.forward(x)
    w = layer.weight.data.astype(np.float64)
    b = layer.bias.data.astype(np.float64) if bias else np.zeros(4)
    pre = naive_conv(x.astype(np.float64), w, b, (2, 1), (1, 2))
    np.testing.assert_allclose(y, np.maximum(pre, 0) if relu else pre, rtol=1e-4, atol=1e-4)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    arena.zero_grad()
    dx = layer.backward(dy)
    g = dy * (pre > 0) if relu else dy.astype(np.float64)
    want = naive_conv_bwd(x.astype(np.float64), w, g, (2, 1), (1, 2))
    np.testing.assert_allclose(dx, want[0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(layer.weight.grad, want[1], rtol=1e-4, atol=1e-4)
    if bias:
        np.testing.assert_allclose(layer.bias.grad, want[2], rtol=1e-4, atol=1e-4)


def test_flatten_round_trip():
    f = Flatten()
    x = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    y = f.forward(x)
    assert y.shape == (2, 60)
    np.testing.assert_array_equal(f.backward(y), x)


def test_bias_is_not_decayed_and_weight_is():
    layer = Conv2d(3, 4, 3)
    arena = ParamArena.for_model(layer)
    assert {p.name: p.decay for p in arena.params} == {"weight": True, "bias": False}


@pytest.mark.parametrize("bad,match", [
    (np.zeros((8, 4, 32, 32), np.float32), r"Conv2d\(in_channels=3\): expected input \(N, 3, H, W\), got \(8, 4, 32, 32\)"),
    (np.zeros((3, 32, 32), np.float32), r"expected input \(N, 3, H, W\)"),
    (np.zeros((1, 3, 1, 1), np.float32), "too small"),
])
def test_conv2d_bad_input(bad, match):
    layer = Conv2d(3, 2, 3)
    ParamArena.for_model(layer)
    with pytest.raises(ValueError, match=match):
        layer.forward(bad)


def test_conv2d_bad_dtype_and_args():
    layer = Conv2d(3, 2, 3)
    ParamArena.for_model(layer)
    with pytest.raises(TypeError, match="float32 or float64"):
        layer.forward(np.zeros((1, 3, 5, 5), np.int32))
    with pytest.raises(ValueError, match="kernel_size"):
        Conv2d(3, 2, 0)
    with pytest.raises(ValueError, match="stride"):
        Conv2d(3, 2, 3, stride=(1, 2, 3))
    with pytest.raises(ValueError, match=r"padding must be an int >= 0.*got -1"):
        Conv2d(3, 2, 3, padding=-1)
    with pytest.raises(ValueError, match=r"in_channels must be a positive int, got 0"):
        Conv2d(0, 2, 3)
    with pytest.raises(RuntimeError, match="before forward"):
        layer.backward(np.zeros((1, 2, 3, 3), np.float32))
    layer.forward(np.zeros((1, 3, 5, 5), np.float32))
    with pytest.raises(ValueError, match=r"expected dy of shape \(1, 2, 3, 3\).*got \(1, 2, 3, 4\)"):
        layer.backward(np.zeros((1, 2, 3, 4), np.float32))
