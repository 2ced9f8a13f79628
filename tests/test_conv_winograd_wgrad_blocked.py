"""The Winograd F(2x2, 3x3) and F(4x4, 3x3) weight gradients on the blocked layout
(conv2d_wino_blocked_avx512.cpp's run_wgrad) beside the direct weight gradient, two independent
implementations of one contract: on the same blocked x and dy (odd channel counts, partial last tiles, 1x1 maps, batch 1 and 3,
chunk planes a multiple of 4 KiB long, x and dy halos, accumulation into nonzero dw and db) they
agree within the Winograd bound tests/test_conv_winograd_blocked.py holds against the NumPy
reference; with the AVX2 or portable kernels the blocked entry point runs the direct weight
gradient on a shape Winograd takes under AVX-512 (held to the reference), and forcing Winograd
there is refused."""
import numpy as np
import pytest

C = pytest.importorskip("fasttrain._C", reason="C++ module not built")

from fasttrain.kernels import conv2d as ref  # noqa: E402
from cpp_isas import isa_available  # noqa: E402

f32, f64 = np.float32, np.float64

# (N, C, H, W, K); (8, 32, 16, 16, 32) and (16, 64, 8, 8, 64): a chunk's position planes are a
# multiple of 4 KiB of floats before the padding that keeps them out of each other's L1 sets;
# (64, 3, 31, 31, 5): x and dy over the 8 MiB from which each chunk prefetches the next one's rows
# (chunks across images, partial last tiles)
CASES = [(1, 16, 1, 1, 16), (3, 17, 2, 2, 33), (1, 33, 3, 3, 17), (3, 64, 7, 7, 64), (1, 17, 13, 13, 64),
         (3, 33, 33, 33, 16), (3, 64, 8, 13, 33), (1, 16, 1, 7, 17), (8, 32, 16, 16, 32), (16, 64, 8, 8, 64),
         (64, 3, 31, 31, 5)]
IDS = ["N{}C{}_{}x{}K{}".format(*c) for c in CASES]
# the transforms mix a (k, c) pair's 9 taps, so a weight's error scales with the largest sum |dy||x|
# among its pair's taps (2x2 tiles: observed <= 3.4e-7 of it, per tap's own sum up to 4.6e-6 on
# 2x2 maps; 4x4 tiles, whose transforms multiply by up to 5, 8 and 1/24: observed <= 2.1e-6 of it on 256 channels, float64 reference)
BOUND = 1e-5
BOUNDS = {"winograd-blocked": BOUND, "winograd43-blocked": 3e-5}


def _problem(case, seed=0):
    N, Cc, H, W, K = case
    rng = np.random.default_rng(seed)
    return rng.standard_normal((N, Cc, H, W)).astype(f32), rng.standard_normal((N, K, H, W)).astype(f32)


def _ref(x, dy, K):
    dw, db = np.zeros((K, x.shape[1], 3, 3)), np.zeros(K)
    ref.conv2d_bwd_weight_ref(x.astype(f64), dy.astype(f64), dw, db, 1, 1, 1, 1)
    return dw, db


def _scale(x, dy, K):
    sw, sb = _ref(np.abs(x), np.abs(dy), K)
    return np.broadcast_to(sw.max(axis=(2, 3), keepdims=True), sw.shape), sb


def _run(x, dy, K, halo_x, halo_dy, dw0=None, db0=None):
    dw = np.zeros((K, x.shape[1], 3, 3), f32) if dw0 is None else dw0.copy()
    db = np.zeros(K, f32) if db0 is None else db0.copy()
    xb = C.to_blocked(x, *(4 * (max(halo_x, 1),)))
    dyb = C.to_blocked(dy, *(4 * (1 if halo_dy < 0 else halo_dy,)))
    C.conv2d_blocked_bwd_weight(xb, dyb, dw, db, 1, 1, 1, 1, halo_x=halo_x, halo_dy=halo_dy)
    return dw, db


def _within(got, want, scale, what, bound=BOUND):
    err = np.abs(got - want)
    worst = float((err / np.maximum(scale, 1e-30)).max())
    assert np.all(err <= bound * scale + 1e-30), f"{what}: worst error {worst:.2e} of sum |dy||x|"


@pytest.mark.skipif(not isa_available(C, "avx512"), reason="no AVX-512 kernels on this CPU/build")
@pytest.mark.parametrize("wino", list(BOUNDS))
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_winograd_weight_gradient_matches_direct(case, wino):
    x, dy = _problem(case)
    N, Cc, H, W, K = case
    scale_w, scale_b = _scale(x, dy, K)
    rng = np.random.default_rng(2)
    dw0, db0 = rng.standard_normal((K, Cc, 3, 3)).astype(f32), rng.standard_normal(K).astype(f32)
    try:
        C.set_conv2d_isa("avx512")
        for halo_x, halo_dy in ((-1, -1), (1, 0), (2, 2), (3, 1)):
            got = {}
            for algo in ("direct", wino):
                C.set_conv2d_algo(algo)
                assert C.conv2d_choice("bwd_weight", N, Cc, H, W, K, 3, 3, 1, 1, 1, 1, blocked=True) == algo
                got[algo] = _run(x, dy, K, halo_x, halo_dy, dw0, db0)
            what = f"halo_x={halo_x} halo_dy={halo_dy}"
            (dw_d, db_d), (dw_w, db_w) = got["direct"], got[wino]
            _within(dw_w, dw_d, 2 * scale_w + np.abs(dw0), f"{wino} dw " + what, BOUNDS[wino])
            _within(db_w, db_d, 2 * scale_b + np.abs(db0), f"{wino} db " + what)
    finally:
        C.set_conv2d_algo("auto")
        C.set_conv2d_isa("auto")


def test_other_isas_run_the_direct_weight_gradient():
    case = (3, 33, 7, 7, 40)
    x, dy = _problem(case, seed=4)
    want_w, want_b = _ref(x, dy, 40)
    scale_w, scale_b = _scale(x, dy, 40)
    for isa in ("avx2", "portable"):
        if not isa_available(C, isa):
            continue
        try:
            C.set_conv2d_isa(isa)
            assert C.conv2d_choice("bwd_weight", *case[:4], 40, 3, 3, 1, 1, 1, 1, blocked=True) != "winograd-blocked"
            dw, db = _run(x, dy, 40, 1, -1)
            _within(dw, want_w, scale_w, f"{isa} dw")
            _within(db, want_b, scale_b, f"{isa} db")
            C.set_conv2d_algo("winograd-blocked")
            with pytest.raises(ValueError, match=f"'winograd-blocked' needs the AVX-512 kernels, but the direct engine runs '{isa}'"):
                _run(x, dy, 40, 1, -1)
        finally:
            C.set_conv2d_algo("auto")
            C.set_conv2d_isa("auto")
