"""Pooling options (ceil_mode, AvgPool count_include_pad, MaxPool dilation and return_indices):
the reference against naive window loops, every backend against the reference and against
torch.nn.functional, gradient checks of the layers, bad arguments."""
import numpy as np
import pytest

from fasttrain import backend
from fasttrain.check import gradcheck
from fasttrain.kernels import pooling as ref
from fasttrain.nn.pooling import AvgPool2d, MaxPool2d
from pool_configs import config_ids, out_shape
from pool_nans import mixed, windows

# (x shape, (kh, kw), (sh, sw), (ph, pw), (dh, dw), ceil_mode): ceil windows hanging over the
# bottom/right padding, a ceil window dropped because it would start in the padding, dilation
# 2 and per-axis, stride larger than the kernel, batch 1, C = 1/3/5
CONFIGS = [
    ((2, 3, 7, 6), (2, 2), (2, 2), (0, 0), (1, 1), True),
    ((1, 1, 6, 6), (3, 3), (2, 2), (1, 1), (1, 1), True),
    ((2, 5, 9, 8), (3, 3), (2, 2), (1, 0), (2, 2), True),
    ((2, 3, 8, 9), (3, 2), (2, 1), (1, 1), (2, 1), False),
    ((1, 3, 5, 7), (2, 3), (3, 2), (1, 1), (1, 3), True),
    ((2, 3, 10, 7), (3, 3), (3, 3), (1, 1), (1, 1), True),
    ((1, 5, 4, 4), (4, 4), (3, 3), (2, 2), (1, 1), True),
    ((2, 1, 5, 5), (1, 1), (2, 2), (0, 0), (1, 1), True),
]
IDS = config_ids(CONFIGS)


def _taps(i, j, k, s, p, d, h, w):
    """Real positions of output (i, j)'s window in row-major scan order, and the window's taps
    inside the padded input (the divisor with count_include_pad)."""
    real, padded = [], 0
    for r in range(k[0]):
        for t in range(k[1]):
            hi, wi = i * s[0] - p[0] + r * d[0], j * s[1] - p[1] + t * d[1]
            padded += hi < h + p[0] and wi < w + p[1]
            if 0 <= hi < h and 0 <= wi < w:
                real.append((hi, wi))
    return real, padded


def naive_max(x, dy, k, s, p, d, ceil):
    n, c, h, w = x.shape
    oshape = out_shape(x.shape, k, s, p, d, ceil)
    y, am, dx = np.empty(oshape), np.empty(oshape, np.int64), np.zeros_like(x)
    for b, ch, i, j in np.ndindex(*oshape):
        real, _ = _taps(i, j, k, s, p, d, h, w)
        vals = [x[b, ch][t] for t in real]
        nans = [t for t, v in enumerate(vals) if np.isnan(v)]
        # NaN propagates and the last NaN wins (PyTorch); else the first maximum wins
        best = nans[-1] if nans else max(range(len(real)), key=lambda t: (vals[t], -t))
        y[b, ch, i, j], am[b, ch, i, j] = x[b, ch][real[best]], real[best][0] * w + real[best][1]
        dx[b, ch][real[best]] += dy[b, ch, i, j]
    return y, am, dx


def naive_avg(x, dy, k, s, p, ceil, include_pad):
    n, c, h, w = x.shape
    oshape = out_shape(x.shape, k, s, p, (1, 1), ceil)
    y, dx = np.empty(oshape), np.zeros_like(x)
    for b, ch, i, j in np.ndindex(*oshape):
        real, padded = _taps(i, j, k, s, p, (1, 1), h, w)
        div = padded if include_pad else len(real)
        y[b, ch, i, j] = sum(x[b, ch][t] for t in real) / div
        for t in real:
            dx[b, ch][t] += dy[b, ch, i, j] / div
    return y, dx


def _distinct(shape, seed):
    rng = np.random.default_rng(seed)
    return (rng.permutation(int(np.prod(shape))).reshape(shape) - np.prod(shape) / 2) * 0.37


