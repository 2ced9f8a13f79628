"""The batchnorm backward's sums in the epilogue of the convolution data gradient that writes its
incoming gradient (conv2d_blocked_bwd_data(bn_sums=...), batchnorm_blocked_bwd(sums=...),
fasttrain/nn/norm.py GradSums): the sums against the NumPy reference on odd shapes (channels 1, 3,
5, 17, 33; 1x1 and 3x3, stride 1 and 2; batch 1; halos; accumulate; with and without the ReLU mask)
on every instruction set and on the blocked Winograd data gradient; the batchnorm backward with
given sums against its own; whole models (resnet8, resnet20, residual blocks whose input gradient
has two contributions) with the fusion against without it, and a check that these model tests fail
when sums are taken before the last contribution."""
from __future__ import annotations

import numpy as np
import pytest

import fasttrain as ft
from fasttrain import models, nn, settings
from fasttrain.kernels import blocked as ref
from fasttrain.nn import conv as convmod
from fasttrain.nn import norm

C = pytest.importorskip("fasttrain._C", reason="C++ module not built")

from cpp_isas import isa_available, isa_params  # noqa: E402

f32, f64 = np.float32, np.float64


@pytest.fixture(autouse=True)
def _restore():
    fuse = norm.FUSE_BWD_SUMS
    yield
    C.set_conv2d_isa("auto")
    C.set_conv2d_algo("auto")
    norm.FUSE_BWD_SUMS = fuse
    settings.layout = "auto"


def _bn_inputs(rng, n, c, h, w, halo):
    """A batchnorm's input (blocked, zero halo), its forward's mean and invstd, gamma and beta."""
    x = (rng.standard_normal((n, c, h, w)) * 1.5 + 0.3).astype(f32)
    gamma = rng.uniform(0.5, 1.5, c).astype(f32) * rng.choice([-1, 1], c).astype(f32)
    beta = rng.standard_normal(c).astype(f32) * 0.5
    mean = x.mean(axis=(0, 2, 3)).astype(f32)
    invstd = (1.0 / np.sqrt(x.var(axis=(0, 2, 3)) + 1e-5)).astype(f32)
    return C.to_blocked(x, halo, halo, halo, halo), mean, invstd, gamma, beta


def _check_sums(got, want, gb, xb, c, halo, what):
    # float32 partials added in double: the error is a few float32 ulps of the sum of |terms|
    g = np.abs(ref.from_blocked(gb, c).astype(f64))
    x = ref.from_blocked(xb, c, halo).astype(f64)
    centred = np.abs(x - x.mean(axis=(0, 2, 3))[:, None, None])
    scale = np.stack([g.sum(axis=(0, 2, 3)), (g * centred).sum(axis=(0, 2, 3))])
    err = np.abs(got - want)
    assert np.all(err <= 1e-5 * scale + 1e-6), f"{what}: worst error {err.max()} (scale {scale.max()})"


def _run_bwd_data(rng, n, c, k, h, w, r, stride, accumulate, relu, halo_dy=-1, halo_x=1):
    pad = r // 2
    p = (h + 2 * pad - r) // stride + 1
    q = (w + 2 * pad - r) // stride + 1
    wt = (rng.standard_normal((k, c, r, r)) / np.sqrt(c * r * r)).astype(f32)
    dy = rng.standard_normal((n, k, p, q)).astype(f32)
    if halo_dy < 0:
        dyb = C.to_blocked(dy, *C.conv2d_blocked_dy_pads(h, w, r, r, stride, stride, pad, pad))
    else:
        dyb = C.to_blocked(dy, halo_dy, halo_dy, halo_dy, halo_dy)
    xb, mean, invstd, gamma, beta = _bn_inputs(rng, n, c, h, w, halo_x)
    start = C.to_blocked(rng.standard_normal((n, c, h, w)).astype(f32), 0, 0, 0, 0)
    plain, fused = start.copy(), start.copy()
    geom = (stride, stride, pad, pad)
    C.conv2d_blocked_bwd_data(dyb, wt, plain, *geom, halo_dy=halo_dy, accumulate=accumulate)
    sums = np.full((2, c), np.nan)
    C.conv2d_blocked_bwd_data(dyb, wt, fused, *geom, halo_dy=halo_dy, accumulate=accumulate, bn_sums=sums,
                              bn_x=xb, halo_bn_x=halo_x, bn_mean=mean, bn_invstd=invstd, bn_gamma=gamma,
                              bn_beta=beta if relu else None)
    # the epilogue only reads: dx is the plain kernel's, bit for bit
    np.testing.assert_array_equal(fused, plain)
    want = ref.batchnorm_blocked_bwd_sums_ref(fused, xb, gamma, mean, invstd, beta if relu else None, halo_x=halo_x)
    return sums, want, fused, xb


