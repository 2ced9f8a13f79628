"""Batch norm and pooling on the blocked layout (csrc/cpu/blocked*.cpp) held to their reference
(fasttrain/kernels/blocked.py: to NCHW -> the NCHW reference -> back to blocked).

Every instruction-set path is forced in turn (set_conv2d_isa also picks these kernels), on channel
counts around the 16-lane block (1, 3, 5, 16, 17, 33), images from 1x1 to 33x33, halos 0/1/2 on
each array independently, batch 1 and 3, and every option (fused ReLU, residual, precomputed
statistics, pooling's ceil mode / padding / dilation / divisor rule). Inputs carry NaN in their
halos (a kernel must never read them) and outputs start as NaN (a kernel must write every element,
its halo's zeros included); the layout's invariants, zero halo and zero pad lanes, are checked
exactly. Results must be bit-identical for 1, 2 and 3 threads.
"""
import itertools

import numpy as np
import pytest

C = pytest.importorskip("fasttrain._C", reason="C++ module not built")

from fasttrain import backend  # noqa: E402
from fasttrain.kernels import blocked as ref  # noqa: E402
from fasttrain.kernels import pooling as pool_ref  # noqa: E402
from cpp_isas import forced_isa, isa_params  # noqa: E402
import pool_nans  # noqa: E402

f32 = np.float32


@pytest.fixture(params=isa_params(C))
def isa(request):
    yield from forced_isa(C, request.param)


@pytest.fixture
def threads():
    before = C.num_threads()
    yield C.set_num_threads
    C.set_num_threads(before)


# (N, C, H, W) over C in {1, 3, 5, 16, 17, 33} x (H, W) from {1, 2, 7, 33}, batch 1 and 3 alternating
HWS = [(1, 1), (2, 7), (7, 33), (33, 2)]
SHAPES = [(1 + 2 * (i % 2), c, h, w) for i, (c, (h, w)) in enumerate(itertools.product((1, 3, 5, 16, 17, 33), HWS))]
# halos of (input, output, third array), cycled over the shapes
HALOS = [(0, 0, 0), (1, 0, 2), (2, 1, 0), (0, 2, 1), (1, 1, 1)]


def _ids(cases):
    return ["x".join(map(str, c)) for c in cases]


def blocked_input(x, halo):
    """x (N, C, H, W) in the blocked layout, pad lanes zero, halo NaN (never to be read)."""
    xb = ref.to_blocked(x.astype(f32), halo)
    if halo:
        border = np.ones(xb.shape[2:4], bool)
        border[halo:-halo, halo:-halo] = False
        xb[:, :, border, :] = np.nan
    return xb


def nan_like(shape):
    return np.full(shape, np.nan, f32)


def blocked_shape(n, c, h, w, halo):
    return (n, -(-c // 16), h + 2 * halo, w + 2 * halo, 16)


def assert_invariants(ab, c, halo, what):
    """The halo and the pad lanes of an output are exactly zero."""
    inner = np.zeros(ab.shape[2:4], bool)
    inner[halo:ab.shape[2] - halo, halo:ab.shape[3] - halo] = True
    assert np.all(ab[:, :, ~inner, :] == 0), f"{what}: halo not zero"
    assert np.all(ab[:, -1, ..., c % 16:] == 0) if c % 16 else True, f"{what}: pad lanes not zero"


def assert_close(got, want, what, rtol=2e-5, scale=0.0):
    """|got - want| <= rtol * max(|want|, scale) elementwise at worst (scale: the size of the terms
    float32 rounds when they are larger than the result)."""
    want = np.asarray(want, np.float64)
    scale = max(float(np.abs(want).max()) if want.size else 0.0, scale, 1e-30)
    err = np.abs(got.astype(np.float64) - want)
    worst = np.unravel_index(np.argmax(err), err.shape) if err.size else ()
    assert not np.isnan(got).any(), f"{what}: NaN in the output"
    assert err.max(initial=0.0) <= rtol * scale, (
        f"{what}: max error {err.max():.3g} at {worst} (got {got[worst]}, want {want[worst]}), scale {scale:.3g}")


def bn_arrays(n, c, h, w, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, c, h, w)) * 2 + 0.5).astype(f32)
    return dict(x=x, res=rng.standard_normal((n, c, h, w)).astype(f32),
                dy=rng.standard_normal((n, c, h, w)).astype(f32),
                gamma=rng.uniform(0.5, 1.5, c).astype(f32), beta=rng.standard_normal(c).astype(f32),
                rmean=rng.standard_normal(c).astype(f32), rvar=rng.uniform(0.5, 2.0, c).astype(f32))


