"""Optimizer kernels against per-element scalar loops of the docs/KERNELS.md formulas (float64),
every backend against the reference (float32), and the optimizer classes over an arena: argument
wiring, convergence, bias correction, decoupled vs coupled decay, groups, checkpoints, errors."""
import io
import math

import numpy as np
import pytest

import fasttrain as ft
from fasttrain import backend
from fasttrain.arena import Parameter, ParamArena
from fasttrain.kernels import optim as ref

SMALL = [1, 7, 17]
BIG = 1000003


def _sign(x):
    return (x > 0) - (x < 0)


def scalar_loop(op, p, g, states, hp):
    """The formulas of docs/KERNELS.md, one element at a time in Python floats (float64)."""
    p, g, states = [float(x) for x in p], [float(x) for x in g], [[float(x) for x in s] for s in states]
    for i in range(len(p)):
        ge = g[i] + hp["l2"] * p[i] + hp["l1"] * _sign(p[i])
        if op == "sgd_step":
            p[i] -= hp["lr"] * ge
        elif op in ("momentum_step", "nesterov_step"):
            v = hp["mu"] * states[0][i] + (1 - hp["dampening"]) * ge
            states[0][i] = v
            p[i] -= hp["lr"] * (v if op == "momentum_step" else ge + hp["mu"] * v)
        elif op == "adagrad_step":
            states[0][i] += ge * ge
            p[i] -= hp["lr"] * ge / (math.sqrt(states[0][i]) + hp["eps"])
        elif op.startswith("rmsprop"):
            states[0][i] = hp["rho"] * states[0][i] + (1 - hp["rho"]) * ge * ge
            ms = states[0][i]
            if "centered" in op:
                states[1][i] = hp["rho"] * states[1][i] + (1 - hp["rho"]) * ge
                ms -= states[1][i] ** 2
            step = ge / (math.sqrt(ms) + hp["eps"])
            if "momentum" in op:
                states[-1][i] = hp["mu"] * states[-1][i] + step
                step = states[-1][i]
            p[i] -= hp["lr"] * step
        elif op in ("adam_step", "adam_amsgrad_step"):
            p[i] *= 1 - hp["lr"] * hp["wd"]  # decoupled decay; ge above used p before it
            states[0][i] = hp["b1"] * states[0][i] + (1 - hp["b1"]) * ge
            states[1][i] = hp["b2"] * states[1][i] + (1 - hp["b2"]) * ge * ge
            v = states[1][i]
            if op == "adam_amsgrad_step":
                states[2][i] = v = max(states[2][i], v)
            p[i] -= hp["lr"] * (states[0][i] / hp["bc1"]) / (math.sqrt(v / hp["bc2"]) + hp["eps"])
        else:
            raise AssertionError(op)
    return np.array(p), [np.array(s) for s in states]


HP = dict(lr=0.05, mu=0.9, dampening=0.25, eps=1e-3, rho=0.9, b1=0.9, b2=0.99, bc1=1 - 0.9 ** 3,
          bc2=1 - 0.99 ** 3)
_RMS = lambda h: (h["lr"], h["rho"], h["eps"], h["l2"], h["l1"])  # noqa: E731
_RMS_MU = lambda h: (h["lr"], h["rho"], h["eps"], h["mu"], h["l2"], h["l1"])  # noqa: E731
_ADAM = lambda h: (h["lr"], h["b1"], h["b2"], h["eps"], h["bc1"], h["bc2"], h["l2"], h["l1"], h["wd"])  # noqa: E731
CASES = {  # op: (number of state buffers, scalar arguments after the arrays, in the KERNELS.md order)
    "sgd_step": (0, lambda h: (h["lr"], h["l2"], h["l1"])),
    "momentum_step": (1, lambda h: (h["lr"], h["mu"], h["dampening"], h["l2"], h["l1"])),
    "nesterov_step": (1, lambda h: (h["lr"], h["mu"], h["dampening"], h["l2"], h["l1"])),
    "adagrad_step": (1, lambda h: (h["lr"], h["eps"], h["l2"], h["l1"])),
    "rmsprop_step": (1, _RMS),
    "rmsprop_centered_step": (2, _RMS),
    "rmsprop_momentum_step": (2, _RMS_MU),
    "rmsprop_centered_momentum_step": (3, _RMS_MU),
    "adam_step": (2, _ADAM),
    "adam_amsgrad_step": (3, _ADAM),
}
PENALTIES = {"plain": dict(l2=0.0, l1=0.0, wd=0.0), "l2": dict(l2=0.01, l1=0.0, wd=0.0),
             "elastic+decoupled": dict(l2=0.01, l1=0.003, wd=0.02)}


def test_cases_cover_every_op():
    assert sorted(CASES) == sorted(ref.OPS)