def _max(call, x, dy, k, s, p, d, ceil):
    y, am = np.empty(dy.shape, x.dtype), np.full(dy.shape, -7, np.int64)
    call("maxpool2d_fwd")(x, y, am, *k, *s, *p, ceil, *d)
    dx = np.full(x.shape, np.nan, x.dtype)
    call("maxpool2d_bwd")(dy, am, dx)
    return y, am, dx


def _avg(call, x, dy, k, s, p, ceil, include_pad):
    y = np.full(dy.shape, np.nan, x.dtype)
    call("avgpool2d_fwd")(x, y, *k, *s, *p, ceil, include_pad)
    dx = np.full(x.shape, np.nan, x.dtype)
    call("avgpool2d_bwd")(dy, dx, *k, *s, *p, ceil, include_pad)
    return y, dx


def _numpy(op):
    return backend.kernel(op, backend="numpy")


@pytest.mark.parametrize("shape,k,s,p,d,ceil", CONFIGS, ids=IDS)
def test_reference_maxpool_matches_naive_loops(shape, k, s, p, d, ceil):
    x = _distinct(shape, 1)
    dy = np.random.default_rng(2).standard_normal(out_shape(shape, k, s, p, d, ceil))
    for got, want, what in zip(_max(_numpy, x, dy, k, s, p, d, ceil), naive_max(x, dy, k, s, p, d, ceil),
                               ("y", "argmax", "dx")):
        np.testing.assert_allclose(got, want, rtol=1e-14, atol=1e-14, err_msg=what)


@pytest.mark.parametrize("shape,k,s,p,d,ceil", CONFIGS, ids=IDS)
@pytest.mark.parametrize("include_pad", [True, False])
def test_reference_avgpool_matches_naive_loops(shape, k, s, p, d, ceil, include_pad):
    x = np.random.default_rng(3).standard_normal(shape)
    dy = np.random.default_rng(4).standard_normal(out_shape(shape, k, s, p, (1, 1), ceil))
    for got, want, what in zip(_avg(_numpy, x, dy, k, s, p, ceil, include_pad),
                               naive_avg(x, dy, k, s, p, ceil, include_pad), ("y", "dx")):
        np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-14, err_msg=what)


@pytest.mark.parametrize("name", backend.available_backends_for("maxpool2d_fwd"))
@pytest.mark.parametrize("shape,k,s,p,d,ceil", CONFIGS, ids=IDS)
@pytest.mark.parametrize("include_pad", [True, False])
def test_every_backend_matches_reference(name, shape, k, s, p, d, ceil, include_pad):
    call = lambda op: backend.kernel(op, backend=name)   # noqa: E731
    x = _distinct(shape, 5).astype(np.float32)
    dy = np.random.default_rng(6).standard_normal(out_shape(shape, k, s, p, d, ceil)).astype(np.float32)
    want = _max(_numpy, x.astype(np.float64), dy.astype(np.float64), k, s, p, d, ceil)
    for got, w, what in zip(_max(call, x, dy, k, s, p, d, ceil), want, ("y", "argmax", "dx")):
        np.testing.assert_allclose(got, w, rtol=1e-6, atol=1e-6, err_msg=f"{name} max {what}")
    dy = np.random.default_rng(7).standard_normal(out_shape(shape, k, s, p, (1, 1), ceil)).astype(np.float32)
    want = _avg(_numpy, x.astype(np.float64), dy.astype(np.float64), k, s, p, ceil, include_pad)
    for got, w, what in zip(_avg(call, x, dy, k, s, p, ceil, include_pad), want, ("y", "dx")):
        np.testing.assert_allclose(got, w, rtol=1e-5, atol=1e-5, err_msg=f"{name} avg {what}")


