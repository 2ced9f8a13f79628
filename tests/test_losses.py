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


# ---- SoftmaxCrossEntropy with PyTorch's options (weight, label_smoothing, ignore_index, reduction) ----

def naive_weighted_xent_rows(x, y, w, eps, ignore):
    """Each row's loss from the definition: target distribution (1 - eps) onehot(y) + eps / C,
    each class term weighted by its w_c; 0 for an ignored row."""
    out = []
    for row, label in zip(x, y):
        if label == ignore:
            out.append(0.0)
            continue
        lse = math.log(sum(math.exp(v) for v in row))
        c = len(row)
        out.append(sum(((1 - eps) * (j == label) + eps / c) * w[j] * (lse - row[j]) for j in range(c)))
    return np.array(out)


XENT_OPTIONS = {  # name: (weight?, label_smoothing, ignore some rows?, reduction)
    "weight-mean": (True, 0.0, False, "mean"), "weight-ignore-mean": (True, 0.0, True, "mean"),
    "smooth-mean": (False, 0.2, False, "mean"), "all-mean": (True, 0.3, True, "mean"),
    "all-sum": (True, 0.3, True, "sum"), "all-none": (True, 0.3, True, "none"),
    "ignore-sum": (False, 0.0, True, "sum"), "none": (False, 0.0, False, "none"),
    "smooth1-sum": (True, 1.0, False, "sum"),
}


def _xent_case(option, shape, seed=5, ignore=-100):
    use_w, eps, use_ignore, reduction = XENT_OPTIONS[option]
    x, y = _classes(*shape, seed=seed)
    rng = np.random.default_rng(seed + 1)
    if use_ignore and len(y) > 1:
        y[::3] = ignore
    w = rng.uniform(0.2, 2.0, shape[1]) if use_w else None
    return x, y, w, eps, reduction


@pytest.mark.parametrize("option", list(XENT_OPTIONS))
@pytest.mark.parametrize("shape", CLASS_SHAPES)
def test_xent_options_value_from_the_definition_and_gradcheck(option, shape):
    x, y, w, eps, reduction = _xent_case(option, shape)
    loss = SoftmaxCrossEntropy(weight=w, label_smoothing=eps, reduction=reduction)
    value, d = loss(x, y)
    rows = naive_weighted_xent_rows(x, y, np.ones(shape[1]) if w is None else w, eps, -100)
    keep = y != -100
    if reduction == "none":
        np.testing.assert_allclose(value, rows, rtol=1e-12, atol=1e-14)
        assert d.shape == x.shape
    else:
        denom = (np.ones(shape[1]) if w is None else w)[y[keep]].sum() if reduction == "mean" else 1.0
        assert value == pytest.approx(rows.sum() / denom, rel=1e-12)
        # a wider step than the default: tiny gradient entries (p_j ~ 1e-6) against a loss of ~10
        # leave the default step's central difference at the rounding noise of the value
        r = gradcheck_loss(loss, x, y, eps=1e-4)
        assert r.passed, str(r)
    assert np.all(d[~keep] == 0)


