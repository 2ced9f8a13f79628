"""The blocked depthwise kernels (csrc/cpu/depthwise_blocked*.cpp) held to the NumPy reference.

The reference for the blocked op is the NCHW reference (fasttrain/kernels/conv2d.py, groups == C)
with the arrays converted to and from the blocked layout in NumPy. Every instruction-set path is
forced in turn (set_conv2d_isa), on channel counts that are not multiples of the 16-lane block
(1, 3, 5, 17, 33), images from 1x1 to 33x33, strides 1 and 2 (and 3), paddings 0 / 1 / 2, halos
on either side smaller than, equal to and larger than the padding, dilation and 5x5 filters.
Outputs start as NaN, so any element the kernel fails to write (halo included) shows.
"""
import itertools
import os

import numpy as np
import pytest

C = pytest.importorskip("fasttrain._C", reason="C++ module not built")

from cpp_isas import forced_isa, isa_params  # noqa: E402
from fasttrain.kernels import conv2d as ref  # noqa: E402
from fasttrain.kernels.blocked import to_blocked as to_blk  # noqa: E402
from fasttrain.nn.layout import aligned_empty  # noqa: E402

f32, f64 = np.float32, np.float64


ISAS = isa_params(C)


@pytest.fixture
def isa(request):
    yield from forced_isa(C, request.param)


def from_blk(xb, c, halo):
    """The interior's channels, after checking the invariants: halo and pad lanes all zero."""
    n, cb, hh, ww, _ = xb.shape
    full = xb.transpose(0, 1, 4, 2, 3).reshape(n, cb * 16, hh, ww)
    assert not np.isnan(full).any(), "an output element was never written"
    assert not full[:, c:].any(), "pad lanes must stay zero"
    inner = np.zeros_like(full, dtype=bool)
    inner[:, :, halo:hh - halo, halo:ww - halo] = True
    assert not full[~inner].any(), "the halo must be zero"
    return full[:, :c, halo:hh - halo, halo:ww - halo]


def _close(got, want, what, magnitude=None):
    """Max error relative to max |ref|, or for the reductions to the same sums over |terms| (a float
    sum of a thousand terms that nearly cancel is rightly off by more than 2e-6 of its result)."""
    scale = max(float(np.abs(want if magnitude is None else magnitude).max()), 1e-6) if want.size else 1.0
    err = float(np.abs(got.astype(f64) - want).max()) / scale if want.size else 0.0
    assert err < 2e-6, f"{what}: max error {err:.2e} relative to max |ref|"


