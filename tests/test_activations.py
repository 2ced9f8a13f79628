"""Activations: reference kernels vs element-by-element math (float64), every backend vs the
reference (float32), stability at large |x|, gradient checks of every layer, bad inputs."""
import math
import warnings

import numpy as np
import pytest

from fasttrain import ParamArena, backend
from fasttrain.check import gradcheck
from fasttrain.kernels import activations as ref
from fasttrain.nn.activation import ELU, LeakyReLU, Maxout, PReLU, ReLU, Sigmoid, Tanh

SHAPES = [(1,), (7,), (3, 5), (2, 3, 4, 5), (1, 13, 1, 3)]


def _x(shape, seed=0, away=0.05):
    """Standard normal values pushed at least `away` from 0, where relu-like kinks sit."""
    x = np.random.default_rng(seed).standard_normal(shape) * 2
    return x + np.where(x >= 0, away, -away)


def _naive_sigmoid(v):
    return 1 / (1 + math.exp(-v)) if v >= 0 else math.exp(v) / (1 + math.exp(v))


# (op, scalar forward f(x, alpha), scalar derivative f'(x, alpha), alpha)
SCALAR = {
    "relu": (lambda v, a: max(v, 0.0), lambda v, a: 1.0 if v > 0 else 0.0, None),
    "leaky_relu": (lambda v, a: v if v > 0 else a * v, lambda v, a: 1.0 if v > 0 else a, 0.1),
    "elu": (lambda v, a: v if v > 0 else a * (math.exp(v) - 1), lambda v, a: 1.0 if v > 0 else a * math.exp(v), 1.7),
    "sigmoid": (lambda v, a: _naive_sigmoid(v), lambda v, a: _naive_sigmoid(v) * (1 - _naive_sigmoid(v)), None),
    "tanh": (lambda v, a: math.tanh(v), lambda v, a: 1 - math.tanh(v) ** 2, None),
}
USES_OUTPUT = {"sigmoid", "tanh"}


def _args(alpha):
    return () if alpha is None else (alpha,)