@pytest.mark.parametrize("name", backend.available_backends_for("softmax_xent_weighted"))
@pytest.mark.parametrize("option", list(XENT_OPTIONS))
@pytest.mark.parametrize("shape", CLASS_SHAPES + [(64, 10), (3, 1000)])
def test_every_backend_softmax_xent_weighted_matches_reference_float32(name, option, shape):
    x64, y, w, eps, _ = _xent_case(option, shape, seed=4)
    x = x64.astype(np.float32)
    w32 = (np.ones(shape[1]) if w is None else w).astype(np.float32)
    scale = 0.37
    want, want_rows = np.empty_like(x64), np.empty(shape[0])
    ref.softmax_xent_weighted_ref(x.astype(np.float64), y, w32.astype(np.float64), eps, -100, scale, want,
                                  want_rows)
    d, rows = np.full_like(x, np.nan), np.full(shape[0], np.nan)
    backend.kernel("softmax_xent_weighted", backend=name)(x, y.astype(np.int64), w32, eps, -100, scale, d, rows)
    np.testing.assert_allclose(rows, want_rows, rtol=1e-5, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(d, want, rtol=1e-5, atol=1e-7, err_msg=name)


@pytest.mark.parametrize("name", backend.CPU_ORDER)
@pytest.mark.parametrize("option", list(XENT_OPTIONS))
def test_xent_options_match_torch(name, option):
    """The loss and its gradient on each backend against torch.nn.functional.cross_entropy
    (float64 reference backend: to rounding; float32 backends: to float32 tolerance)."""
    torch = pytest.importorskip("torch")
    if name not in backend.available_backends_for("softmax_xent_weighted"):
        pytest.skip(f"backend {name!r}: {backend.backends().get(name)}")
    x, y, w, eps, reduction = _xent_case(option, (13, 7), seed=8)
    dtype = np.float64 if name == "numpy" else np.float32
    tol = dict(rtol=1e-10, atol=1e-12) if name == "numpy" else dict(rtol=2e-5, atol=1e-6)
    xt = torch.tensor(x.astype(dtype), requires_grad=True)
    wt = None if w is None else torch.tensor(w.astype(dtype))
    lt = torch.nn.functional.cross_entropy(xt, torch.tensor(y), weight=wt, label_smoothing=eps, reduction=reduction)
    lt.sum().backward()  # 'none': the sum's gradient is each row's own gradient
    before = backend.get_backend()
    backend.set_backend(name)
    try:
        value, d = SoftmaxCrossEntropy(weight=w, label_smoothing=eps, reduction=reduction)(x.astype(dtype), y)
    finally:
        backend.set_backend(before)
    np.testing.assert_allclose(value, lt.detach().numpy(), **tol)
    np.testing.assert_allclose(d, xt.grad.numpy(), **tol)


def test_xent_default_ignore_index_and_all_ignored():
    x, y = _classes(4, 5)
    y[1] = -100  # PyTorch's default ignore_index
    value, d = SoftmaxCrossEntropy()(x, y)
    keep = y != -100
    want, _ = SoftmaxCrossEntropy()(x[keep], y[keep])
    assert value == pytest.approx(want, rel=1e-12) and np.all(d[1] == 0)
    value, d = SoftmaxCrossEntropy(check_finite=False)(x, np.full(4, -100))
    assert math.isnan(value) and np.all(d == 0)  # 0 / 0 as PyTorch; nothing to learn from
    with pytest.raises(FloatingPointError):
        SoftmaxCrossEntropy()(x, np.full(4, -100))
    value, d = SoftmaxCrossEntropy(ignore_index=3)(x, np.array([3, 0, 3, 1]))
    want, _ = SoftmaxCrossEntropy()(x[[1, 3]], np.array([0, 1]))
    assert value == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("kw,shape,labels,err,match", [
    (dict(reduction="avg"), (2, 3), [0, 1], ValueError, r"SoftmaxCrossEntropy\(reduction\): expected one of"),
    (dict(label_smoothing=1.5), (2, 3), [0, 1], ValueError, r"label_smoothing\): expected a number in \[0, 1\]"),
    (dict(ignore_index=1.0), (2, 3), [0, 1], TypeError, r"ignore_index\): expected an int"),
    (dict(weight=[[1.0]]), (2, 3), [0, 1], ValueError, r"weight\): expected a 1-D array"),
    (dict(weight=[1.0, np.nan, 1.0]), (2, 3), [0, 1], ValueError, r"non-finite"),
    (dict(weight=[1.0, 2.0]), (2, 3), [0, 1], ValueError, r"weight\): expected 3 class weights .* got 2"),
    (dict(), (2, 3), [0, -1], ValueError, r"label -1 at index 1 is out of range; expected class labels in "
                                          r"\[0, 3\) or the ignore_index -100"),
])
def test_xent_option_errors(kw, shape, labels, err, match):
    with pytest.raises(err, match=match):
        SoftmaxCrossEntropy(**kw)(np.zeros(shape), np.array(labels))
