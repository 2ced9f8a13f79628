"""Run configuration: one dataclass; defaults < TOML file < command-line flags. Every field is a
CLI flag (`--batch-size` for `batch_size`) and a top-level TOML key."""
from __future__ import annotations

import dataclasses
import json
import os
import tomllib
from dataclasses import dataclass, field, fields
from typing import Optional


@dataclass
class Config:
    model: str = "simple_cnn"         # mlp | simple_cnn | convnet_classic | resnet8 | resnet20 | mobilenet
    dataset: str = "digits"           # digits | synthetic_cifar | mnist | cifar10 | npz | image_folder
    data_path: Optional[str] = None   # directory (mnist, cifar10, image_folder) or file (npz)
    image_size: Optional[int] = None  # image_folder: resize every image to S x S (None: all share one size)
    limit: Optional[int] = None       # use only the first N training/validation examples
    val_fraction: float = 0.2         # share of the training data held out for validation
    epochs: int = 15                  # passes over the training data
    batch_size: int = 32              # examples per step (per rank under --dist)
    optimizer: str = "adam"           # any class name in fasttrain.optim, case-insensitive
    lr: float = 3e-3                  # learning rate (x ranks under --dist, see lr_scaling)
    weight_decay: float = 1e-4        # L2 decay on weights (not on biases or BN parameters)
    schedule: str = "cosine"          # constant|step|exponential|inverse_time|cosine|linear|inverse_sqrt|cosine_restarts
    warmup_steps: int = 0             # linear lr warmup from 0 over this many steps, in front of any schedule
    decay_epochs: int = 5             # step/exponential/inverse_time: epochs per decay; cosine_restarts: 1st cycle
    lr_decay: float = 0.1             # step, exponential: lr x this per decay_epochs; inverse_time: its rate
    restart_mult: float = 1.0         # cosine_restarts: each cycle this many times longer (SGDR's T_mult)
    min_lr: float = 0.0               # cosine, cosine_restarts: the lr at a cycle's end; linear: the last lr
    snapshots: int = 0                # > 0: ensemble the last N cosine_restarts cycles' weights at the end
    dropout: Optional[float] = None   # None: the model's default
    seed: int = 0                     # initialization, data order, dropout masks, augmentation
    run_dir: Optional[str] = None     # None: runs/<timestamp>
    resume: Optional[str] = None      # checkpoint to continue from
    threads: Optional[int] = None     # None: FASTTRAIN_THREADS or all cores
    backend: Optional[str] = None     # auto | cpp | numba | numpy | cuda; None: FASTTRAIN_BACKEND or auto
    device: str = "cpu"               # cpu | cuda (arena, optimizer state, activations on the GPU)
    plot: bool = True                 # write learning_curve.png into the run folder
    monitor_every: Optional[int] = 50     # command center sample period in steps (0: off)
    early_stopping: Optional[int] = None  # patience in epochs on val_loss; restores the best weights
    min_delta: float = 0.0                # improvement of val_loss that resets the patience
    ema_decay: Optional[float] = None     # validate with an EMA of the weights (e.g. 0.99)
    augment: list = field(default_factory=list)  # flip, crop, scale, jitter, pca, cutout (--augment flip,crop)
    mixup: Optional[float] = None         # mixup alpha (e.g. 0.2); None/0: off
    init_from: Optional[str] = None       # checkpoint to start from (transfer learning; new head if needed)
    freeze_except: Optional[int] = None   # train only the last N parameterized layers
    checkpoint_format: str = "npz"        # npz | safetensors
    # -- data parallel (`mpirun -n K fasttrain train --dist ring ...`) --
    dist: str = "none"                    # none | ring | mpi (gradient all-reduce: our ring or MPI's Allreduce)
    compress: str = "none"                # none | fp16 | bf16 | int8 | int4 | sign (ring only)
    compress_schedule: str = "once"       # once: encode reduced chunks only | hop: every reduce-scatter send too
    error_feedback: Optional[bool] = None  # None: on for sign and int4
    bucket_kb: int = 0                    # > 0: all-reduce KB-sized gradient buckets during backward (ring)
    local_sgd: int = 0                    # H > 0: local SGD, average parameters every H steps
    local_sgd_warmup: int = 0             # post-local SGD: synchronous for the first K0 steps
    local_sgd_optimizer: bool = False     # local SGD: average the optimizer state (momenta) at syncs too
    lr_scaling: bool = True               # lr x ranks with a warmup (Goyal et al. 2017) when dist is on
    fingerprint_every: int = 100          # compare collectives across ranks every N calls
    collective_timeout: float = 300.0     # seconds a rank waits for a missing rank in a collective, then the job aborts (0: never)
    # -- pipeline (model) parallelism: `mpiexec -n S*D fasttrain train --pipeline-stages S ...` --
    pipeline_stages: int = 1              # S > 1: cut the model into S stages on S ranks (x D replicas with --dist)
    micro_batches: int = 1                # M: micro-batches per batch flowing through the stages
    pipeline_schedule: str = "1f1b"       # gpipe: all forwards, then all backwards | 1f1b: at most S in flight

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def field_help() -> dict[str, str]:
    """Field name -> the comment after it in this file's Config: the one description of each key,
    shown by `fasttrain train --help`. Empty when the source is not installed (help shows defaults)."""
    import inspect
    import re

    try:
        source = inspect.getsource(Config)
    except (OSError, TypeError):
        return {}
    return dict(re.findall(r"^    (\w+): [^#\n]*#\s*(.+?)\s*$", source, re.M))


