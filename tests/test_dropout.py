"""Dropout: Philox-4x32-10 against the published Random123 known answers and a scalar Python
version, the documented (seed, step, layer, index) -> bit mapping, statistics of the mask, every
backend bit-for-bit against the reference, and the Dropout layer."""
import numpy as np
import pytest

from fasttrain import backend
from fasttrain.check import gradcheck
from fasttrain.kernels import dropout as ref
from fasttrain.nn.dropout import Dropout, layer_key

M32 = 0xFFFFFFFF

# Random123 kat_vectors, philox4x32 with 10 rounds: (counter, key, expected output)
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((M32, M32, M32, M32), (M32, M32), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("counter,key,expected", KAT)
def test_philox_reproduces_random123_known_answers(counter, key, expected):
    out = ref.philox4x32_ref(np.array([counter], np.uint32), np.array(key, np.uint32))
    assert out.dtype == np.uint32 and out.shape == (1, 4)
    assert [int(v) for v in out[0]] == list(expected)


def philox_scalar(counter, key):
    """Philox-4x32-10 on Python ints, one block at a time (Salmon et al. SC'11, Fig. 2)."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for _ in range(10):
        p0, p1 = 0xD2511F53 * c0, 0xCD9E8D57 * c2
        c0, c1, c2, c3 = (p1 >> 32) ^ c1 ^ k0, p1 & M32, (p0 >> 32) ^ c3 ^ k1, p0 & M32
        k0, k1 = (k0 + 0x9E3779B9) & M32, (k1 + 0xBB67AE85) & M32
    return c0, c1, c2, c3


def test_vectorized_philox_equals_scalar_version_on_random_counters():
    rng = np.random.default_rng(1)
    counters = rng.integers(0, 2 ** 32, (37, 4), dtype=np.uint64).astype(np.uint32)
    key = rng.integers(0, 2 ** 32, 2, dtype=np.uint64).astype(np.uint32)
    out = ref.philox4x32_ref(counters, key)
    for row, got in zip(counters, out):
        assert tuple(int(v) for v in got) == philox_scalar(tuple(int(v) for v in row), (int(key[0]), int(key[1])))


def keep_scalar(n, p, seed, step, layer):
    """The documented mapping, element by element (docs/KERNELS.md, dropout)."""
    t = min(int(p * 2 ** 32), M32)
    out = []
    for i in range(n):
        b, lane = divmod(i, 4)
        words = philox_scalar((b & M32, b >> 32, step, layer), (seed & M32, seed >> 32))
        out.append(words[lane] >= t)
    return np.array(out)


@pytest.mark.parametrize("n,p,seed,step,layer", [
    (1, 0.5, 0, 0, 0), (13, 0.3, 2 ** 40 + 7, 5, 2), (64, 0.9, 123, 2 ** 32 - 1, 7), (9, 0.1, M32, 1, 0)])
def test_mask_follows_documented_counter_key_mapping(n, p, seed, step, layer):
    mask = np.empty(n, np.uint8)
    ref.dropout_mask_ref(mask, p, seed, step, layer)
    np.testing.assert_array_equal(mask, keep_scalar(n, p, seed, step, layer).astype(np.uint8))


def test_threshold_rule():
    assert ref.threshold(0.0) == 0
    assert ref.threshold(0.5) == 2 ** 31
    assert ref.threshold(0.25) == 2 ** 30
    assert ref.threshold(np.nextafter(1.0, 0.0)) == M32     # clamped to the largest uint32


@pytest.mark.parametrize("p", [0.05, 0.3, 0.5, 0.9])
def test_keep_fraction_is_one_minus_p(p):
    n = 200_003
    mask = np.empty(n, np.uint8)
    ref.dropout_mask_ref(mask, p, seed=42, step=3, layer=1)
    sigma = np.sqrt(p * (1 - p) / n)
    assert abs(mask.mean() - (1 - p)) < 5 * sigma
    # no lane is biased: each of the 4 words of a block keeps about 1 - p too
    for lane in range(4):
        assert abs(mask[lane::4].mean() - (1 - p)) < 5 * sigma * 2


def _mask(n=4099, p=0.5, seed=0, step=0, layer=0):
    m = np.empty(n, np.uint8)
    ref.dropout_mask_ref(m, p, seed, step, layer)
    return m


def test_masks_differ_across_seed_step_layer_and_repeat_for_equal_keys():
    base = _mask(seed=7, step=10, layer=3)
    np.testing.assert_array_equal(base, _mask(seed=7, step=10, layer=3))
    for other in (_mask(seed=8, step=10, layer=3), _mask(seed=7, step=11, layer=3),
                  _mask(seed=7, step=10, layer=4), _mask(seed=7 + 2 ** 32, step=10, layer=3)):
        agree = (other == base).mean()
        assert 0.4 < agree < 0.6          # independent fair masks agree on about half the bits


def test_fwd_and_bwd_scale_kept_elements_and_zero_the_rest():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 5, 7))
    p = 0.3
    keep = _mask(x.size, p, 9, 2, 1).reshape(x.shape).astype(bool)
    y = np.empty_like(x)
    ref.dropout_fwd_ref(x, y, p, 9, 2, 1)
    np.testing.assert_allclose(y, np.where(keep, x / (1 - p), 0.0), rtol=1e-15)
    dx = np.empty_like(x)
    ref.dropout_bwd_ref(x, dx, p, 9, 2, 1)
    np.testing.assert_array_equal(dx, y)
    ref.dropout_fwd_ref(x, y, 0.0, 9, 2, 1)
    np.testing.assert_array_equal(y, x)


SIZES = [0, 1, 3, 4, 5, 17, 1023, 4099]


@pytest.mark.parametrize("name", backend.available_backends_for("dropout_mask"))
@pytest.mark.parametrize("n", SIZES)
def test_backend_mask_bit_for_bit(name, n):
    for p, seed, step, layer in [(0.5, 0, 0, 0), (0.1, 2 ** 33 + 5, 77, 3), (0.9, M32, 2 ** 31, 2 ** 20)]:
        want = _mask(n, p, seed, step, layer)
        got = np.full(n, 7, np.uint8)
        backend.kernel("dropout_mask", backend=name)(got, p, seed, step, layer)
        np.testing.assert_array_equal(got, want, err_msg=f"{name} n={n} p={p} seed={seed}")


@pytest.mark.parametrize("name", backend.available_backends_for("dropout_fwd"))
@pytest.mark.parametrize("shape", [(1,), (3, 5, 7), (2, 3, 1, 9), (1023,)])
@pytest.mark.parametrize("p", [0.0, 0.2, 0.5, 0.75])
def test_backend_fwd_bwd_match_reference_float32(name, shape, p):
    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape).astype(np.float32)
    want = np.empty_like(x)
    ref.dropout_fwd_ref(x, want, p, 11, 4, 2)
    for op in ("dropout_fwd", "dropout_bwd"):
        got = np.full_like(x, np.nan)
        backend.kernel(op, backend=name)(x, got, p, 11, 4, 2)
        # same mask bits and the same float32 product x * float32(1/(1-p)): exactly equal
        np.testing.assert_array_equal(got, want, err_msg=f"{name} {op}")


# -- the layer ---------------------------------------------------------------------------------
@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5, float("nan"), "0.5", True])
def test_layer_rejects_bad_p(p):
    with pytest.raises(ValueError, match=r"Dropout\(p\)"):
        Dropout(p)


def test_layer_rejects_bad_seed_and_layer_id():
    with pytest.raises(ValueError, match="seed"):
        Dropout(0.5, seed=-1)
    with pytest.raises(ValueError, match="layer_id"):
        Dropout(0.5, layer_id=2 ** 32)


def test_layer_is_identity_in_eval_and_for_p_zero():
    x = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32)
    d = Dropout(0.5).eval()
    np.testing.assert_array_equal(d.forward(x), x)
    np.testing.assert_array_equal(d.backward(x), x)
    d0 = Dropout(0.0)
    np.testing.assert_array_equal(d0.forward(x), x)
    np.testing.assert_array_equal(d0.backward(2 * x), 2 * x)


def test_layer_train_mask_matches_kernel_and_backward_regenerates_it():
    x = np.random.default_rng(1).standard_normal((5, 3, 4)).astype(np.float32) + 10   # no zeros
    d = Dropout(0.4, seed=5, layer_id=9)
    d.set_step(12)
    y = d.forward(x)
    keep = _mask(x.size, 0.4, 5, 12, 9).reshape(x.shape).astype(bool)
    np.testing.assert_array_equal(y != 0, keep)
    np.testing.assert_allclose(y[keep], x[keep] / np.float32(0.6), rtol=1e-6)
    # the layer keeps no mask-sized array: the cache is the shape and the key
    assert not any(isinstance(v, np.ndarray) for v in d.cache)
    d.set_step(13)                       # a step change after forward does not desynchronize backward
    dx = d.backward(np.ones_like(x))
    np.testing.assert_array_equal(dx != 0, keep)
    # the next step draws a new mask
    assert (d.forward(x) != 0).tolist() != keep.tolist()


def test_default_keys_are_the_layers_paths():
    """Without layer_id a layer's masks are keyed by its path in its model: two layers of one model
    differ, the same position in two models (built in any order, after any other models) agrees."""
    from fasttrain.nn import Linear, ReLU, Residual, Sequential, StochasticDepth
    from fasttrain.nn import DropConnectLinear

    def build():
        return Sequential(Linear(8, 8), Dropout(0.5), ReLU(), Dropout(0.5),
                          StochasticDepth(Residual(Sequential(Linear(8, 8), Dropout(0.5))), 0.5),
                          DropConnectLinear(8, 4, p=0.5))

    first = build()
    Sequential(Dropout(0.5), Dropout(0.5), build())       # other models built in between
    second = build()
    mods = lambda m: [(path, mod) for path, mod in m.named_modules() if mod.stochastic]   # noqa: E731
    assert [p for p, _ in mods(first)] == ["1", "3", "4", "4.block.body.1", "5"]
    x = np.ones((64, 64), np.float32)
    for (path, a), (_, b) in zip(mods(first), mods(second)):
        assert layer_key(a) == layer_key(b), path
        if isinstance(a, Dropout):
            a.set_step(3), b.set_step(3)
            np.testing.assert_array_equal(a.forward(x), b.forward(x), err_msg=path)
        elif isinstance(a, StochasticDepth):
            assert [a.keeps(s) for s in range(64)] == [b.keeps(s) for s in range(64)]
    assert len({layer_key(m) for _, m in mods(first)}) == 5
    d1, d3 = first[1], first[3]
    d1.set_step(0), d3.set_step(0)
    assert not np.array_equal(d1.forward(x), d3.forward(x))      # two layers of one model differ
    c = Dropout(0.5, layer_id=layer_key(d1))                      # an explicit id of the same value agrees
    d1.set_step(0)
    np.testing.assert_array_equal(c.forward(x), d1.forward(x))


def test_layer_expectation_is_preserved():
    x = np.full(100_000, 2.0, np.float32)
    y = Dropout(0.7, seed=3).forward(x)
    assert abs(y.mean() - 2.0) < 0.05         # inverted dropout: E[y] = x


def test_layer_rejects_step_outside_counter_word():
    d = Dropout(0.5)
    d.set_step(2 ** 32)
    with pytest.raises(ValueError, match="step"):
        d.forward(np.ones(4, np.float32))


def test_layer_backward_shape_mismatch_raises():
    d = Dropout(0.5)
    d.forward(np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match=r"expected dy of shape \(2, 3\)"):
        d.backward(np.ones((3, 2), np.float32))


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (2, 3, 5)])
def test_layer_gradcheck_train_mode(shape):
    d = Dropout(0.35, seed=1, layer_id=4)
    d.set_step(6)
    x = np.random.default_rng(2).standard_normal(shape)
    for r in gradcheck(d, x):
        assert r.passed, str(r)


def test_layer_draws_a_fresh_mask_at_every_training_forward_by_itself():
    """No set_step: the step advances once per training forward, backward regenerates the mask of
    the forward it follows, eval forwards draw nothing, and set_step still pins the key."""
    x = np.random.default_rng(3).standard_normal((6, 40)).astype(np.float32) + 10   # no zeros
    d = Dropout(0.5, seed=2, layer_id=7)
    masks = []
    for step in range(3):
        y = d.forward(x)
        keep = _mask(x.size, 0.5, 2, step, 7).reshape(x.shape).astype(bool)
        np.testing.assert_array_equal(y != 0, keep)
        np.testing.assert_array_equal(d.backward(np.ones_like(x)) != 0, keep)
        masks.append(keep)
    assert d.step == 3
    assert not np.array_equal(masks[0], masks[1]) and not np.array_equal(masks[1], masks[2])
    d.eval()
    d.forward(x)
    assert d.step == 3                   # evaluation consumes no draw
    d.train()
    d.set_step(1)                        # the trainer's way: the key is its step
    np.testing.assert_array_equal(d.forward(x) != 0, masks[1])


@pytest.mark.parametrize("name", backend.available_backends_for("dropout_fwd"))
def test_layer_mask_sequence_is_the_same_bits_in_every_backend(name):
    x = np.random.default_rng(4).standard_normal((5, 33)).astype(np.float32)
    old = backend.get_backend()
    try:
        backend.set_backend(name)
        d = Dropout(0.3, seed=11, layer_id=2)
        got = [d.forward(x) for _ in range(3)]
    finally:
        backend.set_backend(old)
    for step, y in enumerate(got):
        want = np.empty_like(x)
        ref.dropout_fwd_ref(x, want, 0.3, 11, step, 2)
        np.testing.assert_array_equal(y.view(np.uint32), want.view(np.uint32), err_msg=f"{name} step {step}")
