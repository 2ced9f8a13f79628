"""Pooling: reference kernels vs naive window loops (float64), every backend vs the reference
(float32), gradient checks of the layers, bad inputs."""
import numpy as np
import pytest

from fasttrain import backend
from fasttrain.check import gradcheck
from fasttrain.kernels import pooling as ref
from fasttrain.nn.pooling import AvgPool2d, GlobalAvgPool2d, MaxPool2d

# (x shape, (kh, kw), (sh, sw), (ph, pw)): batch 1, C = 1/3/7, H != W, odd sizes, stride 2 with a
# floor, padding 1, overlapping 3x3/2 windows, rectangular kernels, 1x1, a window as large as the input
CONFIGS = [
    ((1, 1, 5, 5), (2, 2), (2, 2), (0, 0)),
    ((2, 3, 7, 4), (3, 3), (2, 2), (1, 1)),
    ((1, 7, 6, 9), (3, 3), (1, 1), (1, 1)),
    ((2, 3, 5, 5), (2, 3), (1, 2), (1, 0)),
    ((3, 1, 4, 3), (1, 1), (1, 1), (0, 0)),
    ((2, 2, 3, 5), (3, 5), (1, 1), (0, 2)),
    ((1, 3, 8, 8), (3, 3), (2, 2), (0, 0)),
    ((2, 3, 9, 7), (3, 2), (3, 1), (1, 1)),
]
IDS = [f"{s}-k{k}-s{st}-p{p}" for s, k, st, p in CONFIGS]


def _out(shape, k, s, p):
    n, c, h, w = shape
    return n, c, (h + 2 * p[0] - k[0]) // s[0] + 1, (w + 2 * p[1] - k[1]) // s[1] + 1


def _distinct(shape, seed=0, spacing=1.0):
    """Values with no ties (a shuffled ramp, `spacing` apart), so the maximum is unique."""
    rng = np.random.default_rng(seed)
    return (rng.permutation(int(np.prod(shape))).reshape(shape) - np.prod(shape) / 2) * spacing


# -- naive loops ------------------------------------------------------------------------------------
def _window_positions(i, j, k, s, p, h, w):
    """Real (unpadded) positions of output (i, j)'s window, in row-major scan order."""
    for r in range(k[0]):
        for t in range(k[1]):
            hi, wi = i * s[0] - p[0] + r, j * s[1] - p[1] + t
            if 0 <= hi < h and 0 <= wi < w:
                yield hi, wi


def naive_maxpool(x, dy, k, s, p):
    n, c, h, w = x.shape
    _, _, P, Q = _out(x.shape, k, s, p)
    y, am, dx = np.empty((n, c, P, Q)), np.empty((n, c, P, Q), np.int64), np.zeros_like(x)
    for b, ch, i, j in np.ndindex(n, c, P, Q):
        best, where = None, None
        for hi, wi in _window_positions(i, j, k, s, p, h, w):
            if best is None or x[b, ch, hi, wi] > best:      # first maximum in scan order wins
                best, where = x[b, ch, hi, wi], (hi, wi)
        y[b, ch, i, j], am[b, ch, i, j] = best, where[0] * w + where[1]
        dx[b, ch][where] += dy[b, ch, i, j]
    return y, am, dx


def naive_avgpool(x, dy, k, s, p):
    n, c, h, w = x.shape
    _, _, P, Q = _out(x.shape, k, s, p)
    y, dx = np.empty((n, c, P, Q)), np.zeros_like(x)
    for b, ch, i, j in np.ndindex(n, c, P, Q):
        pos = list(_window_positions(i, j, k, s, p, h, w))
        y[b, ch, i, j] = sum(x[b, ch, hi, wi] for hi, wi in pos) / (k[0] * k[1])   # padding counts
        for hi, wi in pos:
            dx[b, ch, hi, wi] += dy[b, ch, i, j] / (k[0] * k[1])
    return y, dx


