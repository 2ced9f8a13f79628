"""Loss kernels (reference): fused softmax cross-entropy, plain and with PyTorch's options."""
import numpy as np

OPS = ["softmax_xent", "softmax_xent_weighted"]


def softmax_xent_ref(logits, labels, dlogits):
    """Mean softmax cross-entropy over the batch, returned as a Python float; writes
    dlogits = (softmax(logits) - onehot(labels)) / N.
    logits: (N, C) float; labels: (N,) int64 in [0, C); dlogits: (N, C) like logits."""
    n = logits.shape[0]
    # log-sum-exp with the row max subtracted: every exp argument is <= 0, so none overflows
    m = logits.max(axis=1, keepdims=True)
    z = logits - m
    e = np.exp(z)
    s = e.sum(axis=1, keepdims=True)
    rows = np.arange(n)
    # loss_i = log(sum_j exp(x_ij)) - x_i,y_i = log(s_i) - z_i,y_i
    loss = np.log(s[:, 0], dtype=np.float64) - z[rows, labels].astype(np.float64)
    np.divide(e, s * n, out=dlogits)
    dlogits[rows, labels] -= dlogits.dtype.type(1.0 / n)
    return float(loss.sum() / n)


def softmax_xent_weighted_ref(logits, labels, weight, label_smoothing, ignore_index, scale, dlogits, row_loss):
    """Cross-entropy with class weights w, label smoothing eps and an ignored label, as
    torch.nn.functional.cross_entropy defines them: a row i with label y (not ignored) costs
        l_i = (1 - eps) w_y (-log p_y) + (eps / C) sum_c w_c (-log p_c),   p = softmax(x_i);
    an ignored row costs 0 and gets a zero gradient. Writes row_loss[i] = l_i (float64) and
    dlogits[i] = scale * dl_i/dx_i, which is
        scale * (p_j ((1 - eps) w_y + eps W / C) - (eps / C) w_j - [j = y] (1 - eps) w_y),  W = sum_c w_c.
    The reduction is the caller's: scale = 1 / sum of w_y over the rows not ignored for 'mean'
    (PyTorch's weighted mean), 1 for 'sum' and 'none'.
    logits: (N, C); labels: (N,) int64 in [0, C) or == ignore_index; weight: (C,); row_loss: (N,) float64."""
    n, c = logits.shape
    keep = labels != ignore_index
    y = np.where(keep, labels, 0)
    rows = np.arange(n)
    m = logits.max(axis=1, keepdims=True)
    z = (logits - m).astype(np.float64)
    s = np.exp(z).sum(axis=1, keepdims=True)
    log_s = np.log(s)
    w = weight.astype(np.float64)
    wy = w[y]
    eps = float(label_smoothing)
    # -log p_c = log s - z_c
    loss = (1 - eps) * wy * (log_s[:, 0] - z[rows, y]) + (eps / c) * (w.sum() * log_s[:, 0] - z @ w)
    row_loss[...] = np.where(keep, loss, 0.0)
    p = np.exp(z) / s
    d = p * ((1 - eps) * wy + eps * w.sum() / c)[:, None] - (eps / c) * w[None, :]
    d[rows, y] -= (1 - eps) * wy
    d[~keep] = 0.0
    dlogits[...] = scale * d