def x_stats(x):
    x64 = x.astype(np.float64)
    return np.stack([x64.sum(axis=(0, 2, 3)), (x64 * x64).sum(axis=(0, 2, 3))])


# ---- batch norm -----------------------------------------------------------------------------------

BN_FWD_OPTIONS = [(False, False, False), (True, False, False), (True, True, False), (False, True, True),
                  (True, True, True)]  # (relu, residual, stats)


def run_bn_fwd_train(fn, a, relu, residual, stats, halos):
    n, c, h, w = a["x"].shape
    hx, hy, hr = halos
    yb = nan_like(blocked_shape(n, c, h, w, hy))
    mean, invstd = nan_like(c), nan_like(c)
    fn(blocked_input(a["x"], hx), a["gamma"], a["beta"], 1e-5, yb, mean, invstd, relu,
       blocked_input(a["res"], hr) if residual else None, x_stats(a["x"]) if stats else None,
       halo_x=hx, halo_y=hy, halo_res=hr)
    return yb, mean, invstd


@pytest.mark.parametrize("options", BN_FWD_OPTIONS, ids=lambda o: "relu%d-res%d-stats%d" % o)
@pytest.mark.parametrize("shape", SHAPES, ids=_ids(SHAPES))
def test_batchnorm_fwd_train(isa, shape, options):
    a = bn_arrays(*shape)
    halos = HALOS[SHAPES.index(shape) % len(HALOS)]
    got = run_bn_fwd_train(C.batchnorm_blocked_fwd_train, a, *options, halos)
    want = run_bn_fwd_train(ref.batchnorm_blocked_fwd_train_ref, a, *options, halos)
    # y = x * (gamma * invstd) + (beta - mean * gamma * invstd) rounds terms of that size (large
    # when the variance is ~0, as for one value per channel)
    terms = float(np.abs(a["x"]).max() * np.abs(a["gamma"] * want[2]).max())
    for name, g, w in zip(("yb", "mean", "invstd"), got, want):
        assert_close(g, w, f"{isa} {name}", rtol=1e-4 if name == "invstd" else 2e-5, scale=terms if name == "yb" else 0)
    assert_invariants(got[0], shape[1], halos[1], "yb")


@pytest.mark.parametrize("options", [(False, False), (True, True)], ids=["plain", "relu-res"])
@pytest.mark.parametrize("shape", SHAPES, ids=_ids(SHAPES))
def test_batchnorm_fwd_eval(isa, shape, options):
    relu, residual = options
    a = bn_arrays(*shape)
    hx, hy, hr = HALOS[SHAPES.index(shape) % len(HALOS)]
    outs = []
    for fn in (C.batchnorm_blocked_fwd_eval, ref.batchnorm_blocked_fwd_eval_ref):
        yb = nan_like(blocked_shape(*shape, hy))
        fn(blocked_input(a["x"], hx), a["gamma"], a["beta"], a["rmean"], a["rvar"], 1e-5, yb, relu,
           blocked_input(a["res"], hr) if residual else None, halo_x=hx, halo_y=hy, halo_res=hr)
        outs.append(yb)
    assert_close(outs[0], outs[1], f"{isa} yb")
    assert_invariants(outs[0], shape[1], hy, "yb")


def run_bn_bwd(fn, a, relu, residual, halos, mask_from_x=False, fwd=ref.batchnorm_blocked_fwd_train_ref):
    """mask_from_x: the ReLU mask recomputed from x (beta given, no y); fwd: the forward whose mean,
    invstd and y the backward gets."""
    n, c, h, w = a["x"].shape
    hx, hy, hdx = halos
    xb = blocked_input(a["x"], hx)
    yb = np.zeros(blocked_shape(n, c, h, w, hy), f32)
    mean, invstd = np.empty(c, f32), np.empty(c, f32)
    fwd(xb, a["gamma"], a["beta"], 1e-5, yb, mean, invstd, relu, halo_x=hx, halo_y=hy)
    dxb = nan_like(blocked_shape(n, c, h, w, hdx))
    dres = nan_like(blocked_shape(n, c, h, w, 0)) if residual else None
    dgamma, dbeta = np.full(c, 0.25, f32), np.full(c, -0.5, f32)  # accumulated into
    mask = {"beta": a["beta"]} if mask_from_x else {}
    fn(xb, ref.to_blocked(a["dy"]), a["gamma"], mean, invstd, dxb, dgamma, dbeta,
       yb if relu and not mask_from_x else None, dres, halo_x=hx, halo_y=hy, halo_dx=hdx, **mask)
    return dxb, dgamma, dbeta, dres