# (N, C, K, H, W, kernel, stride)
CASES = [(1, 1, 3, 5, 7, 3, 1), (2, 3, 5, 7, 5, 3, 2), (1, 5, 17, 9, 9, 1, 1), (2, 17, 33, 6, 7, 1, 2),
         (1, 33, 16, 8, 8, 3, 1), (3, 17, 5, 5, 3, 3, 2), (1, 16, 16, 4, 4, 1, 1), (2, 33, 17, 3, 11, 3, 1)]


@pytest.mark.parametrize("isa", isa_params(C))
@pytest.mark.parametrize("case", CASES, ids=lambda c: "n%d-c%d-k%d-%dx%d-r%ds%d" % c)
def test_epilogue_sums_match_reference(isa, case):
    C.set_conv2d_isa(isa)
    C.set_conv2d_algo("direct")
    n, c, k, h, w, r, s = case
    rng = np.random.default_rng(sum(case))
    for accumulate in (False, True):
        for relu in (False, True):
            for halo_x in (0, 1):
                got, want, gb, xb = _run_bwd_data(rng, n, c, k, h, w, r, s, accumulate, relu, halo_x=halo_x)
                _check_sums(got, want, gb, xb, c, halo_x, f"{isa} {case} accumulate={accumulate} relu={relu} "
                                                          f"halo_x={halo_x}")


@pytest.mark.skipif(not isa_available(C, "avx512"), reason="no AVX-512 kernels (blocked Winograd) here")
@pytest.mark.parametrize("algo", ["winograd-blocked", "winograd43-blocked"])
@pytest.mark.parametrize("case", [(1, 5, 17, 7, 9), (2, 17, 33, 6, 6), (1, 33, 5, 9, 5), (3, 16, 16, 8, 8)],
                         ids=lambda c: "n%d-c%d-k%d-%dx%d" % c)
def test_winograd_epilogue_sums_match_reference(algo, case):
    C.set_conv2d_algo(algo)
    n, c, k, h, w = case
    rng = np.random.default_rng(sum(case))
    for accumulate in (False, True):
        for relu in (False, True):
            halo_x = int(relu)
            got, want, gb, xb = _run_bwd_data(rng, n, c, k, h, w, 3, 1, accumulate, relu, halo_dy=1, halo_x=halo_x)
            _check_sums(got, want, gb, xb, c, halo_x, f"{algo} {case} accumulate={accumulate} relu={relu}")


def test_epilogue_sums_do_not_depend_on_threads():
    C.set_conv2d_algo("direct")
    out = []
    for threads in (1, 2):
        ft.set_num_threads(threads) if hasattr(ft, "set_num_threads") else C.set_num_threads(threads)
        out.append(_run_bwd_data(np.random.default_rng(5), 3, 17, 33, 9, 9, 3, 2, True, True)[0])
    np.testing.assert_array_equal(out[0], out[1])


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("shape", [(1, 1, 3, 3), (2, 5, 7, 5), (3, 17, 4, 4), (1, 33, 6, 7)], ids=str)
def test_batchnorm_bwd_with_given_sums(shape, relu):
    """batchnorm_blocked_bwd(sums=reference sums) writes what it writes forming them itself."""
    n, c, h, w = shape
    rng = np.random.default_rng(c)
    xb, mean, invstd, gamma, beta = _bn_inputs(rng, n, c, h, w, 1)
    dyb = C.to_blocked(rng.standard_normal(shape).astype(f32), 0, 0, 0, 0)
    outs = []
    for sums in (None, ref.batchnorm_blocked_bwd_sums_ref(dyb, xb, gamma, mean, invstd, beta if relu else None,
                                                          halo_x=1)):
        dx = np.full((n, -(-c // 16), h + 2, w + 2, 16), np.nan, f32)
        dgamma, dbeta = np.full(c, 0.25, f32), np.full(c, -0.5, f32)
        C.batchnorm_blocked_bwd(xb, dyb, gamma, mean, invstd, dx, dgamma, dbeta, halo_x=1, halo_dx=1,
                                beta=beta if relu else None, sums=sums)
        outs.append((dx, dgamma, dbeta))
    for name, a, b in zip(("dx", "dgamma", "dbeta"), *outs):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(a).max())), err_msg=name)
    with pytest.raises(ValueError, match=r"batchnorm_blocked_bwd\(sums\): expected dres=None"):
        C.batchnorm_blocked_bwd(xb, dyb, gamma, mean, invstd, dx, dgamma, dbeta, None, dyb.copy(), halo_x=1,
                                halo_dx=1, sums=np.zeros((2, c)))
    with pytest.raises(ValueError, match=r"sums.*expected shape"):
        C.batchnorm_blocked_bwd(xb, dyb, gamma, mean, invstd, dx, dgamma, dbeta, halo_x=1, halo_dx=1,
                                sums=np.zeros((2, c + 1)))


