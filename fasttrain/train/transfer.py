"""Transfer learning (cs231n notes, "Transfer Learning"): start from a trained checkpoint, give
the network a new head (the last Linear) for a new number of classes, and train only the last N
parameterized layers.

Freezing works on the arena's groups: the optimizer skips a group whose hyperparameters say
frozen=True (fasttrain/optim/base.py). The arena lays each group out in *reverse* forward order
(decayed weights, then no-decay parameters), so "the last N layers" - a suffix of the forward
order - sits at the *start* of each of the two sections. Splitting each section at one offset
therefore gives contiguous groups (trainable first, frozen after) without moving any memory:
at most four groups, still one fused optimizer call per group."""
from __future__ import annotations

import numpy as np

from ..arena import ParamGroup
from ..nn import Linear
from ..nn.norm import _BatchNorm
from ..settings import get_logger
from .checkpoint import module_buffers, read_checkpoint

log = get_logger(__name__)


def parameterized_layers(model) -> list[tuple[str, object]]:
    """(path, module) of every module that owns parameters itself, in forward order."""
    model.parameters()  # assigns the parameters' path names
    return [(path, m) for path, m in model.named_modules() if m._params]


def _parent_and_key(model, path: str):
    parts = path.split(".")
    parent = model
    for p in parts[:-1]:
        parent = dict(parent._children)[p]
    return parent, parts[-1]


def replace_head(model, num_classes: int):
    """Replace the last Linear layer by a fresh Linear(in_features, num_classes); returns it.
    The model must be (re)bound to an arena afterwards (ParamArena.for_model)."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"replace_head(num_classes): expected a positive int, got {num_classes!r}")
    heads = [(path, m) for path, m in model.named_modules() if isinstance(m, Linear) and path]
    if not heads:
        raise ValueError(f"replace_head: the model has no Linear layer below its root:\n{model!r}")
    path, old = heads[-1]
    parent, key = _parent_and_key(model, path)
    new = Linear(old.in_features, num_classes, bias=old.has_bias)
    parent._children = [(k, new if k == key else m) for k, m in parent._children]
    new._path = old._path   # what add_child would have set: the path keys a stochastic layer's draws
    for attr, value in list(vars(parent).items()):  # containers that keep a named attribute too (Residual)
        if value is old:
            setattr(parent, attr, new)
    return new


def load_pretrained(model, arena, path, skip_mismatched: bool = True) -> dict:
    """Copy the parameters and buffers of checkpoint `path` into a model bound to `arena`, by name.

    Entries whose shape differs (the old head, when the number of classes changed) are left at
    their fresh initialization when skip_mismatched, else a ValueError. Names missing on either
    side raise a KeyError (a different architecture). Returns {'loaded': [...], 'skipped': [...]}.

    A PyTorch state_dict (.pt/.pth, or a safetensors file PyTorch wrote) goes through
    fasttrain.interop.load_torch, which pairs its modules with ours and logs the pairing."""
    from .. import interop

    if interop.is_torch_file(path):
        rows = interop.load_torch(model, arena, path, skip_mismatched=skip_mismatched, verbose=False)
        loaded = [our for _, _, our, _, skipped in rows if not skipped]
        skipped = [our for _, _, our, _, skipped in rows if skipped]
        log.info(f"loaded {len(loaded)} PyTorch entries from {path}; re-initialized {skipped or 'none'}")
        return {"loaded": loaded, "skipped": skipped}
    arrays, _ = read_checkpoint(path)
    saved = {k[6:]: v for k, v in arrays.items() if k.startswith("param/")}
    params = arena.named()
    missing, extra = sorted(set(params) - set(saved)), sorted(set(saved) - set(params))
    if missing or extra:
        raise KeyError(f"{path}: the checkpoint's parameters do not match the model: missing {missing}, "
                       f"unexpected {extra}")
    loaded, skipped = [], []
    for name, p in params.items():
        value = saved[name]
        if value.shape != p.shape:
            if not skip_mismatched:
                raise ValueError(f"{path}: parameter {name!r} has shape {value.shape}, the model expects {p.shape}")
            skipped.append(name)
            continue
        p.data[...] = arena.xp.asarray(value, dtype=arena.dtype)
        loaded.append(name)
    for key, (m, name) in module_buffers(model).items():
        value = arrays.get(f"buffer/{key}")
        if value is None or value.shape != m.buffers[name].shape:
            if value is None or not skip_mismatched:
                raise KeyError(f"{path}: buffer {key!r} missing or of another shape in the checkpoint")
            skipped.append(key)
            continue
        m.buffers[name] = arena.xp.asarray(value, dtype=m.buffers[name].dtype)
    log.info(f"loaded {len(loaded)} parameters from {path}; re-initialized {skipped or 'none'}")
    return {"loaded": loaded, "skipped": skipped}


def freeze_except(model, arena, n: int, freeze_bn_stats: bool = True, whole=None) -> list[str]:
    """Freeze every parameter except those of the last `n` parameterized layers (forward order):
    splits the arena's groups into trainable and frozen parts (see the module docstring) and
    marks Parameter.frozen. freeze_bn_stats: a frozen batchnorm layer normalizes with its running
    statistics in training too and stops updating them (use_running_stats), so the frozen part of
    the network computes what it was trained to compute. Call it BEFORE building the optimizer
    (it copies the groups' hypers). Returns the names of the frozen parameters. whole: the model
    whose layers are counted when `model` and `arena` are a part of it (a pipeline stage's)."""
    layers = parameterized_layers(whole if whole is not None else model)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= len(layers):
        raise ValueError(f"freeze_except(n): expected an int in [1, {len(layers)}] (the model's parameterized "
                         f"layers), got {n!r}")
    trainable = {id(p) for _, m in layers[len(layers) - n:] for p in m._params.values()}
    groups = []
    for g in arena.groups:
        inside = [(p, off) for p, off in zip(arena.params, arena.offsets) if g.start <= off < g.stop]
        # reverse forward order: trainable (later layers) first, then frozen; check it is a split
        flags = [id(p) in trainable for p, _ in inside]
        k = flags.index(False) if False in flags else len(flags)
        if any(flags[k:]):
            raise RuntimeError(f"freeze_except: group {g.name!r} does not split into trainable + frozen ranges; "
                               "the arena layout is not the reverse forward order this function relies on")
        cut = inside[k][1] if k < len(inside) else g.stop
        if cut > g.start:
            groups.append(ParamGroup(g.name, g.start, cut, dict(g.hyper)))
        if cut < g.stop:
            groups.append(ParamGroup(g.name + "_frozen", cut, g.stop, {**g.hyper, "frozen": True}))
    arena.groups = groups
    frozen = []
    for p in arena.params:
        p.frozen = id(p) not in trainable
        if p.frozen:
            frozen.append(p.name)
    for _, m in layers[:len(layers) - n]:
        if isinstance(m, _BatchNorm):
            m.use_running_stats = bool(freeze_bn_stats)
    return frozen