BN_BWD_OPTIONS = [(False, False, False), (True, False, False), (True, True, False), (True, False, True),
                  (True, True, True)]  # (relu, dres, mask from x)


@pytest.mark.parametrize("options", BN_BWD_OPTIONS, ids=lambda o: "relu%d-dres%d-maskx%d" % o)
@pytest.mark.parametrize("shape", SHAPES, ids=_ids(SHAPES))
def test_batchnorm_bwd(isa, shape, options):
    a = bn_arrays(*shape)
    halos = HALOS[SHAPES.index(shape) % len(HALOS)]
    got = run_bn_bwd(C.batchnorm_blocked_bwd, a, *options[:2], halos, options[2])
    want = run_bn_bwd(ref.batchnorm_blocked_bwd_ref, a, *options[:2], halos, options[2])
    for name, g, w in zip(("dxb", "dgamma", "dbeta", "dres"), got, want):
        if w is not None:
            assert_close(g, w, f"{isa} {name}", rtol=1e-4)
    assert_invariants(got[0], shape[1], halos[2], "dxb")
    if options[1]:
        assert_invariants(got[3], shape[1], 0, "dres")


# Rows that lie back to back (no halo on the arrays a sweep reads) are summed in float over runs of
# whole rows up to 64 pixels: runs that do not divide H (W = 3: 21 + 12 rows; W = 8: 8 + 1), a
# single row per run (W = 64), and a whole plane in one run (W = 2, H = 5).
RUN_SHAPES = [(2, 17, 33, 3), (3, 5, 9, 8), (1, 33, 2, 64), (3, 3, 5, 2)]


@pytest.mark.parametrize("shape", RUN_SHAPES, ids=_ids(RUN_SHAPES))
def test_batchnorm_sums_over_runs_of_packed_rows(isa, shape):
    a = bn_arrays(*shape)
    a["x"] += np.float32(300.0)  # a mean far above the spread: the float runs sum shifted values
    got = run_bn_fwd_train(C.batchnorm_blocked_fwd_train, a, True, False, False, (0, 0, 0))
    want = run_bn_fwd_train(ref.batchnorm_blocked_fwd_train_ref, a, True, False, False, (0, 0, 0))
    terms = float(np.abs(a["x"]).max() * np.abs(a["gamma"] * want[2]).max())
    for name, g, w in zip(("yb", "mean", "invstd"), got, want):
        assert_close(g, w, f"{isa} {name}", rtol=1e-4 if name == "invstd" else 2e-5, scale=terms if name == "yb" else 0)
    for options in ((False, False, False), (True, True, True)):  # no mask; mask from x, g stored to dres
        got = run_bn_bwd(C.batchnorm_blocked_bwd, a, *options[:2], (0, 0, 0), options[2])
        want = run_bn_bwd(ref.batchnorm_blocked_bwd_ref, a, *options[:2], (0, 0, 0), options[2])
        for name, g, w in zip(("dxb", "dgamma", "dbeta", "dres"), got, want):
            if w is not None:
                assert_close(g, w, f"{isa} {name} {options}", rtol=1e-4)
    y, y_ref = nan_like(shape[:2]), nan_like(shape[:2])
    C.global_avgpool_blocked_fwd(blocked_input(a["x"], 0), y, shape[1])
    ref.global_avgpool_blocked_fwd_ref(blocked_input(a["x"], 0), y_ref, shape[1])
    assert_close(y, y_ref, f"{isa} global y")