# (N, C, H, W, R, stride, pad, dil, halo_in, halo_out)
CASES = [
    (1, 1, 1, 1, 3, 1, 1, 1, 1, 0),
    (2, 3, 2, 2, 3, 1, 1, 1, 1, 1),
    (1, 5, 7, 7, 3, 1, 1, 1, 0, 2),      # padding without a halo: the border taps are skipped
    (1, 16, 7, 7, 3, 2, 1, 1, 1, 1),
    (2, 17, 33, 33, 3, 1, 1, 1, 1, 1),
    (1, 33, 33, 33, 3, 2, 1, 1, 1, 0),
    (1, 17, 33, 33, 3, 2, 0, 1, 0, 1),
    (1, 3, 7, 7, 3, 1, 2, 1, 2, 1),
    (1, 5, 7, 7, 3, 1, 0, 1, 2, 0),      # a halo wider than the padding
    (1, 33, 7, 33, 5, 1, 2, 1, 2, 2),
    (1, 16, 33, 7, 5, 2, 2, 1, 1, 1),
    (1, 3, 7, 7, 3, 1, 2, 2, 2, 0),      # dilation
    (1, 17, 7, 7, 3, 2, 1, 2, 1, 1),
    (1, 5, 33, 33, 3, 3, 1, 1, 1, 0),    # stride 3
    (2, 1, 2, 2, 1, 1, 0, 1, 0, 1),      # 1x1
    (1, 3, 1, 1, 3, 2, 1, 1, 1, 2),
    (1, 33, 2, 2, 3, 2, 1, 1, 0, 0),
    # strided data gradient: tasks of several rows of a narrow map (the last one partial), taps of
    # border columns from the per-column table (5x5, dilation, padding beyond the halo)
    (1, 5, 13, 5, 3, 2, 1, 1, 0, 1),
    (2, 3, 9, 6, 5, 2, 2, 1, 1, 0),
    (1, 17, 11, 9, 3, 2, 2, 2, 1, 1),
    (1, 3, 10, 7, 3, 3, 2, 1, 0, 2),
    # more images than the weight gradient's image ranges: several small planes per task, each read
    # while the next one is prefetched (and the fused backward's data gradient over a group of planes)
    (24, 33, 5, 5, 3, 1, 1, 1, 1, 0),
    (24, 33, 6, 6, 3, 2, 1, 1, 1, 1),
    # the weight gradient's task grid (image ranges x channel-block ranges): several blocks per task,
    # ranges of unequal length, and several float flushes per task (33 x 33 maps: one per image)
    (2, 80, 9, 9, 3, 1, 1, 1, 1, 0),
    (3, 65, 6, 6, 3, 2, 1, 1, 1, 1),
    (9, 17, 4, 4, 3, 1, 0, 1, 0, 1),
    (17, 3, 33, 33, 3, 1, 1, 1, 1, 0),
    # the fused backward of small planes of > 64 output pixels at stride 1, in memory order: every
    # block of an image range per task (each plane prefetching the next in memory; 16 x 16 rows ahead
    # into it), a float flush inside a range (16 x 16: every 4 images), and ranges of only some blocks
    (36, 33, 9, 9, 3, 1, 1, 1, 1, 0),
    (40, 17, 16, 16, 3, 1, 1, 1, 1, 1),
    (3, 65, 9, 9, 3, 1, 1, 1, 0, 1),
    (9, 5, 10, 7, 3, 1, 2, 1, 2, 0),
]
# the grid: C x H/W x stride x padding at 3x3, halo = padding (the layout that flows)
GRID = [(1, c, hw, hw, 3, s, p, 1, p, p) for c, hw, s, p in itertools.product((1, 3, 5, 16, 17, 33),
                                                                              (1, 2, 3, 4, 5, 7, 8, 9, 33),
                                                                              (1, 2), (0, 1, 2)) if hw + 2 * p >= 3]
# maps of at most 8 output columns (the kernels that hold a whole row in registers): halos below, at
# and above the padding on either side, non-square maps, two images of three channel blocks
SMALL = [(2, c, h, w, 3, s, p, 1, hi, ho)
         for c, (h, w), s, p, hi, ho in itertools.product((3, 33), ((1, 1), (2, 3), (4, 4), (5, 9), (8, 8), (9, 6), (16, 9)),
                                                          (1, 2), (0, 1), (0, 1, 2), (0, 1))
         if min(h, w) + 2 * p >= 3]


def _problem(case, seed=0):
    n, c, h, w, r, s, p, d, hi, ho = case
    rng = np.random.default_rng(seed)
    P, Q = ref.out_size(h, w, r, r, s, s, p, p, d, d)
    return dict(n=n, c=c, x=rng.standard_normal((n, c, h, w)).astype(f32),
                w=rng.standard_normal((c, 1, r, r)).astype(f32), b=rng.standard_normal(c).astype(f32),
                dy=rng.standard_normal((n, c, P, Q)).astype(f32), geom=(s, s, p, p), dil=(d, d), hi=hi, ho=ho)


