"""Fully connected layer (reference). x: (N, I), w: (O, I), b: (O,), y/dy: (N, O)."""
import numpy as np

OPS = ["linear_fwd", "linear_bwd"]


def linear_fwd_ref(x, w, b, y):
    np.matmul(x, w.T, out=y)
    y += b


def linear_bwd_ref(x, w, dy, dx, dw, db):
    np.matmul(dy, w, out=dx)
    dw += dy.T @ x
    db += dy.sum(axis=0)
