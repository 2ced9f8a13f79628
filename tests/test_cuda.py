"""The CUDA backend against the NumPy reference. Skipped cleanly without CuPy or a GPU; run on a
GPU machine with `python -m pytest tests/test_cuda.py`."""
import numpy as np
import pytest

import fasttrain as ft
from fasttrain import backend

cupy = pytest.importorskip("cupy")
if ft.backends()["cuda"] != "available":
    pytest.skip(f"cuda backend: {ft.backends()['cuda']}", allow_module_level=True)

pytestmark = pytest.mark.gpu

SIZES = [1, 3, 4, 5, 1023, 1000003]


def _both(op, host_args, out_idx):
    """Run op on the reference (float64 copies) and on the GPU; return (ref outputs, gpu outputs)."""
    ref_args = [a.astype(np.float64) if isinstance(a, np.ndarray) and a.dtype == np.float32 else
                (a.copy() if isinstance(a, np.ndarray) else a) for a in host_args]
    backend.kernel(op, backend="numpy")(*ref_args)
    dev_args = [cupy.asarray(a) if isinstance(a, np.ndarray) else a for a in host_args]
    backend.kernel(op, backend="cuda")(*dev_args)
    return [ref_args[i] for i in out_idx], [cupy.asnumpy(dev_args[i]) for i in out_idx]


@pytest.mark.parametrize("n", SIZES)
def test_dropout_bits_match_reference(n):
    mask = np.empty(n, np.uint8)
    (want,), (got,) = _both("dropout_mask", [mask, 0.3, 2 ** 40 + 7, 11, 5], [0])
    np.testing.assert_array_equal(got, want)
    x = np.random.default_rng(n).standard_normal(n).astype(np.float32)
    (want,), (got,) = _both("dropout_fwd", [x, np.empty_like(x), 0.3, 2 ** 40 + 7, 11, 5], [1])
    np.testing.assert_array_equal(got, want.astype(np.float32))


OPT = {
    "sgd_step": (0, (0.1, 0.01, 0.001)),
    "momentum_step": (1, (0.1, 0.9, 0.01, 0.001)),
    "nesterov_step": (1, (0.1, 0.9, 0.01, 0.001)),
    "adagrad_step": (1, (0.1, 1e-3, 0.01, 0.001)),
    "rmsprop_step": (1, (0.01, 0.9, 1e-3, 0.01, 0.001)),
    "rmsprop_centered_step": (2, (0.01, 0.9, 1e-3, 0.01, 0.001)),
    "adam_step": (2, (1e-3, 0.9, 0.999, 1e-8, 0.271, 0.003, 0.01, 0.001, 0.02)),
}


@pytest.mark.parametrize("op", list(OPT))
@pytest.mark.parametrize("n", SIZES)
def test_optimizers_match_reference(op, n):
    k, hyper = OPT[op]
    rng = np.random.default_rng(n)
    arrays = [rng.standard_normal(n).astype(np.float32) for _ in range(2)]
    states = [np.abs(rng.standard_normal(n)).astype(np.float32) + 0.5 for _ in range(k)]
    if op == "rmsprop_centered_step":
        states[1] *= 0.1
    idx = list(range(2 + k))
    idx.remove(1)
    want, got = _both(op, arrays + states + list(hyper), idx)
    for w, g in zip(want, got):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("op,alpha", [("relu", None), ("leaky_relu", 0.1), ("elu", 1.0), ("sigmoid", None),
                                      ("tanh", None)])
def test_activations_match_reference(op, alpha):
    x = np.random.default_rng(0).standard_normal(100003).astype(np.float32) * 4
    extra = [] if alpha is None else [alpha]
    (want,), (got,) = _both(f"{op}_fwd", [x, np.empty_like(x), *extra], [1])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    a = want.astype(np.float32) if op in ("sigmoid", "tanh") else x
    dy = np.ones_like(x)
    (want,), (got,) = _both(f"{op}_bwd", [a, dy, np.empty_like(x), *extra], [2])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(1, 1, 1, 2), (2, 3, 5, 7), (64, 64, 32, 32), (5, 13)])
def test_batchnorm_matches_reference(shape):
    rng = np.random.default_rng(1)
    c = shape[1]
    x = (rng.standard_normal(shape) * 3 + 1).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    g, b = rng.standard_normal(c).astype(np.float32), rng.standard_normal(c).astype(np.float32)
    mean, inv = np.empty(c, np.float32), np.empty(c, np.float32)
    (y, m, i), (gy, gm, gi) = _both("batchnorm_fwd_train", [x, g, b, 1e-5, np.empty_like(x), mean, inv], [4, 5, 6])
    np.testing.assert_allclose(gy, y, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gm, m, rtol=1e-5, atol=1e-5)
    want, got = _both("batchnorm_bwd", [x, dy, g, m.astype(np.float32), i.astype(np.float32), np.empty_like(x),
                                        np.zeros(c, np.float32), np.zeros(c, np.float32)], [5, 6, 7])
    for w, gg in zip(want, got):
        np.testing.assert_allclose(gg, w, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("n,c", [(1, 2), (7, 10), (128, 1000)])
def test_softmax_xent_matches_reference(n, c):
    rng = np.random.default_rng(2)
    logits = (rng.standard_normal((n, c)) * 5).astype(np.float32)
    labels = rng.integers(0, c, n).astype(np.int64)
    d_ref = np.empty((n, c))
    loss_ref = backend.kernel("softmax_xent", backend="numpy")(logits.astype(np.float64), labels, d_ref)
    d_gpu = cupy.empty((n, c), cupy.float32)
    loss_gpu = backend.kernel("softmax_xent", backend="cuda")(cupy.asarray(logits), cupy.asarray(labels), d_gpu)
    assert loss_gpu == pytest.approx(loss_ref, rel=1e-5)
    np.testing.assert_allclose(cupy.asnumpy(d_gpu), d_ref, rtol=1e-4, atol=1e-6)


def test_auto_backend_picks_cuda_for_cupy_arrays():
    x = cupy.arange(5, dtype=cupy.float32)
    assert backend.kernel("relu_fwd", like=x) is backend.kernel("relu_fwd", backend="cuda")