@pytest.mark.parametrize("shape,k,s,p", CONFIGS, ids=IDS)
@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
def test_reference_maxpool_matches_naive_loop(shape, k, s, p, ties):
    rng = np.random.default_rng(1)
    # with ties: small integers, so windows share maxima and the scan-order rule decides
    x = rng.integers(-2, 3, shape).astype(np.float64) if ties else _distinct(shape, 1, 0.37)
    oshape = _out(shape, k, s, p)
    dy = rng.standard_normal(oshape)
    y, am = np.empty(oshape), np.full(oshape, -7, np.int64)
    ref.maxpool2d_fwd_ref(x, y, am, *k, *s, *p)
    dx = np.full(shape, np.nan)
    ref.maxpool2d_bwd_ref(dy, am, dx)
    ey, eam, edx = naive_maxpool(x, dy, k, s, p)
    np.testing.assert_array_equal(y, ey)
    np.testing.assert_array_equal(am, eam)
    np.testing.assert_allclose(dx, edx, rtol=1e-14, atol=1e-14)


def test_reference_maxpool_all_negative_infinity_still_picks_a_real_element():
    x = np.full((1, 1, 3, 3), -np.inf)
    y, am = np.empty((1, 1, 2, 2)), np.empty((1, 1, 2, 2), np.int64)
    ref.maxpool2d_fwd_ref(x, y, am, 2, 2, 2, 2, 1, 1)
    np.testing.assert_array_equal(am.ravel(), [0, 1, 3, 4])   # top-left real element of each window
    assert np.all(y == -np.inf)