@pytest.mark.parametrize("stats", [False, True], ids=["own-stats", "conv-stats"])
def test_batchnorm_bwd_mask_from_x_is_the_forwards_mask(isa, stats):
    """The mask recomputed from x through the forward's map is exactly the forward's y > 0: the same
    bits as the backward given y. With the convolution's statistics (used as given) a third of x is
    then moved onto the ReLU's kink: -b/a and its float neighbours, where x * a + b is within an ulp
    of zero and only the same rounding gives the same sign."""
    n, c, h, w = 3, 33, 7, 9
    a = bn_arrays(n, c, h, w, seed=5)
    st = x_stats(a["x"]) if stats else None
    if stats:
        mean, invstd = np.empty(c, f32), np.empty(c, f32)
        C.batchnorm_blocked_fwd_train(ref.to_blocked(a["x"]), a["gamma"], a["beta"], 1e-5,
                                      np.empty(blocked_shape(n, c, h, w, 0), f32), mean, invstd, True, None, st)
        ma, mb = ref.batchnorm_affine_ref(a["gamma"], a["beta"], mean, invstd)
        kink = (-mb / ma).astype(f32)[None, :, None, None]
        ulps = np.random.default_rng(6).integers(-2, 3, a["x"].shape).astype(np.int32)
        near = (kink.view(np.int32) + ulps).view(f32)
        a["x"] = np.where(np.arange(h * w).reshape(h, w) % 3 == 0, near, a["x"]).astype(f32)

    def fwd(xb, gamma, beta, eps, yb, mean, invstd, relu, halo_x, halo_y):
        C.batchnorm_blocked_fwd_train(xb, gamma, beta, eps, yb, mean, invstd, relu, None, st,
                                      halo_x=halo_x, halo_y=halo_y)
    with_y = run_bn_bwd(C.batchnorm_blocked_bwd, a, True, False, (1, 1, 0), False, fwd)
    from_x = run_bn_bwd(C.batchnorm_blocked_bwd, a, True, False, (1, 1, 0), True, fwd)
    for name, g, w in zip(("dxb", "dgamma", "dbeta"), from_x, with_y):
        np.testing.assert_array_equal(g, w, err_msg=f"{isa} {name}")


def test_batchnorm_shifted_statistics_do_not_cancel(isa):
    """|mean| / std = 1e4: the naive E[x^2] - E[x]^2 in float loses every digit of the variance."""
    rng = np.random.default_rng(3)
    x = (1e4 + rng.standard_normal((3, 17, 7, 7))).astype(f32)
    mean, invstd = np.empty(17, f32), np.empty(17, f32)
    yb = np.empty(blocked_shape(3, 17, 7, 7, 0), f32)
    C.batchnorm_blocked_fwd_train(ref.to_blocked(x), np.ones(17, f32), np.zeros(17, f32), 1e-5, yb, mean, invstd)
    x64 = x.astype(np.float64)
    want = 1.0 / np.sqrt(x64.var(axis=(0, 2, 3)) + 1e-5)
    np.testing.assert_allclose(invstd, want, rtol=1e-5)


# ---- pooling, repad, global average -------------------------------------------------------------

# (kh, kw, sh, sw, ph, pw, ceil_mode, dil_h, dil_w, count_include_pad)
POOLS = [(2, 2, 2, 2, 0, 0, False, 1, 1, True), (3, 3, 2, 2, 1, 1, True, 1, 1, False),
         (3, 2, 1, 2, 1, 0, False, 2, 1, True), (1, 1, 1, 1, 0, 0, False, 1, 1, True),
         (2, 3, 3, 1, 1, 1, True, 1, 2, True),
         # windows that share no pixel, with padding, gaps between windows and ceil mode's clipped last one
         (3, 2, 3, 3, 1, 1, True, 1, 1, False), (2, 2, 2, 2, 1, 0, True, 1, 1, True)]
POOL_SHAPES = [s for s in SHAPES if s[2] >= 2 and s[3] >= 2] + [(1, 3, 1, 1)]


def _fits(shape, pool):
    kh, kw, sh, sw, ph, pw, ceil_mode, dh, dw, _ = pool
    return shape[2] + 2 * ph >= dh * (kh - 1) + 1 and shape[3] + 2 * pw >= dw * (kw - 1) + 1


POOL_CASES = [(s, p) for s, p in itertools.product(POOL_SHAPES, POOLS) if _fits(s, p)][::2]


def pool_arrays(shape, pool, avg):
    """(P, Q), x (N, C, H, W) and dy (N, C, P, Q) of one pooling case."""
    p, q = pool_out(shape, pool, avg)
    x = np.random.default_rng(1).standard_normal(shape).astype(f32)
    dy = np.random.default_rng(2).standard_normal((shape[0], shape[1], p, q)).astype(f32)
    return p, q, x, dy


