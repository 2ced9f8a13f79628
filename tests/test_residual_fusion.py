"""A ResNet block's tail fused into its last batchnorm: y = max(0, BN(x) + residual) in BN's
normalize pass, and the residual's gradient (dy masked by y > 0) written in BN's dx pass. Every
backend against the reference, the reference against the unfused ops, bit-identity with the
unfused kernels of the same backend, and nn.Residual's fused path against its unfused one."""
import numpy as np
import pytest

import fasttrain as ft
from fasttrain import backend
from fasttrain.check import gradcheck
from fasttrain.kernels import batchnorm as ref
from fasttrain.nn import BatchNorm2d, Conv2d, ReLU, Residual, Sequential

# channels 1, 3, 5, 17; batch 1; odd planes; S = 1
SHAPES = [(1, 3, 5, 7), (4, 1, 3, 3), (2, 5, 1, 1), (3, 17, 4, 5), (2, 3, 9, 1)]


def _cases(op):
    return [pytest.param(b, id=b) for b in backend.available_backends_for(op)]


def _data(shape, seed):
    rng = np.random.default_rng(seed)
    c = shape[1]
    return (rng.standard_normal(shape) * 2 + 1, rng.standard_normal(shape), rng.standard_normal(shape),
            rng.uniform(0.5, 1.5, c), rng.standard_normal(c))


@pytest.mark.parametrize("relu", [True, False], ids=["relu", "linear"])
@pytest.mark.parametrize("shape", SHAPES)
def test_reference_equals_batchnorm_then_add_then_relu(shape, relu):
    x, r, dy, g, b = _data(shape, 0)
    c = shape[1]
    pre, m, i = np.empty_like(x), np.empty(c), np.empty(c)
    ref.batchnorm_fwd_train_ref(x, g, b, 1e-5, pre, m, i)
    want = np.maximum(pre + r, 0) if relu else pre + r
    y, m2, i2 = np.empty_like(x), np.empty(c), np.empty(c)
    ref.batchnorm_fwd_train_ref(x, g, b, 1e-5, y, m2, i2, relu, residual=r)
    np.testing.assert_array_equal(y, want)
    g_sum = dy * (want > 0) if relu else dy  # the gradient reaching the sum
    dx0, dg0, db0 = np.empty_like(x), np.zeros(c), np.zeros(c)
    ref.batchnorm_bwd_ref(x, g_sum, g, m, i, dx0, dg0, db0)
    dx, dg, db, dres = np.empty_like(x), np.zeros(c), np.zeros(c), np.full_like(x, np.nan)
    ref.batchnorm_bwd_ref(x, dy, g, m, i, dx, dg, db, y if relu else None, dres=dres)
    for got, exp in ((dx, dx0), (dg, dg0), (db, db0), (dres, g_sum)):
        np.testing.assert_array_equal(got, exp)