def _run_blocked(pb, relu=False):
    c, hi, ho, g, d = pb["c"], pb["hi"], pb["ho"], pb["geom"], pb["dil"]
    xb, dyb = to_blk(pb["x"], hi), to_blk(pb["dy"], hi)
    yb = np.full((pb["n"], xb.shape[1], pb["dy"].shape[2] + 2 * ho, pb["dy"].shape[3] + 2 * ho, 16), np.nan, f32)
    C.depthwise_blocked_fwd(xb, pb["w"], pb["b"], yb, *g, relu, *d, halo_x=hi, halo_y=ho)
    dxb = np.full((pb["n"], xb.shape[1], pb["x"].shape[2] + 2 * ho, pb["x"].shape[3] + 2 * ho, 16), np.nan, f32)
    C.depthwise_blocked_bwd_data(dyb, pb["w"], dxb, *g, *d, halo_dy=hi, halo_dx=ho)
    dw, db = np.zeros_like(pb["w"]), np.zeros_like(pb["b"])
    C.depthwise_blocked_bwd_weight(xb, dyb, dw, db, *g, *d, halo_x=hi, halo_dy=hi)
    # the fused backward: both gradients in one pass over dy; dx the same bits as the data gradient
    # alone, dw and db accumulated onto what they held (ones here), the same sums as the weight
    # gradient alone, though not always in its order (small planes fuse in memory order, where the
    # weight gradient alone walks one block's planes): _check holds them to the reference
    dxf = np.full_like(dxb, np.nan)
    dwf, dbf = np.ones_like(dw), np.ones_like(db)
    C.depthwise_blocked_bwd(xb, dyb, pb["w"], dxf, dwf, dbf, *g, *d, halo_x=hi, halo_dy=hi, halo_dx=ho)
    np.testing.assert_array_equal(dxf, dxb, err_msg="fused backward: dx")
    return from_blk(yb, c, ho), from_blk(dxb, c, ho), dw, db, dwf.astype(f64) - 1, dbf.astype(f64) - 1


def _check(pb, relu=False):
    x, w, b, dy = (pb[k].astype(f64) for k in ("x", "w", "b", "dy"))
    g, d, c = pb["geom"], pb["dil"], pb["c"]
    y_ref, dx_ref = np.empty(dy.shape), np.empty(x.shape)
    ref.conv2d_fwd_ref(x, w, b, y_ref, *g, relu, *d, c)
    ref.conv2d_bwd_data_ref(dy, w, dx_ref, *g, *d, c)
    dw_ref, db_ref = np.zeros(w.shape), np.zeros(b.shape)
    ref.conv2d_bwd_weight_ref(x, dy, dw_ref, db_ref, *g, *d, c)
    dw_mag, db_mag = np.zeros(w.shape), np.zeros(b.shape)
    ref.conv2d_bwd_weight_ref(np.abs(x), np.abs(dy), dw_mag, db_mag, *g, *d, c)
    y, dx, dw, db, dwf, dbf = _run_blocked(pb, relu)
    _close(y, y_ref, "y")
    _close(dx, dx_ref, "dx")
    _close(dw, dw_ref, "dw", dw_mag)
    _close(db, db_ref, "db", db_mag)
    # the fused sums went through a float32 add to 1: the magnitude of that sum bounds its rounding
    _close(dwf, dw_ref, "fused dw", dw_mag + 1)
    _close(dbf, db_ref, "fused db", db_mag + 1)


@pytest.mark.parametrize("isa", ISAS, indirect=True)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_matches_reference(isa, case):
    _check(_problem(case))


@pytest.mark.parametrize("isa", ISAS, indirect=True)
def test_grid_matches_reference(isa):
    for i, case in enumerate(GRID):
        _check(_problem(case, seed=i))


@pytest.mark.parametrize("isa", ISAS, indirect=True)
def test_small_maps_match_reference(isa):
    for i, case in enumerate(SMALL):
        _check(_problem(case, seed=100 + i))


@pytest.mark.parametrize("isa", ISAS, indirect=True)
def test_fused_relu(isa):
    _check(_problem((2, 17, 7, 7, 3, 1, 1, 1, 1, 0), seed=5), relu=True)


