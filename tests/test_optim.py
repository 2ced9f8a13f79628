"""Optimizer kernels against per-element scalar loops of the docs/KERNELS.md formulas (float64),
every backend against the reference (float32), and the optimizer classes over an arena."""
import math

import numpy as np
import pytest

import fasttrain as ft
from fasttrain import backend
from fasttrain.arena import Parameter, ParamArena
from fasttrain.kernels import optim as ref

SIZES = [1, 7, 17, 1000]


def _sign(x):
    return (x > 0) - (x < 0)


def scalar_loop(op, p, g, states, hp):
    """The formulas of docs/KERNELS.md, one element at a time in Python floats."""
    p, g, states = p.tolist(), g.tolist(), [s.tolist() for s in states]
    for i in range(len(p)):
        ge = g[i] + hp["l2"] * p[i] + hp["l1"] * _sign(p[i])
        if op == "sgd_step":
            p[i] -= hp["lr"] * ge
        elif op in ("momentum_step", "nesterov_step"):
            v = hp["mu"] * states[0][i] + ge
            states[0][i] = v
            p[i] -= hp["lr"] * (v if op == "momentum_step" else ge + hp["mu"] * v)
        elif op == "adagrad_step":
            states[0][i] += ge * ge
            p[i] -= hp["lr"] * ge / (math.sqrt(states[0][i]) + hp["eps"])
        elif op == "rmsprop_step":
            states[0][i] = hp["rho"] * states[0][i] + (1 - hp["rho"]) * ge * ge
            p[i] -= hp["lr"] * ge / (math.sqrt(states[0][i]) + hp["eps"])
        elif op == "rmsprop_centered_step":
            states[0][i] = hp["rho"] * states[0][i] + (1 - hp["rho"]) * ge * ge
            states[1][i] = hp["rho"] * states[1][i] + (1 - hp["rho"]) * ge
            p[i] -= hp["lr"] * ge / (math.sqrt(states[0][i] - states[1][i] ** 2) + hp["eps"])
        elif op == "adam_step":
            p[i] *= 1 - hp["lr"] * hp["wd"]
            states[0][i] = hp["b1"] * states[0][i] + (1 - hp["b1"]) * ge
            states[1][i] = hp["b2"] * states[1][i] + (1 - hp["b2"]) * ge * ge
            p[i] -= hp["lr"] * (states[0][i] / hp["bc1"]) / (math.sqrt(states[1][i] / hp["bc2"]) + hp["eps"])
    return np.array(p), [np.array(s) for s in states]


HP = dict(lr=0.05, mu=0.9, eps=1e-3, rho=0.9, b1=0.9, b2=0.99, bc1=1 - 0.9 ** 3, bc2=1 - 0.99 ** 3)
CASES = {  # op: (number of states, args after the arrays)
    "sgd_step": (0, lambda h: (h["lr"], h["l2"], h["l1"])),
    "momentum_step": (1, lambda h: (h["lr"], h["mu"], h["l2"], h["l1"])),
    "nesterov_step": (1, lambda h: (h["lr"], h["mu"], h["l2"], h["l1"])),
    "adagrad_step": (1, lambda h: (h["lr"], h["eps"], h["l2"], h["l1"])),
    "rmsprop_step": (1, lambda h: (h["lr"], h["rho"], h["eps"], h["l2"], h["l1"])),
    "rmsprop_centered_step": (2, lambda h: (h["lr"], h["rho"], h["eps"], h["l2"], h["l1"])),
    "adam_step": (2, lambda h: (h["lr"], h["b1"], h["b2"], h["eps"], h["bc1"], h["bc2"], h["l2"], h["l1"], h["wd"])),
}
PENALTIES = [dict(l2=0.0, l1=0.0, wd=0.0), dict(l2=0.01, l1=0.0, wd=0.0), dict(l2=0.01, l1=0.003, wd=0.02)]