def pool_out(shape, pool, avg):
    kh, kw, sh, sw, ph, pw, ceil_mode, dh, dw, _ = pool
    if avg:
        dh = dw = 1
    from fasttrain.kernels.pooling import out_size
    return out_size(shape[2], kh, sh, ph, dh, ceil_mode), out_size(shape[3], kw, sw, pw, dw, ceil_mode)


@pytest.mark.parametrize("shape,pool", POOL_CASES, ids=[_ids([s])[0] + "-" + _ids([p])[0] for s, p in POOL_CASES])
def test_maxpool(isa, shape, pool):
    n, c, h, w = shape
    kh, kw, sh, sw, ph, pw, ceil_mode, dh, dw, _ = pool
    hx, hy, hdx = HALOS[POOL_CASES.index((shape, pool)) % len(HALOS)]
    p, q, x, dy = pool_arrays(shape, pool, avg=False)
    outs = []
    for fwd, bwd in ((C.maxpool2d_blocked_fwd, C.maxpool2d_blocked_bwd),
                     (ref.maxpool2d_blocked_fwd_ref, ref.maxpool2d_blocked_bwd_ref)):
        yb = nan_like(blocked_shape(n, c, p, q, hy))
        argmax = np.full(blocked_shape(n, c, p, q, 0), 251, np.uint8)
        fwd(blocked_input(x, hx), yb, argmax, kh, kw, sh, sw, ph, pw, ceil_mode, dh, dw, halo_x=hx, halo_y=hy)
        dxb = nan_like(blocked_shape(n, c, h, w, hdx))
        bwd(ref.to_blocked(dy), argmax, dxb, kh, kw, sh, sw, ph, pw, ceil_mode, dh, dw, halo_dx=hdx)
        outs.append((yb, argmax, dxb))
    (yb, argmax, dxb), (yr, ar, dxr) = outs
    np.testing.assert_array_equal(yb, yr)
    np.testing.assert_array_equal(argmax, ar)
    assert_close(dxb, dxr, f"{isa} dxb")
    assert_invariants(yb, c, hy, "yb")
    assert_invariants(dxb, c, hdx, "dxb")
    # the taps name the NCHW kernel's flat indices (what return_indices gives a user)
    y_nchw, am = np.empty((n, c, p, q), f32), np.empty((n, c, p, q), np.int64)
    C.maxpool2d_fwd(x, y_nchw, am, kh, kw, sh, sw, ph, pw, ceil_mode, dh, dw)
    np.testing.assert_array_equal(pool_ref.taps_to_flat(ref.from_blocked(argmax, c), h, w, kh, kw, sh, sw, ph, pw, dh, dw),
                                  am)


@pytest.mark.parametrize("pool", [(2, 2, 2, 2, 0, 0, False, 1, 1), (3, 3, 3, 3, 0, 0, False, 1, 1),
                                  (2, 2, 2, 2, 1, 1, True, 1, 1), (2, 2, 3, 3, 0, 0, False, 2, 2),
                                  (3, 3, 2, 2, 1, 1, False, 1, 1)])
def test_maxpool_nan_ties_and_inf(isa, pool):
    # PyTorch's rule (tests/pool_nans.py): NaN propagates and names the window's last NaN, ties pick
    # the first tap in row-major order, a window of -inf names its first real tap; the 2x2 window's
    # unrolled path and the loop alike, every lane its own pattern. Stride = kernel windows get one
    # pattern each; the others draw from {-inf, 0, 1, NaN}.
    kh, kw, sh, sw, ph, pw, ceil_mode, dh, dw = pool
    if (sh, sw, ph, pw, dh, dw) == (kh, kw, 0, 0, 1, 1):
        x = pool_nans.windows(2, 17, kh, kw)
    else:
        x = pool_nans.mixed((2, 17, 7, 9), 6)
    n, c, h, w = x.shape
    p, q = pool_out((n, c, h, w), pool + (True,), avg=False)
    dy = np.random.default_rng(7).standard_normal((n, c, p, q)).astype(f32)
    outs = []
    for fwd, bwd in ((C.maxpool2d_blocked_fwd, C.maxpool2d_blocked_bwd),
                     (ref.maxpool2d_blocked_fwd_ref, ref.maxpool2d_blocked_bwd_ref)):
        yb, taps = nan_like(blocked_shape(n, c, p, q, 1)), np.zeros(blocked_shape(n, c, p, q, 0), np.uint8)
        fwd(ref.to_blocked(x, 1), yb, taps, *pool, halo_x=1, halo_y=1)
        dxb = nan_like(blocked_shape(n, c, h, w, 0))
        bwd(ref.to_blocked(dy), taps, dxb, *pool)
        outs.append((yb, taps, dxb))
    (yb, taps, dxb), (yr, tr, dxr) = outs
    y = ref.from_blocked(yb, c, 1)
    assert np.isnan(y).any() and not np.isnan(y).all(), "the case should mix NaN and real windows"
    np.testing.assert_array_equal(yb, yr)
    np.testing.assert_array_equal(taps, tr)
    assert_close(dxb, dxr, f"{isa} dxb")  # overlapping windows add in another order
    torch = pytest.importorskip("torch")
    tx = torch.from_numpy(x).requires_grad_(True)
    ty, ti = torch.nn.functional.max_pool2d(tx, (kh, kw), (sh, sw), (ph, pw), (dh, dw), ceil_mode=ceil_mode,
                                            return_indices=True)
    ty.backward(torch.from_numpy(dy))
    np.testing.assert_array_equal(y, ty.detach().numpy())
    np.testing.assert_array_equal(pool_ref.taps_to_flat(ref.from_blocked(taps, c), h, w, kh, kw, sh, sw, ph, pw, dh, dw),
                                  ti.numpy())
    assert_close(ref.from_blocked(dxb, c), tx.grad.numpy(), f"{isa} dx against torch")