# (N, C, H, W, R, stride, pad, dil, halo_in, halo_out): small maps (one task per plane), wide ones
# (several tasks per plane, rows past 16 pixels), the generic path (5x5, dilation)
STATS_CASES = [(2, 17, 8, 8, 3, 1, 1, 1, 1, 0), (1, 3, 4, 4, 3, 2, 1, 1, 0, 1), (2, 33, 33, 33, 3, 1, 1, 1, 1, 2),
               (1, 5, 9, 40, 3, 2, 1, 1, 1, 0), (1, 17, 7, 7, 5, 1, 2, 1, 2, 0), (1, 1, 1, 1, 3, 1, 1, 1, 1, 1)]


@pytest.mark.parametrize("isa", ISAS, indirect=True)
@pytest.mark.parametrize("case", STATS_CASES, ids=str)
def test_forward_stats_epilogue(isa, case):
    """The batchnorm statistics from the forward's epilogue: the float64 sum and sum of squares of
    each channel of y (after the fused ReLU), held to float64 sums of the reference output; outputs
    with a halo (not counted) and pad lanes (not reported)."""
    pb = _problem(case, seed=11)
    x, w, b = (pb[k].astype(f64) for k in ("x", "w", "b"))
    c, hi, ho = pb["c"], pb["hi"], pb["ho"]
    xb = to_blk(pb["x"], hi)
    for relu in (False, True):
        y_ref = np.empty(pb["dy"].shape)
        ref.conv2d_fwd_ref(x, w, b, y_ref, *pb["geom"], relu, *pb["dil"], c)
        yb = np.full((pb["n"], xb.shape[1], y_ref.shape[2] + 2 * ho, y_ref.shape[3] + 2 * ho, 16), np.nan, f32)
        stats = np.full((2, c), np.nan)
        C.depthwise_blocked_fwd(xb, pb["w"], pb["b"], yb, *pb["geom"], relu, *pb["dil"], halo_x=hi, halo_y=ho,
                                stats=stats)
        _close(from_blk(yb, c, ho), y_ref, "y")
        want = np.stack([y_ref.sum(axis=(0, 2, 3)), (y_ref * y_ref).sum(axis=(0, 2, 3))])
        # float partials of <= 16 pixels added in double: within 16 roundings of the sums of |y|, y^2
        bound = 16 * 2.0 ** -24 * np.stack([np.abs(y_ref).sum(axis=(0, 2, 3)), want[1]]) + 1e-6
        assert np.all(np.abs(stats - want) <= bound + 2e-6 * np.abs(want)), f"relu={relu}: {stats} vs {want}"


def test_forward_stats_errors():
    xb = np.zeros((1, 1, 4, 4, 16), f32)
    w, b, yb = np.zeros((3, 1, 3, 3), f32), np.zeros(3, f32), np.zeros((1, 1, 2, 2, 16), f32)
    with pytest.raises(ValueError, match=r"depthwise_blocked_fwd\(stats\): expected shape \(2, 3\)"):
        C.depthwise_blocked_fwd(xb, w, b, yb, 1, 1, 0, 0, stats=np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"depthwise_blocked_fwd\(stats\).*float64"):
        C.depthwise_blocked_fwd(xb, w, b, yb, 1, 1, 0, 0, stats=np.zeros((2, 3), f32))


@pytest.mark.parametrize("stride", (1, 2))   # stride 1: the fused backward's memory-order walk of small planes
def test_thread_counts_give_the_same_bits(stride):
    from fasttrain import settings
    pb = _problem((5, 33, 9, 9, 3, stride, 1, 1, 1, 1), seed=7)
    P = pb["dy"].shape[2]
    outs = []
    try:
        for nt in (1, 2, 3):
            C.set_num_threads(nt)
            stats = np.zeros((2, 33))
            C.depthwise_blocked_fwd(to_blk(pb["x"], 1), pb["w"], pb["b"], np.empty((5, 3, P, P, 16), f32),
                                    *pb["geom"], halo_x=1, stats=stats)
            outs.append(_run_blocked(pb) + (stats,))
    finally:
        C.set_num_threads(settings.num_threads)
    for other in outs[1:]:
        for a, b in zip(outs[0], other):
            np.testing.assert_array_equal(a, b)  # the weight gradient's partial sums are fixed by the shape


