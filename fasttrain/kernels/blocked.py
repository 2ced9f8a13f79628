"""Batch norm, pooling and depthwise convolution on the direct convolution's channel-blocked layout (reference).

A blocked activation of logical shape (N, C, H, W) is an array (N, Cb, H + 2h, W + 2h, 16),
Cb = ceil(C/16), channel c at [:, c // 16, ..., c % 16], with a zero border of h pixels (the halo)
and zero pad lanes (channels >= C). Each reference here IS the NCHW reference: it takes the
interior and the real channels out, runs the NCHW kernel, and writes the result back in the
blocked layout with a zero halo and zero pad lanes (the invariants every fast kernel keeps).
Halos are keyword arguments (default 0), one per blocked array; dy and dres of the backward
kernels have none. See docs/KERNELS.md for the NCHW contracts.
"""
import numpy as np

from . import batchnorm as _bn
from . import conv2d as _conv
from . import pooling as _pool

OPS = ["batchnorm_blocked_fwd_train", "batchnorm_blocked_fwd_eval", "batchnorm_blocked_bwd", "blocked_repad",
       "global_avgpool_blocked_fwd", "global_avgpool_blocked_bwd", "maxpool2d_blocked_fwd",
       "maxpool2d_blocked_bwd", "avgpool2d_blocked_fwd", "avgpool2d_blocked_bwd", "depthwise_blocked_fwd",
       "depthwise_blocked_bwd_data", "depthwise_blocked_bwd_weight", "depthwise_blocked_bwd"]

LANES = 16


