"""Winograd F(2x2, 3x3) and F(4x4, 3x3) on the blocked layout (csrc/cpu/conv2d_wino_blocked_avx512.cpp),
run by the direct engine's blocked entry points for 3x3 stride-1 padding-1 layers: forced with
set_conv2d_algo("winograd-blocked") / ("winograd43-blocked": 4x4 tiles) and held to the NumPy
reference on odd shapes (channels not a multiple of 16, maps with a partial last tile, 1x1 maps, batch 1), forward (bias, ReLU, halos, the batchnorm statistics), data
gradient (dy halos, accumulate) and weight gradient, within the error bound docs/KERNELS.md states
(relative to sum |w||x| per output); the choice, its errors, thread-count
independence, a float32 finite-difference check through the layer, and a ResNet-20 training step
under the engine's own choice against the direct kernels forced."""
import numpy as np
import pytest

C = pytest.importorskip("fasttrain._C", reason="C++ module not built")

import fasttrain as ft  # noqa: E402
from fasttrain import models, nn, settings  # noqa: E402
from fasttrain.check import numeric_grad  # noqa: E402
from fasttrain.kernels import conv2d as ref  # noqa: E402
from cpp_isas import isa_available  # noqa: E402

f32, f64 = np.float32, np.float64

needs_avx512 = pytest.mark.skipif(not isa_available(C, "avx512"), reason="no AVX-512 kernels on this CPU/build")

# (N, C, H, W, K)
CASES = [
    (1, 1, 1, 1, 1), (3, 16, 2, 2, 16), (1, 17, 3, 3, 33), (3, 33, 7, 7, 17), (1, 64, 8, 8, 64),
    (3, 16, 13, 13, 64), (1, 33, 33, 33, 16), (3, 64, 8, 13, 33), (1, 17, 1, 7, 64), (3, 1, 8, 8, 17),
    (1, 16, 4, 4, 16), (3, 17, 10, 11, 33), (3, 16, 5, 9, 16), (1, 33, 6, 12, 17),
    (64, 3, 31, 31, 5),  # x and dy over the 8 MiB from which the weight gradient prefetches ahead
]
IDS = ["N{}C{}_{}x{}K{}".format(*c) for c in CASES]
# F(2x2, 3x3) adds, subtracts and halves: observed errors stay below 2e-7 of sum |w||x| (see
# docs/KERNELS.md); the bound leaves an order of magnitude. F(4x4, 3x3) multiplies by up to 5 in the
# input transform and 8 in the output transform: observed up to 6e-6 of sum |w||x| (C <= 64);
# the bound leaves about 5x.
BOUNDS = {"winograd-blocked": 1e-5, "winograd43-blocked": 3e-5}
BOUND = BOUNDS["winograd-blocked"]


def _forced(algo):
    C.set_conv2d_isa("avx512")
    C.set_conv2d_algo(algo)
    yield algo
    C.set_conv2d_algo("auto")
    C.set_conv2d_isa("auto")


@pytest.fixture
def wino():
    """F(2x2, 3x3) forced for all three ops."""
    yield from _forced("winograd-blocked")


@pytest.fixture(params=list(BOUNDS))
def wino_fwd(request):
    """Each tile size forced for the forward and data gradient; yields the algorithm's name."""
    yield from _forced(request.param)


def _problem(case, seed=0):
    N, Cc, H, W, K = case
    rng = np.random.default_rng(seed)
    return dict(x=rng.standard_normal((N, Cc, H, W)).astype(f32),
                w=(rng.standard_normal((K, Cc, 3, 3)) / np.sqrt(Cc * 9)).astype(f32),
                b=rng.standard_normal(K).astype(f32), dy=rng.standard_normal((N, K, H, W)).astype(f32))


def _fwd(x, w, b, relu=False):
    y = np.empty((x.shape[0], w.shape[0], x.shape[2], x.shape[3]))
    ref.conv2d_fwd_ref(x.astype(f64), w.astype(f64), b.astype(f64), y, 1, 1, 1, 1, relu)
    return y


