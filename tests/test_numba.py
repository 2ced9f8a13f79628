"""Numba backend specifics: it implements every op of the reference families, dispatch and thread
setting, a large-seed / odd-size dropout bit check, conv2d geometry beyond the shared tests, and
the numba-cuda kernels (fasttrain/kernels/numba/cuda_*.py) against the NumPy reference, on the
CUDA simulator (NUMBA_ENABLE_CUDASIM=1, in a subprocess) and, with CuPy and a GPU, on the device.
The shared test files (test_conv2d.py, test_dropout.py, ...) hold the numba CPU kernels to the
reference op by op through backend.available_backends_for."""
import importlib
import os
import subprocess
import sys

import numpy as np
import pytest

numba = pytest.importorskip("numba", reason="numba is not installed")

from fasttrain import backend  # noqa: E402
from fasttrain.kernels import activations as act_ref  # noqa: E402
from fasttrain.kernels import batchnorm as bn_ref  # noqa: E402
from fasttrain.kernels import conv2d as conv_ref  # noqa: E402
from fasttrain.kernels import dropout as drop_ref  # noqa: E402
from fasttrain.kernels import optim as optim_ref  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.parametrize("family", [f for f in backend.FAMILIES if f not in backend.CPP_ONLY_FAMILIES])
def test_numba_implements_every_reference_op(family):
    ref = importlib.import_module(f"fasttrain.kernels.{family}")
    mod = importlib.import_module(f"fasttrain.kernels.numba.{family}")
    missing = [op for op in ref.OPS if not callable(getattr(mod, op, None))]
    assert not missing, f"numba {family} lacks {missing}"
    for op in ref.OPS:
        assert "numba" in backend.available_backends_for(op)


def test_set_backend_numba_routes_calls():
    old = backend.get_backend()
    try:
        backend.set_backend("numba")
        fn = backend.kernel("relu_fwd", like=np.zeros(1, np.float32))
        assert fn.__module__ == "fasttrain.kernels.numba.activations"
    finally:
        backend.set_backend(old)


def test_thread_setting_reaches_numba():
    old = numba.get_num_threads()
    try:
        backend.kernel("relu_fwd", backend="numba")   # loads the backend
        backend.set_num_threads(1)
        assert numba.get_num_threads() == 1
    finally:
        backend.set_num_threads(old)


