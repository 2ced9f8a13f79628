"""The CUDA backend as seen by the registry: fasttrain._cuda's kernels with CuPy's current stream
passed explicitly, under the op names and signatures of docs/KERNELS.md. Imported only when the
cuda backend is asked for (it imports cupy)."""
from __future__ import annotations

import cupy

from .. import _cuda


def _stream() -> int:
    return cupy.cuda.get_current_stream().ptr


def _with_stream(fn):
    # by keyword: ops with optional trailing arguments (batchnorm's relu / y / residual) keep their defaults
    def call(*args, **kwargs):
        return fn(*args, **kwargs, stream=_stream())

    call.__name__ = fn.__name__
    return call


_STREAMED = ["relu_fwd", "relu_bwd", "leaky_relu_fwd", "leaky_relu_bwd", "elu_fwd", "elu_bwd", "sigmoid_fwd",
             "sigmoid_bwd", "tanh_fwd", "tanh_bwd", "sgd_step", "momentum_step", "nesterov_step", "adagrad_step",
             "rmsprop_step", "rmsprop_centered_step", "rmsprop_momentum_step", "rmsprop_centered_momentum_step",
             "adam_step", "adam_amsgrad_step", "batchnorm_fwd_train", "batchnorm_fwd_eval",
             "batchnorm_bwd", "dropout_fwd", "dropout_bwd", "dropout_mask", "maxpool2d_fwd", "maxpool2d_bwd",
             "avgpool2d_fwd", "avgpool2d_bwd", "conv2d_fwd", "conv2d_bwd_data", "conv2d_bwd_weight"]
globals().update({name: _with_stream(getattr(_cuda, name)) for name in _STREAMED})


def softmax_xent(logits, labels, dlogits):
    """Mean loss as a Python float (one device-to-host copy of a scalar per call)."""
    row_loss = cupy.empty(logits.shape[0], cupy.float32)
    _cuda.softmax_xent_rows(logits, labels, dlogits, row_loss, _stream())
    return float(row_loss.mean()) if row_loss.size else 0.0


def softmax_xent_weighted(logits, labels, weight, label_smoothing, ignore_index, scale, dlogits, row_loss):
    _cuda.softmax_xent_weighted(logits, labels, weight, label_smoothing, ignore_index, scale, float(weight.sum()),
                                dlogits, row_loss, _stream())


# The fully connected layer is one GEMM each way: cuBLAS (through CuPy, on its current stream) is
# the right tool, and a hand-written GEMM would only be slower (csrc/cuda has none).
def linear_fwd(x, w, b, y):
    cupy.matmul(x, w.T, out=y)
    y += b


def linear_bwd(x, w, dy, dx, dw, db):
    cupy.matmul(dy, w, out=dx)
    dw += dy.T @ x          # accumulated, as docs/KERNELS.md requires of d<param> outputs
    db += dy.sum(axis=0)