def _bwd_data(dy, w, x_shape):
    dx = np.empty(x_shape)
    ref.conv2d_bwd_data_ref(dy.astype(f64), w.astype(f64), dx, 1, 1, 1, 1)
    return dx


def _within(got, want, scale, what, bound=BOUND):
    """|got - want| <= bound * scale elementwise, scale = sum |w||x| of each output (+ |bias|)."""
    err = np.abs(got - want)
    worst = float((err / np.maximum(scale, 1e-30)).max())
    assert np.all(err <= bound * scale + 1e-30), f"{what}: worst error {worst:.2e} of sum |w||x|"


@needs_avx512
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_forward_matches_reference(wino_fwd, case):
    p = _problem(case)
    N, Cc, H, W, K = case
    Kb = (K + 15) // 16
    scale = _fwd(np.abs(p["x"]), np.abs(p["w"]), np.abs(p["b"]))
    for bias, relu, halo in ((True, False, 1), (False, True, 2), (True, True, -1)):
        b = p["b"] if bias else np.zeros(K, f32)
        want = _fwd(p["x"], p["w"], b, relu)
        xb = C.to_blocked(p["x"], *(4 * (max(halo, 1),)))
        yb = np.full((N, Kb, H, W, 16), np.nan, f32)
        stats = np.full((2, K), np.nan)
        C.conv2d_blocked_fwd(xb, p["w"], b, yb, 1, 1, 1, 1, relu, stats, halo_x=halo)
        what = f"{wino_fwd} fwd bias={bias} relu={relu} halo={halo}"
        _within(C.from_blocked(yb, K), want, scale, what, BOUNDS[wino_fwd])
        assert not yb[:, -1, ..., K % 16 or 16:].any(), f"{what}: channels past K must stay zero"
        y = C.from_blocked(yb, K).astype(f64)
        s = np.stack([y.sum(axis=(0, 2, 3)), (y * y).sum(axis=(0, 2, 3))])
        np.testing.assert_allclose(stats, s, rtol=1e-6, atol=1e-6 * np.abs(s).max(), err_msg=what)


@needs_avx512
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_data_gradient_matches_reference(wino_fwd, case):
    p = _problem(case, seed=1)
    N, Cc, H, W, K = case
    Cb = (Cc + 15) // 16
    want = _bwd_data(p["dy"], p["w"], p["x"].shape)
    scale = _bwd_data(np.abs(p["dy"]), np.abs(p["w"]), p["x"].shape)
    for halo in (-1, 1, 2):
        dyb = C.to_blocked(p["dy"], *(4 * (max(halo, 1),)))
        dxb = np.full((N, Cb, H, W, 16), np.nan, f32)
        C.conv2d_blocked_bwd_data(dyb, p["w"], dxb, 1, 1, 1, 1, halo_dy=halo)
        _within(C.from_blocked(dxb, Cc), want, scale, f"{wino_fwd} bwd_data halo_dy={halo}", BOUNDS[wino_fwd])
        assert not dxb[:, -1, ..., Cc % 16 or 16:].any(), "channels past C must stay zero"
    base = np.random.default_rng(2).standard_normal(p["x"].shape).astype(f32)
    dxb = C.to_blocked(base)
    C.conv2d_blocked_bwd_data(C.to_blocked(p["dy"], 1, 1, 1, 1), p["w"], dxb, 1, 1, 1, 1, halo_dy=1, accumulate=True)
    _within(C.from_blocked(dxb, Cc), want + base, scale + np.abs(base), f"{wino_fwd} bwd_data accumulate", BOUNDS[wino_fwd])


def _bwd_weight(x, dy, K):
    dw, db = np.zeros((K, x.shape[1], 3, 3)), np.zeros(K)
    ref.conv2d_bwd_weight_ref(x.astype(f64), dy.astype(f64), dw, db, 1, 1, 1, 1)
    return dw, db


# the weight gradient's bound per weight, relative to its sum |dy||x| (float32 sums over up to
# N*H*W/4 tiles); 4x4 tiles: the transforms' factors (up to 5 in B^T, 8 in A^T, 1/24 in G) put
# observed errors 3-10x those of 2x2 tiles (docs/KERNELS.md)
WGRAD_BOUNDS = {"winograd-blocked": 2e-5, "winograd43-blocked": 6e-5}


