"""Max pooling in tap form (maxpool2d_taps_fwd/bwd: each maximum named by its window tap r*kw + s in
one byte): the reference against the flat-index reference, every backend against the reference on
odd shapes, ties, NaN and -inf, invalid taps, and the layer that uses
it when it does not return indices."""
import numpy as np
import pytest

from fasttrain import backend
from fasttrain.check import gradcheck
from fasttrain.kernels import pooling as ref
from fasttrain.nn.pooling import MaxPool2d
from pool_configs import config_ids, out_shape
from pool_nans import mixed, windows

# (x shape, (kh, kw), (sh, sw), (ph, pw), (dh, dw), ceil_mode): batch 1, C = 1/3/17, 1x1 and 33x33
# inputs, odd and even sizes (a last row or column no 2x2 cell covers), 2x2 rows of 1, 16, 17 and
# 35 outputs, overlapping, padded, dilated and
# ceil-mode windows, and a 16x16 window (tap 255, the largest a byte holds)
CONFIGS = [
    ((1, 1, 1, 1), (1, 1), (1, 1), (0, 0), (1, 1), False),
    ((1, 3, 1, 1), (2, 2), (1, 1), (1, 1), (1, 1), False),
    ((1, 3, 33, 33), (2, 2), (2, 2), (0, 0), (1, 1), False),
    ((2, 17, 32, 32), (2, 2), (2, 2), (0, 0), (1, 1), False),
    ((1, 17, 5, 34), (2, 2), (2, 2), (0, 0), (1, 1), False),
    ((2, 3, 4, 71), (2, 2), (2, 2), (0, 0), (1, 1), False),
    ((2, 1, 2, 2), (2, 2), (2, 2), (0, 0), (1, 1), False),
    ((1, 3, 7, 7), (2, 2), (2, 2), (0, 0), (1, 1), True),
    ((1, 3, 33, 33), (2, 2), (1, 1), (1, 1), (1, 1), False),
    ((1, 17, 33, 33), (3, 3), (2, 2), (1, 1), (1, 1), False),
    ((2, 3, 6, 7), (3, 3), (3, 3), (1, 1), (1, 1), True),
    ((1, 3, 9, 8), (3, 2), (2, 1), (1, 1), (2, 1), False),
    ((1, 1, 17, 16), (16, 16), (1, 1), (0, 0), (1, 1), False),
]
IDS = config_ids(CONFIGS)


def _cases():
    return [pytest.param(name, id=name) for name in backend.available_backends_for("maxpool2d_taps_fwd")]


@pytest.fixture
def call(request):
    """backend.kernel for the test's backend."""
    return lambda op: backend.kernel(op, backend=request.param)


def _taps_run(call, x, dy, k, s, p, d, ceil):
    y, taps = np.full(dy.shape, np.nan, x.dtype), np.full(dy.shape, 77, np.uint8)
    call("maxpool2d_taps_fwd")(x, y, taps, *k, *s, *p, ceil, *d)
    dx = np.full(x.shape, np.nan, x.dtype)
    call("maxpool2d_taps_bwd")(dy, taps, dx, *k, *s, *p, ceil, *d)
    return y, taps, dx


def _flat_run(x, dy, k, s, p, d, ceil):
    y, am = np.empty(dy.shape, x.dtype), np.empty(dy.shape, np.int64)
    ref.maxpool2d_fwd_ref(x, y, am, *k, *s, *p, ceil, *d)
    dx = np.empty(x.shape, x.dtype)
    ref.maxpool2d_bwd_ref(dy, am, dx)
    return y, am, dx