def test_errors_name_the_argument():
    x = np.zeros((1, 1, 4, 4, 16), f32)
    w, b = np.zeros((3, 1, 3, 3), f32), np.zeros(3, f32)
    y = np.zeros((1, 1, 2, 2, 16), f32)
    with pytest.raises(ValueError, match=r"depthwise_blocked_fwd\(yb\): expected shape \(1, 1, 4, 4, 16\)"):
        C.depthwise_blocked_fwd(x, w, b, y, 1, 1, 1, 1, halo_x=0)
    with pytest.raises(ValueError, match=r"depthwise_blocked_fwd\(w\): expected shape \(C, 1, R, S\)"):
        C.depthwise_blocked_fwd(x, np.zeros((3, 2, 3, 3), f32), b, y, 1, 1, 1, 1)
    with pytest.raises(ValueError, match=r"depthwise_blocked_fwd\(xb\): expected shape \(N, 1, H \+ 2\*halo"):
        C.depthwise_blocked_fwd(np.zeros((1, 2, 4, 4, 16), f32), w, b, y, 1, 1, 1, 1)
    with pytest.raises(ValueError, match="halos >= 0"):
        C.depthwise_blocked_bwd_data(y, w, x, 1, 1, 1, 1, halo_dy=-1)
    dw = np.zeros((3, 1, 3, 3), f32)
    with pytest.raises(ValueError, match=r"depthwise_blocked_bwd\(dxb\): expected an array distinct from xb"):
        C.depthwise_blocked_bwd(x, np.zeros((1, 1, 4, 4, 16), f32), w, x, dw, b, 1, 1, 1, 1)
    with pytest.raises(ValueError, match=r"depthwise_blocked_bwd\(dxb\): expected shape \(1, 1, 4, 4, 16\)"):
        C.depthwise_blocked_bwd(x, np.zeros((1, 1, 4, 4, 16), f32), w, y, dw, b, 1, 1, 1, 1)
    with pytest.raises(ValueError, match=r"depthwise_blocked_bwd\(dw\): expected shape \(3, 1, 3, 3\)"):
        C.depthwise_blocked_bwd(x, np.zeros((1, 1, 4, 4, 16), f32), w, x.copy(), np.zeros((3, 1, 2, 3), f32), b,
                                1, 1, 1, 1)


def test_registry_reference_matches_the_kernels():
    """fasttrain/kernels/blocked.py's references (what the bench checks against) agree with the kernels."""
    from fasttrain import backend
    pb = _problem((2, 17, 9, 8, 3, 2, 1, 1, 1, 2), seed=9)
    outs = []
    for name in ("numpy", "cpp"):
        k = lambda op: backend.kernel(op, backend=name)   # noqa: E731
        xb, dyb = to_blk(pb["x"], 1), to_blk(pb["dy"], 0)
        yb = np.full((2, 2, dyb.shape[2] + 4, dyb.shape[3] + 4, 16), np.nan, f32)
        k("depthwise_blocked_fwd")(xb, pb["w"], pb["b"], yb, *pb["geom"], True, halo_x=1, halo_y=2)
        dxb = np.full((2, 2, 9, 8, 16), np.nan, f32)
        k("depthwise_blocked_bwd_data")(dyb, pb["w"], dxb, *pb["geom"])
        dw, db = np.zeros_like(pb["w"]), np.zeros_like(pb["b"])
        k("depthwise_blocked_bwd_weight")(xb, dyb, dw, db, *pb["geom"], halo_x=1)
        dxf, dwf, dbf = np.full((2, 2, 11, 10, 16), np.nan, f32), np.zeros_like(pb["w"]), np.zeros_like(pb["b"])
        k("depthwise_blocked_bwd")(xb, dyb, pb["w"], dxf, dwf, dbf, *pb["geom"], halo_x=1, halo_dx=1)
        outs.append((yb, dxb, dw, db, dxf, dwf, dbf))
    for want, got, what in zip(*outs, ("y", "dx", "dw", "db", "fused dx", "fused dw", "fused db")):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=what)