@needs_avx512
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_weight_gradient_matches_reference(wino_fwd, case):
    """dw and db accumulate; x read through halos 1, 2 (or exactly the padding), dy through halos
    0, 1, 2 (or conv2d_blocked_dy_pads'), each tile size."""
    p = _problem(case, seed=4)
    N, Cc, H, W, K = case
    rng = np.random.default_rng(7)
    dw0, db0 = rng.standard_normal((K, Cc, 3, 3)).astype(f32), rng.standard_normal(K).astype(f32)
    dw_ref, db_ref = _bwd_weight(p["x"], p["dy"], K)
    sw, sb = _bwd_weight(np.abs(p["x"]), np.abs(p["dy"]), K)
    for hx, hdy in ((1, -1), (2, 0), (-1, 1), (1, 2)):
        xb = C.to_blocked(p["x"], *(4 * (max(hx, 1),)))
        dyb = C.to_blocked(p["dy"], *(4 * (max(hdy, 1) if hdy else 0,)))
        dw, db = dw0.copy(), db0.copy()
        C.conv2d_blocked_bwd_weight(xb, dyb, dw, db, 1, 1, 1, 1, halo_x=hx, halo_dy=hdy)
        err = np.abs(dw - (dw_ref + dw0))
        bound = WGRAD_BOUNDS[wino_fwd]
        assert np.all(err <= bound * sw + 1e-6), f"dw halo_x={hx} halo_dy={hdy}: worst {(err / (sw + 1e-30)).max():.2e}"
        np.testing.assert_allclose(db, db_ref + db0, rtol=1e-5, atol=1e-5 * (sb.max() + 1), err_msg=f"db {hx} {hdy}")


@needs_avx512
def test_nchw_entry_points_and_weight_gradient(wino_fwd):
    """The NCHW entry points convert and run the blocked Winograd, all three ops, each tile size."""
    bound = BOUNDS[wino_fwd]
    p = _problem((2, 20, 9, 6, 24), seed=3)
    y = np.empty((2, 24, 9, 6), f32)
    C.conv2d_fwd(p["x"], p["w"], p["b"], y, 1, 1, 1, 1, False)
    _within(y, _fwd(p["x"], p["w"], p["b"]), _fwd(np.abs(p["x"]), np.abs(p["w"]), np.abs(p["b"])), "NCHW fwd", bound)
    dx = np.empty_like(p["x"])
    C.conv2d_bwd_data(p["dy"], p["w"], dx, 1, 1, 1, 1)
    _within(dx, _bwd_data(p["dy"], p["w"], dx.shape), _bwd_data(np.abs(p["dy"]), np.abs(p["w"]), dx.shape), "NCHW dx", bound)
    dw, db = np.zeros((24, 20, 3, 3), f32), np.zeros(24, f32)
    C.conv2d_bwd_weight(p["x"], p["dy"], dw, db, 1, 1, 1, 1)
    dw_ref, db_ref = _bwd_weight(p["x"], p["dy"], 24)
    assert np.all(np.abs(dw - dw_ref) <= WGRAD_BOUNDS[wino_fwd] * _bwd_weight(np.abs(p["x"]), np.abs(p["dy"]), 24)[0] + 1e-6), "NCHW dw"
    np.testing.assert_allclose(db, db_ref, rtol=1e-5, atol=1e-5)
    for op in ("fwd", "bwd_data", "bwd_weight"):
        assert C.conv2d_choice(op, 2, 20, 9, 6, 24, 3, 3, 1, 1, 1, 1, blocked=True) == wino_fwd


