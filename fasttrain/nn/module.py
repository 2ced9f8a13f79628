"""Module base class and the containers Sequential and Residual.

A module keeps what its backward needs in `self.cache` during forward (training or not), and its
backward returns dx and *accumulates* parameter gradients into `param.grad` (views into the
arena's gradient buffer), so a shared parameter or a residual branch sums correctly.
"""
from __future__ import annotations

import numpy as np

from ..arena import Parameter
from . import layout


class Module:
    #: attributes a forward sets and the matching backward reads (the per-call state): a pipeline
    #: runs several micro-batches' forwards before their backwards and keeps each one's apart
    cache_attrs: tuple[str, ...] = ("cache",)
    #: whether backward must return the gradient of the input. False only where nothing reads it
    #: (the network's first layer: its input is the data), set through set_needs_input_grad; a
    #: layer may then skip that work (a first convolution its whole data gradient) and return None
    needs_input_grad: bool = True

    def __init__(self):
        self.training = True
        self._params: dict[str, Parameter] = {}
        self._children: list[tuple[str, Module]] = []
        self.cache = None
        self.step = 0
        self.name = type(self).__name__
        #: this module's path in the outermost model holding it (named_modules' path there): what
        #: keys the random draws of a stochastic layer built without an explicit layer_id
        self._path = ""

    # -- construction ---------------------------------------------------------------------------
    def add_param(self, name: str, shape, init, decay: bool = True) -> Parameter:
        p = Parameter(shape, init, decay=decay, name=name)
        self._params[name] = p
        return p

    def add_child(self, name: str, module: "Module") -> "Module":
        if not isinstance(module, Module):
            raise TypeError(f"{self.name}: child {name!r} must be a Module, got {type(module).__name__}")
        self._children.append((name, module))
        # the child's subtree now sits under this module: its paths follow this module's (they
        # are updated again when this module is itself added to a parent)
        for path, m in module.named_modules(f"{self._path}.{name}" if self._path else name):
            m._path = path
        return module

    # -- traversal ------------------------------------------------------------------------------
    def children(self) -> list["Module"]:
        return [m for _, m in self._children]

    def named_modules(self, prefix: str = ""):
        """(path, module) pairs, the root's path being ''."""
        yield prefix, self
        for name, child in self._children:
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def parameters(self) -> list[Parameter]:
        """All parameters in forward order, named by their path (e.g. '0.weight')."""
        out = []
        for path, module in self.named_modules():
            for pname, p in module._params.items():
                p.name = f"{path}.{pname}" if path else pname
                out.append(p)
        return out

    def train(self, mode: bool = True) -> "Module":
        for _, m in self.named_modules():
            m.training = mode
        return self

    def eval(self) -> "Module":
        return self.train(False)

    #: whether the module draws random numbers keyed by `step` in training (dropout and kin);
    #: checkpoints keep those modules' counters
    stochastic = False

    def set_step(self, step: int) -> None:
        """Set every module's draw counter to the training step: dropout masks are a pure
        function of (seed, step, layer), so backward and a resumed run regenerate the same masks.
        Without it the counters still advance by one per training forward (draw_step)."""
        for _, m in self.named_modules():
            m.step = int(step)

    def draw_step(self) -> int:
        """The step keying this training forward's draw; the counter then advances, so every
        forward draws afresh by itself (a plain training loop needs no set_step; the trainer
        calls set_step each step, which gives the same keys)."""
        step = self.step
        if not 0 <= step < 2 ** 32:
            raise ValueError(f"{self.name}: step must be in [0, 2**32) (a Philox counter word), got {step}")
        self.step = step + 1
        return step

    def draw_counters(self) -> list[int]:
        """Every module's draw counter (`step`), in named_modules order. Restoring them with
        set_draw_counters before a forward replays that forward's random draws: a gradient check's
        repeated forwards, a pipeline's micro-batches of one batch."""
        return [m.step for _, m in self.named_modules()]

    def set_draw_counters(self, counters: list[int]) -> None:
        modules = [m for _, m in self.named_modules()]
        if len(counters) != len(modules):
            raise ValueError(f"{self.name}.set_draw_counters: expected {len(modules)} counters, got {len(counters)}")
        for m, step in zip(modules, counters):
            m.step = int(step)

    def stash_cache(self, clear: bool = True) -> list:
        """The per-call state (`cache_attrs`) of every module of the subtree, left by the last
        forward; clear=True drops the modules' own references, so the stash alone holds it."""
        out = []
        for _, m in self.named_modules():
            out.append(tuple(getattr(m, a) for a in m.cache_attrs))
            if clear:
                for a in m.cache_attrs:
                    setattr(m, a, None)
        return out

    def restore_cache(self, stash: list) -> None:
        """Put back what stash_cache returned, so the next backward is that forward's."""
        modules = [m for _, m in self.named_modules()]
        if len(stash) != len(modules):
            raise ValueError(f"{self.name}.restore_cache: expected a stash of {len(modules)} modules, got {len(stash)}")
        for m, values in zip(modules, stash):
            for a, v in zip(m.cache_attrs, values):
                setattr(m, a, v)

    def set_needs_input_grad(self, flag: bool) -> None:
        """Whether backward must return dx (see needs_input_grad); containers pass it to the
        layer that reads their input."""
        self.needs_input_grad = bool(flag)

    # -- the blocked layout (fasttrain/nn/layout.py) ----------------------------------------------
    #: the halo a Blocked input should carry for this layer to read it without a copy
    in_halo = 0
    #: set by the container: the halo this layer's consumer reads (a producer writes it when it can)
    out_halo = 0
    #: whether this layer would use its input's batch statistics (Blocked.stats) if they came along
    wants_stats = False
    #: set by the container: whether this layer's consumer wants its output's statistics
    out_stats = False
    #: the halo this layer's backward reads a blocked dy with without a copy (after its forward)
    dy_halo = 0
    #: set by the container during backward: the halo the previous layer's backward reads (dy_halo)
    dx_halo = 0
    #: set by the container during backward: whether the dx this layer's backward returns (or
    #: backward_into leaves in its `into`) is the whole gradient of its input, to which nothing is
    #: added later (layout.backward_chain); a convolution then forms a preceding batchnorm's sums
    dx_complete = False
    #: set by the container around a forward of an NCHW input: a layer may then return its output
    #: blocked (a convolution's stem kernel reads NCHW and writes blocked); its backward takes that
    #: layout's dy and still returns an NCHW dx
    blocked_out = False

    def takes_blocked(self, x) -> bool:
        """Whether forward takes the layout.Blocked value x as it is (else a container converts it)."""
        return False

    def blocked_entry(self, x):
        """For an NCHW x: the halo to convert x to the blocked layout with before this layer (a
        convolution the direct engine runs), or None to stay NCHW."""
        return None

    # -- computation ----------------------------------------------------------------------------
    def forward(self, x):
        raise NotImplementedError

    def backward(self, dy):
        raise NotImplementedError

    def __call__(self, x):
        return self.forward(x)

    def extra_repr(self) -> str:
        return ""

    def __repr__(self):
        if not self._children:
            return f"{self.name}({self.extra_repr()})"
        inner = "\n".join(f"  ({n}): " + repr(m).replace("\n", "\n  ") for n, m in self._children)
        return f"{self.name}(\n{inner}\n)"