def _llc_bytes():
    """The kernels' figure (llc_bytes in depthwise_blocked.cpp): cpu0's index3 in sysfs, else 32 MB."""
    try:
        with open("/sys/devices/system/cpu/cpu0/cache/index3/size") as f:
            v = f.read().strip()
        return int(v[:-1]) << {"K": 10, "M": 20}[v[-1]] if v[-1] in "KM" else int(v)
    except (OSError, ValueError):
        return 32 << 20


def _line_offset(shape, floats):
    """A NaN-filled float32 array of `shape` starting `floats` floats past a 64-byte line."""
    buf = aligned_empty((int(np.prod(shape)) + 16,), f32)
    out = buf[floats:floats + int(np.prod(shape))].reshape(shape)
    out.fill(np.nan)
    return out


@pytest.mark.parametrize("isa", ISAS, indirect=True)
@pytest.mark.parametrize("stride", (1, 2))
def test_streamed_outputs_match(isa, stride):
    """Operands larger than the last-level cache: the data gradient (alone and fused; stride 1 as
    the correlation's register blocks, stride 2 as column pairs) writes a dx that starts on a 64-byte
    line with non-temporal stores (stream_output in depthwise_blocked.cpp), one that does not with
    plain stores. Both must hold the same bits (halo and pad lanes included), and match the
    reference (y too: the forward runs beside them). At stride 2 the map is odd-sized, so the rows
    end in a partial block of column pairs (plain stores beside streamed ones)."""
    # dx and dy (a quarter of dx's pixels at stride 2) of 2 blocks: 128 bytes a pixel each
    hw = int(np.ceil(np.sqrt(1.25 * _llc_bytes() / (128 * (1 + 1 / stride**2))))) | 1
    pb = _problem((1, 17, hw, hw, 3, stride, 1, 1, 1, 1), seed=3)
    c, g = pb["c"], pb["geom"]
    xb, dyb = to_blk(pb["x"], 1), to_blk(pb["dy"], 1)
    got = {}
    for off in (0, 4):  # on a line (streamed), 16 bytes past one (plain stores)
        yb = _line_offset(dyb.shape, off)
        dxb, dxf = (_line_offset(xb.shape, off) for _ in range(2))
        dw, db = np.zeros_like(pb["w"]), np.zeros_like(pb["b"])
        C.depthwise_blocked_fwd(xb, pb["w"], pb["b"], yb, *g, False, halo_x=1, halo_y=1)
        C.depthwise_blocked_bwd_data(dyb, pb["w"], dxb, *g, halo_dy=1, halo_dx=1)
        C.depthwise_blocked_bwd(xb, dyb, pb["w"], dxf, dw, db, *g, halo_x=1, halo_dy=1, halo_dx=1)
        got[off] = (yb, dxb, dxf)
    for name, a, b in zip(("y", "dx", "fused dx"), got[0], got[4]):
        np.testing.assert_array_equal(a, b, err_msg=f"{name}: streamed and plain stores differ")
    x, w, b, dy = (pb[k].astype(f64) for k in ("x", "w", "b", "dy"))
    y_ref, dx_ref = np.empty(dy.shape), np.empty(x.shape)
    ref.conv2d_fwd_ref(x, w, b, y_ref, *g, False, 1, 1, c)
    ref.conv2d_bwd_data_ref(dy, w, dx_ref, *g, 1, 1, c)
    _close(from_blk(got[0][0], c, 1), y_ref, "y")
    _close(from_blk(got[0][1], c, 1), dx_ref, "dx")
