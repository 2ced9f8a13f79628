"""The vectorizable exp/expm1/tanh of the fast CPU backends, on each: csrc/include/fasttrain/vmath.h
(C++) and its port fasttrain/kernels/numba/_vmath.py (Numba). Error in ulps over a dense sweep of
float32 inputs against float64 math, special values (+-inf, NaN, overflow and underflow
thresholds, subnormals), and the kernels built on them (sigmoid, tanh, ELU, softmax
cross-entropy) at extreme inputs."""
import functools
import math
from types import SimpleNamespace

import numpy as np
import pytest

from fasttrain.kernels import activations as act_ref
from fasttrain.kernels import losses as loss_ref
from fasttrain.losses import SoftmaxCrossEntropy


def _cpp():
    C = pytest.importorskip("fasttrain._C", reason="the C++ module is not built")
    return SimpleNamespace(exp=C.vmath_exp, expm1=C.vmath_expm1, tanh_fwd=C.tanh_fwd,
                           sigmoid_fwd=C.sigmoid_fwd, elu_fwd=C.elu_fwd, elu_bwd=C.elu_bwd,
                           softmax_xent=C.softmax_xent)


@functools.cache
def _numba():
    nb = pytest.importorskip("numba", reason="numba is not installed")
    from fasttrain.kernels.numba import _vmath, activations, losses

    # element-wise loops shaped like the kernels' (prange, error_model='numpy'), so the sweep runs
    # the vectorized code and its scalar remainder as the kernels do
    def loop(f):
        @nb.njit(parallel=True, error_model="numpy")
        def run(x, y):
            for i in nb.prange(x.size):
                y[i] = f(x[i])
        return run

    return SimpleNamespace(exp=loop(_vmath.exp_f32), expm1=loop(_vmath.expm1_f32),
                           tanh_fwd=activations.tanh_fwd, sigmoid_fwd=activations.sigmoid_fwd,
                           elu_fwd=activations.elu_fwd, elu_bwd=activations.elu_bwd,
                           softmax_xent=losses.softmax_xent)


@pytest.fixture(params=["cpp", "numba"])
def vm(request):
    return {"cpp": _cpp, "numba": _numba}[request.param]()


FLT_MAX = float(np.finfo(np.float32).max)
# Bounds measured over every float32 input (csrc/include/fasttrain/vmath.h), with a little room. The
# Numba port gave the same bits as the C++ on every float32 input (both contract to FMA; x86-64
# with AVX-512), so the same bounds hold for it.
MAX_ULP = {"exp": 1.1, "expm1": 1.6, "tanh": 2.6, "sigmoid": 2.6}


def _bits(v):
    return int(np.array(v, np.float32).view(np.uint32))


def _sweep(pos_max, neg_max, stride=1009):
    """Every stride-th float32 bit pattern in [0, pos_max] and [-neg_max, 0], plus every 7th
    float in [1, 2) (all mantissa patterns of one binade, sampled densely)."""
    pos = np.arange(0, _bits(pos_max), stride, dtype=np.uint32).view(np.float32)
    neg = -np.arange(0, _bits(neg_max), stride, dtype=np.uint32).view(np.float32)
    one_two = np.arange(_bits(1.0), _bits(2.0), 7, dtype=np.uint32).view(np.float32)
    return np.concatenate([pos, neg, one_two, -one_two])


def ulp_error(got, exact):
    """|got - exact| in units of the float32 ulp at exact (2^-149 in the subnormal range)."""
    a = np.abs(exact)
    _, e = np.frexp(a)                                   # a = m 2^e, m in [0.5, 1)
    ulp = np.where(a < 2.0 ** -126, 2.0 ** -149, np.ldexp(1.0, e - 24))
    return np.abs(got.astype(np.float64) - exact) / ulp


def _run(fn, x):
    y = np.full_like(x, np.nan)
    fn(x, y)
    return y


COPIES = 41   # odd: the copies start at every offset modulo the vector widths


