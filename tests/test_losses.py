"""Losses: values and gradients against per-example loops (float64), the fused softmax
cross-entropy kernel on every backend (float32), gradient checks on awkward shapes, stability at
large logits, and input validation."""
import math

import numpy as np
import pytest

from fasttrain import backend
from fasttrain.check import gradcheck_loss
from fasttrain.kernels import losses as ref
from fasttrain.losses import (MSE, L1, BinaryCrossEntropyWithLogits, MulticlassHinge,
                              SoftmaxCrossEntropy)

# (N, C): batch 1, C = 2 / 7 / 13, non-square, N > C and N < C
CLASS_SHAPES = [(1, 2), (1, 13), (3, 7), (5, 2), (4, 13), (13, 7)]


def _classes(n, c, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, c)) * 3, rng.integers(0, c, n)


def naive_xent(x, y):
    total = 0.0
    for row, label in zip(x, y):
        total += math.log(sum(math.exp(v) for v in row)) - row[label]
    return total / len(x)


def naive_hinge(x, y, margin=1.0):
    total = 0.0
    for row, label in zip(x, y):
        total += sum(max(0.0, row[j] - row[label] + margin) for j in range(len(row)) if j != label)
    return total / len(x)


@pytest.mark.parametrize("shape", CLASS_SHAPES)
def test_xent_reference_value_and_gradient(shape):
    x, y = _classes(*shape)
    d = np.empty_like(x)
    value = ref.softmax_xent_ref(x, y, d)
    assert isinstance(value, float)
    assert value == pytest.approx(naive_xent(x, y), rel=1e-13)
    p = np.exp(x) / np.exp(x).sum(axis=1, keepdims=True)
    p[np.arange(len(y)), y] -= 1
    np.testing.assert_allclose(d, p / len(y), rtol=1e-12, atol=1e-16)