def _data(op, n, dtype, seed=0):
    rng = np.random.default_rng(seed)
    p, g = rng.standard_normal(n), rng.standard_normal(n)
    p[: n // 3] = 0.0  # sign(0) = 0 in the L1 term
    states = [np.abs(rng.standard_normal(n)) + 0.5 for _ in range(CASES[op][0])]
    if op in ("momentum_step", "nesterov_step", "rmsprop_momentum_step", "rmsprop_centered_momentum_step"):
        states[-1] = rng.standard_normal(n)  # velocity of either sign
    if op.startswith("rmsprop_centered"):
        states[1] = 0.1 * rng.standard_normal(n)  # keep s - mg^2 > 0
    if op.startswith("adam"):
        states[0] = 0.3 * rng.standard_normal(n)
    if op == "adam_amsgrad_step":
        states[2][::2] = 0.5 * states[1][::2]  # the maximum is the new v on some elements, the old on others
    return p.astype(dtype), g.astype(dtype), [s.astype(dtype) for s in states]


@pytest.mark.parametrize("pen", list(PENALTIES))
@pytest.mark.parametrize("n", SMALL)
@pytest.mark.parametrize("op", list(CASES))
def test_reference_matches_scalar_formula(op, n, pen):
    p, g, states = _data(op, n, np.float64, seed=n)
    hp = {**HP, **PENALTIES[pen]}
    want_p, want_states = scalar_loop(op, p, g, states, hp)
    g0 = g.copy()
    getattr(ref, f"{op}_ref")(p, g, *states, *CASES[op][1](hp))
    np.testing.assert_allclose(p, want_p, rtol=1e-12, atol=1e-14)
    for s, w in zip(states, want_states):
        np.testing.assert_allclose(s, w, rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(g, g0)  # the gradient is read only


@pytest.mark.parametrize("op", list(CASES))
def test_reference_float32_stays_float32_and_in_place(op):
    p, g, states = _data(op, 17, np.float32, seed=3)
    p64, g64, s64 = p.astype(np.float64), g.astype(np.float64), [s.astype(np.float64) for s in states]
    ids = [id(p)] + [id(s) for s in states]
    hp = {**HP, **PENALTIES["elastic+decoupled"]}
    getattr(ref, f"{op}_ref")(p, g, *states, *CASES[op][1](hp))
    getattr(ref, f"{op}_ref")(p64, g64, *s64, *CASES[op][1](hp))
    assert [id(p)] + [id(s) for s in states] == ids
    assert p.dtype == np.float32 and all(s.dtype == np.float32 for s in states)
    np.testing.assert_allclose(p, p64, rtol=1e-5, atol=1e-6)


# every penalty on the small sizes; the big size (many SIMD blocks, threads, an odd tail) with all
# terms on, to keep the run short
SIZES_PENALTIES = [(n, pen) for n in SMALL for pen in PENALTIES] + [(BIG, "elastic+decoupled")]


@pytest.mark.parametrize("n,pen", SIZES_PENALTIES)
@pytest.mark.parametrize("name", backend.CPU_ORDER)
@pytest.mark.parametrize("op", list(CASES))
def test_every_backend_matches_reference(op, name, n, pen):
    if name not in backend.available_backends_for(op):
        pytest.skip(f"backend {name!r} lacks {op}: {backend.backends().get(name)}")
    hp = {**HP, **PENALTIES[pen]}
    p, g, states = _data(op, n, np.float32, seed=n)
    # the reference runs in float64 on the same float32 inputs (DESIGN.md convention 4): each float32
    # backend is then within about one rounding of the exact result
    rp, rg, rstates = p.astype(np.float64), g.astype(np.float64), [s.astype(np.float64) for s in states]
    scale = np.maximum.reduce([np.ones(n), np.abs(p), np.abs(g)] + [np.abs(s) for s in states])
    getattr(ref, f"{op}_ref")(rp, rg, *rstates, *CASES[op][1](hp))
    backend.kernel(op, backend=name)(p, g, *states, *CASES[op][1](hp))
    # rtol 1e-6 plus an absolute term per element of 4 float32 unit roundoffs (2^-24 each, 2.4e-7
    # in all) times the largest input magnitude of that element: where v = mu v + g + l2 p
    # cancels, each of its three roundings costs up to u |term|, however small the result (measured:
    # at most 2.0 u for the float32 NumPy reference itself, 1.9 u numba, 1.5 u C++ with its FMA).
    scale = np.maximum(scale, np.abs(rp))
    _assert_close(p, rp, scale, f"{name} {op} n={n} p")
    for k, (s, w) in enumerate(zip(states, rstates)):
        _assert_close(s, w, scale, f"{name} {op} n={n} state {k}")


def _assert_close(actual, desired, scale, what, rtol=1e-6, atol=4 * 2.0 ** -24):
    err = np.abs(actual.astype(np.float64) - desired)
    bound = rtol * np.abs(desired.astype(np.float64)) + atol * scale
    worst = int(np.argmax(err - bound))
    assert np.all(err <= bound), (f"{what}: {int(np.sum(err > bound))} elements off; worst at {worst}: "
                                  f"got {actual[worst]!r}, expected {desired[worst]!r}, input scale {scale[worst]:.3g}")


# ---- optimizer classes ---------------------------------------------------------------------------

def _normal(shape, rng, dtype):
    return rng.standard_normal(shape)


def _arena(seed=0, dtype=np.float32):
    return ParamArena([Parameter((5, 3), _normal, decay=True, name="w"),
                       Parameter((3,), _normal, decay=False, name="b")], seed=seed, dtype=dtype)


O = ft.optim
ALL = [O.SGD, O.Momentum, O.Nesterov, O.AdaGrad, O.RMSProp, O.Adam, O.AdamW]
# non-default hyperparameters for each class, and how they map onto the kernel's scalars
CLASS_CASES = {
    "SGD": (O.SGD, {}, dict(lr=0.1, weight_decay=0.03, l1=0.01), "sgd_step"),
    "SGDMomentum": (O.SGD, {}, dict(lr=0.1, momentum=0.7, dampening=0.2, weight_decay=0.03, l1=0.01),
                    "momentum_step"),
    "SGDNesterov": (O.SGD, dict(nesterov=True), dict(lr=0.1, momentum=0.7, weight_decay=0.03, l1=0.01),
                    "nesterov_step"),
    "Momentum": (O.Momentum, {}, dict(lr=0.1, mu=0.7, weight_decay=0.03, l1=0.01), "momentum_step"),
    "Nesterov": (O.Nesterov, {}, dict(lr=0.1, mu=0.7, weight_decay=0.03, l1=0.01), "nesterov_step"),
    "AdaGrad": (O.AdaGrad, {}, dict(lr=0.1, eps=1e-3, weight_decay=0.03, l1=0.01), "adagrad_step"),
    "AdaGradDecay": (O.AdaGrad, dict(initial_accumulator_value=0.3),
                     dict(lr=0.1, eps=1e-3, lr_decay=0.2, weight_decay=0.03, l1=0.01), "adagrad_step"),
    "RMSProp": (O.RMSProp, {}, dict(lr=0.1, rho=0.8, eps=1e-3, weight_decay=0.03, l1=0.01), "rmsprop_step"),
    "RMSPropCentered": (O.RMSProp, dict(centered=True), dict(lr=0.1, rho=0.8, eps=1e-3, weight_decay=0.03, l1=0.01),
                        "rmsprop_centered_step"),
    "RMSPropMomentum": (O.RMSProp, {}, dict(lr=0.1, alpha=0.8, eps=1e-3, momentum=0.6, weight_decay=0.03, l1=0.01),
                        "rmsprop_momentum_step"),
    "RMSPropCenteredMomentum": (O.RMSProp, dict(centered=True),
                                dict(lr=0.1, rho=0.8, eps=1e-3, momentum=0.6, weight_decay=0.03, l1=0.01),
                                "rmsprop_centered_momentum_step"),
    "Adam": (O.Adam, {}, dict(lr=0.1, beta1=0.8, beta2=0.95, eps=1e-3, weight_decay=0.03, l1=0.01), "adam_step"),
    "AdamAmsgrad": (O.Adam, dict(amsgrad=True), dict(lr=0.1, betas=(0.8, 0.95), eps=1e-3, weight_decay=0.03, l1=0.01),
                    "adam_amsgrad_step"),
    "AdamW": (O.AdamW, {}, dict(lr=0.1, beta1=0.8, beta2=0.95, eps=1e-3, weight_decay=0.03, l1=0.01), "adam_step"),
    "AdamWAmsgrad": (O.AdamW, dict(amsgrad=True), dict(lr=0.1, betas=(0.8, 0.95), eps=1e-3, weight_decay=0.03,
                                                       l1=0.01), "adam_amsgrad_step"),
}


def _kernel_hp(case, kw, t, decayed):
    """The kernel scalars a group should get at step t (the no_decay group: no L2, L1 or decay)."""
    wd, l1 = (kw["weight_decay"], kw["l1"]) if decayed else (0.0, 0.0)
    adamw = case.startswith("AdamW")
    b1, b2 = kw.get("betas", (kw.get("beta1"), kw.get("beta2")))
    hp = dict(lr=kw["lr"], mu=kw.get("mu", kw.get("momentum")), eps=kw.get("eps"), rho=kw.get("rho", kw.get("alpha")),
              l1=l1, b1=b1, b2=b2, l2=0.0 if adamw else wd, wd=wd if adamw else 0.0,
              dampening=0.0 if t == 1 else kw.get("dampening", 0.0))  # torch's undampened first step
    if hp["b1"] is not None:
        hp["bc1"], hp["bc2"] = 1 - hp["b1"] ** t, 1 - hp["b2"] ** t
    if "lr_decay" in kw:
        hp["lr"] /= 1 + (t - 1) * kw["lr_decay"]
    return hp


@pytest.mark.parametrize("case", list(CLASS_CASES))
def test_class_passes_each_group_its_hyperparameters(case):
    """Three steps of the class (float64) equal the scalar formula applied per group with the
    intended hyperparameters: catches scalar arguments in the wrong order or a wrong group."""
    cls, extra, kw, op = CLASS_CASES[case]
    arena = _arena(dtype=np.float64)
    opt = cls(arena, **extra, **kw)
    assert opt.op == op
    init = extra.get("initial_accumulator_value", 0.0)
    p, states = arena.data.copy(), [np.full(arena.size, init) for _ in range(CASES[op][0])]
    rng = np.random.default_rng(5)
    for t in (1, 2, 3):
        arena.grad[:] = rng.standard_normal(arena.size)
        opt.step()
        for group in arena.groups:
            s = slice(group.start, group.stop)
            hp = _kernel_hp(case, kw, t, decayed=group.name == "decay")
            p[s], new = scalar_loop(op, p[s], arena.grad[s], [st[s] for st in states], hp)
            for st, v in zip(states, new):
                st[s] = v
        np.testing.assert_allclose(arena.data, p, rtol=1e-12, atol=1e-14, err_msg=f"{case} step {t}")
    for st, name in zip(states, opt.state_names):
        np.testing.assert_allclose(opt.state[name], st, rtol=1e-12, atol=1e-14)


def test_one_kernel_call_per_group(monkeypatch):
    import fasttrain.optim.base as base

    arena = _arena()
    calls = []
    real = base.kernel

    def spy(op, like=None, **kw):
        fn = real(op, like=like, **kw)

        def wrapped(p, g, *rest):
            calls.append((op, p.size, np.shares_memory(p, arena.data), np.shares_memory(g, arena.grad)))
            return fn(p, g, *rest)
        return wrapped

    monkeypatch.setattr(base, "kernel", spy)
    opt = O.Adam(arena, lr=0.01)
    opt.step()
    assert calls == [("adam_step", 15, True, True), ("adam_step", 3, True, True)]
    calls.clear()
    opt.set_hyper("decay", frozen=True)
    opt.step()
    assert calls == [("adam_step", 3, True, True)]


# adaptive methods take steps of about lr whatever the curvature, so they get their own lr
BOWL_LR = {O.SGD: 0.3, O.Momentum: 0.1, O.Nesterov: 0.1, O.AdaGrad: 0.5, O.RMSProp: 0.01, O.Adam: 0.05,
           O.AdamW: 0.05}


@pytest.mark.parametrize("cls", ALL)
def test_converges_on_a_quadratic_bowl(cls):
    """f(p) = 1/2 sum a_i (p_i - c_i)^2 with curvatures a in [0.5, 2]: every optimizer gets within
    a few percent of the initial distance to the minimum c, on the default (fast) backend."""
    arena = _arena()
    rng = np.random.default_rng(1)
    a = rng.uniform(0.5, 2.0, arena.size).astype(np.float32)
    c = rng.standard_normal(arena.size).astype(np.float32)
    d0 = np.linalg.norm(arena.data - c)
    kw = {"weight_decay": 0.0} if cls is O.AdamW else {}
    opt = cls(arena, lr=BOWL_LR[cls], **kw)
    for _ in range(600):
        arena.grad[:] = a * (arena.data - c)
        opt.step()
    assert np.linalg.norm(arena.data - c) < 0.02 * d0, (cls.__name__, np.linalg.norm(arena.data - c) / d0)


def test_adam_first_step_is_lr_times_sign_of_gradient():
    """After bias correction m/bc1 = g and v/bc2 = g^2, so the first step is lr * g/|g|."""
    arena = _arena(dtype=np.float64)
    before = arena.data.copy()
    arena.grad[:] = np.random.default_rng(1).standard_normal(arena.size) * np.logspace(-3, 3, arena.size)
    O.Adam(arena, lr=0.01, eps=1e-12).step()
    np.testing.assert_allclose(before - arena.data, 0.01 * np.sign(arena.grad), rtol=1e-8)


def test_adamw_decay_is_decoupled_and_adam_decay_is_coupled():
    a, b = _arena(dtype=np.float64), _arena(dtype=np.float64)
    w0 = a.data.copy()
    s = a.groups[0].stop  # decayed weights [0, s), biases [s, end)
    a.grad[:] = 0
    b.grad[:] = 0
    O.AdamW(a, lr=0.1, weight_decay=0.5).step()
    O.Adam(b, lr=0.1, weight_decay=0.5).step()
    # AdamW with zero gradient: exactly p *= 1 - lr*wd on decayed weights; biases untouched
    np.testing.assert_allclose(a.data[:s], w0[:s] * (1 - 0.05), rtol=1e-14)
    np.testing.assert_array_equal(a.data[s:], w0[s:])
    # coupled L2 goes through the adaptive normalisation: a step of lr*sign(p), not a shrink
    # (eps = 1e-8 against |g'| = 0.5 |p| shifts the step by ~1e-8)
    np.testing.assert_allclose(b.data[:s], w0[:s] - 0.1 * np.sign(w0[:s]), rtol=1e-12, atol=1e-7)
    np.testing.assert_array_equal(b.data[s:], w0[s:])
    # with a gradient, AdamW(wd) differs from AdamW(0) by exactly the decay term lr*wd*p
    c, d = _arena(dtype=np.float64), _arena(dtype=np.float64)
    g = np.random.default_rng(4).standard_normal(c.size)
    c.grad[:] = g
    d.grad[:] = g
    O.AdamW(c, lr=0.1, weight_decay=0.5).step()
    O.AdamW(d, lr=0.1, weight_decay=0.0).step()
    np.testing.assert_allclose(d.data[:s] - c.data[:s], 0.05 * w0[:s], rtol=1e-10, atol=1e-15)
    np.testing.assert_array_equal(c.data[s:], d.data[s:])


@pytest.mark.parametrize("case", list(CLASS_CASES))
def test_no_decay_group_gets_no_penalty(case):
    """Zero gradient and strong L2 + L1: the decayed weights move towards 0, the no_decay group
    and its optimizer state stay exactly as they were."""
    cls, extra, kw, _ = CLASS_CASES[case]
    arena = _arena()
    w0 = arena.data.copy()
    arena.grad[:] = 0
    opt = cls(arena, **extra, **{**kw, "weight_decay": 0.5, "l1": 0.2})
    opt.step()
    s = arena.groups[0].stop
    assert np.all((arena.data[:s] - w0[:s]) * np.sign(w0[:s]) < 0), case
    opt.step()
    np.testing.assert_array_equal(arena.data[s:], w0[s:])
    for name, buf in opt.state.items():
        assert np.all(buf[s:] == extra.get("initial_accumulator_value", 0.0)), (case, name)


def test_l1_shrinks_by_lr_times_l1_sign():
    arena = _arena(dtype=np.float64)
    arena.grad[:] = 0
    w0 = arena.data.copy()
    O.SGD(arena, lr=0.1, l1=0.5).step()
    s = arena.groups[0].stop
    np.testing.assert_allclose(arena.data[:s], w0[:s] - 0.05 * np.sign(w0[:s]), rtol=1e-14)
    np.testing.assert_array_equal(arena.data[s:], w0[s:])


def _npz_round_trip(sd):
    """Flatten to 'a/b' keys, save as .npz and back, as a checkpoint does (empty dicts vanish)."""
    flat = {}

    def walk(prefix, v):
        if isinstance(v, dict):
            for k, x in v.items():
                walk(f"{prefix}/{k}" if prefix else k, x)
        else:
            flat[prefix] = np.asarray(v)
    walk("", sd)
    buf = io.BytesIO()
    np.savez(buf, **flat)
    buf.seek(0)
    out = {}
    with np.load(buf, allow_pickle=False) as f:
        for key in f.files:
            node = out
            *parents, leaf = key.split("/")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = f[key].item() if f[key].ndim == 0 else f[key]
    return out


@pytest.mark.parametrize("via_npz", [False, True], ids=["dict", "npz"])
@pytest.mark.parametrize("case", list(CLASS_CASES))
def test_state_dict_round_trip_gives_identical_next_steps(case, via_npz):
    cls, extra, kw, _ = CLASS_CASES[case]
    a = _arena()
    opt = cls(a, **extra, **kw)
    opt.set_lr(0.02, group="no_decay")
    rng = np.random.default_rng(2)
    for _ in range(3):
        a.grad[:] = rng.standard_normal(a.size)
        opt.step()
    b = _arena(seed=9)
    b.load_state_dict(a.state_dict())
    # different lr (and momentum) and no group override: all must come from the state
    opt_b = cls(b, **extra, lr=0.5, **({"momentum": 0.5} if "momentum" in kw else {}))
    sd = opt.state_dict()
    opt_b.load_state_dict(_npz_round_trip(sd) if via_npz else sd)
    assert opt_b.step_count == 3 and opt_b.lr == kw["lr"] and opt_b.group_hyper == opt.group_hyper
    for _ in range(2):
        g = rng.standard_normal(a.size)
        a.grad[:] = g
        b.grad[:] = g
        opt.step()
        opt_b.step()
        np.testing.assert_array_equal(a.data, b.data)
    # the state dict holds copies, not views of live buffers
    for k, v in sd["state"].items():
        assert isinstance(v, np.ndarray) and not np.shares_memory(v, opt.state[k])


def test_load_state_dict_rejects_mismatches():
    a = _arena()
    adam = O.Adam(a, lr=0.1)
    with pytest.raises(ValueError, match="Adam"):
        adam.load_state_dict(O.SGD(a, lr=0.1).state_dict())
    with pytest.raises(ValueError, match="centered"):
        O.RMSProp(a, lr=0.1).load_state_dict(O.RMSProp(a, lr=0.1, centered=True).state_dict())
    with pytest.raises(ValueError, match="amsgrad"):
        adam.load_state_dict(O.Adam(a, lr=0.1, amsgrad=True).state_dict())
    with pytest.raises(KeyError, match="momentum_buffer"):
        O.RMSProp(a, lr=0.1).load_state_dict(O.RMSProp(a, lr=0.1, momentum=0.9).state_dict())
    small = ParamArena([Parameter((2,), _normal, name="w")])
    with pytest.raises(ValueError, match=r"expected shape \(2,\)"):
        O.Adam(small, lr=0.1).load_state_dict(adam.state_dict())


def test_frozen_groups_and_lr_changes():
    arena = _arena(dtype=np.float64)
    arena.groups[0].hyper["frozen"] = True  # an arena group's hyper is copied at construction
    w0 = arena.data.copy()
    arena.grad[:] = 1
    opt = O.SGD(arena, lr=0.1)
    opt.step()
    s = arena.groups[0].stop
    np.testing.assert_array_equal(arena.data[:s], w0[:s])
    np.testing.assert_allclose(arena.data[s:], w0[s:] - 0.1, rtol=1e-14)
    opt.lr = 0.0  # lr = 0 skips too
    opt.step()
    np.testing.assert_allclose(arena.data[s:], w0[s:] - 0.1, rtol=1e-14)
    opt.set_hyper("decay", frozen=False)
    opt.set_lr(0.2)
    opt.set_lr(0.3, group="no_decay")
    opt.step()
    np.testing.assert_allclose(arena.data[:s], w0[:s] - 0.2, rtol=1e-14)
    np.testing.assert_allclose(arena.data[s:], w0[s:] - 0.4, rtol=1e-14)
    assert opt.lr == 0.2
    with pytest.raises(KeyError, match="nope"):
        opt.set_lr(0.1, group="nope")


def test_frozen_group_state_is_untouched():
    arena = _arena()
    opt = O.Momentum(arena, lr=0.1)
    opt.set_hyper("no_decay", frozen=True)
    arena.grad[:] = 1
    opt.step()
    s = arena.groups[0].stop
    assert np.all(opt.state["velocity"][:s] == 1) and np.all(opt.state["velocity"][s:] == 0)


@pytest.mark.parametrize("cls,kw,match", [
    (O.Adam, dict(lr=-1), "lr"), (O.Adam, dict(lr=float("nan")), "lr"), (O.Adam, dict(lr=0.1, beta1=1.0), "beta1"),
    (O.Adam, dict(lr=0.1, beta2=-0.1), "beta2"), (O.Adam, dict(lr=0.1, eps=0.0), "eps"),
    (O.SGD, dict(lr=0.1, weight_decay=-1e-4), "weight_decay"), (O.SGD, dict(lr=0.1, l1=float("inf")), "l1"),
    (O.Momentum, dict(lr=0.1, mu=1.0), "mu"), (O.RMSProp, dict(lr=0.1, rho=1.5), "rho"),
    (O.AdaGrad, dict(lr=0.1, eps=-1.0), "eps"), (O.SGD, dict(lr="0.1"), "lr")])
def test_bad_hyperparameters_name_the_argument(cls, kw, match):
    with pytest.raises(ValueError, match=rf"{cls.__name__}\({match}\): expected .* got"):
        cls(_arena(), **kw)


def test_unknown_hyperparameters_and_bad_lr_updates_raise():
    with pytest.raises(TypeError, match="betas"):
        O.SGD(_arena(), lr=0.1, betas=(0.9, 0.99))  # a wrong name must not be ignored
    arena = _arena()
    arena.groups[1].hyper["beta1"] = 0.5
    with pytest.raises(TypeError, match="no_decay"):
        O.SGD(arena, lr=0.1)
    opt = O.Adam(_arena(), lr=0.1)
    with pytest.raises(ValueError, match="lr"):
        opt.lr = -0.1
    with pytest.raises(ValueError, match="beta1"):
        opt.set_hyper("decay", beta1=2.0)
    assert opt.lr == 0.1


def test_clip_grad_norm():
    arena = _arena()
    rng = np.random.default_rng(0)
    g = rng.standard_normal(arena.size).astype(np.float32) * 3
    arena.grad[:] = g
    want = np.linalg.norm(g.astype(np.float64))
    norm = O.clip_grad_norm(arena, 1.0)
    assert norm == pytest.approx(want, rel=1e-6)
    assert np.linalg.norm(arena.grad.astype(np.float64)) == pytest.approx(1.0, rel=1e-6)
    np.testing.assert_allclose(arena.grad, g / want, rtol=1e-6)  # direction kept
    assert arena.grad.dtype == np.float32
    before = arena.grad.copy()
    assert O.clip_grad_norm(arena, 10.0) == pytest.approx(1.0, rel=1e-6)
    np.testing.assert_array_equal(arena.grad, before)  # below the limit: untouched
    with pytest.raises(ValueError, match="max_norm"):
        O.clip_grad_norm(arena, 0.0)
    arena.grad[3] = np.nan
    with pytest.raises(FloatingPointError, match="nan"):
        O.clip_grad_norm(arena, 1.0)


def test_repr_shows_hyperparameters():
    r = repr(O.AdamW(_arena(), lr=3e-4))
    assert r.startswith("AdamW(") and "lr=0.0003" in r and "weight_decay=0.01" in r and "beta2=0.999" in r


TORCH_PAIRS = [  # ours, our kwargs, torch class name, torch kwargs (PyTorch's names where we accept them)
    ("SGD", dict(lr=0.1, weight_decay=0.1), "SGD", dict(lr=0.1, weight_decay=0.1)),
    ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=0.01), "SGD",
     dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=0.01)),
    ("SGD", dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.01), "SGD",
     dict(lr=0.05, momentum=0.8, nesterov=True, weight_decay=0.01)),
    ("Momentum", dict(lr=0.05, mu=0.9, weight_decay=0.1), "SGD", dict(lr=0.05, momentum=0.9, weight_decay=0.1)),
    ("Nesterov", dict(lr=0.05, mu=0.9), "SGD", dict(lr=0.05, momentum=0.9, nesterov=True)),
    ("AdaGrad", dict(lr=0.1, eps=1e-10), "Adagrad", dict(lr=0.1)),
    ("AdaGrad", dict(lr=0.1, eps=1e-10, lr_decay=0.05, initial_accumulator_value=0.2, weight_decay=0.01), "Adagrad",
     dict(lr=0.1, lr_decay=0.05, initial_accumulator_value=0.2, weight_decay=0.01)),
    ("RMSProp", dict(lr=0.01), "RMSprop", dict(lr=0.01)),
    ("RMSProp", dict(lr=0.01, rho=0.9, centered=True), "RMSprop", dict(lr=0.01, alpha=0.9, centered=True)),
    ("RMSProp", dict(lr=0.01, alpha=0.9, momentum=0.7, weight_decay=0.01), "RMSprop",
     dict(lr=0.01, alpha=0.9, momentum=0.7, weight_decay=0.01)),
    ("RMSProp", dict(lr=0.01, alpha=0.95, momentum=0.5, centered=True), "RMSprop",
     dict(lr=0.01, alpha=0.95, momentum=0.5, centered=True)),
    ("Adam", dict(lr=0.01, weight_decay=0.1), "Adam", dict(lr=0.01, weight_decay=0.1)),
    ("Adam", dict(lr=0.01, betas=(0.8, 0.99), amsgrad=True, weight_decay=0.01), "Adam",
     dict(lr=0.01, betas=(0.8, 0.99), amsgrad=True, weight_decay=0.01)),
    ("AdamW", dict(lr=0.01, weight_decay=0.1), "AdamW", dict(lr=0.01, weight_decay=0.1)),
    ("AdamW", dict(lr=0.01, betas=(0.85, 0.995), amsgrad=True), "AdamW", dict(lr=0.01, betas=(0.85, 0.995),
                                                                            amsgrad=True)),
]
TORCH_STEPS = 25