class Sequential(Module):
    def __init__(self, *layers: Module):
        super().__init__()
        for i, layer in enumerate(layers):
            self.add_child(str(i), layer)

    def __getitem__(self, i):
        return self._children[i][1]

    def __len__(self):
        return len(self._children)

    def set_needs_input_grad(self, flag: bool) -> None:
        super().set_needs_input_grad(flag)
        if self._children:
            self._children[0][1].set_needs_input_grad(flag)

    # the layers pass activations on in the blocked layout where they can; the container returns
    # the layout it was given, and self.cache keeps the conversions for backward
    @property
    def in_halo(self):
        return self._children[0][1].in_halo if self._children else 0

    def takes_blocked(self, x) -> bool:
        return True

    def blocked_entry(self, x):
        return self._children[0][1].blocked_entry(x) if self._children else None

    def forward(self, x):
        y, self.cache = layout.forward_chain(self.children(), x, self.out_halo, self.out_stats)
        return y

    def backward(self, dy, after_child=None):
        """dx; `after_child(i)`, when given, runs once child i's backward is done."""
        if self.cache is None:
            raise RuntimeError(f"{self.name}.backward: backward called before forward")
        return layout.backward_chain(self.children(), dy, self.cache, after_child, complete=self.dx_complete)

    def backward_into(self, dy, dx):
        """backward(dy) with the first child adding its input gradient into dx where it can
        (Conv2d.backward_into): dx then, else the gradient (the caller adds)."""
        if self.cache is None:
            raise RuntimeError(f"{self.name}.backward: backward called before forward")
        return layout.backward_chain(self.children(), dy, self.cache, into=dx, complete=self.dx_complete)


def _tail_types():
    """(ReLU, _BatchNorm), imported on first use (their modules import this one)."""
    global _TAIL_TYPES
    if _TAIL_TYPES is None:
        from .activation import ReLU
        from .norm import _BatchNorm
        _TAIL_TYPES = ReLU, _BatchNorm
    return _TAIL_TYPES


