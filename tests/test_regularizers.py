"""DropConnect and stochastic depth: forward against a NumPy restatement using the Philox keep
mask computed here, every CPU backend against the float64 reference, gradchecks in float64 with
the step fixed (kept and dropped cases), evaluation behaviour, and reproducibility."""
import numpy as np
import pytest

from fasttrain import ParamArena, backend
from fasttrain.check import gradcheck
from fasttrain.kernels.dropout import philox4x32_ref, threshold
from fasttrain.kernels.dropout import keep_ref
from fasttrain.nn import Linear, ReLU, Residual, Sequential, Tanh
from fasttrain.nn.dropconnect import DropConnectLinear
from fasttrain.nn.stochastic_depth import StochasticDepth, linear_decay


def weights(layer):
    b = layer.bias.data if layer.bias is not None else 0.0
    return np.array(layer.weight.data, dtype=np.float64), np.array(b, dtype=np.float64)


# ---- DropConnect --------------------------------------------------------------------------------

@pytest.mark.parametrize("n,i,o,p", [(1, 1, 1, 0.3), (5, 7, 3, 0.5), (13, 17, 11, 0.1), (4, 33, 2, 0.9)])
def test_dropconnect_forward_masks_the_weight_matrix(n, i, o, p):
    layer = DropConnectLinear(i, o, p=p, seed=12345, layer_id=7)
    ParamArena.for_model(layer, seed=1, dtype=np.float64)
    layer.set_step(41)
    x = np.random.default_rng(0).standard_normal((n, i))
    w, b = weights(layer)
    keep = keep_ref(o * i, p, 12345, 41, 7).reshape(o, i)
    np.testing.assert_allclose(layer.forward(x), x @ (w * keep / (1 - p)).T + b, rtol=1e-12, atol=1e-12)
    layer.eval()
    np.testing.assert_allclose(layer.forward(x), x @ w.T + b, rtol=1e-12, atol=1e-12)


def test_dropconnect_mask_statistics_and_keys():
    layer = DropConnectLinear(100, 80, p=0.3, seed=3, layer_id=1)
    ParamArena.for_model(layer, dtype=np.float64)
    layer.weight.data[...] = 1.0
    layer.set_step(5)
    eff = layer.masked_weight(layer._key())
    assert set(np.unique(eff)) == {0.0, 1 / 0.7}
    assert abs((eff == 0).mean() - 0.3) < 0.02       # 8000 Bernoulli(0.3): sd 0.005
    layer.set_step(6)
    assert not np.array_equal(layer.masked_weight(layer._key()), eff)
    other = DropConnectLinear(100, 80, p=0.3, seed=3, layer_id=2)
    ParamArena.for_model(other, dtype=np.float64)
    other.weight.data[...] = 1.0
    other.set_step(5)
    assert not np.array_equal(other.masked_weight(other._key()), eff)


@pytest.mark.parametrize("step", [0, 3, 2 ** 32 - 1])
@pytest.mark.parametrize("bias", [True, False])
def test_dropconnect_gradcheck_in_training(step, bias):
    layer = DropConnectLinear(7, 5, p=0.4, bias=bias, seed=9, layer_id=3)
    ParamArena.for_model(layer, seed=2, dtype=np.float64)
    layer.set_step(step)
    x = np.random.default_rng(4).standard_normal((3, 7))
    for r in gradcheck(layer, x, max_checks=None):
        assert r.passed, str(r)
    # dropped weights get no gradient
    layer.weight.grad[...] = 0
    layer.forward(x)
    layer.backward(np.ones((3, 5)))
    keep = keep_ref(35, 0.4, 9, step, 3).reshape(5, 7)
    assert np.all(layer.weight.grad[~keep] == 0) and np.all(layer.weight.grad[keep] != 0)