@pytest.mark.parametrize("relu", [True, False], ids=["relu", "linear"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", _cases("batchnorm_bwd"))
def test_backend_matches_reference(name, shape, relu):
    x64, r64, dy64, g64, b64 = _data(shape, 1)
    c = shape[1]
    ey, em, ei = np.empty_like(x64), np.empty(c), np.empty(c)
    ref.batchnorm_fwd_train_ref(x64, g64, b64, 1e-5, ey, em, ei, relu, residual=r64)
    x, r, dy, g, b = (a.astype(np.float32) for a in (x64, r64, dy64, g64, b64))
    k = lambda op: backend.kernel(op, backend=name)  # noqa: E731
    y, m, i = np.full_like(x, np.nan), np.full(c, np.nan, np.float32), np.full(c, np.nan, np.float32)
    k("batchnorm_fwd_train")(x, g, b, 1e-5, y, m, i, relu, residual=r)
    np.testing.assert_allclose(y, ey, rtol=1e-4, atol=1e-4)
    # backward from the backend's own forward (the ReLU mask is its y), against the reference's on it
    edx, edg, edb, edres = np.empty_like(x64), np.zeros(c), np.zeros(c), np.empty_like(x64)
    ref.batchnorm_bwd_ref(x64, dy64, g64, m.astype(np.float64), i.astype(np.float64), edx, edg, edb,
                          y.astype(np.float64) if relu else None, dres=edres)
    dx, dg, db, dres = np.full_like(x, np.nan), np.zeros(c, np.float32), np.zeros(c, np.float32), np.full_like(x, np.nan)
    k("batchnorm_bwd")(x, dy, g, m, i, dx, dg, db, y if relu else None, dres=dres)
    scale = np.abs(g64).max() * np.abs(dy64).max() * float(i.max())
    np.testing.assert_allclose(dx, edx, rtol=1e-4, atol=1e-5 * scale)
    np.testing.assert_allclose(dg, edg, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(db, edb, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(dres, edres.astype(np.float32))
    # eval forward
    rm, rv = np.linspace(-1, 1, c), np.linspace(0.5, 2, c)
    want = np.empty_like(x64)
    ref.batchnorm_fwd_eval_ref(x64, g64, b64, rm, rv, 1e-5, want, relu, residual=r64)
    ye = np.full_like(x, np.nan)
    k("batchnorm_fwd_eval")(x, g, b, rm.astype(np.float32), rv.astype(np.float32), 1e-5, ye, relu, residual=r)
    np.testing.assert_allclose(ye, want, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("name", _cases("batchnorm_bwd"))
def test_backend_fused_is_bit_identical_to_its_unfused_kernels(name):
    """The fusion must be a pure speedup: the same bits as BN, a float32 add and relu of that backend
    (Numba's kernels may reassociate sums (fastmath reassoc), so there: within float32 rounding)."""
    x64, r64, dy64, g64, b64 = _data((4, 5, 7, 3), 2)
    x, r, dy, g, b = (a.astype(np.float32) for a in (x64, r64, dy64, g64, b64))
    k = lambda op: backend.kernel(op, backend=name)  # noqa: E731
    pre, m0, i0 = np.empty_like(x), np.empty(5, np.float32), np.empty(5, np.float32)
    k("batchnorm_fwd_train")(x, g, b, 1e-5, pre, m0, i0)
    s = pre + r
    y0, ds = np.empty_like(x), np.empty_like(x)
    k("relu_fwd")(s, y0)
    k("relu_bwd")(s, dy, ds)
    dx0, dg0, db0 = np.empty_like(x), np.zeros(5, np.float32), np.zeros(5, np.float32)
    k("batchnorm_bwd")(x, ds, g, m0, i0, dx0, dg0, db0)
    y1, m1, i1 = np.empty_like(x), np.empty(5, np.float32), np.empty(5, np.float32)
    k("batchnorm_fwd_train")(x, g, b, 1e-5, y1, m1, i1, True, residual=r)
    dx1, dg1, db1, dres = np.empty_like(x), np.zeros(5, np.float32), np.zeros(5, np.float32), np.empty_like(x)
    k("batchnorm_bwd")(x, dy, g, m1, i1, dx1, dg1, db1, y1, dres=dres)
    for a, c in ((y0, y1), (m0, m1), (i0, i1), (dx0, dx1), (dg0, dg1), (db0, db1), (ds, dres)):
        if name == "numba":
            np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-6, err_msg=name)
        else:
            np.testing.assert_array_equal(a, c, err_msg=name)


def test_cpp_rejects_a_residual_aliasing_the_output():
    C = pytest.importorskip("fasttrain._C", reason="C++ module not built")
    x, y = np.ones((2, 3, 4, 4), np.float32), np.empty((2, 3, 4, 4), np.float32)
    g, b, m, i = (np.ones(3, np.float32) for _ in range(4))
    with pytest.raises(ValueError, match="residual"):
        C.batchnorm_fwd_train(x, g, b, 1e-5, y, m, i, True, residual=y)
    with pytest.raises(ValueError, match="residual"):
        C.batchnorm_fwd_train(x, g, b, 1e-5, y, m, i, True, residual=np.ones(5, np.float32))


def _block(cin, cout, stride, post, dtype):
    body = Sequential(Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), BatchNorm2d(cout, relu=True),
                      Conv2d(cout, cout, 3, padding=1, bias=False), BatchNorm2d(cout))
    short = (Sequential(Conv2d(cin, cout, 1, stride=stride, bias=False), BatchNorm2d(cout))
             if stride != 1 or cin != cout else None)
    block = Residual(body, short, post=ReLU() if post else None)
    arena = ft.ParamArena.for_model(block, seed=3, dtype=dtype)
    return block, arena


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("cin,cout,stride", [(3, 3, 1), (3, 5, 2)])
def test_residual_block_fused_equals_unfused(cin, cout, stride, training):
    x = np.random.default_rng(4).standard_normal((2, cin, 7, 6)).astype(np.float32)
    outs = []
    for fused in (True, False):
        block, arena = _block(cin, cout, stride, True, np.float32)
        assert block._fused_tail() is not None
        if not fused:
            block._fused_tail = lambda: None  # this instance takes the add-then-ReLU path
        block.train(training)
        y = block.forward(x)
        dy = np.random.default_rng(5).standard_normal(y.shape).astype(np.float32)
        arena.zero_grad()
        dx = block.backward(dy)
        outs.append((y, dx, arena.grad.copy()))
    for a, b in zip(*outs):
        # float32 rounding at the arrays' scale: on the blocked layout the fused and unfused tails
        # run different kernels (the add inside or after the normalize pass)
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6 * max(1.0, float(np.abs(b).max())))
    assert (outs[0][0] == 0).any() and (outs[0][0] > 0).any()  # the ReLU's mask mattered


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_residual_block_fused_gradcheck(training):
    """Without the ReLU (no kink for central differences) the fused add's gradients, shortcut included."""
    block, _ = _block(2, 3, 2, False, np.float64)
    assert block._fused_tail() is not None
    block.train(training)
    x = np.random.default_rng(6).standard_normal((2, 2, 5, 4))
    for result in gradcheck(block, x, tol=1e-6):
        assert result.passed, str(result)


_SIM_CHECK = """
import numpy as np
from fasttrain.kernels import batchnorm as ref
from fasttrain.kernels.numba import cuda_batchnorm as k
rng = np.random.default_rng(0)
x, r, dy = (rng.standard_normal((2, 3, 5, 4)).astype(np.float32) for _ in range(3))
g, b = rng.uniform(0.5, 1.5, 3).astype(np.float32), rng.standard_normal(3).astype(np.float32)
for relu in (True, False):
    ey, em, ei = np.empty_like(x, np.float64), np.empty(3), np.empty(3)
    ref.batchnorm_fwd_train_ref(x.astype(np.float64), g, b, 1e-5, ey, em, ei, relu, residual=r.astype(np.float64))
    y, m, i = np.empty_like(x), np.empty(3, np.float32), np.empty(3, np.float32)
    k.batchnorm_fwd_train(x, g, b, 1e-5, y, m, i, relu, residual=r)
    np.testing.assert_allclose(y, ey, rtol=1e-4, atol=1e-4)
    edx, edres = np.empty_like(x, np.float64), np.empty_like(x, np.float64)
    ref.batchnorm_bwd_ref(x.astype(np.float64), dy.astype(np.float64), g, m, i, edx, np.zeros(3), np.zeros(3),
                          y.astype(np.float64) if relu else None, dres=edres)
    dx, dres = np.empty_like(x), np.empty_like(x)
    k.batchnorm_bwd(x, dy, g, m, i, dx, np.zeros(3, np.float32), np.zeros(3, np.float32), y if relu else None, dres=dres)
    np.testing.assert_allclose(dx, edx, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(dres, edres.astype(np.float32))
    ye, we = np.empty_like(x), np.empty_like(x, np.float64)
    rm, rv = np.linspace(-1, 1, 3).astype(np.float32), np.linspace(0.5, 2, 3).astype(np.float32)
    ref.batchnorm_fwd_eval_ref(x.astype(np.float64), g, b, rm, rv, 1e-5, we, relu, residual=r.astype(np.float64))
    k.batchnorm_fwd_eval(x, g, b, rm, rv, 1e-5, ye, relu, residual=r)
    np.testing.assert_allclose(ye, we, rtol=1e-4, atol=1e-4)
print("ok")
"""


def test_numba_cuda_fused_residual_on_the_simulator():
    """numba-cuda's kernels (no GPU here: numba's CUDA simulator runs them on host arrays)."""
    import os
    import subprocess
    import sys

    pytest.importorskip("numba")
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    run = subprocess.run([sys.executable, "-c", _SIM_CHECK], env=env, capture_output=True, text=True, timeout=600)
    if "CudaSupportError" in run.stderr or "simulator" in run.stderr.lower() and run.returncode:
        pytest.skip(f"numba's CUDA simulator is unavailable: {run.stderr.strip()[-300:]}")
    assert run.returncode == 0 and "ok" in run.stdout, run.stdout[-2000:] + run.stderr[-3000:]