@pytest.mark.parametrize("shape,k,s,p,d,ceil", CONFIGS, ids=IDS)
@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
def test_reference_names_the_flat_reference_maximum(shape, k, s, p, d, ceil, ties):
    rng = np.random.default_rng(1)
    x = rng.integers(-2, 3, shape).astype(np.float64) if ties else rng.standard_normal(shape)
    dy = rng.standard_normal(out_shape(shape, k, s, p, d, ceil))
    y, taps, dx = _taps_run(lambda op: backend.kernel(op, backend="numpy"), x, dy, k, s, p, d, ceil)
    fy, am, fdx = _flat_run(x, dy, k, s, p, d, ceil)
    np.testing.assert_array_equal(y, fy)
    assert taps.dtype == np.uint8 and int(taps.max()) < k[0] * k[1]
    np.testing.assert_array_equal(ref.taps_to_flat(taps, *shape[2:], *k, *s, *p, *d), am)
    np.testing.assert_array_equal(dx, fdx)


@pytest.mark.parametrize("call", _cases(), indirect=True)
@pytest.mark.parametrize("shape,k,s,p,d,ceil", CONFIGS, ids=IDS)
@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
def test_backend_matches_reference(call, shape, k, s, p, d, ceil, ties):
    rng = np.random.default_rng(3)
    # with ties: small integers, so windows share maxima and the first-maximum rule decides
    x = (rng.integers(-2, 3, shape) if ties else rng.standard_normal(shape)).astype(np.float32)
    dy = rng.standard_normal(out_shape(shape, k, s, p, d, ceil)).astype(np.float32)
    y, taps, dx = _taps_run(call, x, dy, k, s, p, d, ceil)
    ey, etaps, edx = _taps_run(lambda op: backend.kernel(op, backend="numpy"), x.astype(np.float64),
                               dy.astype(np.float64), k, s, p, d, ceil)
    np.testing.assert_array_equal(y, ey.astype(np.float32))
    np.testing.assert_array_equal(taps, etaps)
    # disjoint windows move each dy unchanged; overlapping ones add in another order
    np.testing.assert_allclose(dx, edx, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("call", _cases(), indirect=True)
@pytest.mark.parametrize("case", [("windows", (2, 2), (2, 2), (0, 0), (1, 1), False),
                                  ("windows", (3, 3), (3, 3), (0, 0), (1, 1), False),
                                  ("mixed", (2, 2), (2, 2), (0, 0), (1, 1), False),
                                  ("mixed", (3, 3), (2, 2), (1, 1), (1, 1), True),
                                  ("mixed", (2, 3), (2, 1), (1, 1), (2, 1), False)],
                         ids=["2x2-windows", "3x3-windows", "2x2-mixed", "3x3-ceil-mixed", "dilated-mixed"])
def test_nan_inf_and_ties_follow_the_flat_op_and_torch(call, case):
    """PyTorch's rule (tests/pool_nans.py): a NaN propagates and the last NaN wins, else the first
    maximum; a window of -inf names its first real tap. The taps must name what the flat op names."""
    kind, k, s, p, d, ceil = case
    x = windows(2, 17, *k, cols=20) if kind == "windows" else mixed((2, 17, 9, 37), 5)
    oshape = out_shape(x.shape, k, s, p, d, ceil)
    dy = np.random.default_rng(4).standard_normal(oshape).astype(np.float32)
    y, taps, dx = _taps_run(call, x, dy, k, s, p, d, ceil)
    assert np.isnan(y).any() and not np.isnan(y).all(), "the case should mix NaN and real windows"
    fy, am, fdx = _flat_run(x, dy, k, s, p, d, ceil)
    np.testing.assert_array_equal(y, fy)
    np.testing.assert_array_equal(ref.taps_to_flat(taps, *x.shape[2:], *k, *s, *p, *d), am)
    np.testing.assert_allclose(dx, fdx, rtol=1e-6, atol=1e-6)
    torch = pytest.importorskip("torch")
    ty, ti = torch.nn.functional.max_pool2d(torch.from_numpy(x), k, s, p, d, ceil_mode=ceil, return_indices=True)
    np.testing.assert_array_equal(y, ty.numpy())
    np.testing.assert_array_equal(ref.taps_to_flat(taps, *x.shape[2:], *k, *s, *p, *d), ti.numpy())


@pytest.mark.parametrize("call", _cases(), indirect=True)
@pytest.mark.parametrize("shape,k,s,p,bad,where", [
    ((1, 3, 6, 6), (2, 2), (2, 2), (0, 0), 4, 13),      # 2x2 cells: a tap no 2x2 window has
    ((1, 3, 6, 6), (2, 2), (2, 2), (0, 0), 200, 0),
    ((1, 3, 5, 5), (3, 3), (2, 2), (1, 1), 0, 3),       # the top-left tap of a padded window: in the padding
    ((2, 1, 5, 5), (3, 3), (2, 2), (1, 1), 9, 11),      # beyond a 3x3 window
], ids=["2x2-tap4", "2x2-tap200-first", "3x3-padding", "3x3-beyond"])
def test_invalid_taps_raise_naming_the_first(call, shape, k, s, p, bad, where):
    oshape = out_shape(shape, k, s, p, (1, 1), False)
    x = np.random.default_rng(5).standard_normal(shape).astype(np.float32)
    y, taps = np.empty(oshape, np.float32), np.empty(oshape, np.uint8)
    call("maxpool2d_taps_fwd")(x, y, taps, *k, *s, *p)
    taps.flat[where] = bad
    taps.flat[-1] = bad   # a later bad tap: the message names the first
    dx = np.empty(shape, np.float32)
    with pytest.raises(ValueError, match=f"got {bad} at flat position {where}$"):
        call("maxpool2d_taps_bwd")(np.ones(oshape, np.float32), taps, dx, *k, *s, *p)


def test_cpp_rejects_windows_a_byte_cannot_name():
    C = pytest.importorskip("fasttrain._C")
    x = np.zeros((1, 1, 17, 17), np.float32)
    y, taps = np.empty((1, 1, 1, 1), np.float32), np.empty((1, 1, 1, 1), np.uint8)
    with pytest.raises(ValueError, match=r"maxpool2d_taps_fwd\(kh, kw\): expected a window of at most 256 taps"):
        C.maxpool2d_taps_fwd(x, y, taps, 17, 17, 1, 1, 0, 0)
    y2, taps2 = np.empty((1, 1, 2, 2), np.float32), np.empty((1, 1, 2, 2), np.uint8)
    with pytest.raises(ValueError, match="taps: expected dtype uint8, got int64"):
        C.maxpool2d_taps_fwd(x, y2, taps2.astype(np.int64), 16, 16, 1, 1, 0, 0)
    with pytest.raises(ValueError, match=r"maxpool2d_taps_fwd\(taps\): expected shape \(1, 1, 2, 2\)"):
        C.maxpool2d_taps_fwd(x, np.empty((1, 1, 2, 2), np.float32), taps, 16, 16, 1, 1, 0, 0)


# ---- the layer ------------------------------------------------------------------------------------

@pytest.mark.parametrize("args,shape", [((2,), (2, 3, 33, 32)), ((3, 2, 1), (1, 17, 9, 8)),
                                        ((3, 2, 1, 2, False, True), (2, 3, 11, 10)), ((17,), (1, 2, 17, 17))])
def test_layer_keeps_taps_unless_it_returns_indices(args, shape):
    x = np.random.default_rng(6).integers(-3, 4, shape).astype(np.float32)   # ties
    taps_layer, flat_layer = MaxPool2d(*args), MaxPool2d(*args)
    flat_layer.return_indices = True
    y = taps_layer.forward(x)
    fy, idx = flat_layer.forward(x)
    np.testing.assert_array_equal(y, fy)
    # uint8 taps where a byte names every tap (up to 16 x 16), else the flat index
    k = taps_layer.kernel_size
    assert taps_layer.cache[0].dtype == (np.uint8 if k[0] * k[1] <= 256 else np.int64)
    assert idx.dtype == np.int64
    dy = np.random.default_rng(7).standard_normal(y.shape).astype(np.float32)
    np.testing.assert_array_equal(taps_layer.backward(dy), flat_layer.backward(dy))


def test_layer_gradcheck_in_tap_form():
    x = np.random.default_rng(8).permutation(2 * 3 * 7 * 9).reshape(2, 3, 7, 9) * 0.01   # distinct values
    for r in gradcheck(MaxPool2d(3, 2, 1, ceil_mode=True), x, tol=1e-6):
        assert r.passed, str(r)


# ---- the C++ 2x2 row on each instruction set (set_conv2d_isa: the AVX2 row, or the portable loop) ----

def _cpp():
    return pytest.importorskip("fasttrain._C")


@pytest.fixture(params=["avx512", "avx2", "portable"])
def cpp_isa(request):
    from cpp_isas import forced_isa, isa_available
    C = _cpp()
    if not isa_available(C, request.param):
        pytest.skip(f"no {request.param} on this CPU/build")
    yield from forced_isa(C, request.param)


@pytest.mark.parametrize("shape", [(1, 1, 2, 2), (1, 3, 2, 16), (2, 17, 5, 34), (1, 3, 33, 33), (2, 3, 4, 71),
                                   (1, 1, 2, 32), (2, 5, 8, 50)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("kind", ["normal", "ties", "nan"])
def test_cpp_2x2_row_on_each_isa(cpp_isa, shape, kind):
    """Rows of 1, 8, 16, 17, 25 and 35 outputs: whole 8-output vector steps, their tails, and rows of
    fewer than 8; ties and NaN/-inf (tests/pool_nans.py) decided as the reference decides."""
    C = _cpp()
    rng = np.random.default_rng(9)
    if kind == "nan":
        x = mixed(shape, 11)
    else:
        x = (rng.integers(-2, 3, shape) if kind == "ties" else rng.standard_normal(shape)).astype(np.float32)
    oshape = out_shape(shape, (2, 2), (2, 2), (0, 0), (1, 1), False)
    y, taps = np.full(oshape, 5.0, np.float32), np.full(oshape, 77, np.uint8)
    C.maxpool2d_taps_fwd(x, y, taps, 2, 2, 2, 2, 0, 0)
    ey, etaps = np.empty(oshape, np.float64), np.empty(oshape, np.uint8)
    ref.maxpool2d_taps_fwd_ref(x.astype(np.float64), ey, etaps, 2, 2, 2, 2, 0, 0)
    np.testing.assert_array_equal(y, ey.astype(np.float32))
    np.testing.assert_array_equal(taps, etaps)
    dy = rng.standard_normal(oshape).astype(np.float32)
    dx, edx = np.full(shape, np.nan, np.float32), np.empty(shape, np.float64)
    C.maxpool2d_taps_bwd(dy, taps, dx, 2, 2, 2, 2, 0, 0)
    ref.maxpool2d_taps_bwd_ref(dy.astype(np.float64), etaps, edx, 2, 2, 2, 2, 0, 0)
    np.testing.assert_array_equal(dx, edx.astype(np.float32))   # each dy moved unchanged, zeros elsewhere


@pytest.mark.parametrize("where", [0, 9, 24, 34], ids=lambda w: f"at{w}")
def test_cpp_2x2_bad_tap_found_on_each_isa(cpp_isa, where):
    """A byte above 3 anywhere in a row (the vector steps or the tail) raises, naming the first."""
    C = _cpp()
    oshape = (1, 2, 2, 35)
    taps = np.random.default_rng(12).integers(0, 4, oshape).astype(np.uint8)
    taps.flat[where] = 4
    taps.flat[-1] = 9
    with pytest.raises(ValueError, match=f"got 4 at flat position {where}$"):
        C.maxpool2d_taps_bwd(np.ones(oshape, np.float32), taps, np.empty((1, 2, 4, 71), np.float32), 2, 2, 2, 2, 0, 0)