def test_dropconnect_gradcheck_in_eval_and_backward_uses_the_forward_step():
    layer = DropConnectLinear(6, 4, p=0.5, seed=1, layer_id=0)
    ParamArena.for_model(layer, seed=3, dtype=np.float64)
    x = np.random.default_rng(5).standard_normal((2, 6))
    layer.eval()
    for r in gradcheck(layer, x, max_checks=None):
        assert r.passed, str(r)
    layer.train()
    layer.set_step(10)
    layer.forward(x)
    layer.weight.grad[...] = 0
    dy = np.random.default_rng(6).standard_normal((2, 4))
    dx = layer.backward(dy)
    expected_w = layer.masked_weight((0.5, 1, 10, 0))
    layer.set_step(11)                       # between forward and backward: must not matter
    layer.forward(x)
    layer.set_step(10)
    layer.forward(x)
    layer.set_step(99)
    np.testing.assert_allclose(layer.backward(dy), dy @ expected_w, rtol=1e-12)
    np.testing.assert_allclose(dx, dy @ expected_w, rtol=1e-12)


# the layer runs dropout and linear kernels under one backend setting: every backend with both
BOTH = [b for b in backend.available_backends_for("dropout_fwd")
        if set(backend.available_backends_for("linear_fwd")) & {b} and set(backend.available_backends_for("linear_bwd")) & {b}]