def test_bwd_data_bn_arguments_are_checked():
    rng = np.random.default_rng(0)
    wt = rng.standard_normal((3, 5, 3, 3)).astype(f32)
    dyb = C.to_blocked(rng.standard_normal((1, 3, 4, 4)).astype(f32), 1, 1, 1, 1)
    dx = np.zeros((1, 1, 4, 4, 16), f32)
    xb, mean, invstd, gamma, beta = _bn_inputs(rng, 1, 5, 4, 4, 0)
    with pytest.raises(ValueError, match=r"expected bn_x, bn_mean, bn_invstd and bn_gamma"):
        C.conv2d_blocked_bwd_data(dyb, wt, dx, 1, 1, 1, 1, halo_dy=1, bn_sums=np.zeros((2, 5)), bn_x=xb)
    with pytest.raises(ValueError, match=r"bn_x.*expected shape"):
        C.conv2d_blocked_bwd_data(dyb, wt, dx, 1, 1, 1, 1, halo_dy=1, bn_sums=np.zeros((2, 5)), bn_x=xb,
                                  halo_bn_x=1, bn_mean=mean, bn_invstd=invstd, bn_gamma=gamma)
    with pytest.raises(ValueError, match=r"expected bn_sums with"):
        C.conv2d_blocked_bwd_data(dyb, wt, dx, 1, 1, 1, 1, halo_dy=1, bn_x=xb)


# ---- whole models: the fusion against the batchnorms' own sums ----------------------------------

def _two_paths():
    """A batchnorm (ReLU) whose output feeds residual blocks whose input gradient has two
    contributions: the body's first convolution's and the shortcut's (a bare convolution that adds
    into the body's, a conv+BN Sequential that does too, an identity the body adds into)."""
    return nn.Sequential(
        nn.Conv2d(3, 17, 3, padding=1, bias=False), nn.BatchNorm2d(17, relu=True),
        nn.Residual(nn.Sequential(nn.Conv2d(17, 17, 3, padding=1, bias=False), nn.BatchNorm2d(17, relu=True),
                                  nn.Conv2d(17, 17, 3, padding=1, bias=False), nn.BatchNorm2d(17)),
                    nn.Conv2d(17, 17, 1, bias=False), post=nn.ReLU()),
        nn.Conv2d(17, 20, 3, padding=1, bias=False), nn.BatchNorm2d(20, relu=True),
        nn.Residual(nn.Sequential(nn.Conv2d(20, 33, 3, stride=2, padding=1, bias=False),
                                  nn.BatchNorm2d(33, relu=True), nn.Conv2d(33, 33, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(33)),
                    nn.Sequential(nn.Conv2d(20, 33, 1, stride=2, bias=False), nn.BatchNorm2d(33)), post=nn.ReLU()),
        nn.Conv2d(33, 16, 1, bias=False), nn.BatchNorm2d(16, relu=True),
        nn.Residual(nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16, relu=True),
                                  nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)), post=nn.ReLU()),
        nn.GlobalAvgPool2d(), nn.Flatten(), nn.Linear(16, 4))


MODELS = {
    "resnet8": (lambda: models.resnet(8, 3, 10, width=16), (3, 9, 9)),
    "resnet20": (lambda: models.resnet(20, 3, 10, width=16), (3, 8, 8)),
    "convnet_classic": (lambda: models.convnet_classic(3, 10, 12, width=17), (3, 12, 12)),
    "two_paths": (_two_paths, (3, 9, 9)),
}


