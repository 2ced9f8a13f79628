"""Optimizer updates (reference), in place on flat arrays p, g and state of one length.
Formulas: docs/KERNELS.md. g' = g + l2 p + l1 sign(p) is the gradient of the loss plus the
penalty (l2/2)|p|^2 + l1|p| (elastic net when both are set)."""
import numpy as np

OPS = ["sgd_step", "momentum_step", "nesterov_step", "adagrad_step", "rmsprop_step", "rmsprop_centered_step",
       "adam_step"]


def _eff_grad(p, g, l2, l1):
    # p, g: (n,)
    out = g + l2 * p if l2 else g.copy()
    if l1:
        out += l1 * np.sign(p)
    return out


def sgd_step_ref(p, g, lr, l2, l1):
    p -= lr * _eff_grad(p, g, l2, l1)


def momentum_step_ref(p, g, v, lr, mu, l2, l1):
    v *= mu
    v += _eff_grad(p, g, l2, l1)
    p -= lr * v


def nesterov_step_ref(p, g, v, lr, mu, l2, l1):
    ge = _eff_grad(p, g, l2, l1)
    v *= mu
    v += ge
    p -= lr * (ge + mu * v)


def adagrad_step_ref(p, g, h, lr, eps, l2, l1):
    ge = _eff_grad(p, g, l2, l1)
    h += ge * ge
    p -= lr * ge / (np.sqrt(h) + eps)


def rmsprop_step_ref(p, g, s, lr, rho, eps, l2, l1):
    ge = _eff_grad(p, g, l2, l1)
    s *= rho
    s += (1 - rho) * ge * ge
    p -= lr * ge / (np.sqrt(s) + eps)


def rmsprop_centered_step_ref(p, g, s, mg, lr, rho, eps, l2, l1):
    ge = _eff_grad(p, g, l2, l1)
    s *= rho
    s += (1 - rho) * ge * ge
    mg *= rho
    mg += (1 - rho) * ge
    p -= lr * ge / (np.sqrt(s - mg * mg) + eps)


def adam_step_ref(p, g, m, v, lr, beta1, beta2, eps, bc1, bc2, l2, l1, decoupled_wd):
    ge = _eff_grad(p, g, l2, l1)  # uses p before the decoupled decay
    if decoupled_wd:
        p *= 1 - lr * decoupled_wd  # AdamW, Loshchilov & Hutter 2019
    m *= beta1
    m += (1 - beta1) * ge
    v *= beta2
    v += (1 - beta2) * ge * ge
    p -= lr * (m / bc1) / (np.sqrt(v / bc2) + eps)