def _odd_arena(dtype):
    """Odd sizes (no SIMD width divides them) in both groups."""
    return ParamArena([Parameter((7, 13), _normal, name="w1"), Parameter((11,), _normal, decay=False, name="b1"),
                       Parameter((3, 5, 3), _normal, name="w2"), Parameter((5,), _normal, decay=False, name="b2")],
                      seed=4, dtype=dtype)


def _torch_run(torch, ours, kw, theirs, tkw, dtype, name):
    """TORCH_STEPS steps of ours (decay_all: torch decays every parameter) on backend `name` and of
    torch.optim on the same gradients; returns both parameter sets, ours in arena order."""
    arena = _odd_arena(dtype)
    tparams = [torch.nn.Parameter(torch.from_numpy(p.data.copy())) for p in arena.params]
    opt = getattr(O, ours)(arena, decay_all=True, **kw)
    topt = getattr(torch.optim, theirs)(tparams, **tkw)
    rng = np.random.default_rng(3)
    before = ft.get_backend()
    ft.set_backend(name)
    try:
        for _ in range(TORCH_STEPS):
            arena.grad[:] = rng.standard_normal(arena.size)
            for p, tp in zip(arena.params, tparams):
                tp.grad = torch.from_numpy(p.grad.copy())
            opt.step()
            topt.step()
    finally:
        ft.set_backend(before)
    return arena.data, np.concatenate([tp.detach().numpy().ravel() for tp in tparams])