def _grads(name, batch, fuse, monkeypatch=None):
    """Two training steps' (input gradient, parameter gradients) and how many batchnorm backwards
    took given sums."""
    norm.FUSE_BWD_SUMS = fuse
    build, chw = MODELS[name]
    model = build()
    arena = ft.ParamArena.for_model(model, seed=0)
    model.train(True)
    x = np.random.default_rng(1).standard_normal((batch, *chw)).astype(f32)
    used = []
    real = C.batchnorm_blocked_bwd

    def spy(*args, **kw):
        used.append(kw.get("sums") is not None)
        return real(*args, **kw)
    out = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(C, "batchnorm_blocked_bwd", spy)
        for _ in range(2):
            y = model.forward(x)
            dy = np.random.default_rng(2).standard_normal(y.shape).astype(f32)
            arena.zero_grad()
            dx = model.backward(dy)
            out.append((dx.copy(), arena.grad.copy()))
    return out, sum(used), len(used)


def _same(a, b, what, tol=2e-4):
    scale = max(float(np.abs(b).max()), 1e-3)
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol * scale, err_msg=what)


# batchnorm backwards with sums from an epilogue per step: resnet's stem and every block's first;
# convnet_classic's two followed by a convolution (the others by a pool); two_paths' stem-like three feeding residual
# blocks (through the bare-conv shortcut, the conv+BN shortcut, the identity) and the bodies' three
FUSED = {"resnet8": 4, "resnet20": 10, "convnet_classic": 2, "two_paths": 6}


@pytest.mark.parametrize("algo", ["direct", "auto"])
@pytest.mark.parametrize("name,batch", [("resnet8", 3), ("resnet8", 1), ("resnet20", 2), ("convnet_classic", 2),
                                        ("two_paths", 2)])
def test_model_gradients_equal_unfused(name, batch, algo):
    C.set_conv2d_algo(algo)
    on, used, calls = _grads(name, batch, True)
    off, used_off, _ = _grads(name, batch, False)
    assert used_off == 0
    if algo == "direct":   # (the engine's own choice may run some layers elsewhere)
        assert used == 2 * FUSED[name], f"{name}: {used} of {calls} batchnorm backwards took epilogue sums"
    for step, (a, b) in enumerate(zip(on, off)):
        _same(a[0], b[0], f"{name} step {step}: input gradient")
        _same(a[1], b[1], f"{name} step {step}: parameter gradients")


@pytest.mark.parametrize("isa", isa_params(C))
def test_model_gradients_equal_unfused_every_isa(isa):
    C.set_conv2d_isa(isa)
    C.set_conv2d_algo("direct")
    on, used, _ = _grads("two_paths", 2, True)
    off, _, _ = _grads("two_paths", 2, False)
    assert used == 2 * FUSED["two_paths"]
    for a, b in zip(on, off):
        _same(a[0], b[0], f"{isa}: input gradient")
        _same(a[1], b[1], f"{isa}: parameter gradients")


def test_sums_before_the_last_contribution_are_caught(monkeypatch):
    """The model tests above can fail: with sums taken at the body's convolution (the first of the
    two contributions to a residual block's input gradient) and kept while the shortcut's
    convolution adds the second into the same array, the batchnorm gradients differ."""
    C.set_conv2d_algo("direct")
    off, _, _ = _grads("two_paths", 2, False)
    real_args, real_into = convmod.Conv2d._bn_sums_args, convmod.Conv2d.backward_into

    def args(self, saved, complete):   # every plain backward claims a whole gradient; no adding one does
        return ({}, None) if getattr(self, "_adding", False) else real_args(self, saved, True)

    def into(self, dy, dx):
        self._adding = True
        try:
            return real_into(self, dy, dx)
        finally:
            self._adding = False
    monkeypatch.setattr(convmod.Conv2d, "_bn_sums_args", args)
    monkeypatch.setattr(convmod.Conv2d, "backward_into", into)
    on, used, _ = _grads("two_paths", 2, True)
    assert used > 0
    with pytest.raises(AssertionError):
        for a, b in zip(on, off):
            _same(a[1], b[1], "parameter gradients")