@needs_avx512
def test_same_bits_for_any_thread_count(wino_fwd):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((3, 20, 13, 11)).astype(f32)
    w = (rng.standard_normal((40, 20, 3, 3)) / np.sqrt(180)).astype(f32)
    b = np.full(40, 4.0, f32)
    dy = rng.standard_normal((3, 40, 13, 11)).astype(f32)
    out = []
    try:
        for nt in (1, 2, 3):
            C.set_num_threads(nt)
            yb = np.empty((3, 3, 13, 11, 16), f32)
            stats = np.zeros((2, 40))
            C.conv2d_blocked_fwd(C.to_blocked(x, 1, 1, 1, 1), w, b, yb, 1, 1, 1, 1, True, stats)
            dxb = np.empty((3, 2, 13, 11, 16), f32)
            C.conv2d_blocked_bwd_data(C.to_blocked(dy, 1, 1, 1, 1), w, dxb, 1, 1, 1, 1, halo_dy=1)
            out.append((yb, stats, dxb))
    finally:
        C.set_num_threads(settings.num_threads)
    for got in out[1:]:
        for a, b_ in zip(got, out[0]):
            np.testing.assert_array_equal(a, b_)


@pytest.mark.parametrize("algo", list(BOUNDS))
def test_forcing_refuses_what_it_cannot_do(algo):
    try:
        C.set_conv2d_algo(algo)
        assert C.conv2d_algo() == algo
        for shape, what in (((1, 16, 8, 8, 16, 3, 3, 2, 2, 1, 1), "stride"), ((1, 16, 8, 8, 16, 1, 1, 1, 1, 0, 0), "1x1"),
                            ((1, 16, 8, 8, 16, 3, 3, 1, 1, 2, 2), "padding 2"), ((1, 16, 8, 8, 16, 5, 5, 1, 1, 2, 2), "5x5")):
            for op in ("fwd", "bwd_data", "bwd_weight"):
                with pytest.raises(ValueError, match=f"'{algo}' needs a 3x3 kernel with stride 1, padding 1"):
                    C.conv2d_choice(op, *shape, blocked=True)
        x = np.zeros((1, 16, 8, 8), f32)
        with pytest.raises(ValueError, match=f"'{algo}' needs a 3x3 kernel"):
            C.conv2d_fwd(x, np.zeros((16, 16, 3, 3), f32), np.zeros(16, f32), np.zeros((1, 16, 4, 4), f32), 2, 2, 1, 1, False)
        for isa in ("avx2", "portable"):
            if not isa_available(C, isa):
                continue
            C.set_conv2d_isa(isa)
            with pytest.raises(ValueError, match=f"'{algo}' needs the AVX-512 kernels, but the direct engine runs '{isa}'"):
                C.conv2d_choice("fwd", 1, 16, 8, 8, 16, 3, 3, 1, 1, 1, 1, blocked=True)
            C.set_conv2d_isa("auto")
    finally:
        C.set_conv2d_algo("auto")
        C.set_conv2d_isa("auto")
    with pytest.raises(ValueError, match="'winograd-blocked', 'winograd43-blocked' or 'pointwise', got 'winograd_blocked'"):
        C.set_conv2d_algo("winograd_blocked")


def test_auto_choice_rule():
    """Under 'auto', where the AVX-512 kernels run, 3x3 stride-1 padding-1 layers with >= 16 channels
    in and out: forward and data gradient by 4x4 tiles from 128 of them, else by 2x2 tiles from 32
    channels and 128 tiles, else direct; the weight gradient by 4x4 tiles from 128 of them, else by
    2x2 tiles. Never with the AVX2 or portable kernels (those paths keep what they ran before)."""
    # (N, C, H, W, K) -> the forward / data gradient's choice and the weight gradient's with AVX-512
    cases = {(128, 64, 8, 8, 64): ("winograd43-blocked", "winograd43-blocked"),
             (128, 16, 32, 32, 16): ("winograd43-blocked", "winograd43-blocked"),
             (2, 16, 32, 32, 16): ("winograd43-blocked", "winograd43-blocked"),  # 128 tiles of 4x4
             (1, 16, 32, 32, 16): ("direct", "winograd-blocked"),               # 64 tiles of 4x4
             (8, 64, 8, 8, 64): ("winograd-blocked", "winograd-blocked"),       # 32 of 4x4, 128 of 2x2
             (8, 16, 8, 8, 16): ("direct", "winograd-blocked"),                 # 2x2 tiles need 32 channels
             (1, 64, 8, 8, 64): ("direct", "winograd-blocked"),
             (128, 8, 32, 32, 16): ("direct", "direct")}
    for isa in ("avx512", "avx2", "portable"):
        if not isa_available(C, isa):
            continue
        try:
            C.set_conv2d_isa(isa)
            for case, (want_fwd, want_wgrad) in cases.items():
                N, Cc, H, W, K = case
                for op in ("fwd", "bwd_data", "bwd_weight"):
                    got = C.conv2d_choice(op, N, Cc, H, W, K, 3, 3, 1, 1, 1, 1, blocked=True)
                    if isa == "avx512":
                        assert got == (want_wgrad if op == "bwd_weight" else want_fwd), (case, op, got)
                    else:
                        assert "blocked" not in got, (isa, case, op, got)
        finally:
            C.set_conv2d_isa("auto")