def _run_wide(fn, x):
    """fn over COPIES back-to-back copies of a short x, so that every value also passes through the
    vector lanes of the loop (a short array runs in its scalar remainder only); the copies must
    agree. Returns the first copy's result."""
    y = _run(fn, np.tile(x, COPIES)).reshape(COPIES, x.size)
    np.testing.assert_array_equal(y, np.broadcast_to(y[0], y.shape), err_msg="vector vs scalar lanes")
    return y[0]


def _check_ulps(name, x, got, exact):
    finite = np.abs(exact) <= FLT_MAX
    assert np.all(np.isinf(got[~finite]) & (np.sign(got[~finite]) == np.sign(exact[~finite]))), \
        f"{name}: results beyond FLT_MAX must overflow to inf"
    err = ulp_error(got[finite], exact[finite])
    worst = int(np.argmax(err))
    assert err[worst] <= MAX_ULP[name], \
        f"{name}: {err[worst]:.3f} ulp at x = {x[finite][worst]!r} (bound {MAX_ULP[name]})"


def test_exp_ulp_error_over_a_dense_sweep(vm):
    x = _sweep(89.0, 104.0)
    _check_ulps("exp", x, _run(vm.exp, x), np.exp(x.astype(np.float64)))


def test_expm1_ulp_error_over_a_dense_sweep(vm):
    x = _sweep(89.0, 40.0)
    _check_ulps("expm1", x, _run(vm.expm1, x), np.expm1(x.astype(np.float64)))


def test_tanh_and_sigmoid_ulp_error_over_a_dense_sweep(vm):
    x = _sweep(12.0, 120.0, stride=211)
    x64 = x.astype(np.float64)
    _check_ulps("tanh", x, _run(vm.tanh_fwd, x), np.tanh(x64))
    e = np.exp(-np.abs(x64))
    _check_ulps("sigmoid", x, _run(vm.sigmoid_fwd, x), np.where(x64 >= 0, 1 / (1 + e), e / (1 + e)))


def test_tiny_inputs_keep_full_relative_accuracy(vm):
    # tanh(x) ~ x and expm1(x) ~ x: no cancellation, down to subnormal x
    x = np.concatenate([np.geomspace(1e-40, 0.3, 4001, dtype=np.float32), np.float32([1e-45, 0.0])])
    x = np.concatenate([x, -x])
    x64 = x.astype(np.float64)
    _check_ulps("tanh", x, _run(vm.tanh_fwd, x), np.tanh(x64))
    _check_ulps("expm1", x, _run(vm.expm1, x), np.expm1(x64))


def test_exp_overflow_and_underflow_thresholds(vm):
    below_max = np.nextafter(np.float32(math.log(FLT_MAX)), np.float32(0))  # 88.72283
    x = np.array([below_max, np.nextafter(below_max, np.float32(100)), 89.0, 1e30], np.float32)
    y = _run_wide(vm.exp, x)
    assert np.isfinite(y[0]) and y[0] > 1.7e38
    assert np.all(np.isinf(y[1:]))
    # smallest subnormal 2^-149 = exp(-103.279); results below half of it round to 0
    x = np.array([-103.27, -103.9, -103.98, -104.0, -1e30], np.float32)
    y = _run_wide(vm.exp, x)
    assert y[0] == np.float32(2.0 ** -149) and y[1] == np.float32(2.0 ** -149)
    np.testing.assert_array_equal(y[2:], 0.0)


def test_subnormal_results_are_rounded_not_flushed(vm):
    x = np.linspace(-103.2, -87.4, 20001, dtype=np.float32)
    y = _run(vm.exp, x)
    err = np.abs(y.astype(np.float64) - np.exp(x.astype(np.float64))) / 2.0 ** -149
    assert y.min() > 0 and err.max() <= 1.0


