"""Weights between PyTorch and fasttrain: load a PyTorch state_dict into a fasttrain model, and
export a fasttrain model as a PyTorch state_dict.

Layouts already agree (convolution weights (K, C, R, S), linear weights (out, in), BatchNorm
weight / bias / running_mean / running_var), so moving weights is a matter of names. The two
libraries name modules differently, so entries are paired module by module:

1. Each module is described by its signature, the names and shapes of its entries ({'weight':
   (16, 3, 3, 3)} for a convolution; weight, bias, running_mean, running_var for a BatchNorm;
   PyTorch's num_batches_tracked counter is ignored).
2. Modules with the same signature are paired in order: ours in forward order, theirs in the
   order of the state_dict (a .pt file or a dict keeps it) or, from a safetensors file (which
   stores names sorted), in natural name order ('layer2.10' after 'layer2.9'), with sibling
   modules reordered where their shapes need it (timm's stem 'bn1' sorts after 'blocks.0.bn1' but
   runs first, a head of another size allowed); where shapes allow several orders, the first in
   natural order is taken.
3. What is left (same entry names and ranks, other shapes: a classifier head with another number
   of classes) is paired in the same order; with skip_mismatched those pairs keep their fresh
   initialization, otherwise a shape mismatch is an error.
The pairing is printed as a table (their name, shape -> our name, shape), so a wrong guess is
visible; `mapping={their module: our module}` fixes any pair by hand.

A .pt file needs torch; a safetensors file is read with safetensors.numpy, without torch.
"""
from __future__ import annotations

import os
import re
from collections import OrderedDict

import numpy as np

from .settings import get_logger

log = get_logger(__name__)

# entries PyTorch keeps that have no counterpart here (BatchNorm's step counter)
IGNORED = ("num_batches_tracked",)
TORCH_SUFFIXES = (".pt", ".pth", ".bin")


# ---- reading and writing PyTorch-side files ------------------------------------------------------

def read_state_dict(source) -> tuple[OrderedDict, bool]:
    """(name -> NumPy array, ordered) from a .pt/.pth file (needs torch), a .safetensors file
    (no torch needed) or a dict of arrays or tensors. `ordered` says whether the entries come in
    the model's definition order (a safetensors file sorts them by name)."""
    if isinstance(source, dict):
        return OrderedDict((k, _to_numpy(v)) for k, v in source.items()), True
    path = os.fspath(source)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".safetensors":
        from safetensors.numpy import load_file

        return OrderedDict(load_file(path)), False
    if ext in TORCH_SUFFIXES:
        try:
            import torch
        except ImportError as exc:
            raise ImportError(f"{path}: reading a {ext} file needs torch ({exc}); without torch, save the "
                              "state_dict as safetensors (safetensors.torch.save_file) and load that") from None
        sd = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
            sd = sd["state_dict"]  # a training checkpoint that holds the model's state_dict
        if not isinstance(sd, dict):
            raise ValueError(f"{path}: expected a state_dict (a dict of tensors), got {type(sd).__name__}")
        return OrderedDict((k, _to_numpy(v)) for k, v in sd.items()), True
    raise ValueError(f"{path}: expected a .safetensors, .pt, .pth or .bin file, got extension {ext or 'none'!r}")


def _to_numpy(v) -> np.ndarray:
    if hasattr(v, "detach"):  # a torch tensor
        return v.detach().cpu().numpy()
    return np.asarray(v.get() if hasattr(v, "get") and not isinstance(v, np.ndarray) else v)


def save_state_dict(sd: dict, path) -> None:
    """Write name -> array as .safetensors (no torch needed) or .pt (torch tensors, torch needed)."""
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    arrays = {k: np.ascontiguousarray(v) for k, v in sd.items()}
    if ext == ".safetensors":
        from safetensors.numpy import save_file

        save_file(arrays, path)
    elif ext in TORCH_SUFFIXES:
        import torch

        torch.save(OrderedDict((k, torch.from_numpy(v.copy())) for k, v in arrays.items()), path)
    else:
        raise ValueError(f"{path}: expected a .safetensors, .pt, .pth or .bin file, got extension {ext or 'none'!r}")


# ---- pairing modules -----------------------------------------------------------------------------

def _natural_key(name: str):
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", name) if t]


def _group(sd: dict) -> OrderedDict:
    """module prefix -> OrderedDict(entry -> array), in first-appearance order."""
    out = OrderedDict()
    for key, value in sd.items():
        prefix, _, entry = key.rpartition(".")
        if entry in IGNORED:
            continue
        out.setdefault(prefix, OrderedDict())[entry] = value
    return out


def _ours(model) -> OrderedDict:
    """module path -> OrderedDict(entry -> array) in forward order: parameters, then buffers."""
    model.parameters()  # names the parameters by path
    out = OrderedDict()
    for path, m in model.named_modules():
        entries = OrderedDict((k, p.data) for k, p in m._params.items())
        entries.update(getattr(m, "buffers", None) or {})
        if entries:
            out[path] = entries
    return out