@pytest.mark.parametrize("name", backend.available_backends_for("maxpool2d_fwd"))
@pytest.mark.parametrize("shape,k,s,p,d,ceil", CONFIGS, ids=IDS)
@pytest.mark.parametrize("include_pad", [True, False])
def test_every_backend_matches_torch(name, shape, k, s, p, d, ceil, include_pad):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    call = lambda op: backend.kernel(op, backend=name)   # noqa: E731
    x = _distinct(shape, 8).astype(np.float32)
    tx = torch.from_numpy(x.astype(np.float64)).requires_grad_(True)
    ty, ti = F.max_pool2d(tx, k, s, p, d, ceil_mode=ceil, return_indices=True)
    dy = np.random.default_rng(9).standard_normal(tuple(ty.shape)).astype(np.float32)
    ty.backward(torch.from_numpy(dy.astype(np.float64)))
    y, am, dx = _max(call, x, dy, k, s, p, d, ceil)
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(am, ti.numpy())
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-6, atol=1e-6)
    tx.grad = None
    ty = F.avg_pool2d(tx, k, s, p, ceil_mode=ceil, count_include_pad=include_pad)
    dy = np.random.default_rng(10).standard_normal(tuple(ty.shape)).astype(np.float32)
    ty.backward(torch.from_numpy(dy.astype(np.float64)))
    y, dx = _avg(call, x, dy, k, s, p, ceil, include_pad)
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-5, atol=1e-5)


# ---- NaN, -inf and ties: PyTorch's rule on every backend --------------------------------------------

# (kind, k, s, p, d, ceil): "windows" gives every window one pattern of pool_nans.patterns (NaN at the
# first / middle / last tap, several NaNs, NaN among -inf, ties, all -inf); "mixed" draws from
# {-inf, 0, 1, NaN} under overlapping, padded, dilated and ceil-mode windows
NAN_CASES = [("windows", (2, 2), (2, 2), (0, 0), (1, 1), False),
             ("windows", (3, 3), (3, 3), (0, 0), (1, 1), False),
             ("windows", (2, 3), (2, 3), (0, 0), (1, 1), False),
             ("mixed", (3, 3), (1, 1), (1, 1), (1, 1), False),
             ("mixed", (3, 3), (2, 2), (1, 1), (1, 1), True),
             ("mixed", (2, 3), (2, 1), (1, 1), (2, 1), False)]
NAN_IDS = ["{}-k{}-s{}-p{}-d{}-{}".format(*c[:5], "ceil" if c[5] else "floor") for c in NAN_CASES]


@pytest.mark.parametrize("against", ["naive", "torch"])
@pytest.mark.parametrize("name", backend.available_backends_for("maxpool2d_fwd"))
@pytest.mark.parametrize("case", NAN_CASES, ids=NAN_IDS)
def test_maxpool_nan_inf_ties_every_backend(name, case, against):
    kind, k, s, p, d, ceil = case
    x = windows(2, 3, *k) if kind == "windows" else mixed((2, 3, 7, 9), 11)
    oshape = out_shape(x.shape, k, s, p, d, ceil)
    dy = np.random.default_rng(12).standard_normal(oshape).astype(np.float32)
    y, am, dx = _max(lambda op: backend.kernel(op, backend=name), x, dy, k, s, p, d, ceil)
    assert np.isnan(y).any() and not np.isnan(y).all(), "the case should mix NaN and real windows"
    if against == "naive":
        wy, wam, wdx = naive_max(x.astype(np.float64), dy.astype(np.float64), k, s, p, d, ceil)
    else:
        torch = pytest.importorskip("torch")
        tx = torch.from_numpy(x).requires_grad_(True)
        ty, ti = torch.nn.functional.max_pool2d(tx, k, s, p, d, ceil_mode=ceil, return_indices=True)
        ty.backward(torch.from_numpy(dy))
        wy, wam, wdx = ty.detach().numpy(), ti.numpy(), tx.grad.numpy()
    np.testing.assert_array_equal(y, wy.astype(np.float32), err_msg=f"{name} y")   # NaN where NaN
    np.testing.assert_array_equal(am, wam, err_msg=f"{name} argmax")
    np.testing.assert_allclose(dx, wdx, rtol=1e-6, atol=1e-6, err_msg=f"{name} dx")


# ---- the layers -----------------------------------------------------------------------------------

@pytest.mark.parametrize("layer,xs", [
    (MaxPool2d(3, 2, 1, ceil_mode=True), (2, 3, 6, 7)),
    (MaxPool2d(2, 1, 0, dilation=2), (1, 2, 6, 5)),
    (AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False), (2, 3, 6, 7)),
    (AvgPool2d(3, 2, 1, ceil_mode=True), (2, 2, 6, 6)),
    (AvgPool2d((2, 3), (2, 2), (1, 1), count_include_pad=False), (1, 3, 5, 6)),
])
def test_layer_gradcheck(layer, xs):
    x = _distinct(xs, 11) / 10   # distinct values: the max is unique, so max pooling is differentiable
    for r in gradcheck(layer, x, tol=1e-6):
        assert r.passed, str(r)