@pytest.mark.parametrize("op", sorted(SCALAR))
@pytest.mark.parametrize("shape", SHAPES)
def test_reference_matches_scalar_math(op, shape):
    f, df, alpha = SCALAR[op]
    x = _x(shape, seed=len(shape))
    dy = np.random.default_rng(9).standard_normal(shape)
    y = np.empty_like(x)
    getattr(ref, f"{op}_fwd_ref")(x, y, *_args(alpha))
    want_y = np.vectorize(lambda v: f(v, alpha))(x)
    np.testing.assert_allclose(y, want_y, rtol=1e-13, atol=1e-15)
    dx = np.empty_like(x)
    saved = y if op in USES_OUTPUT else x
    getattr(ref, f"{op}_bwd_ref")(saved, dy, dx, *_args(alpha))
    np.testing.assert_allclose(dx, dy * np.vectorize(lambda v: df(v, alpha))(x), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sigmoid_is_stable_for_large_inputs(dtype):
    x = np.array([-1e4, -1000.0, -90.0, -30.0, 0.0, 30.0, 90.0, 1000.0, 1e4], dtype)
    y = np.empty_like(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")      # no overflow or invalid-value warnings
        with np.errstate(over="raise", invalid="raise", divide="raise"):   # underflow to 0 is fine
            ref.sigmoid_fwd_ref(x, y)
    assert y.dtype == dtype
    assert np.all(np.isfinite(y)) and np.all((y >= 0) & (y <= 1))
    assert y[0] == 0.0 and y[-1] == 1.0 and y[4] == 0.5
    assert 0 < y[3] < 1e-12             # exp(-30): tiny but not flushed to zero


def test_elu_does_not_overflow_on_large_positive_inputs():
    x = np.array([1000.0, -1000.0, 0.0])
    y, dx = np.empty_like(x), np.empty_like(x)
    with np.errstate(over="raise", invalid="raise", divide="raise"):   # underflow to 0 is fine
        ref.elu_fwd_ref(x, y, 1.0)
        ref.elu_bwd_ref(x, np.ones_like(x), dx, 1.0)
    np.testing.assert_array_equal(y, [1000.0, -1.0, 0.0])
    np.testing.assert_array_equal(dx, [1.0, 0.0, 1.0])


def _naive_prelu(x, alpha, dy):
    y, dx = np.empty_like(x), np.empty_like(x)
    dalpha = np.zeros(alpha.shape)
    for idx in np.ndindex(*x.shape):
        c, v = idx[1], x[idx]
        y[idx] = v if v > 0 else alpha[c] * v
        dx[idx] = dy[idx] if v > 0 else alpha[c] * dy[idx]
        if v <= 0:
            dalpha[c] += dy[idx] * v
    return y, dx, dalpha


PRELU_SHAPES = [(1, 1), (3, 7), (2, 3, 5), (2, 4, 3, 5), (1, 13, 2, 1)]


@pytest.mark.parametrize("shape", PRELU_SHAPES)
def test_prelu_reference_matches_loops_and_accumulates_dalpha(shape):
    x = _x(shape, seed=3)
    rng = np.random.default_rng(4)
    alpha, dy = rng.uniform(-0.5, 0.5, shape[1]), rng.standard_normal(shape)
    want_y, want_dx, want_da = _naive_prelu(x, alpha, dy)
    y, dx = np.empty_like(x), np.empty_like(x)
    ref.prelu_fwd_ref(x, alpha, y)
    start = rng.standard_normal(shape[1])
    dalpha = start.copy()
    ref.prelu_bwd_ref(x, alpha, dy, dx, dalpha)
    np.testing.assert_allclose(y, want_y, rtol=1e-14)
    np.testing.assert_allclose(dx, want_dx, rtol=1e-14)
    np.testing.assert_allclose(dalpha, start + want_da, rtol=1e-12, atol=1e-14)


# -- every backend vs the reference, float32 ---------------------------------------------------
TOL32 = dict(rtol=3e-6, atol=1e-7)


def _case(op):
    alpha = {"leaky_relu": 0.02, "elu": 0.8}.get(op.rsplit("_", 1)[0])
    return () if alpha is None else (alpha,)


ELEMENTWISE = [op for op in ref.OPS if not op.startswith("prelu")]


@pytest.mark.parametrize("op", ELEMENTWISE)
@pytest.mark.parametrize("shape", [(1,), (17,), (3, 5, 7), (2, 1, 9, 31)])
def test_every_backend_matches_reference_float32(op, shape):
    rng = np.random.default_rng(5)
    x = (rng.standard_normal(shape) * 4).astype(np.float32)
    x.reshape(-1)[0] = 0.0                         # the kink itself: every backend must agree there
    base = op.rsplit("_", 1)[0]
    if op.endswith("_fwd"):
        inputs = (x,)
    else:                                          # backward takes x, or y for sigmoid/tanh
        saved = x
        if base in USES_OUTPUT:
            saved = np.empty_like(x)
            getattr(ref, f"{base}_fwd_ref")(x, saved)
        inputs = (saved, rng.standard_normal(shape).astype(np.float32))
    want = np.empty_like(x)
    getattr(ref, f"{op}_ref")(*inputs, want, *_case(op))
    names = backend.available_backends_for(op)
    assert "numpy" in names
    for name in names:
        got = np.full_like(x, np.nan)
        backend.kernel(op, backend=name)(*inputs, got, *_case(op))
        np.testing.assert_allclose(got, want, **TOL32, err_msg=f"{name} {op} {shape}")


@pytest.mark.parametrize("op", [op for op in ELEMENTWISE if op.endswith("_fwd")])
def test_every_backend_keeps_special_values_like_the_reference(op):
    """A NaN must survive every activation (it is how a diverged run is noticed), and inf/-0 map as
    in the reference."""
    x = np.array([np.nan, np.inf, -np.inf, -0.0, 0.0, 1.5, -1.5, 100.0, -100.0, np.nan, 3.0], np.float32)
    want = np.empty_like(x)
    with np.errstate(all="ignore"):
        getattr(ref, f"{op}_ref")(x, want, *_case(op))
    for name in backend.available_backends_for(op):
        got = np.full_like(x, 7.0)
        backend.kernel(op, backend=name)(x, got, *_case(op))
        np.testing.assert_allclose(got, want, **TOL32, err_msg=f"{name} {op}")
        assert np.array_equal(np.isnan(got), np.isnan(want)), f"{name} {op}: {got} vs {want}"


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (2, 3, 5, 4), (5, 16, 3)])
def test_every_backend_prelu_matches_reference_float32(shape):
    rng = np.random.default_rng(6)
    x = rng.standard_normal(shape).astype(np.float32)
    alpha = rng.uniform(0, 0.5, shape[1]).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    y0, dx0 = np.empty_like(x), np.empty_like(x)
    da0 = np.ones(shape[1], np.float32)
    ref.prelu_fwd_ref(x, alpha, y0)
    ref.prelu_bwd_ref(x, alpha, dy, dx0, da0)
    fwd_names = backend.available_backends_for("prelu_fwd")
    bwd_names = backend.available_backends_for("prelu_bwd")
    for name in fwd_names:
        y = np.full_like(x, np.nan)
        backend.kernel("prelu_fwd", backend=name)(x, alpha, y)
        np.testing.assert_allclose(y, y0, **TOL32, err_msg=name)
    for name in bwd_names:
        dx, da = np.full_like(x, np.nan), np.ones(shape[1], np.float32)
        backend.kernel("prelu_bwd", backend=name)(x, alpha, dy, dx, da)
        np.testing.assert_allclose(dx, dx0, **TOL32, err_msg=name)
        np.testing.assert_allclose(da, da0, rtol=1e-5, atol=1e-5, err_msg=name)


