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
    "momentum_step": (1, (0.1, 0.9, 0.2, 0.01, 0.001)),
    "nesterov_step": (1, (0.1, 0.9, 0.2, 0.01, 0.001)),
    "adagrad_step": (1, (0.1, 1e-3, 0.01, 0.001)),
    "rmsprop_step": (1, (0.01, 0.9, 1e-3, 0.01, 0.001)),
    "rmsprop_centered_step": (2, (0.01, 0.9, 1e-3, 0.01, 0.001)),
    "rmsprop_momentum_step": (2, (0.01, 0.9, 1e-3, 0.7, 0.01, 0.001)),
    "rmsprop_centered_momentum_step": (3, (0.01, 0.9, 1e-3, 0.7, 0.01, 0.001)),
    "adam_step": (2, (1e-3, 0.9, 0.999, 1e-8, 0.271, 0.003, 0.01, 0.001, 0.02)),
    "adam_amsgrad_step": (3, (1e-3, 0.9, 0.999, 1e-8, 0.271, 0.003, 0.01, 0.001, 0.02)),
}


@pytest.mark.parametrize("op", list(OPT))
@pytest.mark.parametrize("n", SIZES)
def test_optimizers_match_reference(op, n):
    k, hyper = OPT[op]
    rng = np.random.default_rng(n)
    arrays = [rng.standard_normal(n).astype(np.float32) for _ in range(2)]
    states = [np.abs(rng.standard_normal(n)).astype(np.float32) + 0.5 for _ in range(k)]
    if op.startswith("rmsprop_centered"):
        states[1] *= 0.1
    if op == "adam_amsgrad_step":
        states[2][::2] *= 0.1  # the maximum is the new v on some elements, the old on others
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


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("shape", [(1, 1, 1, 2), (2, 3, 5, 7), (64, 64, 32, 32), (5, 13)])
def test_batchnorm_matches_reference(shape, relu):
    rng = np.random.default_rng(1)
    c = shape[1]
    x = (rng.standard_normal(shape) * 3 + 1).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    g, b = rng.standard_normal(c).astype(np.float32), rng.standard_normal(c).astype(np.float32)
    mean, inv = np.empty(c, np.float32), np.empty(c, np.float32)
    (y, m, i), (gy, gm, gi) = _both("batchnorm_fwd_train", [x, g, b, 1e-5, np.empty_like(x), mean, inv, relu],
                                    [4, 5, 6])
    np.testing.assert_allclose(gy, y, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gm, m, rtol=1e-5, atol=1e-5)
    if relu:
        assert (gy >= 0).all() and (gy == 0).any()
    # with relu the mask comes from the GPU forward's output on both sides
    want, got = _both("batchnorm_bwd", [x, dy, g, gm, gi, np.empty_like(x), np.zeros(c, np.float32),
                                        np.zeros(c, np.float32), gy if relu else None], [5, 6, 7])
    for w, gg in zip(want, got):
        np.testing.assert_allclose(gg, w, rtol=1e-3, atol=1e-3)
    rm, rv = rng.standard_normal(c).astype(np.float32), rng.uniform(0.5, 2, c).astype(np.float32)
    (ye,), (gye,) = _both("batchnorm_fwd_eval", [x, g, b, rm, rv, 1e-5, np.empty_like(x), relu], [6])
    np.testing.assert_allclose(gye, ye, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("ratio", [1.0, 1e2, 1e4])
def test_batchnorm_variance_stays_accurate_when_mean_dwarfs_std(ratio):
    """|mean| / std up to 1e4: the bounds of test_batchnorm's CPU sweep (float32 rounding only)."""
    rng = np.random.default_rng(3)
    shape, eps32 = (8, 24, 7, 9), float(np.finfo(np.float32).eps)
    std = np.exp(rng.uniform(-7, 7, shape[1])).reshape(1, -1, 1, 1)
    x = (rng.standard_normal(shape) * std + ratio * std).astype(np.float32)
    g, b = np.ones(shape[1], np.float32), np.zeros(shape[1], np.float32)
    mean, inv = np.empty(shape[1], np.float32), np.empty(shape[1], np.float32)
    (y, m, i), (gy, gm, gi) = _both("batchnorm_fwd_train", [x, g, b, 1e-5, np.empty_like(x), mean, inv],
                                    [4, 5, 6])
    assert np.max(np.abs(gi / i - 1)) <= 8 * eps32
    assert np.max(np.abs(gm - m) / (np.abs(m) + 1 / i)) <= 4 * eps32
    assert np.max(np.abs(gy - y)) <= 2 * eps32 * (ratio + 4) * np.max(np.abs(y))


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


@pytest.mark.parametrize("n,c", [(1, 2), (7, 10), (128, 1000)])
@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_softmax_xent_weighted_matches_reference(n, c, eps):
    rng = np.random.default_rng(3)
    logits = (rng.standard_normal((n, c)) * 5).astype(np.float32)
    labels = rng.integers(0, c, n).astype(np.int64)
    labels[::3] = -100
    w = rng.uniform(0.2, 2.0, c).astype(np.float32)
    d_ref, rows_ref = np.empty((n, c)), np.empty(n)
    backend.kernel("softmax_xent_weighted", backend="numpy")(logits.astype(np.float64), labels, w.astype(np.float64),
                                                             eps, -100, 0.3, d_ref, rows_ref)
    d_gpu, rows_gpu = cupy.empty((n, c), cupy.float32), cupy.empty(n, cupy.float64)
    backend.kernel("softmax_xent_weighted", backend="cuda")(cupy.asarray(logits), cupy.asarray(labels),
                                                            cupy.asarray(w), eps, -100, 0.3, d_gpu, rows_gpu)
    np.testing.assert_allclose(cupy.asnumpy(rows_gpu), rows_ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(cupy.asnumpy(d_gpu), d_ref, rtol=1e-4, atol=1e-6)


def test_auto_backend_picks_cuda_for_cupy_arrays():
    x = cupy.arange(5, dtype=cupy.float32)
    assert backend.kernel("relu_fwd", like=x) is backend.kernel("relu_fwd", backend="cuda")


# (N, C, H, W, kh, kw, sh, sw, ph, pw): size 1, primes, odd sizes with stride 2, overlapping windows
POOL = [(1, 1, 1, 1, 1, 1, 1, 1, 0, 0), (2, 3, 7, 5, 3, 3, 2, 2, 1, 1), (3, 5, 13, 11, 2, 3, 1, 2, 1, 0),
        (1, 2, 9, 9, 3, 3, 1, 1, 1, 1), (8, 17, 32, 31, 2, 2, 2, 2, 0, 0)]


@pytest.mark.parametrize("n,c,h,w,kh,kw,sh,sw,ph,pw", POOL)
def test_maxpool_matches_reference(n, c, h, w, kh, kw, sh, sw, ph, pw):
    rng = np.random.default_rng(3)
    # a coarse grid of values makes ties frequent, so the first-maximum rule is exercised
    x = rng.integers(-3, 4, (n, c, h, w)).astype(np.float32)
    p, q = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    y, am = np.empty((n, c, p, q), np.float32), np.empty((n, c, p, q), np.int64)
    (wy, wa), (gy, ga) = _both("maxpool2d_fwd", [x, y, am, kh, kw, sh, sw, ph, pw], [1, 2])
    np.testing.assert_array_equal(gy, wy.astype(np.float32))
    np.testing.assert_array_equal(ga, wa)
    dy = rng.standard_normal((n, c, p, q)).astype(np.float32)
    (wdx,), (gdx,) = _both("maxpool2d_bwd", [dy, wa, np.full(x.shape, np.nan, np.float32)], [2])
    np.testing.assert_allclose(gdx, wdx, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n,c,h,w,kh,kw,sh,sw,ph,pw", POOL)
def test_avgpool_matches_reference(n, c, h, w, kh, kw, sh, sw, ph, pw):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    p, q = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    (wy,), (gy,) = _both("avgpool2d_fwd", [x, np.empty((n, c, p, q), np.float32), kh, kw, sh, sw, ph, pw], [1])
    np.testing.assert_allclose(gy, wy, rtol=1e-5, atol=1e-6)
    dy = rng.standard_normal((n, c, p, q)).astype(np.float32)
    (wdx,), (gdx,) = _both("avgpool2d_bwd", [dy, np.full(x.shape, np.nan, np.float32), kh, kw, sh, sw, ph, pw], [1])
    np.testing.assert_allclose(gdx, wdx, rtol=1e-5, atol=1e-6)


# (N, C, H, W, K, R, S, sh, sw, ph, pw): 1x1, primes, stride 2 on odd sizes, tiles not multiples of 64/16,
# a reduction long enough (N*P*Q) that bwd_weight splits it across blocks
CONV = [(1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0), (2, 3, 7, 5, 5, 3, 3, 1, 1, 1, 1), (3, 5, 11, 13, 7, 3, 2, 2, 2, 1, 0),
        (1, 4, 9, 9, 65, 5, 5, 2, 1, 2, 2), (2, 17, 8, 8, 3, 1, 1, 1, 1, 0, 0), (16, 32, 32, 32, 64, 3, 3, 1, 1, 1, 1)]


def _conv_inputs(n, c, h, w, k, r, s, sh, sw, ph, pw):
    rng = np.random.default_rng(5)
    p, q = (h + 2 * ph - r) // sh + 1, (w + 2 * pw - s) // sw + 1
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    wt = (rng.standard_normal((k, c, r, s)) / np.sqrt(c * r * s)).astype(np.float32)
    b = rng.standard_normal(k).astype(np.float32)
    dy = rng.standard_normal((n, k, p, q)).astype(np.float32)
    return x, wt, b, dy


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("n,c,h,w,k,r,s,sh,sw,ph,pw", CONV)
def test_conv2d_fwd_matches_reference(n, c, h, w, k, r, s, sh, sw, ph, pw, relu):
    x, wt, b, dy = _conv_inputs(n, c, h, w, k, r, s, sh, sw, ph, pw)
    y = np.full(dy.shape, np.nan, np.float32)
    (want,), (got,) = _both("conv2d_fwd", [x, wt, b, y, sh, sw, ph, pw, relu], [3])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    if relu and want.size > 100:  # large enough that some outputs are clipped: the epilogue ran
        assert (got >= 0).all() and (want == 0).any()


@pytest.mark.parametrize("n,c,h,w,k,r,s,sh,sw,ph,pw", CONV)
def test_conv2d_bwd_data_matches_reference(n, c, h, w, k, r, s, sh, sw, ph, pw):
    x, wt, b, dy = _conv_inputs(n, c, h, w, k, r, s, sh, sw, ph, pw)
    dx = np.full(x.shape, np.nan, np.float32)  # overwritten: NaN left anywhere fails the test
    (want,), (got,) = _both("conv2d_bwd_data", [dy, wt, dx, sh, sw, ph, pw], [2])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("n,c,h,w,k,r,s,sh,sw,ph,pw", CONV)
def test_conv2d_bwd_weight_accumulates_like_reference(n, c, h, w, k, r, s, sh, sw, ph, pw):
    x, wt, b, dy = _conv_inputs(n, c, h, w, k, r, s, sh, sw, ph, pw)
    rng = np.random.default_rng(6)
    dw0, db0 = rng.standard_normal(wt.shape).astype(np.float32), rng.standard_normal(k).astype(np.float32)
    (wdw, wdb), (gdw, gdb) = _both("conv2d_bwd_weight", [x, dy, dw0, db0, sh, sw, ph, pw], [2, 3])
    # sums over up to N*P*Q = 16384 terms in float32 (split order differs): scale-aware tolerance
    scale = np.sqrt(n * dy.shape[2] * dy.shape[3])
    np.testing.assert_allclose(gdw, wdw, rtol=1e-4, atol=1e-5 * scale)
    np.testing.assert_allclose(gdb, wdb, rtol=1e-4, atol=1e-5 * scale)


# (N, C, H, W, K, groups, R, S, stride, padding, dilation): depthwise (multiplier 1 and 2), grouped,
# dilated, strided, padding beyond the kernel's reach
CONV_OPTIONS = [(2, 5, 9, 8, 5, 5, 3, 3, 1, 1, 1), (2, 6, 9, 9, 12, 6, 3, 3, 2, 1, 2), (1, 6, 7, 8, 4, 2, 3, 2, 1, 2, 2),
                (2, 17, 11, 9, 17, 17, 5, 5, 1, 3, 1), (8, 32, 16, 16, 32, 32, 3, 3, 1, 1, 1)]


@pytest.mark.parametrize("n,c,h,w,k,g,r,s,st,pad,d", CONV_OPTIONS)
def test_conv2d_groups_and_dilation_match_reference(n, c, h, w, k, g, r, s, st, pad, d):
    rng = np.random.default_rng(9)
    p, q = (h + 2 * pad - d * (r - 1) - 1) // st + 1, (w + 2 * pad - d * (s - 1) - 1) // st + 1
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    wt = (rng.standard_normal((k, c // g, r, s)) / np.sqrt(c // g * r * s)).astype(np.float32)
    b = rng.standard_normal(k).astype(np.float32)
    dy = rng.standard_normal((n, k, p, q)).astype(np.float32)
    geo = [st, st, pad, pad]
    (want,), (got,) = _both("conv2d_fwd", [x, wt, b, np.full(dy.shape, np.nan, np.float32), *geo, True, d, d, g], [3])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    (want,), (got,) = _both("conv2d_bwd_data", [dy, wt, np.full(x.shape, np.nan, np.float32), *geo, d, d, g], [2])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    (wdw, wdb), (gdw, gdb) = _both("conv2d_bwd_weight", [x, dy, np.zeros_like(wt), np.zeros_like(b), *geo, d, d, g],
                                   [2, 3])
    scale = np.sqrt(n * p * q)
    np.testing.assert_allclose(gdw, wdw, rtol=1e-4, atol=1e-5 * scale)
    np.testing.assert_allclose(gdb, wdb, rtol=1e-4, atol=1e-5 * scale)


# (x shape, (kh, kw), (sh, sw), (ph, pw), (dh, dw), ceil_mode): ceil windows over the bottom/right
# padding, dilation, count_include_pad both ways
POOL_OPTIONS = [((2, 3, 7, 6), (3, 3), (2, 2), (1, 1), (1, 1), True), ((2, 5, 9, 8), (3, 3), (2, 2), (1, 0), (2, 2), True),
                ((1, 3, 10, 7), (3, 3), (3, 3), (1, 1), (1, 1), True), ((2, 3, 8, 9), (3, 2), (2, 1), (1, 1), (2, 1), False)]


@pytest.mark.parametrize("include_pad", [True, False])
@pytest.mark.parametrize("shape,k,s,p,d,ceil", POOL_OPTIONS)
def test_pooling_options_match_reference(shape, k, s, p, d, ceil, include_pad):
    from fasttrain.kernels.pooling import out_size
    rng = np.random.default_rng(3)
    x = rng.permutation(int(np.prod(shape))).reshape(shape).astype(np.float32)
    n, c, h, w = shape
    om = (n, c, out_size(h, k[0], s[0], p[0], d[0], ceil), out_size(w, k[1], s[1], p[1], d[1], ceil))
    (wy, wa), (gy, ga) = _both("maxpool2d_fwd", [x, np.empty(om, np.float32), np.empty(om, np.int64), *k, *s, *p, ceil, *d],
                               [1, 2])
    np.testing.assert_array_equal(gy, wy)
    np.testing.assert_array_equal(ga, wa)
    oa = (n, c, out_size(h, k[0], s[0], p[0], 1, ceil), out_size(w, k[1], s[1], p[1], 1, ceil))
    args = [*k, *s, *p, ceil, include_pad]
    (wy,), (gy,) = _both("avgpool2d_fwd", [x, np.empty(oa, np.float32), *args], [1])
    np.testing.assert_allclose(gy, wy, rtol=1e-5, atol=1e-5)
    dy = rng.standard_normal(oa).astype(np.float32)
    (wdx,), (gdx,) = _both("avgpool2d_bwd", [dy, np.full(shape, np.nan, np.float32), *args], [1])
    np.testing.assert_allclose(gdx, wdx, rtol=1e-5, atol=1e-6)


def test_conv2d_cuda_errors_name_the_argument():
    x = cupy.zeros((2, 3, 8, 8), cupy.float32)
    w = cupy.zeros((4, 5, 3, 3), cupy.float32)
    with pytest.raises(ValueError, match=r"conv2d_fwd\(w\): expected shape \(K, 3, R, S\)"):
        backend.kernel("conv2d_fwd", backend="cuda")(x, w, cupy.zeros(4, cupy.float32),
                                                      cupy.zeros((2, 4, 6, 6), cupy.float32), 1, 1, 0, 0, False)
    with pytest.raises(ValueError, match=r"avgpool2d_fwd\(y\): expected shape \(2, 3, 4, 4\)"):
        backend.kernel("avgpool2d_fwd", backend="cuda")(x, cupy.zeros((2, 3, 5, 5), cupy.float32), 2, 2, 2, 2, 0, 0)


@pytest.mark.parametrize("n,i,o", [(1, 1, 1), (7, 13, 5), (64, 256, 10)])
def test_linear_matches_reference(n, i, o):
    rng = np.random.default_rng(n + i)
    x, w, b = (rng.standard_normal(s).astype(np.float32) for s in ((n, i), (o, i), (o,)))
    (want,), (got,) = _both("linear_fwd", [x, w, b, np.empty((n, o), np.float32)], [3])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    dy = rng.standard_normal((n, o)).astype(np.float32)
    dw0, db0 = rng.standard_normal((o, i)).astype(np.float32), rng.standard_normal(o).astype(np.float32)
    want, got = _both("linear_bwd", [x, w, dy, np.empty_like(x), dw0, db0], [3, 4, 5])
    for g, r in zip(got, want):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-4)


def test_training_on_the_gpu_keeps_state_there_and_matches_cpu(tmp_path):
    """`fasttrain train --device cuda`: the arena, the optimizer state and the activations are CuPy
    arrays, and a short run reaches the CPU run's accuracy (same seed; float32 on both, so the
    trajectories differ only by summation order)."""
    from fasttrain.cli import main
    import json

    summaries = {}
    for device in ("cpu", "cuda"):
        run = tmp_path / device
        assert main(["train", "--epochs", "4", "--device", device, "--run-dir", str(run), "--quiet", "--no-plot"]) == 0
        summaries[device] = json.loads((run / "summary.json").read_text())
    assert summaries["cuda"]["val_acc"] >= summaries["cpu"]["val_acc"] - 0.01

    from fasttrain.models import build
    from fasttrain.losses import SoftmaxCrossEntropy

    model = build("simple_cnn", (1, 8, 8), 10)
    arena = ft.ParamArena.for_model(model, seed=0, xp=cupy)
    opt = ft.optim.Adam(arena, lr=1e-3)
    x = cupy.asarray(np.random.default_rng(0).standard_normal((16, 1, 8, 8)).astype(np.float32))
    y = cupy.asarray(np.arange(16) % 10)
    logits = model.forward(x)
    assert isinstance(logits, cupy.ndarray)
    _, dlogits = SoftmaxCrossEntropy()(logits, y)
    arena.zero_grad()
    model.backward(dlogits)
    opt.step()
    assert all(isinstance(v, cupy.ndarray) for v in (arena.data, arena.grad, *opt.state.values()))
