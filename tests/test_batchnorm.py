"""Batch normalization: reference kernels vs a naive per-element loop (float64), every backend vs
the reference (float32), gradient checks of the layers, running statistics, bad inputs."""
import math
import sys

import numpy as np
import pytest

from fasttrain import ParamArena, backend
from fasttrain.check import gradcheck
from fasttrain.kernels import batchnorm as ref
from fasttrain.nn.norm import BatchNorm1d, BatchNorm2d, update_running

# (N, C, ...) shapes: batch 1 with S > 1, C = 1/3/7, H != W, odd sizes, S = 1 (1d), N*S = 2
SHAPES = [(1, 3, 2, 5), (4, 1, 3, 3), (3, 7, 5, 4), (2, 3, 1, 1), (6, 7), (2, 3), (5, 2, 3), (2, 1, 1, 1)]
TOL32 = dict(rtol=2e-5, atol=2e-5)


def _data(shape, seed=0):
    rng = np.random.default_rng(seed)
    c = shape[1]
    x = rng.standard_normal(shape) * 2.0 + 3.0      # offset mean: cancellation-prone
    dy = rng.standard_normal(shape)
    gamma = rng.uniform(0.5, 1.5, c)
    beta = rng.standard_normal(c)
    return x, dy, gamma, beta


# -- naive loops: one element at a time, textbook formulas (Ioffe & Szegedy, Algorithm 1) -------
def _elements(shape, ch):
    """Every index of channel ch in an (N, C, ...) array."""
    for idx in np.ndindex(*shape):
        if idx[1] == ch:
            yield idx


def naive_fwd_train(x, gamma, beta, eps):
    y = np.empty_like(x)
    c = x.shape[1]
    mean, invstd = np.empty(c), np.empty(c)
    for ch in range(c):
        vals = [x[i] for i in _elements(x.shape, ch)]
        mu = sum(vals) / len(vals)
        var = sum((v - mu) ** 2 for v in vals) / len(vals)
        mean[ch], invstd[ch] = mu, 1.0 / math.sqrt(var + eps)
        for i in _elements(x.shape, ch):
            y[i] = gamma[ch] * (x[i] - mu) * invstd[ch] + beta[ch]
    return y, mean, invstd


def naive_bwd(x, dy, gamma, eps):
    """The long-form chain rule through mu and sigma^2 (not the compact formula under test)."""
    dx = np.empty_like(x)
    c = x.shape[1]
    dgamma, dbeta = np.zeros(c), np.zeros(c)
    for ch in range(c):
        idx = list(_elements(x.shape, ch))
        m = len(idx)
        mu = sum(x[i] for i in idx) / m
        var = sum((x[i] - mu) ** 2 for i in idx) / m
        inv = 1.0 / math.sqrt(var + eps)
        dxhat = {i: dy[i] * gamma[ch] for i in idx}
        dvar = sum(dxhat[i] * (x[i] - mu) * -0.5 * inv ** 3 for i in idx)
        dmu = sum(-dxhat[i] * inv for i in idx) + dvar * sum(-2.0 * (x[i] - mu) for i in idx) / m
        for i in idx:
            dx[i] = dxhat[i] * inv + dvar * 2.0 * (x[i] - mu) / m + dmu / m
            dgamma[ch] += dy[i] * (x[i] - mu) * inv
            dbeta[ch] += dy[i]
    return dx, dgamma, dbeta


