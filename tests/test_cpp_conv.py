"""C++ layer kernels (conv2d, linear, batchnorm, pooling): what the per-family tests do not cover.

Argument errors raised by the bindings (ValueError naming the argument, what was got and what was
expected), and thread-count invariance: results must not depend on fasttrain's thread count,
bit for bit where the work splits over independent images/channels/planes, and to float32
round-off where partial sums are combined (conv2d_bwd_weight).
"""
import numpy as np
import pytest

C = pytest.importorskip("fasttrain._C", reason="C++ module not built")

import fasttrain as ft  # noqa: E402
from fasttrain import settings  # noqa: E402

f32 = np.float32


@pytest.fixture
def restore_threads():
    before = settings.num_threads
    yield
    ft.set_num_threads(before)
    C.set_num_threads(before)


def _rand(rng, *shape):
    return rng.standard_normal(shape).astype(f32)


# ---- errors ------------------------------------------------------------------------------

def test_conv2d_rejects_float64_input():
    x = np.zeros((2, 3, 5, 5))
    w = np.zeros((4, 3, 3, 3), f32)
    with pytest.raises(ValueError, match=r"x: expected dtype float32, got float64"):
        C.conv2d_fwd(x, w, np.zeros(4, f32), np.zeros((2, 4, 3, 3), f32), 1, 1, 0, 0, False)


def test_conv2d_rejects_channel_mismatch():
    with pytest.raises(ValueError, match=r"conv2d_fwd\(w\): expected shape \(K, 3, R, S\).*got \(4, 2, 3, 3\)"):
        C.conv2d_fwd(np.zeros((2, 3, 5, 5), f32), np.zeros((4, 2, 3, 3), f32), np.zeros(4, f32),
                     np.zeros((2, 4, 3, 3), f32), 1, 1, 0, 0, False)


def test_conv2d_rejects_wrong_output_shape():
    with pytest.raises(ValueError, match=r"conv2d_fwd\(y\): expected shape \(2, 4, 3, 3\), got \(2, 4, 5, 5\)"):
        C.conv2d_fwd(np.zeros((2, 3, 5, 5), f32), np.zeros((4, 3, 3, 3), f32), np.zeros(4, f32),
                     np.zeros((2, 4, 5, 5), f32), 1, 1, 0, 0, False)


def test_conv2d_rejects_bad_stride_padding_and_window():
    x, w, b = np.zeros((1, 1, 4, 4), f32), np.zeros((1, 1, 3, 3), f32), np.zeros(1, f32)
    y = np.zeros((1, 1, 2, 2), f32)
    with pytest.raises(ValueError, match=r"expected strides >= 1, got \(0, 1\)"):
        C.conv2d_fwd(x, w, b, y, 0, 1, 0, 0, False)
    with pytest.raises(ValueError, match=r"expected paddings >= 0, got \(0, -1\)"):
        C.conv2d_fwd(x, w, b, y, 1, 1, 0, -1, False)
    with pytest.raises(ValueError, match=r"height window 5 does not fit input 4 with padding 0"):
        C.conv2d_fwd(x, np.zeros((1, 1, 5, 1), f32), b, y, 1, 1, 0, 0, False)


def test_non_contiguous_and_readonly_outputs_are_rejected():
    x = np.zeros((2, 3, 6, 6), f32)[:, :, ::2, ::2]
    with pytest.raises(ValueError, match=r"x: expected a C-contiguous array"):
        C.conv2d_fwd(x, np.zeros((1, 3, 1, 1), f32), np.zeros(1, f32), np.zeros((2, 1, 3, 3), f32),
                     1, 1, 0, 0, False)
    y = np.zeros((2, 4), f32)
    y.flags.writeable = False
    with pytest.raises(ValueError, match=r"y: expected a writeable array"):
        C.linear_fwd(np.zeros((2, 3), f32), np.zeros((4, 3), f32), np.zeros(4, f32), y)


def test_linear_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"linear_fwd\(w\): expected shape \(4, 3\), got \(4, 5\)"):
        C.linear_fwd(np.zeros((2, 3), f32), np.zeros((4, 5), f32), np.zeros(4, f32), np.zeros((2, 4), f32))
    with pytest.raises(ValueError, match=r"linear_bwd\(db\): expected shape \(4,\), got \(3,\)"):
        C.linear_bwd(np.zeros((2, 3), f32), np.zeros((4, 3), f32), np.zeros((2, 4), f32),
                     np.zeros((2, 3), f32), np.zeros((4, 3), f32), np.zeros(3, f32))


def test_batchnorm_rejects_per_channel_size():
    x = np.zeros((2, 3, 4, 4), f32)
    with pytest.raises(ValueError, match=r"batchnorm_fwd_train\(gamma\): expected shape \(3,\), got \(4,\)"):
        C.batchnorm_fwd_train(x, np.ones(4, f32), np.zeros(3, f32), 1e-5, np.empty_like(x),
                              np.empty(3, f32), np.empty(3, f32))
    with pytest.raises(ValueError, match=r"batchnorm_fwd_train\(x\): expected shape \(N, C, \.\.\.\), got \(5,\)"):
        C.batchnorm_fwd_train(np.zeros(5, f32), np.ones(5, f32), np.zeros(5, f32), 1e-5,
                              np.empty(5, f32), np.empty(5, f32), np.empty(5, f32))