def _signature(entries: dict, shapes: bool = True):
    return tuple((k, tuple(np.shape(v)) if shapes else np.ndim(v)) for k, v in sorted(entries.items()))


def _forward_order(names: list, entries: list, want: list) -> list | None:
    """`names` (in natural order, with their `entries`) reordered so that their signatures run as
    those of `want` (our modules' entries, in forward order), or None where no such order exists.
    Sorted names need not be forward order: timm's 'blocks.0.bn1' sorts before the stem's 'bn1',
    which runs first, and two BNs of one width would swap. Only sibling modules move: numbered
    children (a Sequential's) keep their order, named ones are tried in natural order first, so a
    file whose natural order already fits keeps it. Up to two modules may differ in shape only (a
    classifier head of another number of classes); the order with the fewest such is taken."""
    if len(names) != len(want):
        return None
    exact = [_signature(e) for e in want]
    ranks = [_signature(e, shapes=False) for e in want]
    sig_of = {n: (_signature(e), _signature(e, shapes=False)) for n, e in zip(names, entries)}
    tree = {}  # name part -> subtree; the key None marks a module of its own at that node
    for name in names:
        node = tree
        for part in name.split(".") if name else []:
            node = node.setdefault(part, {})
        node[None] = name
    failed = set()

    def place(node, k, budget):
        """(the modules under `node` in an order that matches want[k:], shape differences spent),
        or None."""
        if (id(node), k, budget) in failed:
            return None
        own, spent = ([node[None]] if None in node else []), 0
        if own:
            sig, rank = sig_of[own[0]]
            spent = 0 if sig == exact[k] else 1 if rank == ranks[k] else budget + 1
        kids = [c for c in node if c is not None]
        found = None
        if spent <= budget:
            found = arrange(node, kids, [c for c in kids if c.isdigit()], frozenset(), k + len(own), budget - spent, {})
        if found is None:
            failed.add((id(node), k, budget))
            return None
        return own + found[0], spent + found[1]

    def arrange(node, kids, numbered, used, k, budget, seen):
        if len(used) == len(kids):
            return [], 0
        if (used, budget) in seen:
            return None
        nxt = next((c for c in numbered if c not in used), None)
        for c in kids:
            if c in used or (c.isdigit() and c != nxt):
                continue
            head = place(node[c], k, budget)
            if head is not None:
                rest = arrange(node, kids, numbered, used | {c}, k + len(head[0]), budget - head[1], seen)
                if rest is not None:
                    return head[0] + rest[0], head[1] + rest[1]
        seen[(used, budget)] = None
        return None

    for budget in range(3):
        found = place(tree, 0, budget)
        if found is not None:
            return found[0]
    return None


def _pair(ours: OrderedDict, theirs: OrderedDict, ordered: bool, mapping: dict | None):
    """[(their module, our module)] pairing every module of both sides, or a ValueError saying
    which are left over."""
    pairs = []
    mapping = dict(mapping or {})
    for t, o in mapping.items():
        if t not in theirs or o not in ours:
            raise KeyError(f"mapping: {t!r} -> {o!r}: expected a module of the state_dict ({sorted(theirs)}) -> "
                           f"a module of the model ({list(ours)})")
        pairs.append((t, o))
    left_o = [o for o in ours if o not in mapping.values()]
    left_t = [t for t in theirs if t not in mapping]
    if not ordered:
        left_t.sort(key=_natural_key)
        left_t = _forward_order(left_t, [theirs[t] for t in left_t], [ours[o] for o in left_o]) or left_t
    for shapes in (True, False):  # exact signatures first, then same entries of other shapes
        classes_o, classes_t = {}, {}
        for o in left_o:
            classes_o.setdefault(_signature(ours[o], shapes), []).append(o)
        for t in left_t:
            classes_t.setdefault(_signature(theirs[t], shapes), []).append(t)
        for sig, os_ in classes_o.items():
            ts = classes_t.get(sig, [])
            if len(ts) == len(os_):
                pairs += list(zip(ts, os_))
        done_o = {o for _, o in pairs}
        done_t = {t for t, _ in pairs}
        left_o = [o for o in left_o if o not in done_o]
        left_t = [t for t in left_t if t not in done_t]
    if left_o or left_t:
        describe = lambda side, names: "; ".join(  # noqa: E731
            f"{n or '<root>'} {dict((k, tuple(np.shape(v))) for k, v in side[n].items())}" for n in names)
        raise ValueError("the state_dict and the model do not pair up module by module: left in the state_dict: "
                         f"[{describe(theirs, left_t)}]; left in the model: [{describe(ours, left_o)}]. Pass "
                         "mapping={their module: our module} for the pairs that cannot be guessed")
    order = {o: i for i, o in enumerate(ours)}
    return sorted(pairs, key=lambda p: order[p[1]])


def pairing(model, source, mapping: dict | None = None, ordered: bool | None = None) -> list[tuple[str, str]]:
    """[(their module, our module)] as load_torch would pair them, without loading anything (a
    ValueError names what is left over). `ordered` overrides what the source says (a dict read
    from a safetensors file earlier is not in definition order)."""
    sd, in_order = read_state_dict(source)
    return _pair(_ours(model), _group(sd), in_order if ordered is None else ordered, mapping)