# -- layers --------------------------------------------------------------------------------------
LAYERS = [ReLU, lambda: LeakyReLU(0.1), lambda: ELU(0.7), Sigmoid, Tanh]


@pytest.mark.parametrize("make", LAYERS)
@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (2, 3, 4, 5)])
def test_elementwise_layers_gradcheck(make, shape):
    layer = make()
    for r in gradcheck(layer, _x(shape, seed=1)):
        assert r.passed, str(r)


@pytest.mark.parametrize("make", LAYERS)
def test_elementwise_layer_float32_matches_float64(make):
    x = _x((4, 9), seed=2)
    layer = make()
    y64, y32 = layer.forward(x), layer.forward(x.astype(np.float32))
    assert y32.dtype == np.float32 and y64.dtype == np.float64
    np.testing.assert_allclose(y32, y64, rtol=1e-5, atol=1e-6)
    dy = np.ones_like(y32)
    dx32 = layer.backward(dy)
    layer.forward(x)
    np.testing.assert_allclose(dx32, layer.backward(dy.astype(np.float64)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", PRELU_SHAPES)
def test_prelu_layer_gradcheck_input_and_alpha(shape):
    layer = PReLU(shape[1])
    ParamArena.for_model(layer, dtype=np.float64)
    np.testing.assert_array_equal(layer.alpha.data, 0.25)       # He et al. 2015 init
    layer.alpha.data[...] = np.random.default_rng(0).uniform(-0.3, 0.6, shape[1])
    results = gradcheck(layer, _x(shape, seed=7))
    assert [r.name for r in results] == ["input", "alpha"]
    for r in results:
        assert r.passed, str(r)


def test_prelu_alpha_is_excluded_from_weight_decay():
    layer = PReLU(4)
    assert layer.alpha.decay is False and layer.alpha.shape == (4,)


def test_prelu_bad_inputs():
    with pytest.raises(ValueError, match="num_channels"):
        PReLU(0)
    layer = PReLU(3)
    ParamArena.for_model(layer)
    with pytest.raises(ValueError, match=r"PReLU\(num_channels=3\): expected input \(N, 3, \.\.\.\), got \(2, 4\)"):
        layer.forward(np.ones((2, 4), np.float32))
    with pytest.raises(ValueError, match="expected input"):
        layer.forward(np.ones(3, np.float32))


def _naive_maxout(x, k):
    n, c = x.shape[:2]
    y = np.empty((n, c // k) + x.shape[2:])
    for idx in np.ndindex(*y.shape):
        y[idx] = max(x[(idx[0], idx[1] * k + j) + idx[2:]] for j in range(k))
    return y


@pytest.mark.parametrize("shape,k", [((1, 2), 2), ((3, 6, 2, 5), 3), ((2, 7), 7), ((4, 5), 1), ((2, 12, 3), 4)])
def test_maxout_forward_matches_loops_and_gradcheck(shape, k):
    x = np.random.default_rng(8).standard_normal(shape)
    layer = Maxout(k)
    y = layer.forward(x)
    np.testing.assert_array_equal(y, _naive_maxout(x, k))
    for r in gradcheck(layer, x):
        assert r.passed, str(r)


def test_maxout_ties_send_the_gradient_to_one_piece():
    layer = Maxout(2)
    layer.forward(np.array([[1.0, 1.0, -2.0, 3.0]]))
    dx = layer.backward(np.array([[5.0, 7.0]]))
    np.testing.assert_array_equal(dx, [[5.0, 0.0, 0.0, 7.0]])


def test_maxout_bad_inputs():
    with pytest.raises(ValueError, match="pieces"):
        Maxout(0)
    with pytest.raises(ValueError, match=r"C divisible by 3, got \(2, 4, 5\)"):
        Maxout(3).forward(np.ones((2, 4, 5)))


def test_layers_reject_bad_dtype_and_backward_shapes():
    with pytest.raises(TypeError, match="float32 or float64"):
        ReLU().forward(np.ones(3, np.int64))
    layer = Tanh()
    with pytest.raises(RuntimeError, match="forward first"):
        layer.backward(np.ones(3))
    layer.forward(np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"expected dy of shape \(2, 3\)"):
        layer.backward(np.ones((3, 2)))
    with pytest.raises(ValueError, match="alpha"):
        ELU(0.0)


def test_layers_handle_non_contiguous_input():
    x = _x((6, 8), seed=4)[:, ::2]
    np.testing.assert_array_equal(ReLU().forward(x.astype(np.float32)), np.maximum(x, 0).astype(np.float32))


@pytest.mark.parametrize("name", backend.available_backends_for("leaky_relu_fwd"))
@pytest.mark.parametrize("slope", [0.2, -0.3, 0.01])
def test_leaky_relu_negative_slope_matches_torch(name, slope):
    """LeakyReLU(negative_slope=) (PyTorch's name) on each backend against torch.nn.LeakyReLU."""
    torch = pytest.importorskip("torch")
    x = _x((2, 3, 4, 5), seed=11).astype(np.float32)
    dy = np.random.default_rng(12).standard_normal(x.shape).astype(np.float32)
    layer = LeakyReLU(negative_slope=slope)
    y, dx = np.full_like(x, np.nan), np.full_like(x, np.nan)
    backend.kernel("leaky_relu_fwd", backend=name)(x, y, *layer._args())
    backend.kernel("leaky_relu_bwd", backend=name)(x, dy, dx, *layer._args())
    tx = torch.from_numpy(x.astype(np.float64)).requires_grad_(True)
    ty = torch.nn.LeakyReLU(negative_slope=slope)(tx)
    ty.backward(torch.from_numpy(dy.astype(np.float64)))
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-6, atol=1e-7, err_msg=name)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-6, atol=1e-7, err_msg=name)