@pytest.mark.parametrize("shape,pool", POOL_CASES, ids=[_ids([s])[0] + "-" + _ids([p])[0] for s, p in POOL_CASES])
def test_avgpool(isa, shape, pool):
    n, c, h, w = shape
    kh, kw, sh, sw, ph, pw, ceil_mode, _, _, cip = pool
    if not _fits(shape, pool[:7] + (1, 1, cip)):
        pytest.skip("window does not fit without dilation")
    hx, hy, hdx = HALOS[(POOL_CASES.index((shape, pool)) + 1) % len(HALOS)]
    p, q, x, dy = pool_arrays(shape, pool, avg=True)
    outs = []
    for fwd, bwd in ((C.avgpool2d_blocked_fwd, C.avgpool2d_blocked_bwd),
                     (ref.avgpool2d_blocked_fwd_ref, ref.avgpool2d_blocked_bwd_ref)):
        yb = nan_like(blocked_shape(n, c, p, q, hy))
        fwd(blocked_input(x, hx), yb, kh, kw, sh, sw, ph, pw, ceil_mode, cip, halo_x=hx, halo_y=hy)
        dxb = nan_like(blocked_shape(n, c, h, w, hdx))
        bwd(ref.to_blocked(dy), dxb, kh, kw, sh, sw, ph, pw, ceil_mode, cip, halo_dx=hdx)
        outs.append((yb, dxb))
    for name, g, want, halo in zip(("yb", "dxb"), outs[0], outs[1], (hy, hdx)):
        assert_close(g, want, f"{isa} {name}")
        assert_invariants(g, c, halo, name)


@pytest.mark.parametrize("shape", SHAPES, ids=_ids(SHAPES))
def test_global_avgpool_and_repad(isa, shape):
    n, c, h, w = shape
    hx, hy, _ = HALOS[SHAPES.index(shape) % len(HALOS)]
    x = np.random.default_rng(4).standard_normal(shape).astype(f32)
    dy = np.random.default_rng(5).standard_normal((n, c)).astype(f32)
    y, y_ref = nan_like((n, c)), nan_like((n, c))
    C.global_avgpool_blocked_fwd(blocked_input(x, hx), y, c, halo_x=hx)
    ref.global_avgpool_blocked_fwd_ref(blocked_input(x, hx), y_ref, c, halo_x=hx)
    assert_close(y, y_ref, f"{isa} global y")
    dxb, dx_ref = nan_like(blocked_shape(n, c, h, w, hy)), nan_like(blocked_shape(n, c, h, w, hy))
    C.global_avgpool_blocked_bwd(dy, dxb, halo_dx=hy)
    ref.global_avgpool_blocked_bwd_ref(dy, dx_ref, halo_dx=hy)
    assert_close(dxb, dx_ref, f"{isa} global dxb", rtol=1e-6)
    assert_invariants(dxb, c, hy, "global dxb")
    yb = nan_like(blocked_shape(n, c, h, w, hy))
    C.blocked_repad(blocked_input(x, hx), c, hx, yb, hy)
    np.testing.assert_array_equal(yb, ref.to_blocked(x, hy))