def to_blocked(x, halo=0):
    # x: (N, C, H, W) -> (N, ceil(C/16), H + 2*halo, W + 2*halo, 16), zero halo and pad lanes
    n, c, h, w = x.shape
    cb = -(-c // LANES)
    xc = np.zeros((n, cb * LANES, h, w), x.dtype)
    xc[:, :c] = x
    out = np.zeros((n, cb, h + 2 * halo, w + 2 * halo, LANES), x.dtype)
    out[:, :, halo:halo + h, halo:halo + w, :] = xc.reshape(n, cb, LANES, h, w).transpose(0, 1, 3, 4, 2)
    return out


def from_blocked(xb, channels, halo=0):
    # (N, Cb, H + 2*halo, W + 2*halo, 16) -> (N, channels, H, W): the interior, real channels only
    n, cb, hp, wp, _ = xb.shape
    inner = xb[:, :, halo:hp - halo, halo:wp - halo, :]
    return inner.transpose(0, 1, 4, 2, 3).reshape(n, cb * LANES, hp - 2 * halo, wp - 2 * halo)[:, :channels]


def _store(out, x, halo):
    # out[...] = to_blocked(x, halo), in place (the output array the caller passed)
    out[...] = to_blocked(np.asarray(x, dtype=out.dtype), halo)


def _opt(a, channels, halo):
    return None if a is None else from_blocked(a, channels, halo)


def batchnorm_blocked_fwd_train_ref(xb, gamma, beta, eps, yb, mean, invstd, relu=False, residual=None,
                                    stats=None, *, halo_x=0, halo_y=0, halo_res=0):
    # stats: (2, C) float64 [sum, sum of squares] of x's interior, or None to compute them; the
    # reference uses them for the mean and (biased) variance exactly as the kernel does.
    c = gamma.shape[0]
    x = from_blocked(xb, c, halo_x).astype(np.float64)
    y = np.empty_like(x)
    _bn.batchnorm_fwd_train_ref(x, gamma, beta, eps, y, mean, invstd, relu, _opt(residual, c, halo_res))
    if stats is not None:  # the statistics as given: mean = sum / M, variance = E[x^2] - mean^2
        m = x.shape[0] * x.shape[2] * x.shape[3]
        mu = stats[0] / m
        var = np.maximum(stats[1] / m - mu * mu, 0.0)
        mean[...] = mu
        invstd[...] = 1.0 / np.sqrt(var + eps)
        _bn.batchnorm_fwd_eval_ref(x, gamma, beta, mu, var, eps, y, relu, _opt(residual, c, halo_res))
    _store(yb, y, halo_y)


def batchnorm_blocked_fwd_eval_ref(xb, gamma, beta, running_mean, running_var, eps, yb, relu=False, residual=None,
                                   *, halo_x=0, halo_y=0, halo_res=0):
    c = gamma.shape[0]
    x = from_blocked(xb, c, halo_x).astype(np.float64)
    y = np.empty_like(x)
    _bn.batchnorm_fwd_eval_ref(x, gamma, beta, running_mean, running_var, eps, y, relu, _opt(residual, c, halo_res))
    _store(yb, y, halo_y)


def batchnorm_affine_ref(gamma, beta, mean, invstd):
    """The forward's per-channel map y = x * a + b (before the ReLU), float32 a and b from the float32
    mean and invstd it returned: a = gamma * invstd, b = beta - mean * (gamma * invstd) in float64."""
    ac = gamma.astype(np.float64) * invstd.astype(np.float64)
    return ac.astype(np.float32), (beta.astype(np.float64) - mean.astype(np.float64) * ac).astype(np.float32)


def batchnorm_blocked_bwd_ref(xb, dyb, gamma, mean, invstd, dxb, dgamma, dbeta, y=None, dres=None, *, halo_x=0,
                              halo_y=0, halo_dx=0, beta=None):
    # beta (with y=None): the fused ReLU's mask is x * a + b > 0 with the forward's a and b
    # (batchnorm_affine_ref), which is its y > 0 without reading y. Its sign is that of the exact
    # value, which float64 keeps here (x * a is exact in it) and one fused multiply-add keeps too.
    c = gamma.shape[0]
    if beta is not None and y is not None:
        raise ValueError("batchnorm_blocked_bwd_ref(beta): expected y=None with beta, got both")
    x = from_blocked(xb, c, halo_x).astype(np.float64)
    dx = np.empty_like(x)
    r = None if dres is None else np.empty_like(x)
    mask = _opt(y, c, halo_y)
    if beta is not None:
        a, b = batchnorm_affine_ref(gamma, beta, mean, invstd)
        mask = x * a.astype(np.float64)[:, None, None] + b.astype(np.float64)[:, None, None]
    _bn.batchnorm_bwd_ref(x, from_blocked(dyb, c), gamma, mean, invstd, dx, dgamma, dbeta, mask, r)
    _store(dxb, dx, halo_dx)
    if dres is not None:
        _store(dres, r, 0)


def batchnorm_blocked_bwd_sums_ref(gb, xb, gamma, mean, invstd, beta=None, *, halo_x=0):
    """The two per-channel sums of a training batchnorm's backward, (2, C) float64:
    [sum m*g, sum m*g*(x - mean)] over the batch's pixels, with g the gradient of the batchnorm's
    output (blocked, no halo), x its input (zero halo halo_x) and m the fused ReLU's mask from x
    (x*a + b > 0 with the forward's a and b, batchnorm_affine_ref) when beta is given, else 1. What
    conv2d_blocked_bwd_data(bn_sums=...) forms in its epilogue from the dx it writes, and what
    batchnorm_blocked_bwd(sums=...) then takes instead of its own first pass."""
    c = gamma.shape[0]
    g = from_blocked(gb, c).astype(np.float64)
    x = from_blocked(xb, c, halo_x).astype(np.float64)
    if beta is not None:
        a, b = batchnorm_affine_ref(gamma, beta, mean, invstd)
        g = g * (x * a.astype(np.float64)[:, None, None] + b.astype(np.float64)[:, None, None] > 0)
    centred = x - mean.astype(np.float64)[:, None, None]
    return np.stack([g.sum(axis=(0, 2, 3)), (g * centred).sum(axis=(0, 2, 3))])


def blocked_repad_ref(xb, channels, halo_in, yb, halo_out):
    _store(yb, from_blocked(xb, channels, halo_in), halo_out)


def global_avgpool_blocked_fwd_ref(xb, y, channels, *, halo_x=0):
    # y: (N, C), the classifier's input
    y[...] = from_blocked(xb, channels, halo_x).astype(np.float64).mean(axis=(2, 3))


def global_avgpool_blocked_bwd_ref(dy, dxb, *, halo_dx=0):
    # dy: (N, C); every pixel of a plane gets dy / (H*W)
    n, c = dy.shape
    h, w = dxb.shape[2] - 2 * halo_dx, dxb.shape[3] - 2 * halo_dx
    _store(dxb, np.broadcast_to((dy / (h * w))[:, :, None, None], (n, c, h, w)), halo_dx)


def _pool_shape(xb, halo, k, s, p, d, ceil_mode):
    # (channels as whole blocks, H, W, P, Q) of a pooling over the interior of xb
    h, w = xb.shape[2] - 2 * halo, xb.shape[3] - 2 * halo
    return (xb.shape[1] * LANES, h, w, _pool.out_size(h, k[0], s[0], p[0], d[0], ceil_mode),
            _pool.out_size(w, k[1], s[1], p[1], d[1], ceil_mode))


def maxpool2d_blocked_fwd_ref(xb, yb, taps, kh, kw, sh, sw, ph, pw, ceil_mode=False, dil_h=1, dil_w=1, *,
                              halo_x=0, halo_y=0):
    # taps: (N, Cb, P, Q, 16) uint8, the NCHW tap form's window tap r*kw + s of each maximum;
    # pad lanes pool zeros and name tap 0
    c, h, w, p, q = _pool_shape(xb, halo_x, (kh, kw), (sh, sw), (ph, pw), (dil_h, dil_w), ceil_mode)
    n = xb.shape[0]
    y = np.empty((n, c, p, q), xb.dtype)
    t = np.empty((n, c, p, q), np.uint8)
    _pool.maxpool2d_taps_fwd_ref(from_blocked(xb, c, halo_x), y, t, kh, kw, sh, sw, ph, pw, ceil_mode, dil_h, dil_w)
    _store(yb, y, halo_y)
    taps[...] = to_blocked(t)


def maxpool2d_blocked_bwd_ref(dyb, taps, dxb, kh, kw, sh, sw, ph, pw, ceil_mode=False, dil_h=1, dil_w=1, *,
                              halo_dx=0):
    c = dyb.shape[1] * LANES
    n, h, w = dxb.shape[0], dxb.shape[2] - 2 * halo_dx, dxb.shape[3] - 2 * halo_dx
    dx = np.empty((n, c, h, w), dxb.dtype)
    _pool.maxpool2d_taps_bwd_ref(from_blocked(dyb, c), from_blocked(taps, c), dx, kh, kw, sh, sw, ph, pw, ceil_mode,
                                 dil_h, dil_w)
    _store(dxb, dx, halo_dx)


def avgpool2d_blocked_fwd_ref(xb, yb, kh, kw, sh, sw, ph, pw, ceil_mode=False, count_include_pad=True, *,
                              halo_x=0, halo_y=0):
    c, h, w, p, q = _pool_shape(xb, halo_x, (kh, kw), (sh, sw), (ph, pw), (1, 1), ceil_mode)
    y = np.empty((xb.shape[0], c, p, q), np.float64)
    _pool.avgpool2d_fwd_ref(from_blocked(xb, c, halo_x).astype(np.float64), y, kh, kw, sh, sw, ph, pw, ceil_mode,
                            count_include_pad)
    _store(yb, y, halo_y)


def avgpool2d_blocked_bwd_ref(dyb, dxb, kh, kw, sh, sw, ph, pw, ceil_mode=False, count_include_pad=True, *,
                              halo_dx=0):
    c = dyb.shape[1] * LANES
    n, h, w = dxb.shape[0], dxb.shape[2] - 2 * halo_dx, dxb.shape[3] - 2 * halo_dx
    dx = np.empty((n, c, h, w), np.float64)
    _pool.avgpool2d_bwd_ref(from_blocked(dyb, c).astype(np.float64), dx, kh, kw, sh, sw, ph, pw, ceil_mode,
                            count_include_pad)
    _store(dxb, dx, halo_dx)


# Depthwise convolution (groups == C == K, w (C, 1, R, S)): the input's halo is any zero border;
# the padding (ph, pw) is the convolution's own, whatever the halo.
def depthwise_blocked_fwd_ref(xb, w, b, yb, sh, sw, ph, pw, relu=False, dil_h=1, dil_w=1, *, halo_x=0, halo_y=0,
                              stats=None):
    # stats: None, or a (2, C) float64 array overwritten with each channel's sum and sum of squares of y
    c = w.shape[0]
    x = from_blocked(xb, c, halo_x).astype(np.float64)
    p, q = _conv.out_size(x.shape[2], x.shape[3], w.shape[2], w.shape[3], sh, sw, ph, pw, dil_h, dil_w)
    y = np.empty((x.shape[0], c, p, q))
    _conv.conv2d_fwd_ref(x, w.astype(np.float64), b.astype(np.float64), y, sh, sw, ph, pw, relu, dil_h, dil_w, c)
    _store(yb, y, halo_y)
    if stats is not None:
        stats[0] = y.sum(axis=(0, 2, 3))
        stats[1] = (y * y).sum(axis=(0, 2, 3))


def depthwise_blocked_bwd_data_ref(dyb, w, dxb, sh, sw, ph, pw, dil_h=1, dil_w=1, *, halo_dy=0, halo_dx=0):
    c = w.shape[0]
    dy = from_blocked(dyb, c, halo_dy).astype(np.float64)
    dx = np.empty((dy.shape[0], c, dxb.shape[2] - 2 * halo_dx, dxb.shape[3] - 2 * halo_dx))
    _conv.conv2d_bwd_data_ref(dy, w.astype(np.float64), dx, sh, sw, ph, pw, dil_h, dil_w, c)
    _store(dxb, dx, halo_dx)


def depthwise_blocked_bwd_weight_ref(xb, dyb, dw, db, sh, sw, ph, pw, dil_h=1, dil_w=1, *, halo_x=0, halo_dy=0):
    c = dw.shape[0]
    gw, gb = np.zeros(dw.shape), np.zeros(db.shape)
    _conv.conv2d_bwd_weight_ref(from_blocked(xb, c, halo_x).astype(np.float64),
                                from_blocked(dyb, c, halo_dy).astype(np.float64), gw, gb, sh, sw, ph, pw, dil_h,
                                dil_w, c)
    dw += gw
    db += gb


def depthwise_blocked_bwd_ref(xb, dyb, w, dxb, dw, db, sh, sw, ph, pw, dil_h=1, dil_w=1, *, halo_x=0, halo_dy=0,
                              halo_dx=0):
    # both gradients of one call: bwd_data's dx (overwritten) and bwd_weight's dw, db (accumulated)
    depthwise_blocked_bwd_data_ref(dyb, w, dxb, sh, sw, ph, pw, dil_h, dil_w, halo_dy=halo_dy, halo_dx=halo_dx)
    depthwise_blocked_bwd_weight_ref(xb, dyb, dw, db, sh, sw, ph, pw, dil_h, dil_w, halo_x=halo_x, halo_dy=halo_dy)
