"""The direct convolution engine (csrc/cpu/conv2d_direct*.cpp) held to the NumPy reference.

Every instruction-set path is forced in turn (set_conv2d_isa: AVX-512, AVX2, portable), on shapes
chosen to break the blocking: channel counts that are not multiples of the 16-channel block
(1, 3, 5, 17, 33), 1x1 / 3x3 / 5x5 kernels, strides 1, 2 and 3 (3: the generic-stride tiles),
paddings 0 / 1 / 2, batch 1, images from 1x1 to 33x33 (33: pixel tiles of unequal width), and
mixed strides and paddings per axis (the data gradient's stride phases differ per axis). Both the
NCHW entry points (algorithm 'direct') and the blocked layout's own API are covered.
"""
import numpy as np
import pytest

C = pytest.importorskip("fasttrain._C", reason="C++ module not built")

from fasttrain.kernels import conv2d as ref  # noqa: E402
from cpp_isas import forced_isa, isa_available, isa_params  # noqa: E402

f32, f64 = np.float32, np.float64


ISAS = isa_params(C)

# (N, C, H, W, K, R, S, sh, sw, ph, pw)
CASES = [
    (1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0),
    (1, 3, 1, 1, 5, 3, 3, 1, 1, 1, 1),
    (1, 3, 5, 7, 5, 3, 3, 1, 1, 1, 1),
    (2, 5, 9, 8, 17, 5, 5, 2, 2, 2, 2),
    (1, 17, 33, 33, 3, 3, 3, 2, 2, 1, 1),
    (1, 1, 33, 33, 17, 3, 3, 1, 1, 1, 1),
    (1, 33, 6, 11, 17, 1, 1, 2, 2, 0, 0),
    (3, 17, 12, 10, 33, 3, 3, 1, 1, 0, 0),
    (1, 33, 4, 5, 1, 5, 5, 1, 1, 2, 2),
    (1, 5, 7, 9, 3, 3, 3, 2, 1, 0, 1),
    (1, 5, 10, 10, 33, 3, 3, 3, 3, 1, 1),
    (2, 16, 8, 8, 32, 3, 3, 2, 2, 1, 1),
    (1, 32, 8, 8, 64, 1, 1, 2, 2, 0, 0),
    # batch 3, stride 2 on 2 output rows: the strided forward's per-tile prefetch of the next row
    # and the weight gradient's of the next images cross image boundaries (and pass the last
    # image); three output blocks in two groups
    (3, 17, 4, 13, 33, 3, 3, 2, 2, 1, 1),
]


@pytest.fixture
def isa(request):
    yield from forced_isa(C, request.param)


def _forced_algo(name):
    before = C.conv2d_algo()
    C.set_conv2d_algo(name)
    yield
    C.set_conv2d_algo(before)


@pytest.fixture
def direct_algo():
    yield from _forced_algo("direct")


def _problem(case, seed=0):
    N, Cc, H, W, K, R, S, sh, sw, ph, pw = case
    rng = np.random.default_rng(seed)
    P, Q = ref.out_size(H, W, R, S, sh, sw, ph, pw)
    return dict(x=rng.standard_normal((N, Cc, H, W)).astype(f32),
                w=(rng.standard_normal((K, Cc, R, S)) / np.sqrt(Cc * R * S)).astype(f32),
                b=rng.standard_normal(K).astype(f32), dy=rng.standard_normal((N, K, P, Q)).astype(f32),
                dw0=rng.standard_normal((K, Cc, R, S)).astype(f32), db0=rng.standard_normal(K).astype(f32),
                geom=(sh, sw, ph, pw), P=P, Q=Q)


def _close(got, want, what):
    # float32 accumulation over up to C*R*S (fwd), K*R*S (bwd data) or N*P*Q (bwd weight) terms
    scale = max(1.0, float(np.abs(want).max(initial=0)))
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5 * scale, err_msg=what)


def _blocked_dy(p):
    """p's dy in the blocked layout, with the border the data gradient's stride phases read."""
    N, _, H, W = p["x"].shape
    _, _, R, S = p["w"].shape
    return C.to_blocked(p["dy"], *C.conv2d_blocked_dy_pads(H, W, R, S, *p["geom"]))


def _references(p, relu):
    x, w, b, dy = (p[k].astype(f64) for k in ("x", "w", "b", "dy"))
    y = np.empty((x.shape[0], w.shape[0], p["P"], p["Q"]))
    ref.conv2d_fwd_ref(x, w, b, y, *p["geom"], relu)
    dx = np.empty(x.shape)
    ref.conv2d_bwd_data_ref(dy, w, dx, *p["geom"])
    dw, db = p["dw0"].astype(f64), p["db0"].astype(f64)
    ref.conv2d_bwd_weight_ref(x, dy, dw, db, *p["geom"])
    return y, dx, dw, db