_PAIR_IDS = [f"{p[0]}-{'-'.join(k for k in p[1] if k != 'lr')}" for p in TORCH_PAIRS]


@pytest.mark.parametrize("ours,kw,theirs,tkw", TORCH_PAIRS, ids=_PAIR_IDS)
def test_matches_torch_float64(ours, kw, theirs, tkw):
    """The reference in float64 against torch.optim in float64: the same update to rounding."""
    torch = pytest.importorskip("torch")
    got, want = _torch_run(torch, ours, kw, theirs, tkw, np.float64, "numpy")
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12, err_msg=ours)


@pytest.mark.parametrize("name", backend.CPU_ORDER)
@pytest.mark.parametrize("ours,kw,theirs,tkw", TORCH_PAIRS, ids=_PAIR_IDS)
def test_every_backend_matches_torch_float32(ours, kw, theirs, tkw, name):
    """Each float32 backend against torch.optim in float32 over the same steps: float32 roundings
    in a different order accumulate, so the bound is a few hundred float32 ulps of the values."""
    torch = pytest.importorskip("torch")
    cls = getattr(O, ours)
    op = cls(_odd_arena(np.float32), lr=0.1, **{k: v for k, v in kw.items() if k != "lr"}).op
    if name not in backend.available_backends_for(op):
        pytest.skip(f"backend {name!r} lacks {op}: {backend.backends().get(name)}")
    got, want = _torch_run(torch, ours, kw, theirs, tkw, np.float32, name)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6, err_msg=f"{ours} on {name}")