@pytest.mark.parametrize("shape,k,s,p", CONFIGS, ids=IDS)
def test_reference_avgpool_matches_naive_loop(shape, k, s, p):
    rng = np.random.default_rng(2)
    x = rng.standard_normal(shape)
    oshape = _out(shape, k, s, p)
    dy = rng.standard_normal(oshape)
    y = np.full(oshape, np.nan)
    ref.avgpool2d_fwd_ref(x, y, *k, *s, *p)
    dx = np.full(shape, np.nan)
    ref.avgpool2d_bwd_ref(dy, dx, *k, *s, *p)
    ey, edx = naive_avgpool(x, dy, k, s, p)
    np.testing.assert_allclose(y, ey, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(dx, edx, rtol=1e-13, atol=1e-14)


def test_reference_runs_in_float32():
    x = _distinct((2, 3, 7, 4), 3).astype(np.float32)
    y, am = np.empty((2, 3, 4, 2), np.float32), np.empty((2, 3, 4, 2), np.int64)
    ref.maxpool2d_fwd_ref(x, y, am, 3, 3, 2, 2, 1, 1)
    dx = np.empty_like(x)
    ref.maxpool2d_bwd_ref(y, am, dx)
    ya = np.empty_like(y)
    ref.avgpool2d_fwd_ref(x, ya, 3, 3, 2, 2, 1, 1)
    ref.avgpool2d_bwd_ref(ya, dx, 3, 3, 2, 2, 1, 1)
    assert y.dtype == ya.dtype == dx.dtype == np.float32


# -- every available backend vs the reference (float32) -------------------------------------------
def _cases(op):
    return [pytest.param(b, id=b) for b in backend.available_backends_for(op)]


@pytest.mark.parametrize("shape,k,s,p", CONFIGS, ids=IDS)
@pytest.mark.parametrize("name", _cases("maxpool2d_fwd"))
def test_backend_maxpool_matches_reference(name, shape, k, s, p):
    x = _distinct(shape, 4, 0.01).astype(np.float32)     # no ties: the argmax is unique
    oshape = _out(shape, k, s, p)
    dy = np.random.default_rng(5).standard_normal(oshape).astype(np.float32)
    ey, eam, edx = np.empty(oshape, np.float32), np.empty(oshape, np.int64), np.empty(shape, np.float64)
    ref.maxpool2d_fwd_ref(x, ey, eam, *k, *s, *p)
    ref.maxpool2d_bwd_ref(dy.astype(np.float64), eam, edx)
    y, am = np.full(oshape, np.nan, np.float32), np.full(oshape, -7, np.int64)
    backend.kernel("maxpool2d_fwd", backend=name)(x, y, am, *k, *s, *p)
    np.testing.assert_array_equal(y, ey)
    np.testing.assert_array_equal(am, eam)
    if name in backend.available_backends_for("maxpool2d_bwd"):
        dx = np.full(shape, np.nan, np.float32)
        backend.kernel("maxpool2d_bwd", backend=name)(dy, am, dx)
        np.testing.assert_allclose(dx, edx, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", _cases("maxpool2d_fwd"))
def test_backend_maxpool_with_ties_picks_a_maximum(name):
    """Ties: the contract's rule is the first maximum in scan order; at least the index must hold
    the maximum value, and the backward must route every dy to a real position."""
    shape, k, s, p = (2, 3, 7, 6), (3, 3), (2, 2), (1, 1)
    x = np.random.default_rng(6).integers(-1, 2, shape).astype(np.float32)
    oshape = _out(shape, k, s, p)
    y, am = np.empty(oshape, np.float32), np.empty(oshape, np.int64)
    backend.kernel("maxpool2d_fwd", backend=name)(x, y, am, *k, *s, *p)
    ey, eam, _ = naive_maxpool(x.astype(np.float64), np.zeros(oshape), k, s, p)
    np.testing.assert_array_equal(y, ey)
    planes = x.reshape(shape[0], shape[1], -1)
    picked = np.take_along_axis(planes, am.reshape(shape[0], shape[1], -1), axis=2).reshape(oshape)
    np.testing.assert_array_equal(picked, y)
    np.testing.assert_array_equal(am, eam)          # the scan-order rule of the reference


@pytest.mark.parametrize("shape,k,s,p", CONFIGS, ids=IDS)
@pytest.mark.parametrize("name", _cases("avgpool2d_fwd"))
def test_backend_avgpool_matches_reference(name, shape, k, s, p):
    rng = np.random.default_rng(7)
    x64 = rng.standard_normal(shape)
    oshape = _out(shape, k, s, p)
    dy64 = rng.standard_normal(oshape)
    ey, edx = np.empty(oshape), np.empty(shape)
    ref.avgpool2d_fwd_ref(x64, ey, *k, *s, *p)
    ref.avgpool2d_bwd_ref(dy64, edx, *k, *s, *p)
    y = np.full(oshape, np.nan, np.float32)
    backend.kernel("avgpool2d_fwd", backend=name)(x64.astype(np.float32), y, *k, *s, *p)
    np.testing.assert_allclose(y, ey, rtol=1e-5, atol=1e-6)
    if name in backend.available_backends_for("avgpool2d_bwd"):
        dx = np.full(shape, np.nan, np.float32)
        backend.kernel("avgpool2d_bwd", backend=name)(dy64.astype(np.float32), dx, *k, *s, *p)
        np.testing.assert_allclose(dx, edx, rtol=1e-5, atol=1e-6)


# -- layers -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape,k,s,p", CONFIGS[:4], ids=IDS[:4])
def test_gradcheck_maxpool(shape, k, s, p):
    # values 1e-2 apart, so the eps = 1e-6 probes never change which element is the maximum
    layer = MaxPool2d(k, s, p)
    for result in gradcheck(layer, _distinct(shape, 8, 1e-2)):
        assert result.passed, str(result)


@pytest.mark.parametrize("shape,k,s,p", CONFIGS[:4], ids=IDS[:4])
def test_gradcheck_avgpool(shape, k, s, p):
    layer = AvgPool2d(k, s, p)
    for result in gradcheck(layer, np.random.default_rng(9).standard_normal(shape)):
        assert result.passed, str(result)


@pytest.mark.parametrize("shape", [(2, 3, 5, 4), (1, 1, 1, 1), (3, 7, 1, 6)])
def test_global_avgpool_value_and_gradcheck(shape):
    layer = GlobalAvgPool2d()
    x = np.random.default_rng(10).standard_normal(shape)
    y = layer.forward(x)
    assert y.shape == shape[:2]
    for b, c in np.ndindex(*shape[:2]):
        assert y[b, c] == pytest.approx(sum(x[b, c].ravel()) / (shape[2] * shape[3]), rel=1e-13)
    for result in gradcheck(layer, x):
        assert result.passed, str(result)


def test_layers_float32_defaults_and_shapes():
    x = _distinct((2, 3, 7, 5), 11).astype(np.float32)
    m = MaxPool2d(2)
    assert m.stride == (2, 2) and m.padding == (0, 0)
    y = m.forward(x)
    assert y.shape == (2, 3, 3, 2) and y.dtype == np.float32
    dx = m.backward(np.ones_like(y))
    assert dx.shape == x.shape and dx.dtype == np.float32 and dx.sum() == y.size
    a = AvgPool2d(3, stride=2, padding=1)
    ya = a.forward(x)
    assert ya.shape == (2, 3, 4, 3)
    assert a.backward(np.ones_like(ya)).dtype == np.float32
    # a non-contiguous input is accepted (the layer makes it contiguous for the kernels)
    np.testing.assert_array_equal(m.forward(np.asfortranarray(x)), y)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match=r"MaxPool2d\(kernel_size=2\): padding must be at most half"):
        MaxPool2d(2, padding=2)
    with pytest.raises(ValueError, match=r"AvgPool2d.*padding must be at most half"):
        AvgPool2d((3, 1), padding=(1, 1))
    with pytest.raises(ValueError, match="kernel_size must be an int >= 1"):
        MaxPool2d(0)
    with pytest.raises(ValueError, match="stride must be an int >= 1"):
        AvgPool2d(2, stride=(1, 0))
    with pytest.raises(ValueError, match="padding must be an int >= 0"):
        AvgPool2d(2, padding=-1)
    m = MaxPool2d(3, stride=2)
    with pytest.raises(ValueError, match=r"MaxPool2d\(.*\): expected input \(N, C, H, W\), got \(3, 5, 5\)"):
        m.forward(np.ones((3, 5, 5), np.float32))
    with pytest.raises(TypeError, match="float32 or float64"):
        m.forward(np.ones((1, 1, 5, 5), np.int64))
    with pytest.raises(ValueError, match=r"input \(1, 1, 2, 5\) is too small, output would be 0 x 2"):
        m.forward(np.ones((1, 1, 2, 5), np.float32))
    with pytest.raises(RuntimeError, match="backward called before forward"):
        AvgPool2d(2).backward(np.ones((1, 1, 1, 1), np.float32))
    y = m.forward(np.ones((1, 1, 5, 5), np.float32))
    with pytest.raises(ValueError, match="expected dy"):
        m.backward(np.ones((1, 1, 3, 2), np.float32))
    with pytest.raises(ValueError, match="expected dy"):
        m.backward(y.astype(np.float64))
    g = GlobalAvgPool2d()
    with pytest.raises(ValueError, match=r"GlobalAvgPool2d\(\): expected input \(N, C, H, W\), got \(2, 3\)"):
        g.forward(np.ones((2, 3), np.float32))
    g.forward(np.ones((2, 3, 4, 4), np.float32))
    with pytest.raises(ValueError, match="expected dy"):
        g.backward(np.ones((2, 4), np.float32))


# -- the 2x2 stride-2 path and the cell-wise backward (cpp) ----------------------------------------
@pytest.mark.parametrize("shape", [(1, 1, 2, 2), (2, 3, 35, 33), (1, 2, 34, 70), (3, 1, 5, 2)])
@pytest.mark.parametrize("name", _cases("maxpool2d_fwd"))
def test_backend_maxpool_2x2_wide_planes_with_ties(name, shape):
    """2x2 stride 2 over rows wider than any SIMD width, odd heights and widths (a last row and
    column no window covers), ties decided by the scan-order rule."""
    rng = np.random.default_rng(7)
    x = rng.integers(-2, 3, shape).astype(np.float32)
    oshape = _out(shape, (2, 2), (2, 2), (0, 0))
    dy = rng.standard_normal(oshape).astype(np.float32)
    ey, eam, edx = naive_maxpool(x.astype(np.float64), dy.astype(np.float64), (2, 2), (2, 2), (0, 0))
    y, am = np.full(oshape, np.nan, np.float32), np.full(oshape, -7, np.int64)
    backend.kernel("maxpool2d_fwd", backend=name)(x, y, am, 2, 2, 2, 2, 0, 0)
    np.testing.assert_array_equal(y, ey)
    np.testing.assert_array_equal(am, eam)
    if name in backend.available_backends_for("maxpool2d_bwd"):
        dx = np.full(shape, np.nan, np.float32)
        backend.kernel("maxpool2d_bwd", backend=name)(dy, am, dx)
        np.testing.assert_array_equal(dx, edx.astype(np.float32))


@pytest.mark.parametrize("shape", [(1, 1, 2, 2), (2, 3, 35, 33), (3, 1, 5, 2)])
@pytest.mark.parametrize("name", _cases("avgpool2d_fwd"))
def test_backend_avgpool_2x2_wide_planes(name, shape):
    rng = np.random.default_rng(10)
    x64 = rng.standard_normal(shape)
    oshape = _out(shape, (2, 2), (2, 2), (0, 0))
    dy64 = rng.standard_normal(oshape)
    ey, edx = naive_avgpool(x64, dy64, (2, 2), (2, 2), (0, 0))
    y = np.full(oshape, np.nan, np.float32)
    backend.kernel("avgpool2d_fwd", backend=name)(x64.astype(np.float32), y, 2, 2, 2, 2, 0, 0)
    np.testing.assert_allclose(y, ey, rtol=1e-6, atol=1e-6)
    if name in backend.available_backends_for("avgpool2d_bwd"):
        dx = np.full(shape, np.nan, np.float32)
        backend.kernel("avgpool2d_bwd", backend=name)(dy64.astype(np.float32), dx, 2, 2, 2, 2, 0, 0)
        np.testing.assert_allclose(dx, edx, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", _cases("maxpool2d_bwd"))
def test_backend_maxpool_bwd_maxima_outside_their_cells(name):
    """Overlapping 3x3 stride-2 windows give half-size outputs as 2x2 cells would, but their maxima
    can lie outside the cell: planes where some do and planes where none does, side by side,
    including maxima that two windows share (their dy add up)."""
    shape, k, s, p = (2, 3, 8, 10), (3, 3), (2, 2), (1, 1)
    x = _distinct(shape, 8, 0.5).astype(np.float32)
    rows, cols = np.indices((8, 10))
    x[0, 1] = (rows % 2 == 0) & (cols % 2 == 0)   # each window's one maximum: its cell's top-left corner
    oshape = _out(shape, k, s, p)
    dy = np.random.default_rng(9).standard_normal(oshape).astype(np.float32)
    y, am = np.empty(oshape, np.float32), np.empty(oshape, np.int64)
    ref.maxpool2d_fwd_ref(x, y, am, *k, *s, *p)
    cell = (am // 10) // 2 * 5 + (am % 10) // 2 == np.arange(20).reshape(4, 5)
    assert cell[0, 1].all() and not cell.all(), "the case should mix planes inside and outside their cells"
    edx = np.empty(shape, np.float64)
    ref.maxpool2d_bwd_ref(dy.astype(np.float64), am, edx)
    dx = np.full(shape, np.nan, np.float32)
    backend.kernel("maxpool2d_bwd", backend=name)(dy, am, dx)
    np.testing.assert_allclose(dx, edx, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape,k,s,p", [((2, 3, 8, 8), (3, 3), (2, 2), (0, 0)), ((1, 2, 10, 12), (3, 3), (2, 2), (0, 0))])
@pytest.mark.parametrize("name", _cases("maxpool2d_bwd"))
def test_backend_maxpool_bwd_cells_leave_several_rows_and_columns(name, shape, k, s, p):
    """3x3 stride-2 windows without padding halve the plane minus a border: every maximum in its
    own 2x2 cell (each cell's top-left corner wins the tie), and the two or more last rows and
    columns no cell covers get no gradient."""
    rows, cols = np.indices(shape[2:])
    x = np.broadcast_to((rows % 2 == 0) & (cols % 2 == 0), shape).astype(np.float32)
    oshape = _out(shape, k, s, p)
    assert shape[2] - 2 * oshape[2] >= 2 and shape[3] - 2 * oshape[3] >= 2
    dy = np.random.default_rng(11).standard_normal(oshape).astype(np.float32)
    y, am = np.empty(oshape, np.float32), np.empty(oshape, np.int64)
    ref.maxpool2d_fwd_ref(x, y, am, *k, *s, *p)
    edx = np.empty(shape, np.float64)
    ref.maxpool2d_bwd_ref(dy.astype(np.float64), am, edx)
    dx = np.full(shape, np.nan, np.float32)
    backend.kernel("maxpool2d_bwd", backend=name)(dy, am, dx)
    np.testing.assert_allclose(dx, edx, rtol=1e-6, atol=1e-6)
