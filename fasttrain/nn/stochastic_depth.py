"""Stochastic depth (Huang, Sun, Liu, Sedra, Weinberger, "Deep Networks with Stochastic Depth",
ECCV 2016): during training each residual block's body is skipped with probability p_drop
(the block becomes its shortcut), at test time the body's output is scaled by its survival
probability 1 - p_drop:
    train:  y = post(b * body(x) + shortcut(x)),  b ~ Bernoulli(1 - p_drop)
    eval:   y = post((1 - p_drop) * body(x) + shortcut(x))
A dropped body is not run at all, which is where the training speed-up comes from.

b is one Philox-4x32-10 draw keyed by (seed, step, layer) (element 0 of the dropout mask,
docs/KERNELS.md), so it is a pure function of the step: forward and backward agree, and a
resumed run repeats the same drops.
"""
from __future__ import annotations

from ..kernels.dropout import keep_ref
from .dropout import _U32, check_layer_id, layer_key
from .module import Module, Residual


def linear_decay(block_index: int, num_blocks: int, p_last: float = 0.5) -> float:
    """The paper's linear decay rule p_l = l / L * p_L for block l = 1..L (eq. 4): the first
    blocks, which extract low-level features, are almost always kept."""
    if not 1 <= block_index <= num_blocks:
        raise ValueError(f"linear_decay(block_index): expected 1 <= block_index <= num_blocks={num_blocks}, "
                         f"got {block_index}")
    return block_index / num_blocks * p_last


class StochasticDepth(Module):
    stochastic = True

    def __init__(self, block: Residual, p_drop: float = 0.5, seed: int = 0, layer_id: int | None = None):
        super().__init__()
        if not isinstance(block, Residual):
            raise TypeError(f"StochasticDepth(block): expected a fasttrain.nn.Residual (y = body(x) + shortcut(x)), "
                            f"got {type(block).__name__}")
        if isinstance(p_drop, bool) or not isinstance(p_drop, (int, float)) or not 0 <= p_drop < 1:
            raise ValueError(f"StochasticDepth(p_drop): expected a probability in [0, 1), got {p_drop!r}")
        if not isinstance(seed, int) or not 0 <= seed < 2 ** 64:
            raise ValueError(f"StochasticDepth(seed): expected an int in [0, 2**64), got {seed!r}")
        self.block = self.add_child("block", block)
        self.p_drop, self.seed, self.layer_id = float(p_drop), seed, check_layer_id("StochasticDepth", layer_id)

    def extra_repr(self):
        return f"p_drop={self.p_drop}, seed={self.seed}, layer_id={self.layer_id}"

    def keeps(self, step: int) -> bool:
        """Whether the body runs at training step `step`."""
        if not 0 <= step < _U32:
            raise ValueError(f"StochasticDepth: step must be in [0, 2**32) (a Philox counter word), got {step}")
        return bool(keep_ref(1, self.p_drop, self.seed, step, layer_key(self))[0])

    def forward(self, x):
        blk = self.block
        # body scale: 1 (kept) or 0 (dropped) in training, the survival probability in eval
        scale = (1.0 if self.keeps(self.draw_step()) else 0.0) if self.training else 1.0 - self.p_drop
        s = blk.shortcut.forward(x) if blk.shortcut is not None else x
        if scale:
            y = blk.body.forward(x)
            if y.shape != s.shape:
                raise ValueError(f"StochasticDepth: body output {y.shape} and shortcut output {s.shape} differ; "
                                 "give the Residual a shortcut module that maps the input to the body's output shape")
            out = y + s if scale == 1.0 else scale * y + s
        else:
            out = s
        self.cache = scale
        return blk.post.forward(out) if blk.post is not None else out

    def backward(self, dy):
        if self.cache is None:
            raise RuntimeError("StochasticDepth.backward: backward called before forward")
        scale, blk = self.cache, self.block
        if blk.post is not None:
            dy = blk.post.backward(dy)
        ds = blk.shortcut.backward(dy) if blk.shortcut is not None else dy
        if not scale:
            return ds   # the body did not run: it gets no gradient
        dx = blk.body.backward(dy if scale == 1.0 else scale * dy)
        return dx + ds
