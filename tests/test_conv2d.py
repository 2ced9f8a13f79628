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
def test_reference_matches_naive_loops_and_adjoint(xs, ws, s, p):
    x, w, b, dy = _inputs(xs, ws, s, p, np.float64)
    y, dx, dw, db = _run(lambda op: backend.kernel(op, backend="numpy"), x, w, b, dy, s, p)
    np.testing.assert_allclose(y, naive_conv(x, w, b, s, p), rtol=1e-12, atol=1e-12)
    # the data gradient is the adjoint of the convolution: <conv(x), dy> = <x, conv_T(dy)>
    zero = np.zeros_like(b)
    np.testing.assert_allclose(np.sum(naive_conv(x, w, zero, s, p) * dy), np.sum(x * dx), rtol=1e-10, atol=1e-10)
    # the weight gradient is linear in w's slot: <conv_w(x), dy> = <w, dw>
    np.testing.assert_allclose(np.sum(naive_conv(x, w, zero, s, p) * dy), np.sum(w * dw), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(db, dy.sum(axis=(0, 2, 3)), rtol=1e-12, atol=1e-12)


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