def test_maxpool_rejects_bad_argmax():
    dy = np.ones((1, 1, 2, 2), f32)
    with pytest.raises(ValueError, match=r"argmax: expected dtype int64, got int32"):
        C.maxpool2d_bwd(dy, np.zeros((1, 1, 2, 2), np.int32), np.empty((1, 1, 4, 4), f32))
    bad = np.array([0, 1, 16, 2], np.int64).reshape(1, 1, 2, 2)
    with pytest.raises(ValueError, match=r"maxpool2d_bwd\(argmax\): expected indices in \[0, 16\), got 16"):
        C.maxpool2d_bwd(dy, bad, np.empty((1, 1, 4, 4), f32))


# ---- thread-count invariance -------------------------------------------------------------

def _run_all(threads, data):
    C.set_num_threads(threads)
    x, w, b, dy, sh, sw, ph, pw = data["conv"]
    y = np.empty(dy.shape, f32)
    C.conv2d_fwd(x, w, b, y, sh, sw, ph, pw, True)
    dx = np.empty_like(x)
    C.conv2d_bwd_data(dy, w, dx, sh, sw, ph, pw)
    dw, db = np.ones_like(w), np.ones_like(b)
    C.conv2d_bwd_weight(x, dy, dw, db, sh, sw, ph, pw)
    bx, g, be, bdy = data["bn"]
    c = g.size
    by, m, iv = np.empty_like(bx), np.empty(c, f32), np.empty(c, f32)
    C.batchnorm_fwd_train(bx, g, be, 1e-5, by, m, iv)
    bdx, dg, dbe = np.empty_like(bx), np.zeros(c, f32), np.zeros(c, f32)
    C.batchnorm_bwd(bx, bdy, g, m, iv, bdx, dg, dbe)
    px = data["pool"]
    py = np.empty((px.shape[0], px.shape[1], 4, 4), f32)
    am = np.empty(py.shape, np.int64)
    C.maxpool2d_fwd(px, py, am, 3, 3, 2, 2, 1, 1)
    pdx = np.empty_like(px)
    C.maxpool2d_bwd(py, am, pdx)
    ay = np.empty_like(py)
    C.avgpool2d_fwd(px, ay, 3, 3, 2, 2, 1, 1)
    exact = dict(conv_y=y, conv_dx=dx, bn_y=by, bn_mean=m, bn_invstd=iv, bn_dx=bdx, bn_dgamma=dg,
                 bn_dbeta=dbe, maxpool_y=py, argmax=am, maxpool_dx=pdx, avgpool_y=ay)
    return exact, dict(conv_dw=dw, conv_db=db)


@pytest.mark.parametrize("n", [1, 3, 8])   # fewer images than threads, odd, many
def test_results_do_not_depend_on_thread_count(n, restore_threads):
    rng = np.random.default_rng(n)
    x = _rand(rng, n, 5, 9, 7)
    w = _rand(rng, 6, 5, 3, 3)
    dy = _rand(rng, n, 6, 5, 4)  # stride 2, padding 1: P = (9 + 2 - 3)//2 + 1 = 5, Q = 4
    data = {"conv": (x, w, _rand(rng, 6), dy, 2, 2, 1, 1),
            "bn": (_rand(rng, n, 7, 5, 3) * 3 + 1, _rand(rng, 7), _rand(rng, 7), _rand(rng, n, 7, 5, 3)),
            "pool": _rand(rng, n, 3, 8, 7)}
    exact1, close1 = _run_all(1, data)
    for threads in (2, 3):
        exact, close = _run_all(threads, data)
        for name in exact1:
            np.testing.assert_array_equal(exact[name], exact1[name], err_msg=f"{name}, {threads} threads")
        for name in close1:
            np.testing.assert_allclose(close[name], close1[name], rtol=1e-5, atol=1e-5,
                                       err_msg=f"{name}, {threads} threads")


def test_blas_threads_follow_the_setting(restore_threads):
    # A large conv with a batch of one runs its GEMMs on OpenBLAS's own pool: the result must
    # stay the same whatever the pool size (set through fasttrain, not OpenBLAS's environment).
    rng = np.random.default_rng(7)
    x, w, b = _rand(rng, 1, 32, 20, 20), _rand(rng, 48, 32, 3, 3), _rand(rng, 48)
    outs = []
    for threads in (1, 2):
        ft.set_num_threads(threads)
        C.set_num_threads(threads)
        y = np.empty((1, 48, 20, 20), f32)
        C.conv2d_fwd(x, w, b, y, 1, 1, 1, 1, False)
        outs.append(y)
    np.testing.assert_allclose(outs[1], outs[0], rtol=1e-6, atol=1e-5)