# ---- determinism, registry, argument errors -------------------------------------------------------

def _all_outputs(shape=(3, 33, 7, 33)):
    """Every blocked kernel once on one shape with halos: the arrays they wrote."""
    a = bn_arrays(*shape)
    n, c, h, w = shape
    out = list(run_bn_fwd_train(C.batchnorm_blocked_fwd_train, a, True, True, False, (1, 2, 1)))
    out += [o for o in run_bn_bwd(C.batchnorm_blocked_bwd, a, True, True, (2, 1, 1)) if o is not None]
    out += [o for o in run_bn_bwd(C.batchnorm_blocked_bwd, a, True, False, (1, 0, 2), True) if o is not None]
    xb = blocked_input(a["x"], 1)
    y = np.empty((n, c), f32)
    C.global_avgpool_blocked_fwd(xb, y, c, halo_x=1)
    p, q = 4, 17
    yb, am = np.empty(blocked_shape(n, c, p, q, 1), f32), np.empty(blocked_shape(n, c, p, q, 0), np.uint8)
    C.maxpool2d_blocked_fwd(xb, yb, am, 3, 3, 2, 2, 1, 1, halo_x=1, halo_y=1)
    dxb = np.empty(blocked_shape(n, c, h, w, 1), f32)
    C.maxpool2d_blocked_bwd(ref.to_blocked(np.ones((n, c, p, q), f32)), am, dxb, 3, 3, 2, 2, 1, 1, halo_dx=1)
    # disjoint windows (2x2 stride 2) take the kernel's direct-store path
    p2, q2 = h // 2, w // 2
    yb2, am2 = np.empty(blocked_shape(n, c, p2, q2, 0), f32), np.empty(blocked_shape(n, c, p2, q2, 0), np.uint8)
    C.maxpool2d_blocked_fwd(xb, yb2, am2, 2, 2, 2, 2, 0, 0, halo_x=1)
    dxb2 = np.empty(blocked_shape(n, c, h, w, 2), f32)
    C.maxpool2d_blocked_bwd(ref.to_blocked(np.ones((n, c, p2, q2), f32)), am2, dxb2, 2, 2, 2, 2, 0, 0, halo_dx=2)
    return out + [y, yb, am, dxb, yb2, am2, dxb2]


def test_results_do_not_depend_on_the_thread_count(isa, threads):
    results = []
    for t in (1, 2, 3):
        threads(t)
        results.append(_all_outputs())
    for t, res in zip((2, 3), results[1:]):
        for i, (a, b) in enumerate(zip(results[0], res)):
            np.testing.assert_array_equal(a, b, err_msg=f"output {i} differs between 1 and {t} threads")


def test_registry_serves_the_blocked_ops():
    for op in ref.OPS:
        assert backend.available_backends_for(op)[0] == "cpp", op
        assert "numpy" in backend.available_backends_for(op)