# ---- PyTorch's names beside ours ------------------------------------------------------------------

def test_torch_names_map_onto_ours():
    a = _arena()
    assert O.RMSProp(a, lr=0.1, alpha=0.8).defaults["rho"] == 0.8
    assert O.RMSProp(a, lr=0.1).defaults["rho"] == 0.99  # both default to 0.99
    adam = O.Adam(a, betas=(0.7, 0.98))
    assert (adam.defaults["beta1"], adam.defaults["beta2"]) == (0.7, 0.98)
    assert O.SGD(a, lr=0.1).op == "sgd_step" and O.SGD(a, lr=0.1).state_names == ()  # torch's momentum=0
    assert O.SGD(a, lr=0.1, momentum=0.9).state_names == ("velocity",)
    assert O.SGD(a, lr=0.1, momentum=0.9, nesterov=True).op == "nesterov_step"
    np.testing.assert_array_equal(O.AdaGrad(a, lr=0.1, initial_accumulator_value=0.5).state["sum_sq"], 0.5)
    leaky = ft.nn.LeakyReLU(negative_slope=0.2)
    assert leaky.alpha == 0.2 and ft.nn.LeakyReLU().alpha == 0.01


@pytest.mark.parametrize("make,err,match", [
    (lambda a: O.RMSProp(a, lr=0.1, rho=0.9, alpha=0.9), TypeError, r"RMSProp: got both rho=0.9 and alpha=0.9"),
    (lambda a: O.Adam(a, beta1=0.9, betas=(0.9, 0.99)), TypeError, r"Adam: got both betas"),
    (lambda a: O.Adam(a, betas=0.9), ValueError, r"Adam\(betas\): expected a pair \(beta1, beta2\), got 0.9"),
    (lambda a: O.Adam(a, betas=(0.9, 1.0)), ValueError, r"Adam\(beta2\): expected"),
    (lambda a: O.SGD(a, lr=0.1, nesterov=True), ValueError, r"SGD\(nesterov=True\): expected momentum > 0"),
    (lambda a: O.SGD(a, lr=0.1, momentum=0.9, dampening=0.1, nesterov=True), ValueError, r"dampening = 0"),
    (lambda a: O.SGD(a, lr=0.1, momentum=-0.1), ValueError, r"SGD\(momentum\): expected"),
    (lambda a: O.SGD(a, lr=0.1, momentum=0.9, dampening=1.5), ValueError, r"SGD\(dampening\): expected"),
    (lambda a: O.SGD(a, lr=0.1).set_hyper("decay", momentum=0.9), ValueError,
     r"SGD\[group 'decay'\]\(momentum\): expected 0 for an optimizer built without momentum"),
    (lambda a: O.RMSProp(a, lr=0.1).set_hyper("decay", momentum=0.9), ValueError, r"no velocity buffer"),
    (lambda a: O.AdaGrad(a, lr=0.1, lr_decay=-1), ValueError, r"AdaGrad\(lr_decay\): expected"),
    (lambda a: O.AdaGrad(a, lr=0.1, initial_accumulator_value=-1), ValueError,
     r"AdaGrad\(initial_accumulator_value\): expected"),
    (lambda a: ft.nn.LeakyReLU(0.1, negative_slope=0.1), TypeError,
     r"LeakyReLU: got both alpha=0.1 and negative_slope"),
])
def test_torch_name_errors(make, err, match):
    with pytest.raises(err, match=match):
        make(_arena())