def test_thread_setting_reaches_numba_kernels_imported_directly():
    """In a fresh process: the numba kernels imported by module path, not through the registry."""
    code = ("import numba, fasttrain as ft, fasttrain.kernels.numba.activations; "
            "ft.set_num_threads(1); print(numba.get_num_threads())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "FASTTRAIN_THREADS": "2"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == "1"


def test_kernel_modules_get_the_mtime_of_an_edited_helper(tmp_path):
    """Numba's cache would keep a kernel module's old machine code after an edit to a helper it
    inlines; refresh_cache_stamps gives the importers the helper's newer mtime."""
    from fasttrain.kernels.numba import refresh_cache_stamps
    (tmp_path / "_helper.py").write_text("X = 1\n")
    (tmp_path / "kern.py").write_text("import numba\nfrom ._helper import X\n")
    (tmp_path / "plain.py").write_text("import numba\n")
    for name, t in (("kern.py", 1000.0), ("plain.py", 1000.0), ("_helper.py", 2000.0)):
        os.utime(tmp_path / name, (t, t))
    assert refresh_cache_stamps(tmp_path) == ["kern.py"]
    assert os.stat(tmp_path / "kern.py").st_mtime == 2000.0
    assert os.stat(tmp_path / "plain.py").st_mtime == 1000.0
    assert refresh_cache_stamps(tmp_path) == []          # once in step, nothing more to do
    os.utime(tmp_path / "kern.py", (3000.0, 3000.0))     # a newer kernel module is left alone
    assert refresh_cache_stamps(tmp_path) == []


def test_installed_kernel_modules_are_not_older_than_their_helpers():
    from pathlib import Path

    from fasttrain.kernels import numba as nb_kernels
    assert nb_kernels.refresh_cache_stamps(Path(nb_kernels.__file__).parent) == []


@pytest.mark.parametrize("n", [0, 1, 5, 4 * 512 * 2 + 3, 40_001])
def test_dropout_bits_large_seed_and_sub_chunk_edges(n):
    # sizes around the kernel's 512-block sub-chunks and the 2-thread split; a seed > 2^32
    # exercises the key's high word, a step > 2^31 the uint32 counter word
    seed, step, layer, p = (7 << 40) + 12345, 2**31 + 5, 9, 0.3
    x = np.random.default_rng(n).standard_normal(n).astype(np.float32)
    want, got = np.empty_like(x), np.full_like(x, np.nan)
    drop_ref.dropout_fwd_ref(x, want, p, seed, step, layer)
    backend.kernel("dropout_fwd", backend="numba")(x, got, p, seed, step, layer)
    assert np.array_equal(want.view(np.uint32), got.view(np.uint32))
    m_want, m_got = np.empty(n, np.uint8), np.full(n, 7, np.uint8)
    drop_ref.dropout_mask_ref(m_want, p, seed, step, layer)
    backend.kernel("dropout_mask", backend="numba")(m_got, p, seed, step, layer)
    assert np.array_equal(m_want, m_got)


@pytest.mark.parametrize("shape,k,rs,stride,pad", [
    ((1, 1, 1, 1), 1, (1, 1), (1, 1), (0, 0)),
    ((3, 2, 7, 5), 3, (3, 2), (2, 1), (1, 0)),
    ((5, 3, 11, 13), 7, (5, 3), (3, 2), (2, 1)),     # more images than threads, uneven split
    ((2, 4, 6, 6), 2, (3, 3), (2, 2), (3, 3)),       # padding larger than the kernel reach
])
def test_conv2d_awkward_geometry(shape, k, rs, stride, pad):
    rng = np.random.default_rng(3)
    n, c, h, w = shape
    x = rng.standard_normal(shape).astype(np.float32)
    wt = rng.standard_normal((k, c) + rs).astype(np.float32)
    b = rng.standard_normal(k).astype(np.float32)
    p, q = conv_ref.out_size(h, w, *rs, *stride, *pad)
    dy = rng.standard_normal((n, k, p, q)).astype(np.float32)
    nbk = importlib.import_module("fasttrain.kernels.numba.conv2d")
    for relu in (False, True):
        y0, y1 = np.empty((n, k, p, q), np.float32), np.full((n, k, p, q), np.nan, np.float32)
        conv_ref.conv2d_fwd_ref(x, wt, b, y0, *stride, *pad, relu)
        nbk.conv2d_fwd(x, wt, b, y1, *stride, *pad, relu)
        np.testing.assert_allclose(y1, y0, rtol=1e-4, atol=1e-5)
    dx0, dx1 = np.empty_like(x), np.full_like(x, np.nan)
    conv_ref.conv2d_bwd_data_ref(dy, wt, dx0, *stride, *pad)
    nbk.conv2d_bwd_data(dy, wt, dx1, *stride, *pad)
    np.testing.assert_allclose(dx1, dx0, rtol=1e-4, atol=1e-5)
    dw0, db0 = np.ones_like(wt), np.ones_like(b)        # accumulated into
    dw1, db1 = np.ones_like(wt), np.ones_like(b)
    conv_ref.conv2d_bwd_weight_ref(x, dy, dw0, db0, *stride, *pad)
    nbk.conv2d_bwd_weight(x, dy, dw1, db1, *stride, *pad)
    np.testing.assert_allclose(dw1, dw0, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(db1, db0, rtol=1e-5, atol=1e-5)


def test_conv2d_leaves_numpy_blas_threads_unchanged():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    pools = lambda: {d["filepath"]: d["num_threads"] for d in threadpoolctl.threadpool_info()}  # noqa: E731
    before = pools()
    nbk = importlib.import_module("fasttrain.kernels.numba.conv2d")
    x = np.ones((2, 1, 4, 4), np.float32)
    nbk.conv2d_fwd(x, np.ones((1, 1, 3, 3), np.float32), np.zeros(1, np.float32),
                   np.empty((2, 1, 2, 2), np.float32), 1, 1, 0, 0, False)
    after = pools()  # numba may load its own runtime on first use: only the pools seen before count
    assert {path: after[path] for path in before} == before


# -- numba-cuda -----------------------------------------------------------------------------------

def cuda_checks(xp, sizes=(1, 5, 37)):
    """Every numba-cuda kernel against the NumPy reference on arrays of module `xp` (numpy under
    the simulator, cupy on a GPU). Raises AssertionError naming the op on a mismatch."""
    from fasttrain.kernels.numba import cuda_activations, cuda_batchnorm, cuda_dropout, cuda_optim

    def to(a):
        return xp.asarray(a)

    def back(a):
        return a.get() if hasattr(a, "get") else np.asarray(a)

    rng = np.random.default_rng(0)
    tol = dict(rtol=2e-5, atol=1e-6)
    for n in sizes:
        # dropout: bit for bit
        for p in (0.0, 0.5):
            x = rng.standard_normal(n).astype(np.float32)
            want = np.empty_like(x)
            drop_ref.dropout_fwd_ref(x, want, p, (3 << 33) + 11, 4, 2)
            got = to(np.full_like(x, np.nan))
            cuda_dropout.dropout_fwd(to(x), got, p, (3 << 33) + 11, 4, 2)
            assert np.array_equal(back(got).view(np.uint32), want.view(np.uint32)), f"dropout_fwd n={n} p={p}"
            m0, m1 = np.empty(n, np.uint8), to(np.full(n, 9, np.uint8))
            drop_ref.dropout_mask_ref(m0, p, 5, 6, 7)
            cuda_dropout.dropout_mask(m1, p, 5, 6, 7)
            assert np.array_equal(back(m1), m0), f"dropout_mask n={n} p={p}"
        # optimizers: each formula, with both penalties on
        adam = (0.1, 0.9, 0.99, 1e-8, 0.19, 0.0199, 1e-2, 1e-3, 0.05)
        hyper = {"sgd_step": (0.1, 1e-2, 1e-3), "momentum_step": (0.1, 0.9, 0.2, 1e-2, 1e-3),
                 "nesterov_step": (0.1, 0.9, 0.2, 1e-2, 1e-3), "adagrad_step": (0.1, 1e-8, 1e-2, 1e-3),
                 "rmsprop_step": (0.1, 0.9, 1e-8, 1e-2, 1e-3), "rmsprop_centered_step": (0.1, 0.9, 1e-8, 1e-2, 1e-3),
                 "rmsprop_momentum_step": (0.1, 0.9, 1e-8, 0.7, 1e-2, 1e-3),
                 "rmsprop_centered_momentum_step": (0.1, 0.9, 1e-8, 0.7, 1e-2, 1e-3),
                 "adam_step": adam, "adam_amsgrad_step": adam}
        nstate = {"sgd_step": 0, "adam_step": 2, "rmsprop_centered_step": 2, "rmsprop_momentum_step": 2,
                  "rmsprop_centered_momentum_step": 3, "adam_amsgrad_step": 3}
        for op, h in hyper.items():
            k = nstate.get(op, 1)
            arrs = [rng.standard_normal(n).astype(np.float32) for _ in range(2 + k)]
            if k:
                arrs[2] = np.abs(arrs[2]) + 1       # second moments positive
                if op.startswith("adam"):
                    arrs[3] = np.abs(arrs[3]) + 1
                if op == "adam_amsgrad_step":
                    arrs[4] = np.abs(arrs[4]) + 1   # the maximum is the old or the new v
                if op.startswith("rmsprop_centered"):
                    arrs[3] *= 0.1                  # s - mg^2 > 0
            want = [a.copy() for a in arrs]
            getattr(optim_ref, f"{op}_ref")(*want, *h)
            got = [to(a) for a in arrs]
            getattr(cuda_optim, op)(*got, *h)
            for i, (w, g) in enumerate(zip(want, got)):
                np.testing.assert_allclose(back(g), w, **tol, err_msg=f"{op} array {i} n={n}")
        # activations
        x = rng.standard_normal((2, 3, n)).astype(np.float32)
        x.reshape(-1)[0] = 0.0
        dy = rng.standard_normal(x.shape).astype(np.float32)
        for base, a in (("relu", ()), ("leaky_relu", (0.1,)), ("elu", (0.7,)), ("sigmoid", ()), ("tanh", ())):
            y0 = np.empty_like(x)
            getattr(act_ref, f"{base}_fwd_ref")(x, y0, *a)
            y1 = to(np.full_like(x, np.nan))
            getattr(cuda_activations, f"{base}_fwd")(to(x), y1, *a)
            np.testing.assert_allclose(back(y1), y0, **tol, err_msg=f"{base}_fwd n={n}")
            saved = y0 if base in ("sigmoid", "tanh") else x
            d0 = np.empty_like(x)
            getattr(act_ref, f"{base}_bwd_ref")(saved, dy, d0, *a)
            d1 = to(np.full_like(x, np.nan))
            getattr(cuda_activations, f"{base}_bwd")(to(saved), to(dy), d1, *a)
            np.testing.assert_allclose(back(d1), d0, **tol, err_msg=f"{base}_bwd n={n}")
        alpha = rng.uniform(0, 0.5, 3).astype(np.float32)
        y0, dx0, da0 = np.empty_like(x), np.empty_like(x), np.ones(3, np.float32)
        act_ref.prelu_fwd_ref(x, alpha, y0)
        act_ref.prelu_bwd_ref(x, alpha, dy, dx0, da0)
        y1, dx1, da1 = to(np.empty_like(x)), to(np.empty_like(x)), to(np.ones(3, np.float32))
        cuda_activations.prelu_fwd(to(x), to(alpha), y1)
        cuda_activations.prelu_bwd(to(x), to(alpha), to(dy), dx1, da1)
        np.testing.assert_allclose(back(y1), y0, **tol, err_msg=f"prelu_fwd n={n}")
        np.testing.assert_allclose(back(dx1), dx0, **tol, err_msg=f"prelu_bwd dx n={n}")
        np.testing.assert_allclose(back(da1), da0, rtol=1e-5, atol=1e-5, err_msg=f"prelu_bwd dalpha n={n}")
        # batchnorm, x (N, C, H, W)
        xb = (rng.standard_normal((2, 3, n, 2)) * 2 + 1).astype(np.float32)
        dyb = rng.standard_normal(xb.shape).astype(np.float32)
        g, bt = rng.uniform(0.5, 2, 3).astype(np.float32), rng.standard_normal(3).astype(np.float32)
        y0, mu0, is0 = np.empty_like(xb), np.empty(3, np.float32), np.empty(3, np.float32)
        bn_ref.batchnorm_fwd_train_ref(xb, g, bt, 1e-5, y0, mu0, is0)
        y1, mu1, is1 = to(np.empty_like(xb)), to(np.empty(3, np.float32)), to(np.empty(3, np.float32))
        cuda_batchnorm.batchnorm_fwd_train(to(xb), to(g), to(bt), 1e-5, y1, mu1, is1)
        for name, a, b in (("y", y1, y0), ("mean", mu1, mu0), ("invstd", is1, is0)):
            np.testing.assert_allclose(back(a), b, rtol=1e-4, atol=1e-5, err_msg=f"batchnorm_fwd_train {name} n={n}")
        rm, rv = rng.standard_normal(3).astype(np.float32), rng.uniform(0.5, 2, 3).astype(np.float32)
        y0 = np.empty_like(xb)
        bn_ref.batchnorm_fwd_eval_ref(xb, g, bt, rm, rv, 1e-5, y0)
        y1 = to(np.empty_like(xb))
        cuda_batchnorm.batchnorm_fwd_eval(to(xb), to(g), to(bt), to(rm), to(rv), 1e-5, y1)
        np.testing.assert_allclose(back(y1), y0, **tol, err_msg=f"batchnorm_fwd_eval n={n}")
        dx0, dg0, dbt0 = np.empty_like(xb), np.ones(3, np.float32), np.ones(3, np.float32)
        bn_ref.batchnorm_bwd_ref(xb, dyb, g, mu0, is0, dx0, dg0, dbt0)
        dx1, dg1, dbt1 = to(np.empty_like(xb)), to(np.ones(3, np.float32)), to(np.ones(3, np.float32))
        cuda_batchnorm.batchnorm_bwd(to(xb), to(dyb), to(g), to(mu0), to(is0), dx1, dg1, dbt1)
        for name, a, b in (("dx", dx1, dx0), ("dgamma", dg1, dg0), ("dbeta", dbt1, dbt0)):
            np.testing.assert_allclose(back(a), b, rtol=1e-4, atol=1e-4, err_msg=f"batchnorm_bwd {name} n={n}")
        # |mean| / std = 1e4: the variance must not cancel (the bound of test_batchnorm's sweep)
        xc = (rng.standard_normal(xb.shape) * 1e-2 + 1e2).astype(np.float32)
        ic0 = np.empty(3)
        bn_ref.batchnorm_fwd_train_ref(xc.astype(np.float64), g, bt, 1e-5, np.empty(xc.shape), np.empty(3), ic0)
        ic1 = to(np.empty(3, np.float32))
        cuda_batchnorm.batchnorm_fwd_train(to(xc), to(g), to(bt), 1e-5, to(np.empty_like(xc)),
                                           to(np.empty(3, np.float32)), ic1)
        np.testing.assert_allclose(back(ic1), ic0, rtol=8 * np.finfo(np.float32).eps,
                                   err_msg=f"batchnorm_fwd_train invstd at mean/std 1e4 n={n}")
        # fused ReLU: forward max(0, bn), backward masked by that output
        y0, mu0, is0 = np.empty_like(xb), np.empty(3, np.float32), np.empty(3, np.float32)
        bn_ref.batchnorm_fwd_train_ref(xb, g, bt, 1e-5, y0, mu0, is0, True)
        y1 = to(np.empty_like(xb))
        cuda_batchnorm.batchnorm_fwd_train(to(xb), to(g), to(bt), 1e-5, y1, to(mu0.copy()), to(is0.copy()), True)
        np.testing.assert_allclose(back(y1), y0, rtol=1e-4, atol=1e-5, err_msg=f"batchnorm_fwd_train relu n={n}")
        ye0, ye1 = np.empty_like(xb), to(np.empty_like(xb))
        bn_ref.batchnorm_fwd_eval_ref(xb, g, bt, rm, rv, 1e-5, ye0, True)
        cuda_batchnorm.batchnorm_fwd_eval(to(xb), to(g), to(bt), to(rm), to(rv), 1e-5, ye1, True)
        np.testing.assert_allclose(back(ye1), ye0, **tol, err_msg=f"batchnorm_fwd_eval relu n={n}")
        dx0, dg0, dbt0 = np.empty_like(xb), np.ones(3, np.float32), np.ones(3, np.float32)
        bn_ref.batchnorm_bwd_ref(xb, dyb, g, mu0, is0, dx0, dg0, dbt0, y0)
        dx1, dg1, dbt1 = to(np.empty_like(xb)), to(np.ones(3, np.float32)), to(np.ones(3, np.float32))
        cuda_batchnorm.batchnorm_bwd(to(xb), to(dyb), to(g), to(mu0), to(is0), dx1, dg1, dbt1, to(y0))
        for name, a, b in (("dx", dx1, dx0), ("dgamma", dg1, dg0), ("dbeta", dbt1, dbt0)):
            np.testing.assert_allclose(back(a), b, rtol=1e-4, atol=1e-4, err_msg=f"batchnorm_bwd relu {name} n={n}")


def test_numba_cuda_kernels_on_the_simulator():
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    probe = subprocess.run([sys.executable, "-c", "from numba import cuda; print(cuda.is_available())"],
                           env=env, capture_output=True, text=True, timeout=120)
    if probe.returncode != 0 or "True" not in probe.stdout:
        pytest.skip(f"numba's CUDA simulator is unavailable: {probe.stderr.strip()[-300:]}")
    code = f"import sys; sys.path.insert(0, {HERE!r}); import numpy, test_numba; test_numba.cuda_checks(numpy)"
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]


def test_numba_cuda_kernels_on_the_gpu():
    cupy = pytest.importorskip("cupy", reason="CuPy is not installed")
    try:
        if cupy.cuda.runtime.getDeviceCount() == 0:
            pytest.skip("no CUDA device")
    except Exception as exc:   # CuPy raises its own runtime error class when no driver is present
        pytest.skip(f"no CUDA device: {exc}")
    from numba import cuda
    if not cuda.is_available():
        pytest.skip("numba.cuda cannot see the GPU")
    cuda_checks(cupy, sizes=(1, 5, 37, 100_003))