def test_argument_errors_name_argument_value_and_expectation():
    xb = np.zeros(blocked_shape(2, 17, 4, 4, 1), f32)
    g = np.ones(17, f32)
    stat = np.empty(17, f32)
    with pytest.raises(ValueError, match=r"batchnorm_blocked_fwd_train\(xb\): expected shape \(N, 3, H \+ 0, W \+ 0, 16\) "
                       r"with H, W >= 1 \(33 channels, halo_x=0\), got \(2, 2, 6, 6, 16\)"):
        C.batchnorm_blocked_fwd_train(xb, np.ones(33, f32), np.ones(33, f32), 1e-5, xb.copy(), np.empty(33, f32),
                                      np.empty(33, f32))
    with pytest.raises(ValueError, match=r"\(yb\): expected shape \(2, 2, 8, 8, 16\) \(interior 4 x 4, halo_y=2\), got \(2, 2, 6, 6, 16\)"):
        C.batchnorm_blocked_fwd_train(xb, g, g, 1e-5, xb.copy(), stat, stat.copy(), halo_x=1, halo_y=2)
    with pytest.raises(ValueError, match=r"\(halo_x\): expected a halo >= 0, got -1"):
        C.batchnorm_blocked_fwd_eval(xb, g, g, g, g, 1e-5, xb.copy(), halo_x=-1)
    with pytest.raises(ValueError, match=r"\(stats\): expected shape \(2, 17\), got \(17,\)"):
        C.batchnorm_blocked_fwd_train(xb, g, g, 1e-5, xb.copy(), stat, stat.copy(), stats=np.zeros(17),
                                      halo_x=1, halo_y=1)
    with pytest.raises(ValueError, match=r"\(stats\): expected a C-contiguous float64 array, got dtype float32"):
        C.batchnorm_blocked_fwd_train(xb, g, g, 1e-5, xb.copy(), stat, stat.copy(), stats=np.zeros((2, 17), f32),
                                      halo_x=1, halo_y=1)
    with pytest.raises(ValueError, match=r"residual: expected an array distinct from yb"):
        C.batchnorm_blocked_fwd_train(xb, g, g, 1e-5, yb := xb.copy(), stat, stat.copy(), True, yb,
                                      halo_x=1, halo_y=1, halo_res=1)
    with pytest.raises(ValueError, match=r"\(dxb\): expected an array distinct from xb and dyb"):
        dy = np.zeros(blocked_shape(2, 17, 4, 4, 0), f32)
        C.batchnorm_blocked_bwd(dy, dy, g, g, g, dy, stat, stat.copy())
    with pytest.raises(ValueError, match=r"batchnorm_blocked_bwd\(beta\): expected y=None with beta"):
        dy = np.zeros(blocked_shape(2, 17, 4, 4, 0), f32)
        C.batchnorm_blocked_bwd(dy, dy, g, g, g, dy.copy(), stat, stat.copy(), dy.copy(), beta=g)
    am = np.zeros(blocked_shape(2, 17, 2, 2, 0), np.uint8)
    with pytest.raises(ValueError, match=r"maxpool2d_blocked_fwd\(taps\): expected shape \(2, 2, 2, 2, 16\)"):
        C.maxpool2d_blocked_fwd(xb, np.empty(blocked_shape(2, 17, 2, 2, 0), f32), am[:, :, :1].copy(), 2, 2, 2, 2,
                                0, 0, halo_x=1)
    with pytest.raises(ValueError, match=r"taps: expected dtype uint8, got int64"):
        C.maxpool2d_blocked_fwd(xb, np.empty(blocked_shape(2, 17, 2, 2, 0), f32), am.astype(np.int64), 2, 2, 2, 2,
                                0, 0, halo_x=1)
    with pytest.raises(ValueError, match=r"maxpool2d_blocked_fwd\(kh, kw\): expected a window of at most 256 taps.*17 x 16"):
        C.maxpool2d_blocked_fwd(np.zeros(blocked_shape(1, 1, 17, 16, 0), f32), np.empty(blocked_shape(1, 1, 1, 1, 0), f32),
                                np.empty(blocked_shape(1, 1, 1, 1, 0), np.uint8), 17, 16, 1, 1, 0, 0)
    dy = np.zeros(blocked_shape(2, 17, 2, 2, 0), f32)
    for pool, bad_tap in (((2, 2, 2, 2, 0, 0), 4),      # disjoint windows: the direct-store path
                          ((3, 3, 1, 1, 0, 0), 9),      # overlapping windows: the scatter path
                          ((3, 3, 2, 2, 1, 1), 0)):     # tap 0 of the first window lies in the padding
        taps = np.zeros(blocked_shape(2, 17, 2, 2, 0), np.uint8) + np.uint8(4 if pool[0] == 3 else 0)
        taps[0, 1, 0, 0, 3] = bad_tap
        with pytest.raises(ValueError, match=r"maxpool2d_blocked_bwd\(taps\): expected window taps.*n=0, channel block 1"):
            C.maxpool2d_blocked_bwd(dy, taps, xb.copy(), *pool, halo_dx=1)
    with pytest.raises(ValueError, match=r"maxpool2d_blocked_bwd\(dyb\): expected shape \(2, 2, 2, 2, 16\)"):
        C.maxpool2d_blocked_bwd(dy[:, :, :1].copy(), am, xb.copy(), 2, 2, 2, 2, 0, 0, halo_dx=1)
    with pytest.raises(ValueError, match=r"global_avgpool_blocked_fwd\(y\): expected shape \(2, 17\), got \(2, 16\)"):
        C.global_avgpool_blocked_fwd(xb, np.empty((2, 16), f32), 17, halo_x=1)
    with pytest.raises(ValueError, match=r"blocked_repad\(yb\): expected shape \(2, 2, 4, 4, 16\) \(interior 4 x 4, halo_out=0\)"):
        C.blocked_repad(xb, 17, 1, xb.copy(), 0)