_TAIL_TYPES = None


class Residual(Module):
    """y = post(body(x) + shortcut(x)); shortcut is the identity unless a module is given (e.g. a 1x1
    strided conv when shapes change), post (e.g. a ReLU) is optional. He et al., "Deep Residual
    Learning", 2016.

    When the body is a Sequential ending with a batchnorm and post is a ReLU (or absent), as in a
    ResNet basic block, the add and the ReLU run inside that batchnorm's passes (its forward_add /
    backward_add): same values and gradients, two passes over the activations fewer each way."""

    def __init__(self, body: Module, shortcut: Module | None = None, post: Module | None = None):
        super().__init__()
        self.body = self.add_child("body", body)
        self.shortcut = self.add_child("shortcut", shortcut) if shortcut is not None else None
        self.post = self.add_child("post", post) if post is not None else None

    def _fused_tail(self):
        """The body's closing batchnorm when the add and post can run inside it, else None."""
        ReLU, _BatchNorm = _tail_types()
        children = self.body._children if isinstance(self.body, Sequential) else None
        if not children:
            return None
        last = children[-1][1]
        if not isinstance(last, _BatchNorm) or last.relu or not (self.post is None or type(self.post) is ReLU):
            return None
        return last

    # On a Blocked x the body, the shortcut and the post each return the blocked layout (their
    # containers convert where a layer cannot take it), so the add runs on blocked arrays too.
    @property
    def in_halo(self):
        return self.body.in_halo

    def takes_blocked(self, x) -> bool:
        return True

    def blocked_entry(self, x):
        return self.body.blocked_entry(x)

    def forward(self, x):
        bn = self._fused_tail()  # structure only, so backward (and a restored cache) agrees
        chain = layout.forward_chain
        if self.shortcut is not None:
            s, short = chain([self.shortcut], x)
        else:
            s, short = x, None
        if bn is not None:
            z, head = chain(self.body.children()[:-1], x, bn.in_halo, bn.wants_stats)
            self._check_shapes(z, s)
            bn.out_halo = self.out_halo
            self.cache = (head, short, None)
            return bn.forward_add(z, s, relu=self.post is not None)
        y, body = chain([self.body], x, self.out_halo)
        self._check_shapes(y, s)
        out = layout.add(y, s)
        post = None
        if self.post is not None:
            out, post = chain([self.post], out, self.out_halo)
        self.cache = (body, short, post)
        return out

    @staticmethod
    def _check_shapes(y, s):
        if y.shape != s.shape:
            raise ValueError(f"Residual: body output {y.shape} and shortcut output {s.shape} differ; "
                             "give a shortcut module that maps the input to the body's output shape")

    def backward(self, dy):
        if self.cache is None:
            raise RuntimeError(f"{self.name}.backward: backward called before forward")
        bn = self._fused_tail()
        body, short, post = self.cache
        chain = layout.backward_chain
        if bn is not None:
            head = self.body.children()[:-1]
            bn.dx_halo = head[-1].dy_halo if head and body[-1] is None else 0
            dz, g = bn.backward_add(dy)
            if self.shortcut is None and layout.data_of(g) is not layout.data_of(dy):
                # identity shortcut: the body's first layer (a convolution) adds its data gradient
                # into g, the batchnorm's fresh residual gradient, so no sum pass follows (and what
                # it leaves there is the whole gradient of x when this block's is)
                dz = chain(head, dz, body, into=g, complete=self.dx_complete)
                if layout.data_of(dz) is layout.data_of(g):
                    return dz
            else:
                dz = chain(head, dz, body)
        else:
            if self.post is not None:
                dy = chain([self.post], dy, post)
            dz, g = chain([self.body], dy, body), dy
        fresh = layout.data_of(dz)
        if (hasattr(self.shortcut, "backward_into") and short[0] is None and short[-1] is None
                and fresh is not layout.data_of(dy)):
            # the shortcut (a convolution first) adds its data gradient into the body's fresh one
            # where it can, else returns its own; what it leaves in dz is then the last word
            self.shortcut.dx_halo = 0
            self.shortcut.dx_complete = self.dx_complete
            try:
                ds = self.shortcut.backward_into(g, dz)
            finally:
                self.shortcut.dx_complete = False
            if ds is dz:
                return dz
        else:
            ds = chain([self.shortcut], g, short) if self.shortcut is not None else g
        # dz is the body's fresh input gradient: the sum goes into it, unless a caller may still
        # hold that array
        inplace = fresh is not layout.data_of(ds) and fresh is not layout.data_of(dy)
        return layout.add(dz, ds, inplace=inplace)