@pytest.mark.parametrize("isa", ISAS, indirect=True)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "N{}C{}_{}x{}K{}_{}x{}s{}{}p{}{}".format(*c))
def test_direct_matches_reference(isa, direct_algo, case):
    p = _problem(case)
    relu = case[4] % 2 == 1  # the fused ReLU epilogue on about half the cases
    y_ref, dx_ref, dw_ref, db_ref = _references(p, relu)
    y = np.empty(y_ref.shape, f32)
    C.conv2d_fwd(p["x"], p["w"], p["b"], y, *p["geom"], relu)
    _close(y, y_ref, f"{isa} fwd")
    dx = np.empty_like(p["x"])
    C.conv2d_bwd_data(p["dy"], p["w"], dx, *p["geom"])
    _close(dx, dx_ref, f"{isa} bwd_data")
    dw, db = p["dw0"].copy(), p["db0"].copy()  # the weight gradient accumulates
    C.conv2d_bwd_weight(p["x"], p["dy"], dw, db, *p["geom"])
    _close(dw, dw_ref, f"{isa} bwd_weight dw")
    _close(db, db_ref, f"{isa} bwd_weight db")


@pytest.mark.parametrize("isa", ISAS, indirect=True)
@pytest.mark.parametrize("case", [CASES[3], CASES[7], CASES[11]], ids=["5x5s2", "17to33", "resnet_s2"])
def test_blocked_api_matches_reference(isa, case):
    p = _problem(case, seed=1)
    sh, sw, ph, pw = p["geom"]
    K, Cc, R, S = p["w"].shape
    N, _, H, W = p["x"].shape
    y_ref, dx_ref, dw_ref, db_ref = _references(p, False)
    xb = C.to_blocked(p["x"], ph, ph, pw, pw)
    assert xb.shape == (N, (Cc + 15) // 16, H + 2 * ph, W + 2 * pw, 16)
    dyb = _blocked_dy(p)
    yb = np.full((N, (K + 15) // 16, p["P"], p["Q"], 16), np.nan, f32)
    C.conv2d_blocked_fwd(xb, p["w"], p["b"], yb, sh, sw, ph, pw, False)
    _close(C.from_blocked(yb, K), y_ref, "blocked fwd")
    assert not yb[:, -1, ..., K % 16 or 16:].any(), "channels past K must stay zero in the blocked output"
    dxb = np.full((N, (Cc + 15) // 16, H, W, 16), np.nan, f32)
    C.conv2d_blocked_bwd_data(dyb, p["w"], dxb, sh, sw, ph, pw)
    _close(C.from_blocked(dxb, Cc), dx_ref, "blocked bwd_data")
    dw, db = p["dw0"].copy(), p["db0"].copy()
    C.conv2d_blocked_bwd_weight(xb, dyb, dw, db, sh, sw, ph, pw)
    _close(dw, dw_ref, "blocked dw")
    _close(db, db_ref, "blocked db")


def test_blocked_round_trip_and_padding():
    x = np.random.default_rng(2).standard_normal((2, 17, 3, 4)).astype(f32)
    xb = C.to_blocked(x, 1, 2, 0, 1)
    assert xb.shape == (2, 2, 6, 5, 16)
    np.testing.assert_array_equal(xb[:, 0, 1:4, 0:4, :].transpose(0, 3, 1, 2), x[:, :16])
    np.testing.assert_array_equal(xb[:, 1, 1:4, 0:4, 0], x[:, 16])
    assert not xb[:, 1, ..., 1:].any() and not xb[:, :, 0].any() and not xb[:, :, 4:].any()
    assert not xb[:, :, :, 4].any()
    np.testing.assert_array_equal(C.from_blocked(C.to_blocked(x), 17), x)


def _assert_thread_counts_agree(p, case):
    """The three ops at 1, 2 and 3 threads: y and dx bit for bit (images and tiles are independent),
    dw and db to float32 rounding (per-thread partial sums combine in another order)."""
    from fasttrain import settings
    out = []
    try:
        for nt in (1, 2, 3):
            C.set_num_threads(nt)
            y = np.empty((case[0], case[4], p["P"], p["Q"]), f32)
            C.conv2d_fwd(p["x"], p["w"], p["b"], y, *p["geom"], False)
            dx = np.empty_like(p["x"])
            C.conv2d_bwd_data(p["dy"], p["w"], dx, *p["geom"])
            dw, db = np.zeros_like(p["w"]), np.zeros_like(p["b"])
            C.conv2d_bwd_weight(p["x"], p["dy"], dw, db, *p["geom"])
            out.append((y, dx, dw, db))
    finally:
        C.set_num_threads(settings.num_threads)
    for y, dx, dw, db in out[1:]:
        np.testing.assert_array_equal(y, out[0][0])
        np.testing.assert_array_equal(dx, out[0][1])
        _close(dw, out[0][2], "dw across thread counts")
        _close(db, out[0][3], "db across thread counts")


@pytest.mark.parametrize("case", [CASES[7], CASES[4], CASES[6], CASES[9]],
                         ids=["batch3", "batch1", "1x1s2", "s21p01"])
def test_thread_counts_agree(direct_algo, case):
    """Batch 3 splits the weight gradient's images between threads, batch 1 its output rows; the
    data gradient's stride phases (some without taps) share out row by row."""
    _assert_thread_counts_agree(_problem(case, seed=3), case)


def test_isa_switch_names_and_errors():
    assert C.conv2d_isa() in ("avx512", "avx2", "portable")
    C.set_conv2d_isa("portable")
    try:
        assert C.conv2d_isa() == "portable"
    finally:
        C.set_conv2d_isa("auto")
    with pytest.raises(ValueError, match=r"set_conv2d_isa\(name\): expected 'auto', 'avx512', 'avx2' or 'portable', got 'sse'"):
        C.set_conv2d_isa("sse")
    with pytest.raises(ValueError, match=r"'winograd43-blocked' or 'pointwise', got 'fft'"):
        C.set_conv2d_algo("fft")


def test_blocked_api_rejects_mismatched_blocks():
    w = np.zeros((4, 17, 3, 3), f32)
    xb = np.zeros((1, 1, 7, 7, 16), f32)  # 17 channels need 2 blocks
    with pytest.raises(ValueError, match=r"conv2d_blocked_fwd\(xb\): expected shape \(N, 2, H \+ 2ph, W \+ 2pw, 16\)"):
        C.conv2d_blocked_fwd(xb, w, np.zeros(4, f32), np.zeros((1, 1, 5, 5, 16), f32), 1, 1, 1, 1, False)
    with pytest.raises(ValueError, match=r"from_blocked\(C\): expected 1..16 channels"):
        C.from_blocked(np.zeros((1, 1, 2, 2, 16), f32), 17)


def test_direct_refuses_groups_and_dilation(direct_algo):
    # groups and dilation belong to the im2col and depthwise paths; forcing 'direct' on them is an
    # error rather than a quiet switch, so a test that forces it really tests it
    x, b = np.zeros((1, 4, 7, 7), f32), np.zeros(4, f32)
    with pytest.raises(ValueError, match=r"conv2d_fwd: conv2d algorithm 'direct' needs groups 1 and no "
                                         r"dilation, got groups 2 dilation \(1, 1\)"):
        C.conv2d_fwd(x, np.zeros((4, 2, 3, 3), f32), b, np.zeros((1, 4, 5, 5), f32), 1, 1, 0, 0, False, groups=2)
    with pytest.raises(ValueError, match=r"got groups 1 dilation \(2, 2\)"):
        C.conv2d_bwd_data(np.zeros((1, 4, 3, 3), f32), np.zeros((4, 4, 3, 3), f32), x, 1, 1, 0, 0, dil_h=2, dil_w=2)


@pytest.mark.parametrize("isa", ISAS, indirect=True)
@pytest.mark.parametrize("args", [dict(in_channels=17, out_channels=5, kernel_size=3, stride=2, padding=1, relu=True),
                                  dict(in_channels=3, out_channels=33, kernel_size=(1, 3), padding=(0, 1)),
                                  dict(in_channels=5, out_channels=17, kernel_size=2, padding="same", bias=False)],
                         ids=["s2_relu", "1x3", "same_even"])
def test_conv2d_layer_keeps_blocked_tensors_between_passes(isa, args):
    """The Conv2d layer on the direct engine (blocked x kept from the forward for the weight
    gradient, one blocked dy for both gradients) against the same layer on im2col."""
    import fasttrain as ft
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, args["in_channels"], 9, 7)).astype(f32)
    out = {}
    before = C.conv2d_algo()
    try:
        for algo in ("im2col", "direct"):
            C.set_conv2d_algo(algo)
            layer = ft.nn.Conv2d(**args)
            arena = ft.ParamArena.for_model(layer, seed=1)
            if layer.bias is not None:
                layer.bias.data[...] = np.linspace(-0.5, 0.5, layer.out_channels)
            y = layer.forward(x)
            assert (layer.cache[2] is not None) == (algo == "direct"), "the direct engine keeps x blocked"
            if "dy" not in out:
                out["dy"] = rng.standard_normal(y.shape).astype(f32)
            arena.zero_grad()
            dx = layer.backward(out["dy"])
            grads = [layer.weight.grad.copy()] + ([layer.bias.grad.copy()] if layer.bias is not None else [])
            out[algo] = (y, dx, grads)
    finally:
        C.set_conv2d_algo(before)
    (y0, dx0, g0), (y1, dx1, g1) = out["im2col"], out["direct"]
    _close(y1, y0, "layer y")
    _close(dx1, dx0, "layer dx")
    for a, b in zip(g1, g0):
        _close(a, b, "layer grads")


def _stats_ref(y):
    y = np.asarray(y, f64)
    return np.stack([y.sum(axis=(0, 2, 3)), (y * y).sum(axis=(0, 2, 3))])


@pytest.mark.parametrize("isa", ISAS, indirect=True)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "N{}C{}_{}x{}K{}_{}x{}s{}{}p{}{}".format(*c))
def test_blocked_fwd_stats_epilogue(isa, case):
    """The batchnorm statistics accumulated in the forward's epilogue: the float64 sum and sum of
    squares of the output (after the fused ReLU), held to NumPy's float64 sums of the reference
    output; the input carries a halo one wider than the padding (the shared-activation case)."""
    p = _problem(case, seed=5)
    sh, sw, ph, pw = p["geom"]
    K = p["w"].shape[0]
    N = p["x"].shape[0]
    for relu in (False, True):
        y_ref = _references(p, relu)[0]
        halo = max(ph, pw) + 1
        xb = C.to_blocked(p["x"], halo, halo, halo, halo)
        yb = np.empty((N, (K + 15) // 16, p["P"], p["Q"], 16), f32)
        stats = np.full((2, K), np.nan)
        C.conv2d_blocked_fwd(xb, p["w"], p["b"], yb, sh, sw, ph, pw, relu, stats, halo_x=halo)
        y = C.from_blocked(yb, K)
        _close(y, y_ref, f"{isa} fwd with halo {halo}")
        want = _stats_ref(y_ref)
        # float32 tile partials of <= 16 terms, added in double: relative 16u of the sums of |y|, y^2
        bound = 16 * 2.0 ** -24 * np.stack([np.abs(y_ref).sum(axis=(0, 2, 3)), want[1]]) + 1e-5
        assert np.all(np.abs(stats - want) <= bound + 2e-5 * np.abs(want)), f"{isa} relu={relu}: {stats} vs {want}"


def test_blocked_fwd_stats_deterministic_and_variance():
    """The statistics are the same bits for 1, 2 and 3 threads, and the variance formed from them
    (as the batchnorm does, in double) keeps float32 accuracy with a mean well away from zero."""
    from fasttrain import settings
    rng = np.random.default_rng(6)
    x = rng.standard_normal((3, 20, 13, 11)).astype(f32)
    w = (rng.standard_normal((24, 20, 3, 3)) / np.sqrt(180)).astype(f32)
    b = np.full(24, 4.0, f32)  # mean 4, standard deviation about 1
    xb = C.to_blocked(x, 1, 1, 1, 1)
    out = []
    try:
        for nt in (1, 2, 3):
            C.set_num_threads(nt)
            yb = np.empty((3, 2, 13, 11, 16), f32)
            stats = np.zeros((2, 24))
            C.conv2d_blocked_fwd(xb, w, b, yb, 1, 1, 1, 1, False, stats)
            out.append((yb, stats))
    finally:
        C.set_num_threads(settings.num_threads)
    for yb, stats in out[1:]:
        np.testing.assert_array_equal(yb, out[0][0])
        np.testing.assert_array_equal(stats, out[0][1])
    y = C.from_blocked(out[0][0], 24).astype(f64)
    n = y.size / 24
    mean = out[0][1][0] / n
    var = out[0][1][1] / n - mean ** 2
    np.testing.assert_allclose(mean, y.mean(axis=(0, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(var, y.var(axis=(0, 2, 3)), rtol=2e-5)


def test_blocked_halo_x_weight_gradient_and_errors():
    """bwd_weight reads an input with a halo wider than the padding like the forward; a halo
    narrower than the padding, or stats of the wrong shape or dtype, are errors naming them."""
    p = _problem(CASES[6], seed=7)  # 1x1 stride 2, padding 0
    sh, sw, ph, pw = p["geom"]
    K, Cc, R, S = p["w"].shape
    N, _, H, W = p["x"].shape
    _, _, dw_ref, db_ref = _references(p, False)
    xb = C.to_blocked(p["x"], 1, 1, 1, 1)
    dyb = _blocked_dy(p)
    dw, db = p["dw0"].copy(), p["db0"].copy()
    C.conv2d_blocked_bwd_weight(xb, dyb, dw, db, sh, sw, ph, pw, halo_x=1)
    _close(dw, dw_ref, "dw with halo 1")
    _close(db, db_ref, "db with halo 1")
    yb = np.empty((N, (K + 15) // 16, p["P"], p["Q"], 16), f32)
    x3 = C.to_blocked(p["x"], 1, 1, 1, 1)
    with pytest.raises(ValueError, match=r"conv2d_blocked_fwd\(halo_x\): expected -1 \(the padding\) or a halo >= the padding \(2, 2\), got 1"):
        C.conv2d_blocked_fwd(x3, p["w"], p["b"], yb, 1, 1, 2, 2, False, halo_x=1)
    with pytest.raises(ValueError, match=r"conv2d_blocked_fwd\(stats\): expected shape \(2, 17\), got \(17, 2\)"):
        C.conv2d_blocked_fwd(xb, p["w"], p["b"], yb, sh, sw, ph, pw, False, np.zeros((17, 2)), halo_x=1)
    with pytest.raises(ValueError, match=r"conv2d_blocked_fwd\(stats\): expected a writeable C-contiguous float64 array, got dtype float32"):
        C.conv2d_blocked_fwd(xb, p["w"], p["b"], yb, sh, sw, ph, pw, False, np.zeros((2, 17), f32), halo_x=1)


@pytest.mark.parametrize("isa", ISAS, indirect=True)
@pytest.mark.parametrize("case", [CASES[3], CASES[4], CASES[6], CASES[9], CASES[11], CASES[2]],
                         ids=["5x5s2", "17_33x33s2", "1x1s2", "s21p01", "resnet_s2", "s1"])
def test_blocked_halo_dy(isa, case):
    """dy read with a symmetric zero halo (what a batchnorm's backward writes) instead of the
    asymmetric pads of conv2d_blocked_dy_pads: the data gradient with any halo covering every pad,
    the weight gradients (blocked and stem) with any halo at all; a narrower halo is an error."""
    p = _problem(case, seed=9)
    sh, sw, ph, pw = p["geom"]
    K, Cc, R, S = p["w"].shape
    N, _, H, W = p["x"].shape
    _, dx_ref, dw_ref, db_ref = _references(p, False)
    need = max(C.conv2d_blocked_dy_pads(H, W, R, S, sh, sw, ph, pw))
    xb = C.to_blocked(p["x"], ph, ph, pw, pw)
    for halo in (need, need + 1):
        dyb = C.to_blocked(p["dy"], halo, halo, halo, halo)
        dxb = np.full((N, (Cc + 15) // 16, H, W, 16), np.nan, f32)
        C.conv2d_blocked_bwd_data(dyb, p["w"], dxb, sh, sw, ph, pw, halo_dy=halo)
        _close(C.from_blocked(dxb, Cc), dx_ref, f"{isa} bwd_data halo_dy={halo}")
        assert not dxb[:, -1, ..., Cc % 16 or 16:].any(), "channels past C must stay zero in dx"
    for halo in (0, need + 2):
        dyb = C.to_blocked(p["dy"], halo, halo, halo, halo)
        dw, db = p["dw0"].copy(), p["db0"].copy()
        C.conv2d_blocked_bwd_weight(xb, dyb, dw, db, sh, sw, ph, pw, halo_dy=halo)
        _close(dw, dw_ref, f"{isa} dw halo_dy={halo}")
        _close(db, db_ref, f"{isa} db halo_dy={halo}")
        dw, db = p["dw0"].copy(), p["db0"].copy()
        C.conv2d_stem_bwd_weight(p["x"], dyb, dw, db, sh, sw, ph, pw, halo_dy=halo)
        _close(dw, dw_ref, f"{isa} stem dw halo_dy={halo}")
    if need > 0:
        dyb = C.to_blocked(p["dy"], need - 1, need - 1, need - 1, need - 1)
        dxb = np.empty((N, (Cc + 15) // 16, H, W, 16), f32)
        with pytest.raises(ValueError, match=rf"conv2d_blocked_bwd_data\(halo_dy\): expected -1 \(dyb padded by "
                                             rf"conv2d_blocked_dy_pads\) or a halo >= {need}, got {need - 1}"):
            C.conv2d_blocked_bwd_data(dyb, p["w"], dxb, sh, sw, ph, pw, halo_dy=need - 1)
    with pytest.raises(ValueError, match=r"conv2d_blocked_bwd_weight\(dyb\): expected shape"):
        C.conv2d_blocked_bwd_weight(xb, C.to_blocked(p["dy"], 1, 1, 1, 1), p["dw0"].copy(), p["db0"].copy(),
                                    sh, sw, ph, pw, halo_dy=2)


@pytest.mark.parametrize("isa", ISAS, indirect=True)
@pytest.mark.parametrize("case", [CASES[6], CASES[11], CASES[9], CASES[10], CASES[2]],
                         ids=["1x1s2", "resnet_s2", "s21p01", "s3", "s1"])
def test_blocked_bwd_data_accumulates(isa, case):
    """accumulate=True adds the data gradient into dx (pixels no tap reaches, e.g. the odd ones of a
    1x1 stride-2 layer, keep their value); the channel tail stays zero."""
    p = _problem(case, seed=10)
    sh, sw, ph, pw = p["geom"]
    K, Cc, R, S = p["w"].shape
    N, _, H, W = p["x"].shape
    _, dx_ref, _, _ = _references(p, False)
    base = np.random.default_rng(11).standard_normal(p["x"].shape).astype(f32)
    halo = max(C.conv2d_blocked_dy_pads(H, W, R, S, sh, sw, ph, pw))
    dyb = C.to_blocked(p["dy"], halo, halo, halo, halo)
    dxb = C.to_blocked(base)
    C.conv2d_blocked_bwd_data(dyb, p["w"], dxb, sh, sw, ph, pw, halo_dy=halo, accumulate=True)
    _close(C.from_blocked(dxb, Cc), dx_ref + base, f"{isa} bwd_data accumulate")
    assert not dxb[:, -1, ..., Cc % 16 or 16:].any(), "channels past C must stay zero in dx"


STEM_CASES = [  # (N, C, H, W, K, R, S, sh, sw, ph, pw): few input channels, NCHW input
    (1, 3, 1, 1, 5, 1, 1, 1, 1, 0, 0),
    (2, 3, 9, 9, 16, 3, 3, 1, 1, 1, 1),
    (1, 3, 33, 33, 17, 3, 3, 2, 2, 1, 1),
    (1, 1, 7, 5, 33, 5, 5, 1, 1, 2, 2),
    (2, 5, 10, 11, 3, 3, 3, 3, 3, 1, 1),
    (1, 5, 12, 9, 16, 5, 5, 2, 1, 0, 2),
    (1, 17, 6, 6, 16, 3, 3, 1, 1, 1, 1),  # more channels than one tap group holds, on any ISA
]


@pytest.mark.parametrize("isa", ISAS, indirect=True)
@pytest.mark.parametrize("case", STEM_CASES, ids=lambda c: "N{}C{}_{}x{}K{}_{}x{}s{}{}p{}{}".format(*c))
def test_stem_matches_reference(isa, case):
    """The stem (NCHW input of few channels, blocked output): forward with the fused ReLU and the
    statistics epilogue, and the weight gradient from the blocked dy the other kernels read."""
    p = _problem(case, seed=8)
    sh, sw, ph, pw = p["geom"]
    K, Cc, R, S = p["w"].shape
    N, _, H, W = p["x"].shape
    for relu in (False, True):
        y_ref, _, dw_ref, db_ref = _references(p, relu)
        yb = np.full((N, (K + 15) // 16, p["P"], p["Q"], 16), np.nan, f32)
        stats = np.full((2, K), np.nan)
        C.conv2d_stem_fwd(p["x"], p["w"], p["b"], yb, sh, sw, ph, pw, relu, stats)
        _close(C.from_blocked(yb, K), y_ref, f"{isa} stem fwd relu={relu}")
        assert not yb[:, -1, ..., K % 16 or 16:].any(), "channels past K must stay zero"
        want = _stats_ref(y_ref)
        np.testing.assert_allclose(stats, want, rtol=2e-5, atol=1e-5 * max(1.0, np.abs(want).max()))
    dyb = _blocked_dy(p)
    dw, db = p["dw0"].copy(), p["db0"].copy()
    C.conv2d_stem_bwd_weight(p["x"], dyb, dw, db, sh, sw, ph, pw)
    _close(dw, dw_ref, f"{isa} stem dw")
    _close(db, db_ref, f"{isa} stem db")


@pytest.mark.parametrize("isa", ISAS, indirect=True)
@pytest.mark.parametrize("case", [(3, 17, 7, 16, 33, 3, 3, 1, 1, 1, 1), (1, 5, 9, 15, 17, 3, 3, 2, 2, 1, 1),
                                  (1, 33, 1, 3, 33, 1, 1, 1, 1, 0, 0), (2, 3, 33, 33, 17, 3, 3, 1, 1, 1, 1)],
                         ids=["by_image", "by_rows_s2", "items_1row", "stem_rgb"])
def test_bias_gradient_fused_into_weight_sweep(isa, case):
    """The weight gradients sum db from the dy vectors of their first tap's sweep (no pass of their
    own): every output block's db, in each thread split (images, rows, and the (block, block, row)
    items of a 1-row map), for 1, 2 and 3 threads, blocked and stem kernels alike; rows of 16 and 8
    output pixels take the kernels whose pixel loop is unrolled at compile time."""
    from fasttrain import settings
    p = _problem(case, seed=11)
    sh, sw, ph, pw = p["geom"]
    _, _, dw_ref, db_ref = _references(p, False)
    xb, dyb = C.to_blocked(p["x"], ph, ph, pw, pw), _blocked_dy(p)
    try:
        for nt in (1, 2, 3):
            C.set_num_threads(nt)
            for name, run in (("blocked", lambda dw, db: C.conv2d_blocked_bwd_weight(xb, dyb, dw, db, sh, sw, ph, pw)),
                              ("stem", lambda dw, db: C.conv2d_stem_bwd_weight(p["x"], dyb, dw, db, sh, sw, ph, pw))):
                if name == "stem" and p["x"].shape[1] > 16:
                    continue
                dw, db = p["dw0"].copy(), p["db0"].copy()
                run(dw, db)
                _close(dw, dw_ref, f"{isa} {name} dw, {nt} threads")
                _close(db, db_ref, f"{isa} {name} db, {nt} threads")
    finally:
        C.set_num_threads(settings.num_threads)


def test_stem_errors_name_the_argument():
    x, w, b = np.zeros((1, 3, 8, 8), f32), np.zeros((16, 3, 3, 3), f32), np.zeros(16, f32)
    with pytest.raises(ValueError, match=r"conv2d_stem_fwd\(yb\): expected shape \(1, 1, 8, 8, 16\), got \(1, 1, 6, 6, 16\)"):
        C.conv2d_stem_fwd(x, w, b, np.zeros((1, 1, 6, 6, 16), f32), 1, 1, 1, 1, False)
    with pytest.raises(ValueError, match=r"conv2d_stem_bwd_weight\(dyb\): expected shape \(1, 1, 10, 10, 16\)"):
        C.conv2d_stem_bwd_weight(x, np.zeros((1, 1, 8, 8, 16), f32), w.copy(), b.copy(), 1, 1, 1, 1)


def test_choice_for_blocked_activations():
    """blocked=True: with no conversion to pay, 1x1 shortcuts and the 3-channel stem go direct
    wherever intrinsics kernels run (with AVX2 but for the wide 3x3 stride-1 layers, which Winograd
    does faster); the NCHW rule runs the stem's forward and weight gradient on the stem kernels (AVX-512)."""
    shortcut = ("fwd", 128, 16, 32, 32, 32, 1, 1, 2, 2, 0, 0)
    stem = ("bwd_weight", 128, 3, 32, 32, 16, 3, 3, 1, 1, 1, 1)
    grouped = ("fwd", 8, 16, 8, 8, 16, 3, 3, 1, 1, 1, 1)
    try:
        for isa in ("avx512", "avx2", "portable"):
            if not isa_available(C, isa):
                continue
            C.set_conv2d_isa(isa)
            want = "im2col" if isa == "portable" else "direct"
            assert C.conv2d_choice(*shortcut, blocked=True) == want, isa
            assert C.conv2d_choice(*stem, blocked=True) == want, isa
            assert C.conv2d_choice(*grouped, groups=2, blocked=True) != "direct"
            # the NCHW rule: the strided 1x1 shortcut on the NCHW arrays (AVX-512); the stem's forward and
            # weight gradient on its own kernels (AVX-512), its data gradient (3 channels out) on im2col
            assert C.conv2d_choice(*shortcut) == ("pointwise" if isa == "avx512" else "im2col"), isa
            assert C.conv2d_choice(*stem) == ("direct" if isa == "avx512" else "im2col"), isa
            assert C.conv2d_choice("fwd", *stem[1:]) == ("direct" if isa == "avx512" else "im2col"), isa
            assert C.conv2d_choice("bwd_data", *stem[1:]) == "im2col"
            # the wide 3x3 stride-1 layers: Winograd beats the AVX2 direct kernels (docs/KERNELS.md)
            for op in ("fwd", "bwd_data", "bwd_weight"):
                wide = (op, 128, 32, 32, 32, 32, 3, 3, 1, 1, 1, 1)   # C*K*P*Q = 2^20
                narrow = (op, 128, 32, 16, 16, 32, 3, 3, 1, 1, 1, 1)  # 2^18
                # AVX-512: the direct engine's entry points, by Winograd on the blocked layout
                # (tests/test_conv_winograd_blocked.py)
                wino = "winograd43-blocked"
                want_wide = {"avx512": wino, "avx2": "winograd"}.get(isa, "winograd")
                assert C.conv2d_choice(*wide, blocked=True) == want_wide, (isa, op)
                assert C.conv2d_choice(*narrow, blocked=True) == {"avx512": wino, "avx2": "direct"}.get(isa, "winograd")
    finally:
        C.set_conv2d_isa("auto")


# (N, C, H, W, K): 1x1 stride-1 convolutions on maps narrower than 16 pixels, which the blocked
# entry points run as one row of H*W pixels per image when no array carries a halo (and row by
# row, as before, when one does)
POINTWISE_CASES = [(1, 1, 2, 2, 1), (3, 3, 4, 4, 5), (1, 5, 3, 5, 17), (2, 17, 2, 2, 33), (1, 33, 8, 8, 17),
                   (3, 33, 1, 7, 3), (2, 17, 5, 15, 40)]


@pytest.mark.parametrize("isa", ISAS, indirect=True)
@pytest.mark.parametrize("case", POINTWISE_CASES, ids=lambda c: "N{}C{}_{}x{}K{}".format(*c))
def test_pointwise_small_maps_flat_and_halo(isa, case):
    """fwd (with the statistics epilogue), bwd_data (fresh and accumulating) and bwd_weight of a 1x1
    convolution on small maps, halo 0 (the pixel-row path) and halo 1 (row by row), for 1, 2 and 3
    threads: the reference's values, zero channel tails, and (forward, statistics, data gradient:
    each output written by one thread) the same bits for every thread count."""
    from fasttrain import settings
    N, Cc, H, W, K = case
    p = _problem((N, Cc, H, W, K, 1, 1, 1, 1, 0, 0), seed=12)
    y_ref, dx_ref, dw_ref, db_ref = _references(p, True)
    stats_want = _stats_ref(y_ref)
    base = np.random.default_rng(13).standard_normal(p["x"].shape).astype(f32)
    Kb = (K + 15) // 16
    runs = {}
    try:
        for nt in (1, 2, 3):
            C.set_num_threads(nt)
            for halo in (0, 1):
                what = f"{isa} {nt} threads halo {halo}"
                xb = C.to_blocked(p["x"], halo, halo, halo, halo)
                dyb = C.to_blocked(p["dy"], halo, halo, halo, halo)
                yb = np.full((N, Kb, H, W, 16), np.nan, f32)
                stats = np.full((2, K), np.nan)
                C.conv2d_blocked_fwd(xb, p["w"], p["b"], yb, 1, 1, 0, 0, True, stats, halo_x=halo)
                _close(C.from_blocked(yb, K), y_ref, what + " fwd")
                assert not yb[:, -1, ..., K % 16 or 16:].any(), what + ": channels past K must stay zero"
                bound = 16 * 2.0 ** -24 * np.stack([np.abs(y_ref).sum(axis=(0, 2, 3)), stats_want[1]]) + 1e-5
                assert np.all(np.abs(stats - stats_want) <= bound + 2e-5 * np.abs(stats_want)), what + " stats"
                dxb = np.full((N, (Cc + 15) // 16, H, W, 16), np.nan, f32)
                C.conv2d_blocked_bwd_data(dyb, p["w"], dxb, 1, 1, 0, 0, halo_dy=halo)
                _close(C.from_blocked(dxb, Cc), dx_ref, what + " bwd_data")
                assert not dxb[:, -1, ..., Cc % 16 or 16:].any(), what + ": channels past C must stay zero"
                acc = C.to_blocked(base)
                C.conv2d_blocked_bwd_data(dyb, p["w"], acc, 1, 1, 0, 0, halo_dy=halo, accumulate=True)
                _close(C.from_blocked(acc, Cc), dx_ref + base, what + " bwd_data accumulate")
                dw, db = p["dw0"].copy(), p["db0"].copy()
                C.conv2d_blocked_bwd_weight(xb, dyb, dw, db, 1, 1, 0, 0, halo_x=halo, halo_dy=halo)
                _close(dw, dw_ref, what + " dw")
                _close(db, db_ref, what + " db")
                runs[nt, halo] = (yb, stats, dxb)
    finally:
        C.set_num_threads(settings.num_threads)
    for (nt, halo), got in runs.items():
        for a, b in zip(got, runs[1, halo]):
            np.testing.assert_array_equal(a, b, err_msg=f"{isa} halo {halo}: {nt} threads vs 1")


# ---- 1x1 convolutions on the NCHW arrays themselves (algorithm 'pointwise') ----
# (N, C, H, W, K, sh, sw): channels off the 16-block (1, 3, 5, 17, 33), strides 1 to 3 and mixed per
# axis, batch 1, images 1x1 to 33x33; P*Q a multiple of 16 (rows written in place: 4x4, 8x8 outputs)
# and not (rows through a zero-tailed buffer), and more images than one weight-gradient call takes
PW_CASES = [
    (1, 1, 1, 1, 1, 2, 2),
    (1, 3, 5, 5, 5, 2, 2),
    (2, 17, 33, 33, 33, 2, 2),
    (3, 33, 7, 9, 17, 3, 2),
    (1, 5, 1, 1, 3, 1, 1),
    (2, 5, 8, 8, 3, 1, 1),
    (1, 17, 6, 11, 33, 1, 2),
    (9, 32, 16, 16, 64, 2, 2),
    (21, 16, 8, 8, 5, 2, 2),
    (0, 3, 4, 4, 5, 2, 2),
]


@pytest.fixture
def pointwise_algo():
    yield from _forced_algo("pointwise")


def _pw_problem(case, seed=0):
    N, Cc, H, W, K, sh, sw = case
    return _problem((N, Cc, H, W, K, 1, 1, sh, sw, 0, 0), seed)


@pytest.mark.parametrize("isa", ISAS, indirect=True)
@pytest.mark.parametrize("case", PW_CASES, ids=lambda c: "N{}C{}_{}x{}K{}s{}{}".format(*c))
@pytest.mark.parametrize("relu", [False, True])
def test_pointwise_nchw_matches_reference(isa, pointwise_algo, case, relu):
    p = _pw_problem(case)
    y_ref, dx_ref, dw_ref, db_ref = _references(p, relu)
    y = np.full(y_ref.shape, np.nan, f32)
    C.conv2d_fwd(p["x"], p["w"], p["b"], y, *p["geom"], relu)
    _close(y, y_ref, f"{isa} fwd")
    dx = np.full(p["x"].shape, np.nan, f32)   # every pixel written, the ones no tap reads with zero
    C.conv2d_bwd_data(p["dy"], p["w"], dx, *p["geom"])
    _close(dx, dx_ref, f"{isa} bwd_data")
    dw, db = p["dw0"].copy(), p["db0"].copy()  # the weight gradient accumulates
    C.conv2d_bwd_weight(p["x"], p["dy"], dw, db, *p["geom"])
    _close(dw, dw_ref, f"{isa} bwd_weight dw")
    _close(db, db_ref, f"{isa} bwd_weight db")


@pytest.mark.parametrize("case", [PW_CASES[3], PW_CASES[8], PW_CASES[0]], ids=["batch3", "batch21", "batch1"])
def test_pointwise_nchw_thread_counts_agree(pointwise_algo, case):
    _assert_thread_counts_agree(_pw_problem(case, seed=5), case)


def test_pointwise_nchw_choice_and_errors(pointwise_algo):
    x, w, b = np.zeros((1, 2, 7, 7), f32), np.zeros((3, 2, 3, 3), f32), np.zeros(3, f32)
    with pytest.raises(ValueError, match=r"conv2d_fwd: conv2d algorithm 'pointwise' needs a 1x1 kernel with padding 0, "
                                         r"no dilation and groups 1, got 3x3 padding \(1, 1\)"):
        C.conv2d_fwd(x, w, b, np.zeros((1, 3, 7, 7), f32), 1, 1, 1, 1, False)
    with pytest.raises(ValueError, match=r"got 1x1 padding \(1, 1\)"):
        C.conv2d_fwd(x, w[:, :, :1, :1].copy(), b, np.zeros((1, 3, 5, 5), f32), 2, 2, 1, 1, False)
    C.set_conv2d_algo("auto")
    try:
        C.set_conv2d_isa("avx512")
    except ValueError:
        pytest.skip("no AVX-512 on this CPU/build")
    try:
        # under 'auto' with the AVX-512 kernels: the strided unpadded 1x1 layers (ResNet's shortcuts)
        for op in ("fwd", "bwd_data", "bwd_weight"):
            assert C.conv2d_choice(op, 128, 32, 16, 16, 64, 1, 1, 2, 2, 0, 0) == "pointwise"
            assert C.conv2d_choice(op, 128, 32, 16, 16, 64, 1, 1, 1, 1, 0, 0) == "im2col"
            assert C.conv2d_choice(op, 128, 32, 16, 16, 64, 1, 1, 2, 2, 1, 1) == "im2col"
            assert C.conv2d_choice(op, 128, 32, 16, 16, 64, 1, 1, 2, 2, 0, 0, blocked=True) == "direct"
        C.set_conv2d_isa("avx2")
        assert C.conv2d_choice("fwd", 128, 32, 16, 16, 64, 1, 1, 2, 2, 0, 0) == "im2col"
    finally:
        C.set_conv2d_isa("auto")