def test_special_values(vm):
    x = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0], np.float32)
    np.testing.assert_array_equal(_run_wide(vm.exp, x), [np.inf, 0.0, np.nan, 1.0, 1.0])
    np.testing.assert_array_equal(_run_wide(vm.expm1, x), [np.inf, -1.0, np.nan, 0.0, 0.0])
    y = _run_wide(vm.tanh_fwd, x)
    np.testing.assert_array_equal(y, [1.0, -1.0, np.nan, 0.0, -0.0])
    assert np.signbit(y[4])
    np.testing.assert_array_equal(_run_wide(vm.sigmoid_fwd, x), [1.0, 0.0, np.nan, 0.5, 0.5])


# -- the kernels at extreme inputs, against the reference in float64 --------------------------------
EXTREME = np.array([-np.inf, -1e30, -1e4, -104.0, -88.0, -30.0, -9.5, -1e-3, -1e-30, -1e-45, -0.0,
                    0.0, 1e-45, 1e-30, 1e-3, 9.5, 30.0, 88.0, 104.0, 1e4, 1e30, np.inf, np.nan],
                   np.float32)
EXTREME_WIDE = np.tile(EXTREME, COPIES)   # through the vector lanes too (see _run_wide)


def _ref32(fn, *inputs):
    """The float64 reference rounded once to float32."""
    *arrays, out = [np.asarray(a, np.float64) for a in inputs[:-1]] + [np.empty(inputs[0].shape)]
    with np.errstate(all="ignore"):
        fn(*arrays, out, *inputs[-1])
    return out.astype(np.float32)


def _close(got, want, what):
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=what)  # NaN in, NaN out only
    # a few ulps in relative terms; one subnormal step where the result is subnormal
    np.testing.assert_allclose(got, want, rtol=4e-7, atol=2.0 ** -149, err_msg=what)


@pytest.mark.parametrize("op,args", [("sigmoid_fwd", ()), ("tanh_fwd", ()), ("elu_fwd", (0.7,))])
def test_forward_kernels_at_extreme_inputs(op, args, vm):
    got = np.full_like(EXTREME_WIDE, -7.0)
    getattr(vm, op)(EXTREME_WIDE, got, *args)
    _close(got, _ref32(getattr(act_ref, f"{op}_ref"), EXTREME_WIDE, args), op)


def test_elu_backward_at_extreme_inputs(vm):
    dy = np.linspace(-2, 3, EXTREME_WIDE.size).astype(np.float32)
    got = np.full_like(EXTREME_WIDE, -7.0)
    vm.elu_bwd(EXTREME_WIDE, dy, got, 0.7)
    _close(got, _ref32(act_ref.elu_bwd_ref, EXTREME_WIDE, dy, (0.7,)), "elu_bwd")


@pytest.mark.parametrize("copies", [1, COPIES])   # COPIES: rows wide enough for the vector loops
def test_softmax_xent_with_masked_and_huge_logits_matches_reference(copies, vm):
    # -inf logits (masked classes) are legal as long as the label's logit is finite
    x = np.array([[-np.inf, 0.5, -np.inf, 2.0], [1e30, -1e30, 0.0, 80.0], [-90.0, -95.0, -200.0, -103.9]],
                 np.float32)
    x = np.tile(x, (1, copies))
    labels = np.array([1, 3, 2], np.int64)
    d = np.full_like(x, np.nan)
    loss = vm.softmax_xent(x, labels, d)
    want = np.empty(x.shape)
    with np.errstate(all="ignore"):
        want_loss = loss_ref.softmax_xent_ref(x.astype(np.float64), labels, want)
    assert loss == pytest.approx(want_loss, rel=1e-6)   # row 1's label is 1e30 below the max
    np.testing.assert_allclose(d, want, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("c,col", [(5, 2), (1000, 0), (1000, 517), (1000, 999)])  # wide: vector loops
def test_softmax_xent_nan_or_inf_logit_gives_nan_and_the_loss_raises(bad, c, col, vm):
    x = np.random.default_rng(0).standard_normal((3, c)).astype(np.float32)
    x[1, col] = bad
    labels = np.array([0, 1, 4], np.int64)
    assert math.isnan(vm.softmax_xent(x, labels, np.empty_like(x)))
    with pytest.raises(FloatingPointError, match="learning rate is probably too high"):
        SoftmaxCrossEntropy()(x, labels)
