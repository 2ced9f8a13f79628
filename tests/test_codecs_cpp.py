"""C++ codec kernels (csrc/cpu/codecs.cpp) against the NumPy reference in fasttrain/parallel/codecs.py:
encoded bytes, decoded values and error-feedback residuals equal bit for bit, for the same
generator state (the stochastic codecs draw Philox-4x32-10 uniforms from one seed per encode)."""
import os
import subprocess
import sys

import numpy as np
import pytest

import fasttrain as ft

from fasttrain.parallel import codecs
from fasttrain.parallel.codecs import ErrorFeedback, get_codec, philox_uniforms
from fasttrain.kernels.dropout import philox4x32_ref

pytestmark = pytest.mark.skipif(codecs._C is None, reason="fasttrain._C built without codec kernels")

NAMES = ["fp16", "bf16", "int8", "int4", "sign"]
# 0, odd, primes, around the 128-value Philox group, the 1024-value uniform batch and the
# 2048-value tile, and past the 65536 values where the kernels start using threads
SIZES = [0, 1, 7, 127, 128, 129, 255, 256, 257, 1021, 2053, 8191, 70_001, 1_000_003]


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


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    from fasttrain import settings
    saved = settings.num_threads
    ft.set_num_threads(request.param)
    yield request.param
    ft.set_num_threads(saved)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("n", SIZES)
def test_cpp_encode_decode_equal_reference_bytes(name, n, reference, threads):
    codec = get_codec(name)
    x = _data(n)
    got, got_dec = _encode(codec, x, 11)
    with reference:
        want, want_dec = _encode(codec, x, 11)
    assert np.array_equal(got, want), f"{name} n={n}: {np.count_nonzero(got != want)} bytes differ"
    assert np.array_equal(got_dec.view(np.uint32), want_dec.view(np.uint32))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("n", [0, 1, 7, 257, 2053, 100_003])
def test_cpp_fused_error_feedback_equals_reference(name, n, reference, threads):
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
@pytest.mark.parametrize("block", [1, 3, 13, 64, 127, 1000, 5003])
def test_cpp_odd_block_sizes_equal_reference(name, block, reference, threads):
    """Tiles of whole blocks covering multiples of 8 values: nibbles/bits of neighbouring blocks share
    bytes; blocks that start inside a Philox group or a uniform batch, or span several batches."""
    codec = type(get_codec(name))(block=block)
    for n in (1, block - 1, block, block + 1, 8 * block + 5, 70_001):
        if n < 1:
            continue
        x = _data(n, block)
        r0 = _data(n, block + 1) * np.float32(0.01)
        r_cpp, r_ref = r0.copy(), r0.copy()
        got, got_dec = _encode(codec, x, n)
        got_ef, _ = _encode(codec, x, n, residual=r_cpp)
        with reference:
            want, want_dec = _encode(codec, x, n)
            want_ef, _ = _encode(codec, x, n, residual=r_ref)
        assert np.array_equal(got, want), (name, block, n)
        assert np.array_equal(got_dec.view(np.uint32), want_dec.view(np.uint32)), (name, block, n)
        assert np.array_equal(got_ef, want_ef) and np.array_equal(r_cpp.view(np.uint32), r_ref.view(np.uint32))


def test_portable_philox_path_equals_reference():
    """FASTTRAIN_CODEC_SIMD=portable runs the compiler-vectorized Philox loop instead of the AVX-512
    one; it must give the same bytes (run in a child: the choice is made once per process)."""
    code = (
        "import numpy as np\n"
        "from fasttrain.parallel import codecs as C\n"
        "for name in ('int8', 'int4'):\n"
        "    c = C.get_codec(name)\n"
        "    for n in (1, 129, 2053, 70001):\n"
        "        x = np.random.default_rng(n).standard_normal(n).astype(np.float32)\n"
        "        outs = []\n"
        "        for cpp in (True, False):\n"
        "            C.use_cpp(cpp)\n"
        "            o = np.empty(c.nbytes(n), np.uint8)\n"
        "            c.encode(x, o, np.random.default_rng(3))\n"
        "            outs.append(o)\n"
        "        assert np.array_equal(*outs), (name, n)\n"
        "print('portable ok')\n")
    env = dict(os.environ, FASTTRAIN_CODEC_SIMD="portable")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "portable ok" in proc.stdout, proc.stdout + proc.stderr


def test_unknown_simd_setting_is_an_error():
    env = dict(os.environ, FASTTRAIN_CODEC_SIMD="avx9")
    proc = subprocess.run([sys.executable, "-c", "import fasttrain.parallel.codecs"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0 and "FASTTRAIN_CODEC_SIMD: expected 'auto' or 'portable', got 'avx9'" in proc.stderr


def test_centred_uniforms_bias_at_most_2_pow_minus_17_of_a_step():
    """The docstring's claim: with u = (2k + 1) / 2^17 over all 2^16 k, E[floor(y + u)] - y stays
    within 2^-17 for any fraction of y (float32 arithmetic, as the kernels do it)."""
    k = np.arange(1 << 16, dtype=np.float32)
    u = (2 * k + 1) * np.float32(2.0 ** -17)
    for y in np.float32([0.0, 1e-6, 0.1, 0.25, 0.5 - 2 ** -20, 0.5, 0.75, 0.999999, 3.3, -0.3, -5.0001, 126.7]):
        mean = np.floor(y + u).astype(np.float64).mean()
        assert abs(mean - np.float64(y)) <= 2.0 ** -17 + 1e-12, y

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
    with pytest.raises(Exception, match="block: expected >= 1, got 0"):
        codecs._C.codec_int_decode(np.empty(14, np.uint8), x, 0, 8)
    with pytest.raises(Exception, match="4-byte aligned"):
        codecs._C.codec_int_encode(x, np.empty(15, np.uint8)[1:], None, 256, 8, 0)
    with pytest.raises(Exception, match="expected 5 encoded bytes, got 3"):
        codecs._C.codec_sign_decode(np.empty(3, np.uint8), np.zeros(7, np.float32), 256)


def test_error_feedback_state_uses_fused_kernel(reference):
    g = _data(3001)
    efs = [ErrorFeedback("sign", g.size), ErrorFeedback("sign", g.size)]
    bufs = [np.empty(get_codec("sign").nbytes(g.size), np.uint8) for _ in efs]
    for step in range(5):
        efs[0].encode(g, bufs[0], np.random.default_rng(step))
        with reference:
            efs[1].encode(g, bufs[1], np.random.default_rng(step))
        assert np.array_equal(bufs[0], bufs[1]) and np.array_equal(efs[0].residual, efs[1].residual)