def format_mapping(rows) -> str:
    """The pairing as a table: their name, shape -> our name, shape (and 'skipped' where the
    shapes differ)."""
    lines = []
    for their, tshape, our, oshape, skipped in rows:
        note = "   skipped (shape differs)" if skipped else ""
        lines.append(f"{their:<36} {str(tshape):<18} -> {our:<28} {oshape}{note}")
    return "\n".join(lines)


def _qualified(prefix: str, entry: str) -> str:
    return f"{prefix}.{entry}" if prefix else entry


# ---- loading into a model, exporting from one ----------------------------------------------------

def load_torch(model, arena, source, mapping: dict | None = None, skip_mismatched: bool = False,
               verbose: bool = True) -> list[tuple]:
    """Copy a PyTorch state_dict (a .pt/.pth file, a safetensors file, or a dict) into `model`,
    bound to `arena`: parameters into the arena, BatchNorm running statistics into the modules'
    buffers. Returns the rows of the pairing (their name, shape, our name, shape, skipped), which
    it also prints (verbose) or logs."""
    sd, ordered = read_state_dict(source)
    if arena is not getattr(model, "arena", arena):
        raise ValueError("load_torch(arena): expected the arena the model is bound to (ParamArena.for_model)")
    ours, theirs = _ours(model), _group(sd)
    rows = []
    for t, o in _pair(ours, theirs, ordered, mapping):
        module = dict(model.named_modules())[o]
        for entry, target in ours[o].items():
            value = theirs[t].get(entry)
            if value is None:
                raise KeyError(f"{_qualified(t, entry)}: the state_dict has no such entry for our {o!r}")
            skipped = tuple(value.shape) != tuple(target.shape)
            rows.append((_qualified(t, entry), tuple(value.shape), _qualified(o, entry), tuple(target.shape), skipped))
            if skipped:
                if not skip_mismatched:
                    raise ValueError(f"{_qualified(t, entry)} has shape {tuple(value.shape)}, our "
                                     f"{_qualified(o, entry)} expects {tuple(target.shape)} (skip_mismatched=True "
                                     "keeps our initialization there)")
                continue
            if entry in module._params:
                target[...] = arena.xp.asarray(value, dtype=arena.dtype)
            else:
                module.buffers[entry] = arena.xp.asarray(value, dtype=target.dtype)
    table = format_mapping(rows)
    if verbose:
        print(table)
    else:
        log.info("PyTorch -> fasttrain mapping:\n%s", table)
    return rows


def torch_state_dict(model, like=None, mapping: dict | None = None) -> OrderedDict:
    """The model's parameters and buffers as a PyTorch state_dict of NumPy arrays, in forward
    order. Without `like`, names are our module paths ('3.body.0.weight'), with each BatchNorm's
    num_batches_tracked (0); with `like` (a PyTorch state_dict, module or file of the target
    model) names are the target's, paired as load_torch pairs them, so
    torch_model.load_state_dict(...) takes the result strictly."""
    ours = _ours(model)
    out = OrderedDict()
    host = lambda a: np.array(a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else a)  # noqa: E731
    if like is None:
        for path, entries in ours.items():
            for entry, value in entries.items():
                out[_qualified(path, entry)] = host(value)
            if "running_mean" in entries:
                out[_qualified(path, "num_batches_tracked")] = np.array(0, np.int64)
        return out
    if hasattr(like, "state_dict") and callable(like.state_dict):
        like = like.state_dict()
    sd, ordered = read_state_dict(like)
    theirs = _group(sd)
    name_of = {o: t for t, o in _pair(ours, theirs, ordered, mapping)}
    for path, entries in ours.items():
        t = name_of[path]
        for entry, value in entries.items():
            want = theirs[t].get(entry)
            if want is None or tuple(want.shape) != tuple(np.shape(value)):
                raise ValueError(f"{_qualified(t, entry)}: the target expects "
                                 f"{None if want is None else tuple(want.shape)}, our {_qualified(path, entry)} is "
                                 f"{tuple(np.shape(value))}")
            out[_qualified(t, entry)] = host(value).astype(want.dtype, copy=False)
        counter = _qualified(t, "num_batches_tracked")
        if counter in sd:
            out[counter] = np.array(sd[counter])
    return out


def save_torch(model, path, like=None, mapping: dict | None = None) -> None:
    """Write torch_state_dict(model, like) to a .safetensors file (no torch needed) or a .pt file."""
    save_state_dict(torch_state_dict(model, like, mapping), path)


def is_torch_file(path) -> bool:
    """Whether `path` holds a PyTorch state_dict rather than a fasttrain checkpoint: a .pt/.pth/
    .bin file, or a safetensors file without fasttrain's metadata."""
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext in TORCH_SUFFIXES:
        return True
    if ext != ".safetensors" or not os.path.isfile(path):
        return False
    from safetensors import safe_open

    with safe_open(path, framework="numpy") as f:
        return "fasttrain_meta" not in (f.metadata() or {})
