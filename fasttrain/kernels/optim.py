"""Optimizer updates (reference), in place on flat arrays p, g and state of one length.
Formulas: docs/KERNELS.md. g' = g + l2 p + l1 sign(p) is the gradient of the loss plus the
penalty (l2/2)|p|^2 + l1|p| (elastic net when both are set). Step-dependent scalars (Adam's bias
corrections, AdaGrad's lr decay, SGD's undampened first step) are folded on the host, so each
update stays one pass over p, g and the state."""
import numpy as np

OPS = ["sgd_step", "momentum_step", "nesterov_step", "adagrad_step", "rmsprop_step", "rmsprop_centered_step",
       "rmsprop_momentum_step", "rmsprop_centered_momentum_step", "adam_step", "adam_amsgrad_step"]


def _eff_grad(p, g, l2, l1):
    # p, g: (n,)
    out = g + l2 * p if l2 else g.copy()
    if l1:
        out += l1 * np.sign(p)
    return out


def sgd_step_ref(p, g, lr, l2, l1):
    p -= lr * _eff_grad(p, g, l2, l1)


def momentum_step_ref(p, g, v, lr, mu, dampening, l2, l1):
    v *= mu
    v += (1 - dampening) * _eff_grad(p, g, l2, l1)
    p -= lr * v


def nesterov_step_ref(p, g, v, lr, mu, dampening, l2, l1):
    ge = _eff_grad(p, g, l2, l1)
    v *= mu
    v += (1 - dampening) * ge
    p -= lr * (ge + mu * v)


def adagrad_step_ref(p, g, h, lr, eps, l2, l1):
    ge = _eff_grad(p, g, l2, l1)
    h += ge * ge
    p -= lr * ge / (np.sqrt(h) + eps)


def _rms_denominator(ge, s, mg, rho, eps):
    """Updates s (and mg, centered: Graves 2013 eq. 38-40) and returns sqrt(s [- mg^2]) + eps."""
    s *= rho
    s += (1 - rho) * ge * ge
    if mg is None:
        return np.sqrt(s) + eps
    mg *= rho
    mg += (1 - rho) * ge
    return np.sqrt(s - mg * mg) + eps


def rmsprop_step_ref(p, g, s, lr, rho, eps, l2, l1):
    ge = _eff_grad(p, g, l2, l1)
    p -= lr * ge / _rms_denominator(ge, s, None, rho, eps)


def rmsprop_centered_step_ref(p, g, s, mg, lr, rho, eps, l2, l1):
    ge = _eff_grad(p, g, l2, l1)
    p -= lr * ge / _rms_denominator(ge, s, mg, rho, eps)


def rmsprop_momentum_step_ref(p, g, s, b, lr, rho, eps, mu, l2, l1):
    # momentum on the normalised step, as torch.optim.RMSprop(momentum=mu)
    ge = _eff_grad(p, g, l2, l1)
    b *= mu
    b += ge / _rms_denominator(ge, s, None, rho, eps)
    p -= lr * b


def rmsprop_centered_momentum_step_ref(p, g, s, mg, b, lr, rho, eps, mu, l2, l1):
    ge = _eff_grad(p, g, l2, l1)
    b *= mu
    b += ge / _rms_denominator(ge, s, mg, rho, eps)
    p -= lr * b


def _adam_moments(p, g, m, v, lr, beta1, beta2, l2, l1, decoupled_wd):
    ge = _eff_grad(p, g, l2, l1)  # uses p before the decoupled decay
    if decoupled_wd:
        p *= 1 - lr * decoupled_wd  # AdamW, Loshchilov & Hutter 2019
    m *= beta1
    m += (1 - beta1) * ge
    v *= beta2
    v += (1 - beta2) * ge * ge


def adam_step_ref(p, g, m, v, lr, beta1, beta2, eps, bc1, bc2, l2, l1, decoupled_wd):
    _adam_moments(p, g, m, v, lr, beta1, beta2, l2, l1, decoupled_wd)
    p -= lr * (m / bc1) / (np.sqrt(v / bc2) + eps)


def adam_amsgrad_step_ref(p, g, m, v, vmax, lr, beta1, beta2, eps, bc1, bc2, l2, l1, decoupled_wd):
    # AMSGrad (Reddi, Kale & Kumar 2018): the denominator uses the running maximum of v, so the
    # effective step size never grows; bias-corrected as torch.optim.Adam(amsgrad=True) does
    _adam_moments(p, g, m, v, lr, beta1, beta2, l2, l1, decoupled_wd)
    np.maximum(vmax, v, out=vmax)
    p -= lr * (m / bc1) / (np.sqrt(vmax / bc2) + eps)