@pytest.mark.parametrize("shape", SHAPES)
def test_reference_train_forward_and_backward_match_naive_loops(shape):
    x, dy, gamma, beta = _data(shape)
    eps = 1e-5
    c = shape[1]
    y, mean, invstd = np.empty_like(x), np.empty(c), np.empty(c)
    ref.batchnorm_fwd_train_ref(x, gamma, beta, eps, y, mean, invstd)
    ey, emean, einvstd = naive_fwd_train(x, gamma, beta, eps)
    np.testing.assert_allclose(mean, emean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(invstd, einvstd, rtol=1e-12)
    np.testing.assert_allclose(y, ey, rtol=1e-11, atol=1e-11)

    dx = np.full_like(x, np.nan)                   # overwritten
    dgamma, dbeta = np.full(c, 0.25), np.full(c, -0.5)   # accumulated into
    ref.batchnorm_bwd_ref(x, dy, gamma, mean, invstd, dx, dgamma, dbeta)
    edx, edgamma, edbeta = naive_bwd(x, dy, gamma, eps)
    np.testing.assert_allclose(dx, edx, rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(dgamma, edgamma + 0.25, rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(dbeta, edbeta - 0.5, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("shape", SHAPES[:4])
def test_reference_eval_forward_matches_naive_loop(shape):
    x, _, gamma, beta = _data(shape)
    c = shape[1]
    rng = np.random.default_rng(1)
    rm, rv = rng.standard_normal(c), rng.uniform(0.1, 4.0, c)
    y = np.empty_like(x)
    ref.batchnorm_fwd_eval_ref(x, gamma, beta, rm, rv, 1e-3, y)
    e = np.empty_like(x)
    for i in np.ndindex(*shape):
        ch = i[1]
        e[i] = gamma[ch] * (x[i] - rm[ch]) / math.sqrt(rv[ch] + 1e-3) + beta[ch]
    np.testing.assert_allclose(y, e, rtol=1e-12, atol=1e-12)


def test_reference_runs_in_float32():
    x, dy, gamma, beta = (a.astype(np.float32) for a in _data((3, 7, 5, 4)))
    y, mean, invstd = np.empty_like(x), np.empty(7, np.float32), np.empty(7, np.float32)
    ref.batchnorm_fwd_train_ref(x, gamma, beta, 1e-5, y, mean, invstd)
    dx, dg, db = np.empty_like(x), np.zeros(7, np.float32), np.zeros(7, np.float32)
    ref.batchnorm_bwd_ref(x, dy, gamma, mean, invstd, dx, dg, db)
    assert y.dtype == dx.dtype == mean.dtype == np.float32
    ey, _, _ = naive_fwd_train(x.astype(np.float64), gamma.astype(np.float64), beta.astype(np.float64), 1e-5)
    np.testing.assert_allclose(y, ey, **TOL32)


# -- every available backend vs the reference (float32) -------------------------------------------
def _cases(op):
    return [pytest.param(b, id=b) for b in backend.available_backends_for(op)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", _cases("batchnorm_fwd_train"))
def test_backend_fwd_train_matches_reference(name, shape):
    x64, _, g64, b64 = _data(shape, seed=2)
    c = shape[1]
    ey, em, ei = np.empty_like(x64), np.empty(c), np.empty(c)
    ref.batchnorm_fwd_train_ref(x64, g64, b64, 1e-5, ey, em, ei)
    x, g, b = (a.astype(np.float32) for a in (x64, g64, b64))
    y, m, i = np.full_like(x, np.nan), np.full(c, np.nan, np.float32), np.full(c, np.nan, np.float32)
    backend.kernel("batchnorm_fwd_train", backend=name)(x, g, b, 1e-5, y, m, i)
    np.testing.assert_allclose(m, em, **TOL32)
    np.testing.assert_allclose(i, ei, rtol=1e-4)
    np.testing.assert_allclose(y, ey, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", _cases("batchnorm_fwd_eval"))
def test_backend_fwd_eval_matches_reference(name, shape):
    x64, _, g64, b64 = _data(shape, seed=3)
    c = shape[1]
    rng = np.random.default_rng(4)
    rm, rv = rng.standard_normal(c), rng.uniform(0.1, 4.0, c)
    ey = np.empty_like(x64)
    ref.batchnorm_fwd_eval_ref(x64, g64, b64, rm, rv, 1e-5, ey)
    f = [a.astype(np.float32) for a in (x64, g64, b64, rm, rv)]
    y = np.full_like(f[0], np.nan)
    backend.kernel("batchnorm_fwd_eval", backend=name)(*f[:5], 1e-5, y)
    np.testing.assert_allclose(y, ey, **TOL32)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", _cases("batchnorm_bwd"))
def test_backend_bwd_matches_reference(name, shape):
    x64, dy64, g64, b64 = _data(shape, seed=5)
    c = shape[1]
    m64, i64 = np.empty(c), np.empty(c)
    ref.batchnorm_fwd_train_ref(x64, g64, b64, 1e-5, np.empty_like(x64), m64, i64)
    edx, edg, edb = np.empty_like(x64), np.full(c, 1.0), np.full(c, 2.0)
    ref.batchnorm_bwd_ref(x64, dy64, g64, m64, i64, edx, edg, edb)
    x, dy, g, m, i = (a.astype(np.float32) for a in (x64, dy64, g64, m64, i64))
    dx, dg, db = np.full_like(x, np.nan), np.full(c, 1.0, np.float32), np.full(c, 2.0, np.float32)
    backend.kernel("batchnorm_bwd", backend=name)(x, dy, g, m, i, dx, dg, db)
    # dx is a difference of terms of size gamma*invstd*|dy|; float32 rounding is relative to those
    # (for M = 2 the exact dx is ~eps-small, pure cancellation)
    scale = np.abs(g64 * i64).max() * np.abs(dy64).max()
    np.testing.assert_allclose(dx, edx, rtol=1e-4, atol=1e-5 * scale)
    np.testing.assert_allclose(dg, edg, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(db, edb, rtol=1e-4, atol=1e-4)


# -- layers -----------------------------------------------------------------------------------------
def _bound(layer, seed=0):
    """Bind to a float64 arena and give gamma/beta non-trivial values."""
    ParamArena.for_model(layer, dtype=np.float64)
    rng = np.random.default_rng(seed)
    layer.weight.data[...] = rng.uniform(0.5, 1.5, layer.num_features)
    layer.bias.data[...] = rng.standard_normal(layer.num_features)
    return layer


@pytest.mark.parametrize("cls,shape", [(BatchNorm2d, (2, 3, 5, 4)), (BatchNorm2d, (1, 1, 3, 2)),
                                       (BatchNorm2d, (3, 7, 1, 1)), (BatchNorm1d, (5, 7)),
                                       (BatchNorm1d, (3, 5)), (BatchNorm1d, (3, 2, 4))])
# (M = N*S = 2 is left to the kernel tests: there the exact dx is eps-small and the check is noise)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_gradcheck(cls, shape, training):
    layer = _bound(cls(shape[1]))
    rng = np.random.default_rng(7)
    layer.buffers["running_mean"][...] = rng.standard_normal(shape[1])
    layer.buffers["running_var"][...] = rng.uniform(0.2, 3.0, shape[1])
    layer.train(training)
    x = rng.standard_normal(shape) * 1.5 + 0.5
    for result in gradcheck(layer, x, tol=1e-6):
        assert result.passed, str(result)


def test_train_gradcheck_catches_a_wrong_backward():
    """gradcheck in train mode must fail if backward ignores the batch statistics (eval formula)."""
    layer = _bound(BatchNorm2d(3))
    x = np.random.default_rng(0).standard_normal((2, 3, 3, 3))
    layer.train()
    layer.forward(x)
    cache = layer.cache
    layer.cache = (cache[0], cache[1], cache[2], False)     # pretend it was an eval forward
    dy = np.ones_like(x)
    wrong = layer.backward(dy)
    layer.cache = cache
    layer.weight.grad[...] = 0
    right = layer.backward(dy)
    # with dy constant, the true dx is 0 (a shift of x changes nothing after normalization)
    np.testing.assert_allclose(right, 0, atol=1e-12)
    assert np.abs(wrong).max() > 0.1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_running_statistics_over_two_steps(dtype):
    c, momentum = 3, 0.25
    layer = BatchNorm2d(c, momentum=momentum)
    ParamArena.for_model(layer, dtype=dtype)
    rng = np.random.default_rng(11)
    batches = [(rng.standard_normal((4, c, 3, 2)) * [[[[1.0]], [[2.0]], [[0.5]]]] + [[[[1.0]], [[-2.0]], [[5.0]]]])
               for _ in range(2)]
    rm, rv = np.zeros(c), np.ones(c)
    for xb in batches:
        layer.forward(xb.astype(dtype))
        per_channel = xb.transpose(1, 0, 2, 3).reshape(c, -1)      # (C, N*H*W)
        rm = (1 - momentum) * rm + momentum * per_channel.mean(axis=1)
        rv = (1 - momentum) * rv + momentum * per_channel.var(axis=1, ddof=1)   # unbiased
    assert layer.buffers["running_mean"].dtype == np.float32
    assert layer.buffers["running_var"].dtype == np.float32
    np.testing.assert_allclose(layer.buffers["running_mean"], rm, rtol=2e-6, atol=1e-6)
    np.testing.assert_allclose(layer.buffers["running_var"], rv, rtol=2e-5)

    # eval normalizes with the running statistics, not the batch's
    layer.eval()
    x = rng.standard_normal((2, c, 2, 2))
    y = layer.forward(x.astype(dtype))
    expect = (x - rm.reshape(1, c, 1, 1)) / np.sqrt(rv.reshape(1, c, 1, 1) + 1e-5)   # gamma 1, beta 0
    np.testing.assert_allclose(y, expect, rtol=1e-5, atol=1e-5)
    # and does not touch them
    np.testing.assert_allclose(layer.buffers["running_mean"], rm, rtol=2e-6, atol=1e-6)


def test_buffers_and_params_layout():
    layer = BatchNorm1d(5)
    assert set(layer.buffers) == {"running_mean", "running_var"}
    np.testing.assert_array_equal(layer.running_mean, 0)
    np.testing.assert_array_equal(layer.running_var, 1)
    arena = ParamArena.for_model(layer)
    assert [p.decay for p in layer.parameters()] == [False, False]
    assert {p.name for p in layer.parameters()} == {"weight", "bias"}
    np.testing.assert_array_equal(layer.weight.data, 1)
    np.testing.assert_array_equal(layer.bias.data, 0)
    assert [g.name for g in arena.groups] == ["no_decay"]


def test_single_value_per_channel_raises_in_training_only():
    layer = BatchNorm1d(4)
    ParamArena.for_model(layer)
    x = np.ones((1, 4), np.float32)
    with pytest.raises(ValueError, match=r"BatchNorm1d\(num_features=4\).*N\*S = 1"):
        layer.forward(x)
    layer2 = BatchNorm2d(2)
    ParamArena.for_model(layer2)
    with pytest.raises(ValueError, match="more than one value per channel"):
        layer2.forward(np.ones((1, 2, 1, 1), np.float32))
    C = sys.modules.get("fasttrain._C")
    if C is not None:   # the blocked layout's training forward (inside a flowing model) checks it too
        from fasttrain.nn import layout
        with pytest.raises(ValueError, match=r"BatchNorm2d\(num_features=2\).*N\*S = 1"):
            layer2.forward(layout.to_blocked(np.ones((1, 2, 1, 1), np.float32)))
    layer.eval()
    assert layer.forward(x).shape == (1, 4)


def test_bad_inputs_raise():
    layer = BatchNorm2d(3)
    with pytest.raises(RuntimeError, match="not bound"):
        layer.forward(np.ones((2, 3, 2, 2), np.float32))
    ParamArena.for_model(layer)
    with pytest.raises(ValueError, match=r"expected input \(N, 3, H, W\), got \(2, 4, 2, 2\)"):
        layer.forward(np.ones((2, 4, 2, 2), np.float32))
    with pytest.raises(ValueError, match="expected input"):
        layer.forward(np.ones((2, 3), np.float32))
    with pytest.raises(TypeError, match="float32 or float64"):
        layer.forward(np.ones((2, 3, 2, 2), np.int32))
    with pytest.raises(TypeError, match="bind the arena with dtype=float64"):
        layer.forward(np.ones((2, 3, 2, 2), np.float64))
    bn1 = BatchNorm1d(3)
    ParamArena.for_model(bn1)
    with pytest.raises(ValueError, match=r"expected input \(N, 3\) or \(N, 3, L\)"):
        bn1.forward(np.ones((2, 3, 2, 2), np.float32))
    layer.forward(np.ones((2, 3, 2, 2), np.float32))
    with pytest.raises(ValueError, match="expected dy"):
        layer.backward(np.ones((2, 3, 2, 1), np.float32))
    for kwargs, match in [(dict(num_features=0), "num_features"), (dict(num_features=2, eps=0.0), "eps"),
                          (dict(num_features=2, momentum=1.5), "momentum")]:
        with pytest.raises(ValueError, match=match):
            BatchNorm2d(**kwargs)


# -- fused ReLU (relu=True): y = max(0, bn(x)), dy masked by y > 0 ----------------------------------
from fasttrain.kernels import activations as act_ref  # noqa: E402
from fasttrain.nn import ReLU, Sequential  # noqa: E402


def _unfused_reference(x, dy, gamma, beta, eps):
    """batchnorm then relu, forward and backward, composed from the separate references."""
    c = x.shape[1]
    pre, mean, invstd = np.empty_like(x), np.empty(c, x.dtype), np.empty(c, x.dtype)
    ref.batchnorm_fwd_train_ref(x, gamma, beta, eps, pre, mean, invstd)
    y, dpre = np.empty_like(x), np.empty_like(x)
    act_ref.relu_fwd_ref(pre, y)
    act_ref.relu_bwd_ref(pre, dy, dpre)
    dx, dg, db = np.empty_like(x), np.zeros(c, x.dtype), np.zeros(c, x.dtype)
    ref.batchnorm_bwd_ref(x, dpre, gamma, mean, invstd, dx, dg, db)
    return pre, y, dx, dg, db


@pytest.mark.parametrize("shape", SHAPES)
def test_reference_fused_relu_equals_batchnorm_then_relu(shape):
    x, dy, gamma, beta = _data(shape, seed=11)
    c = shape[1]
    pre, want_y, want_dx, want_dg, want_db = _unfused_reference(x, dy, gamma, beta, 1e-5)
    assert (pre > 0).any() and (pre < 0).any() or pre.size <= 2   # both sides of the kink are exercised
    y, mean, invstd = np.empty_like(x), np.empty(c), np.empty(c)
    ref.batchnorm_fwd_train_ref(x, gamma, beta, 1e-5, y, mean, invstd, True)
    dx, dg, db = np.empty_like(x), np.zeros(c), np.zeros(c)
    ref.batchnorm_bwd_ref(x, dy, gamma, mean, invstd, dx, dg, db, y)
    np.testing.assert_array_equal(y, want_y)
    np.testing.assert_array_equal(dx, want_dx)
    np.testing.assert_array_equal(dg, want_dg)
    np.testing.assert_array_equal(db, want_db)
    # eval: the same composition with the running statistics
    rm, rv = np.linspace(-1, 1, c), np.linspace(0.5, 2, c)
    pre_e, ye = np.empty_like(x), np.empty_like(x)
    ref.batchnorm_fwd_eval_ref(x, gamma, beta, rm, rv, 1e-5, pre_e)
    ref.batchnorm_fwd_eval_ref(x, gamma, beta, rm, rv, 1e-5, ye, True)
    np.testing.assert_array_equal(ye, np.maximum(pre_e, 0))


def test_reference_fused_relu_keeps_nan_like_relu():
    x = np.array([[1.0, np.nan], [2.0, 0.5], [3.0, 1.5]])
    y, m, i = np.empty_like(x), np.empty(2), np.empty(2)
    with np.errstate(invalid="ignore"):
        ref.batchnorm_fwd_train_ref(x, np.ones(2), np.zeros(2), 1e-5, y, m, i, True)
    assert np.isnan(y[:, 1]).all()                     # NaN statistics propagate, not clamped to 0
    np.testing.assert_array_equal(y[:, 0] > 0, [False, False, True])


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", _cases("batchnorm_bwd"))
def test_backend_fused_relu_matches_reference(name, shape):
    x64, dy64, g64, b64 = _data(shape, seed=12)
    c = shape[1]
    _, ey, edx, edg, edb = _unfused_reference(x64, dy64, g64, b64, 1e-5)
    x, dy, g, b = (a.astype(np.float32) for a in (x64, dy64, g64, b64))
    k = lambda op: backend.kernel(op, backend=name)  # noqa: E731
    y, m, i = np.full_like(x, np.nan), np.full(c, np.nan, np.float32), np.full(c, np.nan, np.float32)
    k("batchnorm_fwd_train")(x, g, b, 1e-5, y, m, i, True)
    np.testing.assert_allclose(y, ey, rtol=1e-4, atol=1e-4)
    assert (y >= 0).all()
    dx, dg, db = np.full_like(x, np.nan), np.full(c, 1.0, np.float32), np.full(c, 2.0, np.float32)
    k("batchnorm_bwd")(x, dy, g, m, i, dx, dg, db, y)
    per_channel_std = np.sqrt(x64.var(axis=tuple(a for a in range(x64.ndim) if a != 1)))
    scale = np.abs(g64).max() * np.abs(dy64).max() / per_channel_std.min()   # |gamma * invstd * dy| bound
    np.testing.assert_allclose(dx, edx, rtol=1e-4, atol=1e-5 * scale)
    np.testing.assert_allclose(dg, edg + 1.0, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(db, edb + 2.0, rtol=1e-4, atol=1e-4)
    # eval forward
    rm, rv = np.linspace(-1, 1, c).astype(np.float32), np.linspace(0.5, 2, c).astype(np.float32)
    want = np.empty_like(x64)
    ref.batchnorm_fwd_eval_ref(x64, g64, b64, rm.astype(np.float64), rv.astype(np.float64), 1e-5, want, True)
    ye = np.full_like(x, np.nan)
    k("batchnorm_fwd_eval")(x, g, b, rm, rv, 1e-5, ye, True)
    np.testing.assert_allclose(ye, want, **TOL32)


@pytest.mark.parametrize("name", _cases("batchnorm_bwd"))
def test_backend_fused_relu_is_bit_identical_to_batchnorm_then_relu(name):
    """The fused pair must be a pure speedup: same bits as the separate kernels of that backend."""
    x64, dy64, g64, b64 = _data((4, 5, 7, 3), seed=13)
    x, dy, g, b = (a.astype(np.float32) for a in (x64, dy64, g64, b64))
    k = lambda op: backend.kernel(op, backend=name)  # noqa: E731
    pre, m0, i0 = np.empty_like(x), np.empty(5, np.float32), np.empty(5, np.float32)
    k("batchnorm_fwd_train")(x, g, b, 1e-5, pre, m0, i0)
    y0, dpre = np.empty_like(x), np.empty_like(x)
    k("relu_fwd")(pre, y0)
    k("relu_bwd")(pre, dy, dpre)
    dx0, dg0, db0 = np.empty_like(x), np.zeros(5, np.float32), np.zeros(5, np.float32)
    k("batchnorm_bwd")(x, dpre, g, m0, i0, dx0, dg0, db0)
    y1, m1, i1 = np.empty_like(x), np.empty(5, np.float32), np.empty(5, np.float32)
    k("batchnorm_fwd_train")(x, g, b, 1e-5, y1, m1, i1, True)
    dx1, dg1, db1 = np.empty_like(x), np.zeros(5, np.float32), np.zeros(5, np.float32)
    k("batchnorm_bwd")(x, dy, g, m1, i1, dx1, dg1, db1, y1)
    for a, c in ((y0, y1), (m0, m1), (i0, i1), (dx0, dx1), (dg0, dg1), (db0, db1)):
        np.testing.assert_array_equal(a, c, err_msg=name)


def _away_from_kink(cls, shape, seed):
    """Input whose normalized pre-activations all sit >= 0.02 from 0 (central differences must not
    straddle the ReLU kink), with the layer's parameters as _bound sets them."""
    for s in range(seed, seed + 50):
        rng = np.random.default_rng(s)
        x = rng.standard_normal(shape) * 1.5 + 0.5
        probe = _bound(cls(shape[1]))
        probe.train(True)
        pre_train = probe.forward(x)
        probe.train(False)
        pre_eval = probe.forward(x)
        if min(np.abs(pre_train).min(), np.abs(pre_eval).min()) >= 0.02:
            return x
    raise AssertionError("no input away from the kink found")


@pytest.mark.parametrize("cls,shape", [(BatchNorm2d, (2, 3, 2, 3)), (BatchNorm2d, (3, 2, 1, 1)),
                                       (BatchNorm1d, (5, 3)), (BatchNorm1d, (3, 2, 4))])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_fused_relu_layer_gradcheck(cls, shape, training):
    x = _away_from_kink(cls, shape, seed=20)
    layer = _bound(cls(shape[1], relu=True))
    layer.train(training)
    y = layer.forward(x)
    assert (y == 0).any() and (y > 0).any()             # the mask matters
    for result in gradcheck(layer, x, tol=1e-6):
        assert result.passed, str(result)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_fused_relu_layer_equals_batchnorm_then_relu_module(dtype, training):
    x, dy, _, _ = (a.astype(dtype) for a in _data((4, 3, 5, 6), seed=14))
    fused = BatchNorm2d(3, relu=True)
    pair = Sequential(BatchNorm2d(3), ReLU())
    for model in (fused, pair):
        ParamArena.for_model(model, dtype=dtype)
        model.train(training)
    fused.weight.data[...] = pair[0].weight.data[...] = [0.7, 1.2, 1.0]
    fused.bias.data[...] = pair[0].bias.data[...] = [0.1, -0.3, 0.0]
    y0, y1 = pair.forward(x), fused.forward(x)
    np.testing.assert_array_equal(y1, y0)
    np.testing.assert_array_equal(fused.backward(dy), pair.backward(dy))
    np.testing.assert_array_equal(fused.weight.grad, pair[0].weight.grad)
    np.testing.assert_array_equal(fused.bias.grad, pair[0].bias.grad)
    np.testing.assert_array_equal(fused.running_mean, pair[0].running_mean)
    assert "relu=True" in repr(fused) and "relu" not in repr(pair[0])


def test_fused_relu_argument_and_y_checks():
    with pytest.raises(TypeError, match=r"BatchNorm2d\(relu\): expected a bool, got 1"):
        BatchNorm2d(3, relu=1)
    _C = pytest.importorskip("fasttrain._C", reason="the C++ module is not built")
    x = np.ones((2, 3, 2, 2), np.float32)
    ones, zeros = np.ones(3, np.float32), np.zeros(3, np.float32)
    with pytest.raises(ValueError, match=r"y"):
        _C.batchnorm_bwd(x, x, ones, zeros, ones, np.empty_like(x), zeros.copy(), zeros.copy(),
                         np.ones((2, 3, 2, 1), np.float32))
    with pytest.raises(ValueError, match=r"y: expected dtype float32"):
        _C.batchnorm_bwd(x, x, ones, zeros, ones, np.empty_like(x), zeros.copy(), zeros.copy(),
                         np.ones((2, 3, 2, 2)))


def test_models_fuse_bn_relu_with_the_unfused_init_values_and_gradients():
    """models.py builds conv-BN(relu=True): same parameters in the same order, the same seeded
    initialization and the same outputs and gradients as the conv-BN-ReLU it replaces."""
    from fasttrain import models, nn

    fused = models.simple_cnn(1, 10, 8, width=4, dropout=0.0)
    assert not any(type(m).__name__ == "ReLU" for _, m in fused.named_modules())
    unfused = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, bias=False), BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 8, 3, padding=1, bias=False), BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(8 * 2 * 2, 10, init=models.HEAD_INIT))
    a_fused, a_unfused = ParamArena.for_model(fused, seed=3), ParamArena.for_model(unfused, seed=3)
    assert [p.shape for p in a_fused.params] == [p.shape for p in a_unfused.params]
    np.testing.assert_array_equal(a_fused.data, a_unfused.data)
    x = np.random.default_rng(0).standard_normal((6, 1, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(fused.forward(x), unfused.forward(x))
    dy = np.random.default_rng(1).standard_normal((6, 10)).astype(np.float32)
    np.testing.assert_array_equal(fused.backward(dy), unfused.backward(dy))
    np.testing.assert_array_equal(a_fused.grad, a_unfused.grad)


# -- conditioning: |mean| / std from 1 to 1e4 ------------------------------------------------------
# E[x^2] - E[x]^2 in float32 loses ~log10(ratio^2) digits of the variance (all of them at 1e4);
# every backend must stay as close to float64 as PyTorch's float32 batchnorm does.
EPS32 = float(np.finfo(np.float32).eps)
RATIOS = [1.0, 10.0, 1e2, 1e3, 1e4]


def _conditioned(ratio, seed=0, shape=(8, 24, 7, 9)):
    """float32 x whose channels have |mean| = ratio * std, std spread over 1e-3..1e3 (both signs);
    and the float64 reference's statistics and output on those same float32 values."""
    rng = np.random.default_rng(seed)
    c = shape[1]
    std = np.exp(rng.uniform(-7, 7, c))
    mean = rng.choice([-1.0, 1.0], c) * ratio * std
    x = (rng.standard_normal(shape) * std.reshape(1, c, 1, 1) + mean.reshape(1, c, 1, 1)).astype(np.float32)
    g = rng.uniform(0.5, 1.5, c).astype(np.float32)
    b = rng.standard_normal(c).astype(np.float32)
    want = np.empty(shape), np.empty(c), np.empty(c)
    ref.batchnorm_fwd_train_ref(x.astype(np.float64), g.astype(np.float64), b.astype(np.float64), 1e-5, *want)
    return x, g, b, want


def _errors(got, want):
    """Relative error of mean (to |mean| + std) and invstd, and y's error relative to max |y|."""
    (y, m, i), (ey, em, ei) = got, want
    return (np.max(np.abs(m - em) / (np.abs(em) + 1.0 / ei)), np.max(np.abs(i / ei - 1)),
            np.max(np.abs(y - ey)) / np.max(np.abs(ey)))


def _run_fwd_train(name, x, g, b):
    c = x.shape[1]
    got = np.full_like(x, np.nan), np.full(c, np.nan, np.float32), np.full(c, np.nan, np.float32)
    backend.kernel("batchnorm_fwd_train", backend=name)(x, g, b, 1e-5, *got)
    return got


@pytest.mark.parametrize("ratio", RATIOS, ids=lambda r: f"mean/std={r:g}")
@pytest.mark.parametrize("name", _cases("batchnorm_fwd_train"))
def test_backend_statistics_stay_accurate_when_mean_dwarfs_std(name, ratio):
    """Bounds from float32 rounding alone, so the test needs no oracle: the stored mean and invstd
    are rounded to float32 (eps/2 each) after sums whose error, with the variance taken around a
    value near the mean, does not grow with the ratio (a few eps with float32 partial sums); y is
    x * a + c with |x * a| ~ gamma * ratio, so rounding there costs ~ratio * eps of max |y| /
    max |y| ~ 4 (the formulation PyTorch uses too)."""
    x, g, b, want = _conditioned(ratio)
    em, ei, ey = _errors(_run_fwd_train(name, x, g, b), want)
    assert em <= 4 * EPS32, f"{name}: mean relative error {em:.2g} at mean/std={ratio:g}"
    assert ei <= 8 * EPS32, f"{name}: invstd relative error {ei:.2g} at mean/std={ratio:g}"
    assert ey <= 2 * EPS32 * (ratio + 4), f"{name}: y error {ey:.2g} of max |y| at mean/std={ratio:g}"


@pytest.mark.parametrize("name", _cases("batchnorm_fwd_train"))
def test_backend_conditioning_sweep_within_2x_of_pytorch_float32(name):
    """PyTorch float32 as a second oracle: at every ratio, each error is at most twice torch's (or
    2 eps where torch's own error is below float32's resolution of the quantity)."""
    torch = pytest.importorskip("torch")
    for ratio in RATIOS:
        x, g, b, want = _conditioned(ratio, seed=1)
        t = torch.from_numpy(x)
        var, m = torch.var_mean(t, dim=(0, 2, 3), unbiased=False)
        y = torch.nn.functional.batch_norm(t, None, None, torch.from_numpy(g), torch.from_numpy(b), True, 0.1, 1e-5)
        limits = [2 * max(e, 2 * EPS32) for e in _errors((y.numpy(), m.numpy(), (1 / torch.sqrt(var + 1e-5)).numpy()),
                                                         want)]
        got = _errors(_run_fwd_train(name, x, g, b), want)
        for what, e, limit in zip(("mean", "invstd", "y"), got, limits):
            assert e <= limit, f"{name}: {what} error {e:.2g} > 2x PyTorch's ({limit / 2:.2g}) at mean/std={ratio:g}"


@pytest.mark.parametrize("momentum", [0.0, 0.1, 0.37, 1.0])
@pytest.mark.parametrize("m", [2, 3, 1000])
def test_update_running_matches_numpy_bits(momentum, m):
    """The compiled running-statistics update rounds exactly as the NumPy formulation in
    nn/norm.py (which other backends run): training is bit-identical either way."""
    _C = pytest.importorskip("fasttrain._C", reason="the C++ module is not built")
    rng = np.random.default_rng(m)
    c, eps = 37, 1e-5
    mean = (rng.standard_normal(c) * 3).astype(np.float32)
    # some invstd near 1/sqrt(eps), so that 1/invstd^2 - eps rounds to <= 0 and is clamped
    invstd = np.exp(rng.uniform(-4, 6, c)).astype(np.float32)
    invstd[:3] = np.float32(1 / math.sqrt(eps)) * np.float32([1.0, 1.0001, 0.9999])
    rmean = rng.standard_normal(c).astype(np.float32)
    rvar = rng.uniform(0.1, 5, c).astype(np.float32)
    want_mean, want_var = rmean.copy(), rvar.copy()
    update_running(want_mean, want_var, mean, invstd, eps, momentum, m / (m - 1))
    _C.batchnorm_update_running(rmean, rvar, mean, invstd, eps, momentum, m / (m - 1))
    np.testing.assert_array_equal(rmean.view(np.uint32), want_mean.view(np.uint32))
    np.testing.assert_array_equal(rvar.view(np.uint32), want_var.view(np.uint32))
    with pytest.raises(ValueError, match="invstd"):
        _C.batchnorm_update_running(rmean, rvar, mean, invstd[:-1], eps, momentum, 2.0)


# -- the row sums of the C++ passes: rows of every length around their 8- and 32-value steps ------
ROW_SHAPES = [(1, 1, 1, 7), (1, 3, 2, 4), (2, 17, 1, 9), (1, 3, 31, 1), (1, 1, 4, 8), (2, 3, 3, 11),
              (1, 17, 7, 7), (1, 3, 8, 8), (1, 1, 5, 13), (1, 17, 33, 33)]   # S = 7, 8, 9, 31, 32, 33, 49, 64, 65, 1089


@pytest.mark.parametrize("mode", ["plain", "relu", "add-relu"])
@pytest.mark.parametrize("shape", ROW_SHAPES, ids=lambda s: f"S{s[2] * s[3]}-C{s[1]}")
@pytest.mark.parametrize("name", _cases("batchnorm_bwd"))
def test_backend_row_lengths_match_reference(name, shape, mode):
    """Batch 1-2, C = 1/3/17, row lengths below, at and past the kernels' 8- and 32-value steps:
    statistics, y, dx, dgamma, dbeta (and the residual's gradient) against the reference."""
    x64, dy64, g64, b64 = _data(shape, seed=sum(shape))
    c, relu = shape[1], mode != "plain"
    r64 = np.random.default_rng(1).standard_normal(shape) if mode == "add-relu" else None
    ey, em, ei = np.empty_like(x64), np.empty(c), np.empty(c)
    ref.batchnorm_fwd_train_ref(x64, g64, b64, 1e-5, ey, em, ei, relu, residual=r64)
    x, dy, g, b = (a.astype(np.float32) for a in (x64, dy64, g64, b64))
    r = None if r64 is None else r64.astype(np.float32)
    k = lambda op: backend.kernel(op, backend=name)  # noqa: E731
    y, m, i = np.full_like(x, np.nan), np.full(c, np.nan, np.float32), np.full(c, np.nan, np.float32)
    k("batchnorm_fwd_train")(x, g, b, 1e-5, y, m, i, relu, residual=r)
    np.testing.assert_allclose(m, em, **TOL32)
    np.testing.assert_allclose(i, ei, rtol=1e-4)
    np.testing.assert_allclose(y, ey, rtol=1e-4, atol=1e-4)
    # the backward from the backend's own forward (its y is the ReLU mask)
    edx, edg, edb = np.empty_like(x64), np.zeros(c), np.zeros(c)
    edres = np.empty_like(x64) if r is not None else None
    ref.batchnorm_bwd_ref(x64, dy64, g64, m.astype(np.float64), i.astype(np.float64), edx, edg, edb,
                          y.astype(np.float64) if relu else None, dres=edres)
    dx, dg, db = np.full_like(x, np.nan), np.zeros(c, np.float32), np.zeros(c, np.float32)
    dres = np.full_like(x, np.nan) if r is not None else None
    k("batchnorm_bwd")(x, dy, g, m, i, dx, dg, db, y if relu else None, dres=dres)
    scale = np.abs(g64).max() * np.abs(dy64).max() * float(i.max())
    np.testing.assert_allclose(dx, edx, rtol=1e-4, atol=1e-5 * scale)
    np.testing.assert_allclose(dg, edg, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(db, edb, rtol=1e-4, atol=1e-4)
    if r is not None:
        np.testing.assert_array_equal(dres, edres.astype(np.float32))