@pytest.mark.parametrize("name", BOTH)
def test_dropconnect_float32_backends_match_the_float64_reference(name):
    ref = DropConnectLinear(19, 6, p=0.25, seed=77, layer_id=4)
    arena64 = ParamArena.for_model(ref, seed=0, dtype=np.float64)
    fast = DropConnectLinear(19, 6, p=0.25, seed=77, layer_id=4)
    arena32 = ParamArena.for_model(fast, seed=0, dtype=np.float32)
    np.testing.assert_allclose(arena32.data, arena64.data, rtol=1e-6)
    ref.set_step(8)
    fast.set_step(8)
    x = np.random.default_rng(0).standard_normal((9, 19))
    dy = np.random.default_rng(1).standard_normal((9, 6))
    old = backend.get_backend()
    backend.set_backend(name)
    try:
        y32 = fast.forward(x.astype(np.float32))
        dx32 = fast.backward(dy.astype(np.float32))
    finally:
        backend.set_backend(old)
    y64, dx64 = ref.forward(x), ref.backward(dy)
    np.testing.assert_allclose(y32, y64, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dx32, dx64, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(arena32.grad, arena64.grad, rtol=1e-4, atol=1e-5)


def test_dropconnect_argument_errors():
    with pytest.raises(ValueError, match=r"DropConnectLinear\(p\): expected a probability in \[0, 1\), got 1"):
        DropConnectLinear(3, 2, p=1)
    layer = DropConnectLinear(3, 2, p=0.5)
    ParamArena.for_model(layer, dtype=np.float64)
    with pytest.raises(ValueError, match=r"expected input \(N, 3\), got \(4, 2\)"):
        layer.forward(np.zeros((4, 2)))
    with pytest.raises(TypeError, match="input dtype float32 differs from the parameters' float64"):
        layer.forward(np.zeros((4, 3), np.float32))


# ---- stochastic depth ---------------------------------------------------------------------------

def first_bit(p, seed, step, layer):
    """Element 0 of the Philox stream, straight from the block function."""
    counter = np.array([[0, 0, step, layer]], np.uint32)
    key = np.array([seed & 0xFFFFFFFF, seed >> 32], np.uint32)
    return bool(philox4x32_ref(counter, key)[0, 0] >= threshold(p))


def block(width=5, shortcut=False, post=False):
    body = Sequential(Linear(width, width), Tanh(), Linear(width, width))
    return Residual(body, Linear(width, width) if shortcut else None, ReLU() if post else None)


def find_steps(sd):
    kept = next(s for s in range(1000) if sd.keeps(s))
    dropped = next(s for s in range(1000) if not sd.keeps(s))
    return kept, dropped


def test_stochastic_depth_draw_is_the_philox_bit_with_rate_p():
    sd = StochasticDepth(block(), p_drop=0.3, seed=2 ** 40 + 5, layer_id=9)
    draws = [sd.keeps(s) for s in range(3000)]
    assert draws == [first_bit(0.3, 2 ** 40 + 5, s, 9) for s in range(3000)]
    assert abs(1 - np.mean(draws) - 0.3) < 0.03        # sd of the mean ~0.008
    other = StochasticDepth(block(), p_drop=0.3, seed=2 ** 40 + 5, layer_id=10)
    assert [other.keeps(s) for s in range(3000)] != draws


@pytest.mark.parametrize("shortcut,post", [(False, False), (True, False), (False, True), (True, True)])
def test_stochastic_depth_forward_train_and_eval(shortcut, post):
    res = block(shortcut=shortcut, post=post)
    sd = StochasticDepth(res, p_drop=0.4, seed=1, layer_id=0)
    ParamArena.for_model(sd, seed=0, dtype=np.float64)
    x = np.random.default_rng(0).standard_normal((3, 5))
    body = res.body.forward(x)
    short = res.shortcut.forward(x) if shortcut else x
    fin = (lambda z: np.maximum(z, 0)) if post else (lambda z: z)
    kept, dropped = find_steps(sd)
    sd.set_step(kept)
    np.testing.assert_allclose(sd.forward(x), fin(body + short), rtol=1e-13)
    sd.set_step(kept)                    # (a training forward advances the step)
    np.testing.assert_allclose(sd.forward(x), res.forward(x), rtol=1e-13)    # kept = the plain block
    sd.set_step(dropped)
    np.testing.assert_allclose(sd.forward(x), fin(short), rtol=1e-13)
    sd.eval()
    np.testing.assert_allclose(sd.forward(x), fin(0.6 * body + short), rtol=1e-13)


@pytest.mark.parametrize("mode", ["kept", "dropped", "eval"])
@pytest.mark.parametrize("shortcut,post", [(False, False), (True, True)])
def test_stochastic_depth_gradcheck(mode, shortcut, post):
    res = block(width=4, shortcut=shortcut, post=post)
    sd = StochasticDepth(res, p_drop=0.5, seed=11, layer_id=2)
    ParamArena.for_model(sd, seed=5, dtype=np.float64)
    kept, dropped = find_steps(sd)
    if mode == "eval":
        sd.eval()
    sd.set_step(kept if mode == "kept" else dropped)
    x = np.random.default_rng(7).standard_normal((3, 4)) + 0.5    # away from ReLU's kink
    results = gradcheck(sd, x, max_checks=None)
    for r in results:
        assert r.passed, str(r)
    body_grads = [p.grad for p in res.body.parameters()]
    if mode == "dropped":
        assert all(not g.any() for g in body_grads)   # a skipped body gets no gradient
    else:
        assert all(g.any() for g in body_grads)


def test_stochastic_depth_backward_keeps_the_forward_draw_and_checks_inputs():
    sd = StochasticDepth(block(), p_drop=0.5, seed=0, layer_id=1)
    ParamArena.for_model(sd, dtype=np.float64)
    kept, dropped = find_steps(sd)
    x = np.ones((2, 5))
    sd.set_step(dropped)
    sd.forward(x)
    sd.set_step(kept)                           # changed after forward: backward follows forward
    dy = np.random.default_rng(0).standard_normal((2, 5))
    np.testing.assert_array_equal(sd.backward(dy), dy)
    with pytest.raises(TypeError, match=r"expected a fasttrain.nn.Residual .* got Sequential"):
        StochasticDepth(Sequential(Linear(2, 2)), 0.5)
    with pytest.raises(ValueError, match=r"StochasticDepth\(p_drop\): expected a probability in \[0, 1\), got 1.0"):
        StochasticDepth(block(), 1.0)
    with pytest.raises(RuntimeError, match="call forward first|before forward"):
        StochasticDepth(block(), 0.5).backward(dy)
    assert [linear_decay(l, 4, 0.5) for l in (1, 2, 3, 4)] == [0.125, 0.25, 0.375, 0.5]