def test_a_group_may_turn_momentum_off():
    """Built with momentum, a group at momentum 0 takes plain (dampened) SGD steps."""
    arena = _arena(dtype=np.float64)
    opt = O.SGD(arena, lr=0.1, momentum=0.9)
    opt.set_hyper("no_decay", momentum=0.0)
    s = arena.groups[0].stop
    w0 = arena.data.copy()
    for _ in range(2):
        arena.grad[:] = 1.0
        opt.step()
    np.testing.assert_allclose(arena.data[s:], w0[s:] - 0.2, rtol=1e-14)
    np.testing.assert_allclose(arena.data[:s], w0[:s] - 0.1 - 0.19, rtol=1e-14)


@pytest.mark.parametrize("where", ["constructor", "group"])
def test_decay_all_decays_biases_and_norm_parameters(where):
    """decay_all=True is PyTorch's behaviour: the no_decay group gets the optimizer's weight_decay
    and l1; without it the group is exempt. Per group, only that group changes."""
    arena, plain = _arena(dtype=np.float64), _arena(dtype=np.float64)
    if where == "constructor":
        opt = O.SGD(arena, lr=0.1, weight_decay=0.5, l1=0.1, decay_all=True)
    else:
        opt = O.SGD(arena, lr=0.1, weight_decay=0.5, l1=0.1)
        opt.set_hyper("no_decay", decay_all=True)
    ref_opt = O.SGD(plain, lr=0.1, weight_decay=0.5, l1=0.1)
    w0 = arena.data.copy()
    arena.grad[:] = 0
    plain.grad[:] = 0
    opt.step()
    ref_opt.step()
    want = w0 - 0.1 * (0.5 * w0 + 0.1 * np.sign(w0))
    np.testing.assert_allclose(arena.data, want, rtol=1e-14)
    s = arena.groups[0].stop
    np.testing.assert_array_equal(plain.data[s:], w0[s:])  # the default exempts them
    np.testing.assert_allclose(plain.data[:s], want[:s], rtol=1e-14)
    # a group's own weight_decay still wins over the switch
    opt.set_hyper("no_decay", weight_decay=0.25)
    assert opt.hyper(arena.groups[1])["weight_decay"] == 0.25
    sd = _npz_round_trip(opt.state_dict())
    again = O.SGD(_arena(dtype=np.float64), lr=0.1)
    again.load_state_dict(sd)
    assert again.hyper(arena.groups[1]) == opt.hyper(arena.groups[1])