def field_types() -> dict[str, type]:
    """Field name -> the Python type of its values (Optional[X] -> X)."""
    out = {}
    for f in fields(Config):
        t = f.type if not isinstance(f.type, str) else eval(f.type, {"Optional": Optional})
        args = [a for a in getattr(t, "__args__", ()) if a is not type(None)]
        out[f.name] = args[0] if args else t
    return out


def _coerce(name: str, value, typ: type):
    if value is None:
        return None
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typ is list:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"config key {name!r}: expected a list of strings, got {value!r}")
        return list(value)
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise ValueError(f"config key {name!r}: expected {typ.__name__}, got {value!r}")
    return value


def make_config(overrides: dict | None = None, base: Config | None = None) -> Config:
    """`base` (or the defaults) with `overrides` applied; unknown keys and wrong types raise."""
    types = field_types()
    values = (base or Config()).to_dict()
    for k, v in (overrides or {}).items():
        if k not in types:
            raise KeyError(f"config: unknown key {k!r}; expected one of {sorted(types)}")
        values[k] = _coerce(k, v, types[k])
    return Config(**values)


def read_toml(path) -> dict:
    """The top-level keys of a TOML file, as written (not yet checked)."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        try:
            return tomllib.load(f)
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{path}: invalid TOML ({exc})") from None


def load_config(path) -> Config:
    """A Config from a TOML file of top-level keys (missing keys keep their defaults)."""
    path = os.fspath(path)
    data = read_toml(path)
    try:
        return make_config(data)
    except (KeyError, ValueError) as exc:
        raise type(exc)(f"{path}: {exc.args[0]}") from None


def save_config(config: Config, path) -> None:
    """Write the resolved config as TOML (None values left out: they mean 'default')."""
    lines = []
    for k, v in config.to_dict().items():
        if v is None:
            continue
        if isinstance(v, bool):
            text = "true" if v else "false"
        elif isinstance(v, (int, float)):
            text = repr(v)
        elif isinstance(v, list):
            text = json.dumps([str(x) for x in v])  # a JSON list of strings is a valid TOML array
        else:
            text = json.dumps(str(v))  # a JSON string is a valid TOML basic string
        lines.append(f"{k} = {text}")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