@pytest.mark.parametrize("c", [2, 7, 13, 1000])
def test_xent_at_uniform_logits_is_ln_c(c):
    x = np.full((3, c), 0.37, np.float32)
    value, d = SoftmaxCrossEntropy()(x, np.array([0, c - 1, c // 2]))
    assert value == pytest.approx(math.log(c), rel=1e-6)
    assert d.dtype == np.float32 and d.shape == (3, c)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_xent_is_stable_at_huge_logits(dtype):
    x = np.array([[1000.0, 0.0, -1000.0], [-5e4, 5e4, 0.0]], dtype)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        value, d = SoftmaxCrossEntropy()(x, np.array([2, 1]))
    assert value == pytest.approx(1000.0, rel=1e-6)        # (2000 + 0) / 2
    assert np.all(np.isfinite(d))


@pytest.mark.parametrize("name", backend.available_backends_for("softmax_xent"))
@pytest.mark.parametrize("shape", CLASS_SHAPES + [(64, 10), (3, 1000)])
def test_every_backend_softmax_xent_matches_reference_float32(name, shape):
    x64, y = _classes(*shape, seed=4)
    x = x64.astype(np.float32)
    want = np.empty_like(x64)
    want_value = ref.softmax_xent_ref(x.astype(np.float64), y, want)
    d = np.full_like(x, np.nan)
    value = backend.kernel("softmax_xent", backend=name)(x, y.astype(np.int64), d)
    assert isinstance(value, float)
    assert value == pytest.approx(want_value, rel=1e-5, abs=1e-6)
    np.testing.assert_allclose(d, want, rtol=1e-5, atol=1e-7, err_msg=name)


@pytest.mark.parametrize("shape", CLASS_SHAPES)
def test_hinge_value_and_gradcheck(shape):
    x, y = _classes(*shape, seed=2)
    x = x * 0.3        # many margins inside (0, 1): both active and inactive terms
    value, _ = MulticlassHinge()(x, y)
    assert value == pytest.approx(naive_hinge(x, y), rel=1e-13)
    r = gradcheck_loss(MulticlassHinge(), x, y)
    assert r.passed, str(r)


def test_hinge_gradient_by_hand():
    # row 0: label 0, margins 1 + (2-3) = 0 (not violated), 1 + (3.5-3) = 1.5 (violated)
    value, d = MulticlassHinge()(np.array([[3.0, 2.0, 3.5]]), np.array([0]))
    assert value == pytest.approx(1.5)
    np.testing.assert_array_equal(d, [[-1.0, 0.0, 1.0]])


LOSSES = [SoftmaxCrossEntropy, MulticlassHinge]


@pytest.mark.parametrize("shape", CLASS_SHAPES)
def test_xent_gradcheck(shape):
    x, y = _classes(*shape, seed=3)
    # unit-scale logits: with a saturated softmax some gradients are ~1e-6, below what central
    # differences of an O(10) loss resolve to 1e-5 relative error
    r = gradcheck_loss(SoftmaxCrossEntropy(), x / 3, y)
    assert r.passed, str(r)


REG_SHAPES = [(1,), (1, 1), (5,), (3, 7), (2, 13), (4, 3, 2)]


def _regression(shape, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(shape) * 2, rng.standard_normal(shape)


@pytest.mark.parametrize("shape", REG_SHAPES)
def test_mse_and_l1_against_loops_and_gradcheck(shape):
    x, t = _regression(shape)
    n = x.size
    assert MSE()(x, t)[0] == pytest.approx(sum((a - b) ** 2 for a, b in zip(x.ravel(), t.ravel())) / n, rel=1e-13)
    assert L1()(x, t)[0] == pytest.approx(sum(abs(a - b) for a, b in zip(x.ravel(), t.ravel())) / n, rel=1e-13)
    for loss in (MSE(), L1()):
        r = gradcheck_loss(loss, x, t)
        assert r.passed, str(r)


def test_l1_subgradient_is_zero_where_prediction_equals_target():
    x = np.array([[1.0, 2.0, -3.0]])
    _, d = L1()(x, np.array([[1.0, 0.0, 0.0]]))
    np.testing.assert_array_equal(d, [[0.0, 1 / 3, -1 / 3]])


def naive_bce(x, y):
    total = 0.0
    for v, t in zip(x.ravel(), y.ravel()):
        s = 1 / (1 + math.exp(-v))
        total -= t * math.log(s) + (1 - t) * math.log(1 - s)
    return total / x.size


@pytest.mark.parametrize("shape", REG_SHAPES)
def test_bce_against_loops_and_gradcheck(shape):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape) * 3
    y = rng.uniform(0, 1, shape)                       # soft targets
    y.reshape(-1)[0] = 1.0                             # and hard ones
    assert BinaryCrossEntropyWithLogits()(x, y)[0] == pytest.approx(naive_bce(x, y), rel=1e-12)
    r = gradcheck_loss(BinaryCrossEntropyWithLogits(), x, y)
    assert r.passed, str(r)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bce_is_stable_at_huge_logits(dtype):
    x = np.array([1000.0, -1000.0, 1000.0, -1000.0], dtype)
    y = np.array([0.0, 1.0, 1.0, 0.0], dtype)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        value, d = BinaryCrossEntropyWithLogits()(x, y)
    assert value == pytest.approx(500.0)              # (1000 + 1000 + 0 + 0) / 4
    np.testing.assert_allclose(d, [0.25, -0.25, 0.0, 0.0], atol=1e-12)
    assert d.dtype == dtype


@pytest.mark.parametrize("loss", [SoftmaxCrossEntropy(), MulticlassHinge(), BinaryCrossEntropyWithLogits(),
                                  MSE(), L1()])
def test_float32_gradient_dtype_and_shape(loss):
    x = np.random.default_rng(0).standard_normal((3, 7)).astype(np.float32)
    target = np.array([0, 6, 3]) if isinstance(loss, (SoftmaxCrossEntropy, MulticlassHinge)) else np.zeros((3, 7))
    value, d = loss(x, target)
    assert isinstance(value, float) and d.dtype == np.float32 and d.shape == x.shape
    value64, d64 = loss(x.astype(np.float64), target)
    assert value == pytest.approx(value64, rel=1e-5)
    np.testing.assert_allclose(d, d64, rtol=1e-5, atol=1e-7)


# -- validation ------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", LOSSES)
def test_classification_losses_validate_inputs(cls):
    loss = cls()
    x = np.zeros((3, 7))
    with pytest.raises(ValueError, match=r"expected a 2-D array \(N, C\), got shape \(7,\)"):
        loss(np.zeros(7), np.array([1]))
    with pytest.raises(ValueError, match=r"expected a 2-D array \(N, C\), got shape \(3, 7, 1\)"):
        loss(np.zeros((3, 7, 1)), np.array([1, 2, 3]))
    with pytest.raises(ValueError, match=r"label 7 at index 1 is out of range; expected class labels in \[0, 7\)"):
        loss(x, np.array([0, 7, 2]))
    with pytest.raises(ValueError, match=r"label -1 at index 2 is out of range"):
        loss(x, np.array([0, 1, -1]))
    with pytest.raises(ValueError, match=r"expected labels of shape \(3,\)"):
        loss(x, np.array([0, 1]))
    with pytest.raises(ValueError, match=r"expected labels of shape \(3,\)"):
        loss(x, np.array([[0], [1], [2]]))
    with pytest.raises(TypeError, match="integer class labels"):
        loss(x, np.array([0.0, 1.0, 2.0]))
    with pytest.raises(TypeError, match="float32 or float64"):
        loss(np.zeros((3, 7), np.int32), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="non-empty batch"):
        loss(np.zeros((0, 7)), np.zeros(0, np.int64))


@pytest.mark.parametrize("cls", [MSE, L1, BinaryCrossEntropyWithLogits])
def test_elementwise_losses_validate_shapes(cls):
    with pytest.raises(ValueError, match=r"expected the shape of logits \(3, 2\), got \(2, 3\)"):
        cls()(np.zeros((3, 2)), np.zeros((2, 3)))


def test_bce_rejects_targets_outside_unit_interval():
    with pytest.raises(ValueError, match=r"targets in \[0, 1\]"):
        BinaryCrossEntropyWithLogits()(np.zeros(3), np.array([0.0, 1.5, 1.0]))


@pytest.mark.parametrize("loss,target", [(SoftmaxCrossEntropy, np.array([0, 1])), (MSE, np.zeros((2, 3))),
                                         (MulticlassHinge, np.array([0, 1])), (L1, np.zeros((2, 3))),
                                         (BinaryCrossEntropyWithLogits, np.zeros((2, 3)))])
def test_non_finite_loss_raises_with_hint_unless_disabled(loss, target):
    x = np.zeros((2, 3))
    x[1, 2] = np.nan
    with pytest.raises(FloatingPointError, match="learning rate is probably too high"):
        loss()(x, target)
    with np.errstate(invalid="ignore"):
        value, _ = loss(check_finite=False)(x, target)
    assert math.isnan(value)
