"""Checkpoints as one .npz or one .safetensors file (the format is chosen by the file extension):
parameters (by name), module buffers (BatchNorm running statistics), the draw counters of
stochastic modules (dropout's step, 'draw_step/<module path>'),
optimizer state (flattened to 'opt/<key>'), and a JSON 'meta' entry with step, epoch, seeds,
trainer state and the config (in safetensors: the file's string metadata, 'fasttrain_meta';
scalar and string optimizer entries, such as its step and type, go to 'fasttrain_strings'). Everything a resumed run needs to continue bit-for-bit: the data
order is a pure function of (seed, epoch) and dropout masks of (seed, step, layer)."""
from __future__ import annotations

import json
import os
import zipfile

import numpy as np


def module_buffers(model) -> dict:
    """'<module path>.<name>' -> (module, name) for every entry of a module's `buffers` dict:
    non-parameter state carried across steps (BatchNorm running statistics)."""
    out = {}
    for path, m in model.named_modules():
        for name in getattr(m, "buffers", None) or {}:
            out[f"{path}.{name}" if path else name] = (m, name)
    return out


def _stochastic(model) -> dict:
    """'<module path>' -> module, for each module whose random draws are keyed by its counter."""
    return {path: m for path, m in model.named_modules() if m.stochastic}


def _flatten(prefix: str, value, out: dict) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}/{k}", v, out)
    else:
        out[prefix] = np.asarray(_to_host(value))


def _unflatten(prefix: str, arrays: dict) -> dict:
    root: dict = {}
    for key, value in arrays.items():
        if not key.startswith(prefix + "/"):
            continue
        parts = key[len(prefix) + 1:].split("/")
        node = root
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value.item() if value.ndim == 0 else value
    return root


def _to_host(a):
    return a.get() if hasattr(a, "get") and not isinstance(a, (dict, np.ndarray)) else a


def _is_safetensors(path: str) -> bool:
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".npz", ".safetensors"):
        raise ValueError(f"checkpoint path {path!r}: expected a .npz or .safetensors extension, got {ext or 'none'!r}")
    return ext == ".safetensors"


def save_checkpoint(path, model, arena, optimizer=None, meta: dict | None = None, extra: dict | None = None) -> None:
    """extra: more arrays by name, stored as 'extra/<name>' (the error-feedback residuals of data-parallel runs)."""
    path = os.fspath(path)
    arrays = {f"param/{name}": np.asarray(_to_host(a)) for name, a in arena.state_dict().items()}
    for key, (m, name) in module_buffers(model).items():
        arrays[f"buffer/{key}"] = np.asarray(_to_host(m.buffers[name]))
    for where, m in _stochastic(model).items():
        arrays[f"draw_step/{where}"] = np.asarray(m.step, dtype=np.int64)
    if optimizer is not None:
        _flatten("opt", optimizer.state_dict(), arrays)
    for name, value in (extra or {}).items():
        arrays[f"extra/{name}"] = np.asarray(_to_host(value))
    if _is_safetensors(path):
        from safetensors.numpy import save_file

        # safetensors holds numeric tensors only, and reads 0-d ones back as shape (1,): strings
        # (the optimizer type) and scalars (step, hyperparameters) go to the metadata as JSON
        strings = {k: v.item() for k, v in arrays.items() if v.dtype.kind in "US" or v.ndim == 0}
        tensors = {k: np.ascontiguousarray(v) for k, v in arrays.items() if k not in strings}
        tmp = path + ".tmp.safetensors"
        save_file(tensors, tmp, metadata={"fasttrain_meta": json.dumps(meta or {}),
                                          "fasttrain_strings": json.dumps(strings)})
        os.replace(tmp, path)
        return
    arrays["meta"] = np.array(json.dumps(meta or {}))
    tmp = path + ".tmp.npz"  # write then rename: a crash never leaves half a checkpoint
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def read_checkpoint(path) -> tuple[dict, dict]:
    """(arrays, meta) of a checkpoint file without applying it: arrays keyed 'param/<name>',
    'buffer/<module path>.<name>', 'opt/...'."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such checkpoint")
    if _is_safetensors(path):
        from safetensors import safe_open

        try:
            with safe_open(path, framework="numpy") as f:
                metadata = f.metadata() or {}
                arrays = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error type (a Rust panic, header errors)
            raise ValueError(f"{path}: not a readable safetensors file ({exc})") from exc
        if "fasttrain_meta" not in metadata:
            raise ValueError(f"{path}: not a fasttrain checkpoint (no 'fasttrain_meta' metadata)")
        for k, v in json.loads(metadata.get("fasttrain_strings", "{}")).items():
            arrays[k] = np.array(v)
        return arrays, json.loads(metadata["fasttrain_meta"])
    try:
        with np.load(path, allow_pickle=False) as f:
            if not hasattr(f, "files"):  # a bare .npy file saved under a .npz name
                raise ValueError("a single array, not an .npz archive")
            arrays = {k: f[k] for k in f.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        # numpy's own messages name neither the file nor the format (a truncated archive says
        # "File is not a zip file", random bytes talk about allow_pickle)
        reason = "random bytes or another format" if "pickle" in str(exc) else exc
        raise ValueError(f"{path}: not a readable .npz checkpoint ({reason})") from exc
    if "meta" not in arrays:
        raise ValueError(f"{path}: not a fasttrain checkpoint (no 'meta' entry)")
    return arrays, json.loads(str(arrays.pop("meta")))


def load_checkpoint(path, model, arena, optimizer=None) -> dict:
    """Restore parameters, buffers and optimizer state in place; returns the meta dict."""
    path = os.fspath(path)
    arrays, meta = read_checkpoint(path)
    apply_checkpoint(path, arrays, model, arena, optimizer)
    return meta


def apply_checkpoint(path, arrays: dict, model, arena, optimizer=None) -> None:
    """load_checkpoint's restore, from arrays read_checkpoint(path) already returned (path names
    the file in errors): for callers that also need the file's other entries."""
    arena.load_state_dict({k[6:]: v for k, v in arrays.items() if k.startswith("param/")})
    buffers = module_buffers(model)
    saved = {k[7:]: v for k, v in arrays.items() if k.startswith("buffer/")}
    if set(saved) != set(buffers):
        raise KeyError(f"{path}: buffers {sorted(saved)} do not match the model's {sorted(buffers)}")
    for key, (m, name) in buffers.items():
        old = m.buffers[name]
        m.buffers[name] = arena.xp.asarray(saved[key], dtype=old.dtype)
    for where, m in _stochastic(model).items():   # absent from checkpoints older than the counters
        if f"draw_step/{where}" in arrays:
            m.step = int(arrays[f"draw_step/{where}"])
    if optimizer is not None:
        optimizer.load_state_dict(_unflatten("opt", arrays))