def _data(op, n, dtype, seed=0):
    rng = np.random.default_rng(seed)
    p, g = rng.standard_normal(n), rng.standard_normal(n)
    p[: n // 3] = 0.0  # sign(0) = 0 for the L1 term
    states = [np.abs(rng.standard_normal(n)) + 0.5 for _ in range(CASES[op][0])]
    if op == "rmsprop_centered_step":
        states[1] = 0.1 * rng.standard_normal(n)  # keep s - mg^2 > 0
    return p.astype(dtype), g.astype(dtype), [s.astype(dtype) for s in states]


@pytest.mark.parametrize("op", list(CASES))
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("pen", PENALTIES, ids=["plain", "l2", "elastic+decoupled"])
def test_reference_matches_scalar_formula(op, n, pen):
    p, g, states = _data(op, n, np.float64)
    hp = {**HP, **pen}
    want_p, want_states = scalar_loop(op, p, g, states, hp)
    getattr(ref, f"{op}_ref")(p, g, *states, *CASES[op][1](hp))
    np.testing.assert_allclose(p, want_p, rtol=1e-12, atol=1e-14)
    for s, w in zip(states, want_states):
        np.testing.assert_allclose(s, w, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("op", list(CASES))
def test_every_backend_matches_reference(op):
    for name in backend.available_backends_for(op):
        for n in (1, 7, 17, 1000003):
            for pen in PENALTIES:
                hp = {**HP, **pen}
                p, g, states = _data(op, n, np.float32, seed=n)
                p64, g64, s64 = p.astype(np.float64), g.astype(np.float64), [s.astype(np.float64) for s in states]
                getattr(ref, f"{op}_ref")(p64, g64, *s64, *CASES[op][1](hp))
                backend.kernel(op, backend=name)(p, g, *states, *CASES[op][1](hp))
                np.testing.assert_allclose(p, p64, rtol=1e-5, atol=1e-6, err_msg=f"{name} {op} n={n}")
                for s, w in zip(states, s64):
                    np.testing.assert_allclose(s, w, rtol=1e-5, atol=1e-6, err_msg=f"{name} {op} state n={n}")


def _arena(seed=0, dtype=np.float32):
    def normal(shape, rng, dt):
        return rng.standard_normal(shape)
    return ParamArena([Parameter((5, 3), normal, True, "w"), Parameter((3,), normal, False, "b")], seed=seed, dtype=dtype)


ALL = [ft.optim.SGD, ft.optim.Momentum, ft.optim.Nesterov, ft.optim.AdaGrad, ft.optim.RMSProp, ft.optim.Adam,
       ft.optim.AdamW]


# adaptive methods take steps of about lr near the minimum, so they get a smaller lr
BOWL_LR = {ft.optim.SGD: 0.2, ft.optim.Momentum: 0.1, ft.optim.Nesterov: 0.1, ft.optim.AdaGrad: 0.5,
           ft.optim.RMSProp: 0.01, ft.optim.Adam: 0.05, ft.optim.AdamW: 0.05}


@pytest.mark.parametrize("cls", ALL)
def test_converges_on_a_quadratic_bowl(cls):
    arena = _arena()
    opt = cls(arena, lr=BOWL_LR[cls], **({"weight_decay": 0.0} if cls is ft.optim.AdamW else {}))
    for _ in range(600):
        arena.grad[:] = 2 * arena.data
        opt.step()
    assert np.abs(arena.data).max() < 0.05, (cls.__name__, np.abs(arena.data).max())


def test_adam_first_step_is_lr_times_sign_of_gradient():
    arena = _arena()
    before = arena.data.copy()
    arena.grad[:] = np.random.default_rng(1).standard_normal(arena.size) * 10
    ft.optim.Adam(arena, lr=0.01, eps=1e-12).step()
    np.testing.assert_allclose(before - arena.data, 0.01 * np.sign(arena.grad), rtol=1e-4, atol=1e-6)


def test_adamw_decay_is_decoupled_and_skips_the_no_decay_group():
    a, b = _arena(), _arena()
    a.grad[:] = 0
    b.grad[:] = 0
    w0 = a.data.copy()
    ft.optim.AdamW(a, lr=0.1, weight_decay=0.5).step()
    ft.optim.Adam(b, lr=0.1, weight_decay=0.5).step()
    decay = a.groups[0]
    # AdamW with zero gradient: exactly p *= 1 - lr*wd on decayed weights; biases untouched
    np.testing.assert_allclose(a.data[decay.start:decay.stop], w0[decay.start:decay.stop] * (1 - 0.05), atol=1e-6)
    np.testing.assert_array_equal(a.data[decay.stop:], w0[decay.stop:])
    # coupled L2 goes through the adaptive normalisation: a step of ~lr*sign(p), not a shrink
    np.testing.assert_allclose(b.data[:decay.stop], w0[:decay.stop] - 0.1 * np.sign(w0[:decay.stop]), atol=1e-6)
    np.testing.assert_array_equal(b.data[decay.stop:], w0[decay.stop:])


def test_l1_is_not_applied_to_the_no_decay_group():
    arena = _arena()
    arena.grad[:] = 0
    w0 = arena.data.copy()
    ft.optim.SGD(arena, lr=0.1, l1=0.5).step()
    s = arena.groups[0].stop
    np.testing.assert_allclose(arena.data[:s], w0[:s] - 0.05 * np.sign(w0[:s]), rtol=1e-6)
    np.testing.assert_array_equal(arena.data[s:], w0[s:])


@pytest.mark.parametrize("cls", ALL)
def test_state_dict_round_trip_gives_identical_next_steps(cls):
    a = _arena()
    opt = cls(a, lr=0.05)
    rng = np.random.default_rng(2)
    for _ in range(3):
        a.grad[:] = rng.standard_normal(a.size)
        opt.step()
    b = _arena(seed=9)
    b.load_state_dict(a.state_dict())
    opt_b = cls(b, lr=0.5)
    opt_b.load_state_dict(opt.state_dict())
    g = rng.standard_normal(a.size)
    a.grad[:] = g
    b.grad[:] = g
    opt.step()
    opt_b.step()
    np.testing.assert_array_equal(a.data, b.data)


def test_frozen_group_and_lr_changes():
    arena = _arena()
    arena.groups[0].hyper["frozen"] = True
    w0 = arena.data.copy()
    arena.grad[:] = 1
    opt = ft.optim.SGD(arena, lr=0.1)
    opt.step()
    s = arena.groups[0].stop
    np.testing.assert_array_equal(arena.data[:s], w0[:s])
    np.testing.assert_allclose(arena.data[s:], w0[s:] - 0.1, rtol=1e-6)
    opt.lr = 0.0
    opt.step()
    np.testing.assert_allclose(arena.data[s:], w0[s:] - 0.1, rtol=1e-6)


@pytest.mark.parametrize("kw,match", [(dict(lr=-1), "lr"), (dict(lr=0.1, beta1=1.0), "beta1"),
                                      (dict(lr=0.1, eps=0.0), "eps"), (dict(lr=float("nan")), "lr")])
def test_bad_hyperparameters(kw, match):
    with pytest.raises(ValueError, match=match):
        ft.optim.Adam(_arena(), **kw)


def test_clip_grad_norm():
    arena = _arena()
    arena.grad[:] = 3.0
    norm = ft.optim.clip_grad_norm(arena, 1.0)
    assert norm == pytest.approx(3.0 * np.sqrt(arena.size))
    assert np.linalg.norm(arena.grad) == pytest.approx(1.0, rel=1e-5)


def test_matches_torch_when_installed():
    torch = pytest.importorskip("torch")
    pairs = [(ft.optim.SGD, dict(lr=0.1), torch.optim.SGD, dict(lr=0.1)),
             (ft.optim.Momentum, dict(lr=0.1, mu=0.9), torch.optim.SGD, dict(lr=0.1, momentum=0.9)),
             (ft.optim.Nesterov, dict(lr=0.1, mu=0.9), torch.optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True)),
             (ft.optim.AdaGrad, dict(lr=0.1, eps=1e-10), torch.optim.Adagrad, dict(lr=0.1, eps=1e-10)),
             (ft.optim.RMSProp, dict(lr=0.01), torch.optim.RMSprop, dict(lr=0.01, alpha=0.99, eps=1e-8)),
             (ft.optim.Adam, dict(lr=0.01, weight_decay=0.1), torch.optim.Adam, dict(lr=0.01, weight_decay=0.1)),
             (ft.optim.AdamW, dict(lr=0.01, weight_decay=0.1), torch.optim.AdamW, dict(lr=0.01, weight_decay=0.1))]
    for ours, kw, theirs, tkw in pairs:
        arena = _arena(dtype=np.float64)
        for g in arena.groups:
            g.hyper = {}  # torch applies decay to every parameter here
        p = torch.nn.Parameter(torch.from_numpy(arena.data.copy()))
        opt, topt = ours(arena, **kw), theirs([p], **tkw)
        rng = np.random.default_rng(3)
        for _ in range(5):
            g = rng.standard_normal(arena.size)
            arena.grad[:] = g
            p.grad = torch.from_numpy(g.copy())
            opt.step()
            topt.step()
        np.testing.assert_allclose(arena.data, p.detach().numpy(), rtol=1e-6, atol=1e-8, err_msg=ours.__name__)
