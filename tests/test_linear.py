"""linear: the reference against scalar loops (float64), every backend against them (float32),
gradient checks of the layer, the layer on the default backend, bad inputs."""
import numpy as np
import pytest

from fasttrain import ParamArena, backend
from fasttrain.check import gradcheck
from fasttrain.nn import Linear

# (N, I), O: all-ones sizes, primes, an empty batch, sizes that are not multiples of 8/16
LIN = [((1, 1), 1), ((3, 7), 5), ((17, 13), 1), ((0, 4), 3), ((64, 33), 17)]


def _loops(x, w, b, dy):
    """y, dx, dw, db by scalar loops in float64 (independent of the matrix-product code)."""
    n, i_ = x.shape
    o = w.shape[0]
    y = np.zeros((n, o))
    dx = np.zeros((n, i_))
    dw = np.zeros((o, i_))
    for a in range(n):
        for k in range(o):
            y[a, k] = b[k] + sum(float(x[a, j]) * float(w[k, j]) for j in range(i_))
            for j in range(i_):
                dx[a, j] += float(dy[a, k]) * float(w[k, j])
                dw[k, j] += float(dy[a, k]) * float(x[a, j])
    db = np.array([sum(float(dy[a, k]) for a in range(n)) for k in range(o)])
    return y, dx, dw, db


def _inputs(xs, out, dtype, seed=2):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dtype) for s in (xs, (out, xs[1]), (out,), (xs[0], out))]


def _run(fn, x, w, b, dy):
    y = np.empty((x.shape[0], w.shape[0]), x.dtype)
    fn("linear_fwd")(x, w, b, y)
    dx, dw, db = np.empty_like(x), np.full_like(w, 0.5), np.full_like(b, 0.5)  # dw, db accumulate
    fn("linear_bwd")(x, w, dy, dx, dw, db)
    return y, dx, dw - 0.5, db - 0.5


@pytest.mark.parametrize("xs,out", LIN)
def test_reference_matches_loops_float64(xs, out):
    x, w, b, dy = _inputs(xs, out, np.float64)
    got = _run(lambda op: backend.kernel(op, backend="numpy"), x, w, b, dy)
    for g, r, what in zip(got, _loops(x, w, b, dy), ("y", "dx", "dw", "db")):
        np.testing.assert_allclose(g, r, rtol=1e-12, atol=1e-12, err_msg=what)


@pytest.mark.parametrize("name", backend.available_backends_for("linear_fwd"))
@pytest.mark.parametrize("xs,out", LIN)
def test_every_backend_matches_loops_float32(name, xs, out):
    x, w, b, dy = _inputs(xs, out, np.float32)
    got = _run(lambda op: backend.kernel(op, backend=name), x, w, b, dy)
    for g, r, what in zip(got, _loops(x, w, b, dy), ("y", "dx", "dw", "db")):
        assert g.dtype == np.float32
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(r).max(initial=0))),
                                   err_msg=f"{name} {what}")


@pytest.mark.parametrize("n,i,o,bias", [(1, 7, 3, True), (5, 2, 11, False), (3, 13, 1, True)])
def test_layer_gradcheck(n, i, o, bias):
    layer = Linear(i, o, bias=bias)
    ParamArena.for_model(layer, dtype=np.float64, seed=5)
    results = gradcheck(layer, np.random.default_rng(6).standard_normal((n, i)), tol=1e-6)
    assert [r.name for r in results] == ["input", "weight"] + (["bias"] if bias else [])
    for r in results:
        assert r.passed, str(r)


@pytest.mark.parametrize("bias", [True, False])
def test_layer_float32_on_default_backend_matches_float64(bias):
    """The layer through `kernel(op, like=x)` (C++ when built) against the float64 reference."""
    layer = Linear(9, 5, bias=bias, init="xavier_uniform")
    arena = ParamArena.for_model(layer, seed=1)
    if bias:
        layer.bias.data[...] = np.arange(5) * 0.1   # a zero bias would hide a missing bias add
    rng = np.random.default_rng(3)
    x, dy = rng.standard_normal((6, 9)).astype(np.float32), rng.standard_normal((6, 5)).astype(np.float32)
    y = layer.forward(x)
    arena.zero_grad()
    dx = layer.backward(dy)
    w = layer.weight.data.astype(np.float64)
    b = layer.bias.data.astype(np.float64) if bias else np.zeros(5)
    want = _loops(x.astype(np.float64), w, b, dy.astype(np.float64))
    np.testing.assert_allclose(y, want[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, want[1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(layer.weight.grad, want[2], rtol=1e-5, atol=1e-5)
    if bias:
        np.testing.assert_allclose(layer.bias.grad, want[3], rtol=1e-5, atol=1e-5)


def test_weight_decays_bias_does_not_and_init_by_name_or_callable():
    layer = Linear(4, 3, init=lambda shape, rng, dtype: np.full(shape, 2.0, dtype))
    arena = ParamArena.for_model(layer)
    assert {p.name: p.decay for p in arena.params} == {"weight": True, "bias": False}
    assert (layer.weight.data == 2).all() and not layer.bias.data.any()
    assert [p.name for p in Linear(4, 3, bias=False).parameters()] == ["weight"]
    with pytest.raises(ValueError, match="init"):
        Linear(4, 3, init="he_normall")


def test_bad_arguments_and_inputs():
    with pytest.raises(ValueError, match=r"Linear\(in_features\).*got 0"):
        Linear(0, 3)
    with pytest.raises(ValueError, match=r"Linear\(out_features\).*got 2.5"):
        Linear(3, 2.5)
    lin = Linear(4, 2)
    ParamArena.for_model(lin)
    with pytest.raises(RuntimeError, match="before forward"):
        lin.backward(np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match=r"Linear\(in_features=4\): expected input \(N, 4\), got \(2, 5\)"):
        lin.forward(np.zeros((2, 5), np.float32))
    with pytest.raises(ValueError, match=r"expected input \(N, 4\), got \(2, 1, 4\)"):
        lin.forward(np.zeros((2, 1, 4), np.float32))
    with pytest.raises(TypeError, match="float32 or float64.*int64"):
        lin.forward(np.zeros((2, 4), np.int64))
    lin.forward(np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match=r"expected dy of shape \(2, 2\).*got \(2, 3\)"):
        lin.backward(np.zeros((2, 3), np.float32))
