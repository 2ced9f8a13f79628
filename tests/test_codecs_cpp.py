"""C++ codec kernels (csrc/cpu/codecs.cpp) against the NumPy reference in fasttrain/dist/codecs.py:
encoded bytes, decoded values and error-feedback residuals equal bit for bit, for the same
generator state (the stochastic codecs draw Philox-4x32-10 uniforms from one seed per encode)."""
import numpy as np
import pytest

from fasttrain.dist import codecs
from fasttrain.dist.codecs import ErrorFeedback, get_codec, philox_uniforms
from fasttrain.kernels.dropout import philox4x32_ref

pytestmark = pytest.mark.skipif(codecs._C is None, reason="fasttrain._C built without codec kernels")

NAMES = ["fp16", "bf16", "int8", "int4", "sign"]
SIZES = [1, 7, 255, 256, 257, 1_000_003]


@pytest.fixture
def reference():
    """Run a block under the NumPy reference, then restore the C++ path."""
    class Switch:
        def __enter__(self):
            codecs.use_cpp(False)

        def __exit__(self, *exc):
            codecs.use_cpp(True)
    yield Switch()
    codecs.use_cpp(True)


def _data(n, seed=0):
    rng = np.random.default_rng([n, seed])
    scale = 10.0 ** rng.integers(-6, 4, -(-n // 97) + 1)          # magnitudes change every 97 values
    x = (rng.standard_normal(n) * np.repeat(scale, 97)[:n]).astype(np.float32)
    if n > 600:
        x[300:560] = 0.0                                           # an all-zero block (scale 0)
        x[600] = -0.0
    return x


def _encode(codec, x, seed, residual=None):
    out = np.empty(codec.nbytes(x.size), np.uint8)
    codec.encode(x, out, np.random.default_rng(seed), residual=residual)
    dec = np.empty(x.size, np.float32)
    codec.decode(out, dec)
    return out, dec


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("n", SIZES)
def test_cpp_encode_decode_equal_reference_bytes(name, n, reference):
    codec = get_codec(name)
    x = _data(n)
    got, got_dec = _encode(codec, x, 11)
    with reference:
        want, want_dec = _encode(codec, x, 11)
    assert np.array_equal(got, want), f"{name} n={n}: {np.count_nonzero(got != want)} bytes differ"
    assert np.array_equal(got_dec.view(np.uint32), want_dec.view(np.uint32))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("n", [1, 7, 257, 100_003])
def test_cpp_fused_error_feedback_equals_reference(name, n, reference):
    codec = get_codec(name)
    x = _data(n, 1)
    r0 = _data(n, 2) * np.float32(0.01)
    r_cpp, r_ref = r0.copy(), r0.copy()
    got, _ = _encode(codec, x, 5, residual=r_cpp)
    with reference:
        want, _ = _encode(codec, x, 5, residual=r_ref)
    assert np.array_equal(got, want)
    assert np.array_equal(r_cpp.view(np.uint32), r_ref.view(np.uint32))
    # and the residual is what was lost: (x + r0) - decode
    dec = np.empty(n, np.float32)
    codec.decode(got, dec)
    assert np.array_equal(r_cpp, (x + r0) - dec)


@pytest.mark.parametrize("name", ["int8", "int4", "sign"])
@pytest.mark.parametrize("block", [1, 3, 13, 64])
def test_cpp_odd_block_sizes_equal_reference(name, block, reference):
    """Tiles of whole blocks covering multiples of 8 values: nibbles/bits of neighbouring blocks share bytes."""
    codec = type(get_codec(name))(block=block)
    for n in (1, block - 1, block, block + 1, 8 * block + 5, 70_001):
        if n < 1:
            continue
        x = _data(n, block)
        got, _ = _encode(codec, x, n)
        with reference:
            want, _ = _encode(codec, x, n)
        assert np.array_equal(got, want), (name, block, n)


def test_special_values_fp16_bf16(reference):
    x = np.float32([0.0, -0.0, np.inf, -np.inf, np.nan, 65504.0, 65520.0, 1e-8, 6e-8, -3e-5, 1 + 2 ** -11,
                    1 + 3 * 2 ** -11, 3.4e38])
    x = np.concatenate([x, np.array([0x3F808000, 0x3F818000, 0x00008000, 0x7F7FFFFF], np.uint32).view(np.float32)])
    for name in ("fp16", "bf16"):
        got, _ = _encode(get_codec(name), x, 0)
        with reference:
            want, _ = _encode(get_codec(name), x, 0)
        assert np.array_equal(got, want), name


def test_philox_uniforms_are_the_dropout_generator():
    """Value 128 g + 64 h + 16 w + l: half h of word w of Philox(counter (16 g + l, 0, 0, 0xC0DEC),
    key (seed lo, seed hi)); u = (2 k + 1) / 2^17 for that 16-bit k. Checked value by value."""
    seed = 0x0123456789ABCDEF
    n = 1000
    u = philox_uniforms(n, seed)
    assert u.dtype == np.float32 and u.shape == (n,)
    key = np.array([0x89ABCDEF, 0x01234567], np.uint32)
    for i in [0, 1, 15, 16, 17, 63, 64, 65, 79, 80, 127, 128, 129, 255, 256, 700, 999]:
        g, j = divmod(i, 128)
        h, w, lane = j // 64, (j // 16) % 4, j % 16
        word = int(philox4x32_ref(np.array([[16 * g + lane, 0, 0, 0xC0DEC]], np.uint32), key)[0, w])
        k = (word >> (16 * h)) & 0xFFFF
        assert u[i] == (2 * k + 1) / 2 ** 17, i
    assert u.min() >= 2 ** -17 and u.max() <= 1 - 2 ** -17
    # a prefix of a longer draw: the uniforms of value i do not depend on n
    assert np.array_equal(philox_uniforms(77, seed), u[:77])


def test_same_seed_same_bytes_and_seeds_differ():
    codec = get_codec("int8")
    x = _data(5000)
    a, _ = _encode(codec, x, 3)
    b, _ = _encode(codec, x, 3)
    c, _ = _encode(codec, x, 4)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_cpp_argument_errors_name_the_value():
    x = np.zeros(10, np.float32)
    with pytest.raises(Exception, match="expected 14 encoded bytes, got 13"):
        codecs._C.codec_int_encode(x, np.empty(13, np.uint8), None, 256, 8, 0)
    with pytest.raises(Exception, match="bits: expected 8 or 4, got 2"):
        codecs._C.codec_int_encode(x, np.empty(14, np.uint8), None, 256, 2, 0)
    with pytest.raises(Exception, match="residual: expected 10 elements"):
        codecs._C.codec_sign_encode(x, np.empty(6, np.uint8), np.zeros(3, np.float32), 256)
    with pytest.raises(Exception, match="float32"):
        codecs._C.codec_half_encode(x.astype(np.float64), np.empty(20, np.uint8), None, False)


def test_error_feedback_state_uses_fused_kernel(reference):
    g = _data(3001)
    efs = [ErrorFeedback("sign", g.size), ErrorFeedback("sign", g.size)]
    bufs = [np.empty(get_codec("sign").nbytes(g.size), np.uint8) for _ in efs]
    for step in range(5):
        efs[0].encode(g, bufs[0], np.random.default_rng(step))
        with reference:
            efs[1].encode(g, bufs[1], np.random.default_rng(step))
        assert np.array_equal(bufs[0], bufs[1]) and np.array_equal(efs[0].residual, efs[1].residual)