@needs_avx512
def test_layer_finite_differences(wino):
    """Through the Conv2d layer (NCHW in and out, the engine's blocked entry points inside): a
    float32 central-difference check of the input and weight gradients (the kernels are float32
    only, so float64 gradcheck runs the NumPy path)."""
    ft.set_backend("cpp")
    try:
        layer = nn.Conv2d(17, 33, 3, padding=1, relu=False)
        arena = ft.ParamArena.for_model(layer, seed=3)
        rng = np.random.default_rng(5)
        x = rng.standard_normal((2, 17, 5, 7)).astype(f32)
        r = rng.standard_normal((2, 33, 5, 7)).astype(f32)
        arena.zero_grad()
        layer.forward(x)
        assert layer.cache[2] is not None, "the layer did not run the direct engine's blocked entry points"
        dx = layer.backward(r)

        def loss():
            return float(np.sum(layer.forward(x).astype(f64) * r))
        for arr, grad in ((x, dx), (layer.weight.data, layer.weight.grad)):
            num = numeric_grad(loss, arr, eps=1e-2, max_checks=12, seed=5).reshape(-1)
            for i in np.flatnonzero(~np.isnan(num)):
                assert abs(num[i] - grad.reshape(-1)[i]) <= 2e-3 + 2e-2 * abs(num[i]), (i, num[i], grad.reshape(-1)[i])
    finally:
        ft.set_backend("auto")


@needs_avx512
def test_resnet20_step_matches_direct():
    """A ResNet-20 training step (batch 8, 32x32: 16 and 32 channels by 4x4 tiles, 64 channels by
    2x2 tiles under 'auto', each layer's weight gradient likewise) gives the loss, input and parameter
    gradients of the same step with the direct kernels forced."""
    ft.set_backend("cpp")
    out = {}
    try:
        for algo in ("auto", "direct"):
            C.set_conv2d_algo(algo)
            model = models.resnet(20, 3, 10, width=16)
            arena = ft.ParamArena.for_model(model, seed=0)
            model.train(True)
            rng = np.random.default_rng(1)
            x = rng.standard_normal((8, 3, 32, 32)).astype(f32)
            labels = rng.integers(0, 10, 8)
            arena.zero_grad()
            logits = model.forward(x)
            dlogits = np.empty_like(logits)
            loss = C.softmax_xent(logits, labels, dlogits)
            model.backward(dlogits)
            out[algo] = (loss, arena.grad.copy())
            for shape, wino in (((8, 16, 32, 32, 16), "winograd43-blocked"), ((8, 32, 16, 16, 32), "winograd43-blocked"),
                                ((8, 64, 8, 8, 64), "winograd-blocked")):
                want = wino if algo == "auto" else "direct"
                for op in ("fwd", "bwd_weight"):
                    assert C.conv2d_choice(op, *shape, 3, 3, 1, 1, 1, 1, blocked=True) == want, (shape, op)
    finally:
        C.set_conv2d_algo("auto")
        ft.set_backend("auto")
    (la, ga), (lb, gb) = out["auto"], out["direct"]
    assert abs(la - lb) <= 1e-5 * abs(lb), (la, lb)
    np.testing.assert_allclose(ga, gb, rtol=1e-3, atol=1e-3 * np.abs(gb).max())
