"""The C++ depthwise kernels on NCHW arrays (conv2d_fwd / bwd_data / bwd_weight with groups == C)
against the NumPy reference, under every instruction set the build offers (set_conv2d_isa: the
vectorised plane kernels of depthwise_nchw_kernels.h for avx512 / avx2, the plain C++ ones for
portable): odd channel counts, maps from 1x1 to 33x33 (flat planes, rows wider and narrower than a
vector, masked tails), stride 1 and 2 (also per axis), padding 0/1/2 and beyond the filter's reach,
dilation, 3x3 / 5x5 / 3x2 filters, channel multipliers, batch 1."""
import itertools

import numpy as np
import pytest

from fasttrain import backend

C = pytest.importorskip("fasttrain._C", reason="C++ module not built")

from cpp_isas import forced_isa, isa_params  # noqa: E402

ISAS = isa_params(C)


@pytest.fixture
def isa(request):
    yield from forced_isa(C, request.param)


def _out(n, k, s, p, d):
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


# (N, C, H, W, M, (R, S), (sh, sw), (ph, pw), (dh, dw))
GRID = [(n, c, h, w, 1, (3, 3), (s, s), (p, p), (1, 1))
        for (n, c), (h, w), s, p in itertools.product(
            [(1, 1), (2, 3), (1, 5), (1, 17), (2, 33)],
            [(1, 1), (2, 2), (3, 5), (4, 4), (7, 9), (8, 8), (15, 17), (16, 16), (31, 33), (33, 33)],
            (1, 2), (0, 1, 2))
        if _out(h, 3, s, p, 1) > 0 and _out(w, 3, s, p, 1) > 0]
EXTRA = [
    (2, 3, 9, 20, 1, (5, 5), (1, 1), (2, 2), (1, 1)),      # 5x5, a row of one vector and a tail
    (1, 5, 12, 37, 1, (3, 2), (1, 2), (1, 0), (2, 1)),     # per-axis stride/padding/dilation
    (2, 4, 11, 35, 2, (3, 3), (2, 2), (1, 1), (1, 1)),     # channel multiplier 2, stride 2
    (1, 3, 10, 18, 3, (3, 3), (1, 1), (1, 1), (2, 2)),     # multiplier 3, dilation 2 (flat planes)
    (1, 3, 9, 19, 1, (3, 3), (1, 1), (0, 3), (1, 1)),      # output wider than the input
    (2, 6, 17, 40, 1, (3, 3), (2, 1), (2, 1), (1, 1)),     # row stride 2, column stride 1
    (1, 2, 6, 50, 1, (1, 1), (2, 2), (0, 0), (1, 1)),      # 1x1 filter, stride 2
    (1, 3, 7, 21, 1, (3, 3), (3, 3), (1, 1), (1, 1)),      # stride 3: the plain kernels
    (1, 2, 8, 8, 1, (8, 8), (1, 1), (4, 4), (1, 1)),       # 64 taps: more than the vector kernels take
    (37, 19, 8, 8, 1, (3, 3), (2, 2), (1, 1), (1, 1)),     # 8x8 stride 2: whole-plane kernels, many images
    (3, 4, 8, 8, 2, (3, 3), (2, 2), (1, 1), (1, 1)),       # the same with multiplier 2: not theirs
    (2, 5, 8, 8, 1, (3, 3), (2, 2), (1, 1), (2, 2)),       # dilated: not theirs
    (19, 3, 17, 21, 1, (3, 3), (1, 1), (1, 1), (1, 1)),    # weight gradient lane sums over > 8 images
    (10, 5, 17, 35, 1, (3, 3), (2, 2), (1, 1), (1, 1)),    # the same at stride 2
]
CASES = GRID + EXTRA
IDS = ["n{}c{}-{}x{}-m{}-r{}-s{}-p{}-d{}".format(*c) for c in CASES]


def _inputs(case, seed):
    n, c, h, w, m, rs, s, p, d = case
    rng = np.random.default_rng(seed)
    P, Q = (_out(*a) for a in zip((h, w), rs, s, p, d))
    arrays = (rng.standard_normal((n, c, h, w)), rng.standard_normal((c * m, 1, *rs)), rng.standard_normal(c * m),
              rng.standard_normal((n, c * m, P, Q)))
    return [a.astype(np.float32) for a in arrays]


def _run(k, x, w, b, dy, case, relu):
    *_, s, p, d = case
    groups = x.shape[1]
    y = np.full(dy.shape, np.nan, x.dtype)           # every output element is written
    k("conv2d_fwd")(x, w, b, y, *s, *p, relu, *d, groups)
    dx = np.full_like(x, np.nan)
    k("conv2d_bwd_data")(dy, w, dx, *s, *p, *d, groups)
    dw = np.full_like(w, 0.5)                        # gradients accumulate into what is there
    db = np.full_like(b, 0.5)
    k("conv2d_bwd_weight")(x, dy, dw, db, *s, *p, *d, groups)
    return y, dx, dw - 0.5, db - 0.5


@pytest.mark.parametrize("isa", ISAS, indirect=True)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_matches_reference(isa, case):
    x, w, b, dy = _inputs(case, seed=len(IDS[CASES.index(case)]))
    relu = case[1] % 2 == 1   # the fused ReLU on half the cases
    want = _run(lambda op: backend.kernel(op, backend="numpy"), *(a.astype(np.float64) for a in (x, w, b, dy)),
                case, relu)
    got = _run(lambda op: getattr(C, op), x, w, b, dy, case, relu)
    for g, r, what in zip(got, want, ("y", "dx", "dw", "db")):
        np.testing.assert_allclose(g, r, rtol=2e-5, atol=2e-5 * max(1.0, float(np.abs(r).max(initial=0))),
                                   err_msg=f"{isa} {what}")


@pytest.mark.parametrize("isa", ISAS, indirect=True)
@pytest.mark.parametrize("nthreads", [1, 2, 3])
@pytest.mark.parametrize("case", [(3, 7, 13, 21, 1, (3, 3), (1, 1), (1, 1), (1, 1)),
                                  (5, 21, 8, 8, 1, (3, 3), (2, 2), (1, 1), (1, 1)),
                                  (17, 5, 16, 20, 1, (3, 3), (1, 1), (1, 1), (1, 1))],
                         ids=["13x21", "8x8-s2", "17-images"])
def test_vector_kernels_do_not_depend_on_thread_count(isa, nthreads, case):
    import fasttrain as ft
    from fasttrain import settings

    x, w, b, dy = _inputs(case, seed=3)
    before = settings.num_threads
    try:
        ft.set_num_threads(1)
        one = _run(lambda op: getattr(C, op), x, w, b, dy, case, False)
        ft.set_num_threads(nthreads)
        many = _run(lambda op: getattr(C, op), x, w, b, dy, case, False)
    finally:
        ft.set_num_threads(before)
    for a, c in zip(one, many):
        np.testing.assert_array_equal(a, c)   # planes are independent, channels summed in image order