def test_maxpool_return_indices_like_torch_and_backward():
    torch = pytest.importorskip("torch")
    layer = MaxPool2d(3, 2, 1, dilation=1, return_indices=True, ceil_mode=True)
    x = _distinct((2, 3, 7, 6), 12).astype(np.float32)
    y, idx = layer.forward(x)
    ty, ti = torch.nn.MaxPool2d(3, 2, 1, return_indices=True, ceil_mode=True)(torch.from_numpy(x))
    np.testing.assert_array_equal(y, ty.numpy())
    np.testing.assert_array_equal(idx, ti.numpy())
    dx = layer.backward(np.ones_like(y))
    assert dx.sum() == y.size and dx.shape == x.shape
    assert "return_indices=True" in repr(layer) and "ceil_mode=True" in repr(layer)


def test_ceil_mode_output_sizes_follow_torch():
    torch = pytest.importorskip("torch")
    for h in range(3, 12):
        for k, s, p in [(2, 2, 0), (3, 2, 1), (3, 3, 1), (2, 3, 1), (4, 3, 2)]:
            want = torch.nn.functional.max_pool2d(torch.zeros(1, 1, h, h), k, s, p, ceil_mode=True).shape[-1]
            assert ref.out_size(h, k, s, p, 1, True) == want, (h, k, s, p)


def test_bad_pooling_arguments():
    with pytest.raises(ValueError, match=r"dilation must be an int >= 1 or a pair of them, got 0"):
        MaxPool2d(2, dilation=0)
    with pytest.raises(ValueError, match=r"too small, output would be 0 x 0; expected H \+ 2\*padding >= 5"):
        MaxPool2d(3, dilation=2).forward(np.zeros((1, 1, 4, 4), np.float32))
    C = pytest.importorskip("fasttrain._C", reason="C++ module not built")
    x = np.zeros((1, 1, 7, 7), np.float32)
    with pytest.raises(ValueError, match=r"maxpool2d_fwd\(y\): expected shape \(1, 1, 4, 4\), got \(1, 1, 3, 3\)"):
        C.maxpool2d_fwd(x, np.zeros((1, 1, 3, 3), np.float32), np.zeros((1, 1, 3, 3), np.int64), 2, 2, 2, 2, 0, 0,
                        True)
    with pytest.raises(ValueError, match=r"maxpool2d_fwd\(dil_h, dil_w\): expected dilations >= 1, got \(0, 1\)"):
        C.maxpool2d_fwd(x, np.zeros((1, 1, 3, 3), np.float32), np.zeros((1, 1, 3, 3), np.int64), 2, 2, 2, 2, 0, 0,
                        False, 0, 1)


# ---- AvgPool2d divisor_override --------------------------------------------------------------------

DIVISOR_CONFIGS = [((2, 3, 7, 6), (3, 3), (2, 2), (1, 1), True, 5), ((1, 5, 6, 6), (2, 3), (2, 1), (0, 1), False, 1),
                   ((2, 1, 5, 7), (3, 2), (3, 2), (1, 1), True, 13),
                   ((1, 2, 5, 5), (2, 2), (2, 2), (1, 0), True, -3),   # PyTorch divides by a negative one too
                   ((2, 3, 9, 8), (2, 2), (2, 2), (0, 0), False, 3),   # disjoint 2x2 cells
                   ((1, 2, 5, 5), (2, 2), (2, 2), (0, 0), True, 7)]   # 2x2 with ceil-mode windows over the edge


def _avg_override(call, x, dy, k, s, p, ceil, divisor):
    y = np.full(dy.shape, np.nan, x.dtype)
    call("avgpool2d_fwd")(x, y, *k, *s, *p, ceil, True, divisor)
    dx = np.full(x.shape, np.nan, x.dtype)
    call("avgpool2d_bwd")(dy, dx, *k, *s, *p, ceil, True, divisor)
    return y, dx


