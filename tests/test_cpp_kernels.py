"""C++ (fasttrain._C) specifics that the per-family tests do not cover: argument checks in the
bindings (dtype, contiguity, sizes, label range), raw Philox words against Random123's known
answers, identical results for 1 and 2 threads, and the GIL being released during a kernel.
The optimizer updates are also checked here against the docs/KERNELS.md formulas in float64."""
import threading
import time

import numpy as np
import pytest

import fasttrain
from fasttrain.kernels import activations as act_ref
from fasttrain.kernels import dropout as drop_ref
from fasttrain.kernels import losses as loss_ref

_C = pytest.importorskip("fasttrain._C", reason="the C++ module is not built")

# Random123 known answers, shared with the reference's test
from test_dropout import KAT, M32  # noqa: E402
from cpp_isas import forced_isa, isa_params  # noqa: E402


@pytest.fixture
def threads():
    """Sets the package thread count for one test and restores it afterwards."""
    fasttrain.backends()  # loads the cpp backend so set_num_threads reaches it
    before = _C.num_threads()
    yield lambda n: fasttrain.set_num_threads(n)
    fasttrain.set_num_threads(before)


def f32(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


# ---- Philox ----

@pytest.mark.parametrize("counter,key,expected", KAT)
def test_philox_known_answers(counter, key, expected):
    out = np.zeros((1, 4), np.uint32)
    _C.philox4x32(np.array([counter], np.uint32), np.array(key, np.uint32), out)
    assert [int(v) for v in out[0]] == list(expected)


@pytest.mark.parametrize("rows", [1, 7, 1001])  # odd row counts: vector loop plus scalar remainder
def test_philox_matches_reference_on_random_counters(rows):
    rng = np.random.default_rng(rows)
    counter = rng.integers(0, 2 ** 32, (rows, 4), dtype=np.uint32)
    key = rng.integers(0, 2 ** 32, 2, dtype=np.uint32)
    out = np.empty_like(counter)
    _C.philox4x32(counter, key, out)
    np.testing.assert_array_equal(out, drop_ref.philox4x32_ref(counter, key))


@pytest.mark.parametrize("n", [1, 3, 4, 5, 8191, 8192 * 3 + 2])  # partial last block, several chunks
@pytest.mark.parametrize("seed", [0, 2 ** 40 + 17, 2 ** 64 - 1])   # seed high word used
def test_dropout_mask_bits_equal_reference(n, seed):
    for p in (0.0, 0.3, 0.999):
        mask, expect = np.empty(n, np.uint8), np.empty(n, np.uint8)
        _C.dropout_mask(mask, p, seed, 2 ** 32 - 1, 5)
        drop_ref.dropout_mask_ref(expect, p, seed, 2 ** 32 - 1, 5)
        np.testing.assert_array_equal(mask, expect)


@pytest.fixture(params=isa_params(_C))
def isa(request):
    yield from forced_isa(_C, request.param)


# sizes around the AVX-512 pass (16 blocks = 64 elements) and the 2048-block chunks; a block index
# whose high word changes inside a pass is only reachable with n > 2^34, so that branch is untested
@pytest.mark.parametrize("n", [1, 3, 63, 64, 65, 127, 4 * 2048 + 61, 8192 * 3 + 2, 100003])
@pytest.mark.parametrize("p", [0.3, 0.5, 0.999])
def test_dropout_fwd_bits_equal_reference_on_every_isa(isa, n, p):
    rng = np.random.default_rng(n)
    x = rng.standard_normal(n).astype(np.float32)
    y, expect = np.full_like(x, np.nan), np.empty_like(x)
    _C.dropout_fwd(x, y, p, 2 ** 40 + 17, 2 ** 32 - 1, 5)
    drop_ref.dropout_fwd_ref(x, expect, p, 2 ** 40 + 17, 2 ** 32 - 1, 5)
    np.testing.assert_array_equal(y.view(np.uint32), expect.view(np.uint32))   # -0.0 and +0.0 apart too
    _C.dropout_bwd(x, y, p, 2 ** 40 + 17, 2 ** 32 - 1, 5)   # the same mask and scale
    np.testing.assert_array_equal(y.view(np.uint32), expect.view(np.uint32))


def test_dropout_drops_nan_and_inf_to_zero_like_reference():
    x = np.array([np.nan, np.inf, -np.inf, 1.0] * 64, np.float32)
    y, expect = np.empty_like(x), np.empty_like(x)
    _C.dropout_fwd(x, y, 0.5, 3, 1, 2)
    drop_ref.dropout_fwd_ref(x, expect, 0.5, 3, 1, 2)
    np.testing.assert_array_equal(y, expect)   # NaN == NaN positionally under assert_array_equal
    assert (y == 0).any()


# ---- argument checks in the bindings ----

def test_float64_into_cpp_kernel_raises_naming_the_argument():
    x64 = np.ones(10)
    y = np.empty(10, np.float32)
    with pytest.raises(ValueError, match=r"x: expected dtype float32, got float64"):
        _C.relu_fwd(x64, y)
    with pytest.raises(ValueError, match=r"g: expected dtype float32"):
        _C.sgd_step(y, x64, 0.1, 0.0, 0.0)
    with pytest.raises(ValueError, match=r"dy: expected dtype float32"):
        _C.dropout_bwd(x64, y, 0.5, 0, 0, 0)
    with pytest.raises(ValueError, match=r"logits: expected dtype float32"):
        _C.softmax_xent(np.ones((2, 3)), np.zeros(2, np.int64), np.empty((2, 3), np.float32))


def test_non_contiguous_raises_naming_the_argument():
    rng = np.random.default_rng(0)
    x = f32(rng, 8, 6)
    with pytest.raises(ValueError, match=r"y: expected a C-contiguous array"):
        _C.tanh_fwd(x, np.empty((6, 8), np.float32).T)
    with pytest.raises(ValueError, match=r"v: expected a C-contiguous array"):
        _C.adam_step(x[:, 0].copy(), x[:, 1].copy(), x[:, 2].copy(), x[:, 3], 1e-3, 0.9, 0.999,
                     1e-8, 0.1, 0.001, 0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match=r"mask: expected a C-contiguous array"):
        _C.dropout_mask(np.empty(16, np.uint8)[::2], 0.5, 0, 0, 0)


def test_other_dtype_checks():
    with pytest.raises(ValueError, match=r"mask: expected dtype uint8, got bool"):
        _C.dropout_mask(np.empty(8, bool), 0.5, 0, 0, 0)
    with pytest.raises(ValueError, match=r"counter: expected dtype uint32, got int64"):
        _C.philox4x32(np.zeros((1, 4), np.int64), np.zeros(2, np.uint32), np.empty((1, 4), np.uint32))
    with pytest.raises(ValueError, match=r"philox4x32\(out\): expected shape \(3, 4\)"):
        _C.philox4x32(np.zeros((3, 4), np.uint32), np.zeros(2, np.uint32), np.empty((2, 4), np.uint32))
    with pytest.raises(ValueError, match=r"labels: expected dtype int64, got int32"):
        _C.softmax_xent(np.ones((2, 3), np.float32), np.zeros(2, np.int32), np.empty((2, 3), np.float32))


def test_size_mismatch_and_bad_scalars_raise():
    a, b = np.zeros(5, np.float32), np.zeros(6, np.float32)
    with pytest.raises(ValueError, match=r"v: expected 5 elements \(like p\), got 6"):
        _C.momentum_step(a, a.copy(), b, 0.1, 0.9, 0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match=r"dropout_fwd\(p\): expected a probability in \[0, 1\), got 1"):
        _C.dropout_fwd(a, a.copy(), 1.0, 0, 0, 0)
    with pytest.raises(ValueError, match=r"prelu_fwd\(alpha\): expected shape \(3,\), got \(4,\)"):
        _C.prelu_fwd(np.zeros((2, 3, 5), np.float32), np.zeros(4, np.float32), np.zeros((2, 3, 5), np.float32))


@pytest.mark.parametrize("bad", [-1, 7])
def test_softmax_xent_label_out_of_range_raises_before_the_kernel(bad):
    logits = np.zeros((3, 7), np.float32)
    dlogits = np.full((3, 7), 42.0, np.float32)
    labels = np.array([0, bad, 2], np.int64)
    with pytest.raises(ValueError, match=rf"softmax_xent\(labels\): expected class indices in \[0, 7\), got {bad} at row 1"):
        _C.softmax_xent(logits, labels, dlogits)
    assert (dlogits == 42.0).all()  # nothing was written


def test_empty_arrays_are_fine():
    e = np.zeros(0, np.float32)
    _C.adam_step(e, e.copy(), e.copy(), e.copy(), 1e-3, 0.9, 0.999, 1e-8, 0.1, 0.001, 0.0, 0.0, 0.0)
    _C.dropout_fwd(e, e.copy(), 0.5, 0, 0, 0)
    _C.dropout_mask(np.zeros(0, np.uint8), 0.5, 0, 0, 0)
    assert _C.softmax_xent(np.zeros((0, 4), np.float32), np.zeros(0, np.int64), np.zeros((0, 4), np.float32)) == 0.0


# ---- optimizer formulas (docs/KERNELS.md) in float64 ----

def _eff(p, g, l2, l1):
    return g + l2 * p + l1 * np.sign(p)


def _expected(op, p, g, state, h):
    """One step of `op` in float64, straight from the contract; returns (p, state)."""
    lr, l2, l1 = h["lr"], h["l2"], h["l1"]
    ge = _eff(p, g, l2, l1)
    if op == "sgd_step":
        return p - lr * ge, []
    if op in ("momentum_step", "nesterov_step"):
        v = h["mu"] * state[0] + (1 - h["dampening"]) * ge
        return p - lr * (v if op == "momentum_step" else ge + h["mu"] * v), [v]
    if op == "adagrad_step":
        s = state[0] + ge ** 2
        return p - lr * ge / (np.sqrt(s) + h["eps"]), [s]
    if op == "rmsprop_step":
        s = h["rho"] * state[0] + (1 - h["rho"]) * ge ** 2
        return p - lr * ge / (np.sqrt(s) + h["eps"]), [s]
    if op == "rmsprop_centered_step":
        s = h["rho"] * state[0] + (1 - h["rho"]) * ge ** 2
        mg = h["rho"] * state[1] + (1 - h["rho"]) * ge
        return p - lr * ge / (np.sqrt(s - mg ** 2) + h["eps"]), [s, mg]
    m = h["b1"] * state[0] + (1 - h["b1"]) * ge
    v = h["b2"] * state[1] + (1 - h["b2"]) * ge ** 2
    pd = p * (1 - lr * h["wd"])
    return pd - lr * (m / h["bc1"]) / (np.sqrt(v / h["bc2"]) + h["eps"]), [m, v]


H = dict(lr=0.01, l2=1e-2, l1=1e-3, mu=0.9, dampening=0.1, eps=1e-8, rho=0.9, b1=0.9, b2=0.999,
         bc1=1 - 0.9 ** 3, bc2=1 - 0.999 ** 3, wd=0.1)
CALLS = {
    "sgd_step": (0, lambda p, g, s, h: _C.sgd_step(p, g, h["lr"], h["l2"], h["l1"])),
    "momentum_step": (1, lambda p, g, s, h: _C.momentum_step(p, g, *s, h["lr"], h["mu"], h["dampening"], h["l2"], h["l1"])),
    "nesterov_step": (1, lambda p, g, s, h: _C.nesterov_step(p, g, *s, h["lr"], h["mu"], h["dampening"], h["l2"], h["l1"])),
    "adagrad_step": (1, lambda p, g, s, h: _C.adagrad_step(p, g, *s, h["lr"], h["eps"], h["l2"], h["l1"])),
    "rmsprop_step": (1, lambda p, g, s, h: _C.rmsprop_step(p, g, *s, h["lr"], h["rho"], h["eps"], h["l2"], h["l1"])),
    "rmsprop_centered_step": (2, lambda p, g, s, h: _C.rmsprop_centered_step(
        p, g, *s, h["lr"], h["rho"], h["eps"], h["l2"], h["l1"])),
    "adam_step": (2, lambda p, g, s, h: _C.adam_step(p, g, *s, h["lr"], h["b1"], h["b2"], h["eps"],
                                                     h["bc1"], h["bc2"], h["l2"], h["l1"], h["wd"])),
}


def _optim_inputs(op, n, seed=0):
    rng = np.random.default_rng(seed)
    p, g = f32(rng, n), f32(rng, n)
    p[::7] = 0.0  # sign(0) = 0 for the L1 term
    nstate = CALLS[op][0]
    state = [np.abs(f32(rng, n)) + 0.5 for _ in range(nstate)]
    if op == "rmsprop_centered_step":
        state[1] = (0.1 * f32(rng, n)).astype(np.float32)  # mg^2 well below s
    if op == "adam_step":
        state[0] = (0.1 * f32(rng, n)).astype(np.float32)
    return p, g, state


@pytest.mark.parametrize("op", sorted(CALLS))
@pytest.mark.parametrize("n", [1, 13, 1031])
def test_optimizer_matches_contract_formula(op, n):
    p, g, state = _optim_inputs(op, n)
    exp_p, exp_state = _expected(op, p.astype(np.float64), g.astype(np.float64),
                                 [s.astype(np.float64) for s in state], H)
    CALLS[op][1](p, g, state, H)
    np.testing.assert_allclose(p, exp_p, rtol=2e-6, atol=1e-6)
    for got, exp in zip(state, exp_state):
        np.testing.assert_allclose(got, exp, rtol=2e-6, atol=1e-6)


# ---- thread count does not change results ----

def _run_all(n_threads, threads):
    threads(n_threads)
    rng = np.random.default_rng(1)
    out = {}
    for op in sorted(CALLS):
        p, g, state = _optim_inputs(op, 100_003)
        CALLS[op][1](p, g, state, H)
        out[op] = [p, *state]
    x = f32(rng, 300_001)
    y, m = np.empty_like(x), np.empty(x.size, np.uint8)
    _C.dropout_fwd(x, y, 0.25, 99, 4, 1)
    _C.dropout_mask(m, 0.25, 99, 4, 1)
    out["dropout"] = [y, m]
    for name in ("sigmoid_fwd", "tanh_fwd", "relu_fwd"):
        yy = np.empty_like(x)
        getattr(_C, name)(x, yy)
        out[name] = [yy]
    xp, dy = f32(rng, 5, 7, 333), f32(rng, 5, 7, 333)
    alpha, dx, dalpha = f32(rng, 7), np.empty_like(xp), np.zeros(7, np.float32)
    _C.prelu_bwd(xp, alpha, dy, dx, dalpha)
    out["prelu_bwd"] = [dx, dalpha]
    logits, labels = f32(rng, 257, 11), rng.integers(0, 11, 257)
    dl = np.empty_like(logits)
    out["softmax_xent"] = [np.array(_C.softmax_xent(logits, labels, dl)), dl]
    return out


def test_one_and_two_threads_give_identical_results(threads):
    one, two = _run_all(1, threads), _run_all(2, threads)
    assert _C.num_threads() == 2
    for key in one:
        for a, b in zip(one[key], two[key]):
            np.testing.assert_array_equal(a, b, err_msg=key)


# ---- references for the non-optimizer families (the per-family tests cover all backends) ----

def test_prelu_bwd_accumulates_dalpha():
    rng = np.random.default_rng(3)
    x, dy, alpha = f32(rng, 3, 4, 5, 6), f32(rng, 3, 4, 5, 6), f32(rng, 4)
    dx, dalpha = np.empty_like(x), np.ones(4, np.float32)
    _C.prelu_bwd(x, alpha, dy, dx, dalpha)
    dx_r, dalpha_r = np.empty(x.shape), np.ones(4)
    act_ref.prelu_bwd_ref(x.astype(np.float64), alpha.astype(np.float64), dy.astype(np.float64), dx_r, dalpha_r)
    np.testing.assert_allclose(dx, dx_r, rtol=1e-6)
    np.testing.assert_allclose(dalpha, dalpha_r, rtol=1e-5)


def test_softmax_xent_extreme_logits_stay_finite():
    logits = np.array([[1e4, -1e4, 0.0], [-80.0, 80.0, 80.0]], np.float32)
    labels = np.array([1, 0], np.int64)
    d = np.empty_like(logits)
    loss = _C.softmax_xent(logits, labels, d)
    d_r = np.empty(logits.shape)
    loss_r = loss_ref.softmax_xent_ref(logits.astype(np.float64), labels, d_r)
    assert np.isfinite(loss) and np.isfinite(d).all()
    np.testing.assert_allclose(loss, loss_r, rtol=1e-6)
    np.testing.assert_allclose(d, d_r, atol=1e-7)


# ---- the GIL is released while a kernel runs ----

def test_kernels_release_the_gil(threads):
    threads(1)
    x = np.ones(1 << 24, np.float32)
    y = np.empty_like(x)
    t0 = time.perf_counter()
    _C.dropout_fwd(x, y, 0.5, 1, 2, 3)
    one_call = time.perf_counter() - t0
    calls = max(3, int(0.3 / one_call))

    def work():
        for _ in range(calls):
            _C.dropout_fwd(x, y, 0.5, 1, 2, 3)

    worker = threading.Thread(target=work)
    gaps, last = [], time.perf_counter()
    worker.start()
    while worker.is_alive():   # this loop can only advance while the worker does not hold the GIL
        now = time.perf_counter()
        gaps.append(now - last)
        last = now
    worker.join()
    # With the GIL held for a whole call, some gap would be >= one call; released, the main loop
    # only waits for GIL hand-offs around calls (the 5 ms switch interval at most).
    assert len(gaps) > calls
    assert max(gaps) < max(0.6 * one_call, 0.012), (max(gaps), one_call)