@pytest.mark.parametrize("name", backend.available_backends_for("avgpool2d_fwd"))
@pytest.mark.parametrize("shape,k,s,p,ceil,divisor", DIVISOR_CONFIGS)
def test_divisor_override_every_backend_matches_naive_sums(name, shape, k, s, p, ceil, divisor):
    call = lambda op: backend.kernel(op, backend=name)   # noqa: E731
    x = _distinct(shape, 21).astype(np.float32)
    n, c, h, w = shape
    oshape = out_shape(shape, k, s, p, (1, 1), ceil)
    dy = np.random.default_rng(22).standard_normal(oshape).astype(np.float32)
    want_y, want_dx = np.empty(oshape), np.zeros(shape)
    for b, ch, i, j in np.ndindex(*oshape):   # the window's real taps summed, divided by the override
        real, _ = _taps(i, j, k, s, p, (1, 1), h, w)
        want_y[b, ch, i, j] = sum(float(x[b, ch][t]) for t in real) / divisor
        for t in real:
            want_dx[b, ch][t] += dy[b, ch, i, j] / divisor
    y, dx = _avg_override(call, x, dy, k, s, p, ceil, divisor)
    np.testing.assert_allclose(y, want_y, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, want_dx, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape,k,s,p,ceil,divisor", DIVISOR_CONFIGS)
def test_divisor_override_layer_matches_torch_and_gradcheck(shape, k, s, p, ceil, divisor):
    layer = AvgPool2d(k, s, p, ceil_mode=ceil, divisor_override=divisor)
    assert f"divisor_override={divisor}" in repr(layer)
    x = _distinct(shape, 23) / 10
    for r in gradcheck(layer, x, tol=1e-6):
        assert r.passed, str(r)
    torch = pytest.importorskip("torch")
    xf = x.astype(np.float32)
    y = layer.forward(xf)
    dy = np.random.default_rng(24).standard_normal(y.shape).astype(np.float32)
    dx = layer.backward(dy)
    tx = torch.from_numpy(xf.astype(np.float64)).requires_grad_(True)
    ty = torch.nn.AvgPool2d(k, s, p, ceil_mode=ceil, divisor_override=divisor)(tx)
    ty.backward(torch.from_numpy(dy.astype(np.float64)))
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-5, atol=1e-6)


def test_bad_divisor_override():
    """PyTorch's rule: a nonzero int; 0 is an error, other types a TypeError."""
    with pytest.raises(ValueError, match=r"AvgPool2d\(.*\): divisor_override must be None or a nonzero int, got 0"):
        AvgPool2d(2, divisor_override=0)
    for bad in (1.5, True):
        with pytest.raises(TypeError, match=r"AvgPool2d\(.*\): divisor_override must be None or a nonzero int, got"):
            AvgPool2d(2, divisor_override=bad)
    torch = pytest.importorskip("torch")
    x = torch.zeros(1, 1, 4, 4)
    with pytest.raises(RuntimeError, match="divisor must be not zero"):
        torch.nn.AvgPool2d(2, divisor_override=0)(x)
    for bad in (1.5, True):
        with pytest.raises(TypeError):
            torch.nn.AvgPool2d(2, divisor_override=bad)(x)


def test_divisor_override_inside_a_blocked_flow():
    """Behind a convolution the flow hands pools the blocked layout; the blocked kernels have no
    divisor_override, so such an AvgPool2d takes NCHW and the model's output is the NCHW path's."""
    pytest.importorskip("fasttrain._C", reason="C++ module not built")
    from fasttrain import ParamArena, settings
    from fasttrain.nn import Conv2d, Sequential
    model = Sequential(Conv2d(3, 16, 3, padding=1), AvgPool2d(2, divisor_override=3))
    ParamArena.for_model(model, seed=1)
    x = np.random.default_rng(2).standard_normal((2, 3, 8, 8)).astype(np.float32)
    outs = []
    old = settings.layout
    try:
        for layout in ("auto", "nchw"):
            settings.layout = layout
            y = model.forward(x)
            outs.append((y, model.backward(np.ones_like(y))))
    finally:
        settings.layout = old
    np.testing.assert_allclose(outs[0][0], outs[1][0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(outs[0][1], outs[1][1], rtol=1e-5, atol=1e-5)
