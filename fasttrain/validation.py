"""Run-config validation in one place, before any data is loaded or any file is written.

A user's mistake should cost one clear line, not a traceback after the data loaded: every Config
key has a rule in `RULES` (its own value), `CROSS_CHECKS` hold the combinations of keys, and
`check_checkpoints` / `check_model` / `check_data` the checks that need a file, the model or the
dataset. Each raises `ConfigError(key, value, expected)`; the CLI renders the key as the flag,
the TOML key or the environment variable the value came from.

To validate a new config key, add one line to `RULES` (a test asserts that every key has one);
a combination goes into `CROSS_CHECKS`."""
from __future__ import annotations

import math
import os
import sys
from typing import Any, Callable, NoReturn, Sequence


class ConfigError(ValueError):
    """A config value that cannot run: names the key, the value and what was expected.
    `detail` replaces the default "got <value>" part (e.g. why a file cannot be read)."""

    def __init__(self, key: str, value: Any, expected: str, detail: str | None = None):
        self.key, self.value, self.expected, self.detail = key, value, expected, detail
        super().__init__(self.render(key))

    def render(self, name: str) -> str:
        got = self.detail if self.detail is not None else f"got {self.value!r}"
        return f"{name}: expected {self.expected}, {got}" if self.expected else f"{name}: {got}"


Rule = Callable[[str, Any], None]


def _optional(rule: Rule) -> Rule:
    return lambda key, value: None if value is None else rule(key, value)


def number(lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False,
           optional: bool = False) -> Rule:
    """A finite number in [lo, hi] (open ends with lo_open / hi_open)."""
    parts = []
    if lo is not None:
        parts.append(f"{'>' if lo_open else '>='} {lo:g}")
    if hi is not None:
        parts.append(f"{'<' if hi_open else '<='} {hi:g}")
    expected = "a finite number" + (" " + " and ".join(parts) if parts else "")

    def rule(key, value):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        ok = ok and (lo is None or (value > lo if lo_open else value >= lo))
        ok = ok and (hi is None or (value < hi if hi_open else value <= hi))
        if not ok:
            raise ConfigError(key, value, expected)
    return _optional(rule) if optional else rule


def integer(lo: int | None = None, hi: int | None = None, optional: bool = False, meaning: str = "") -> Rule:
    """An int in [lo, hi]; `meaning` says what the number counts, for the message."""
    bounds = " and ".join(b for b in (f">= {lo}" if lo is not None else "", f"<= {hi}" if hi is not None else "") if b)
    expected = f"an integer {bounds}".rstrip() + (f" ({meaning})" if meaning else "")

    def rule(key, value):
        ok = isinstance(value, int) and not isinstance(value, bool)
        if not (ok and (lo is None or value >= lo) and (hi is None or value <= hi)):
            raise ConfigError(key, value, expected)
    return _optional(rule) if optional else rule


def one_of(choices: Sequence[str] | Callable[[], Sequence[str]], optional: bool = False) -> Rule:
    """One of the names (a callable is asked only when the rule runs: lazy imports)."""
    def rule(key, value):
        names = list(choices() if callable(choices) else choices)
        if value not in names:
            raise ConfigError(key, value, "one of " + ", ".join(map(str, names)))
    return _optional(rule) if optional else rule


def some_of(choices: Sequence[str] | Callable[[], Sequence[str]]) -> Rule:
    """A list of names, each one of `choices`."""
    def rule(key, value):
        names = list(choices() if callable(choices) else choices)
        bad = [v for v in value if v not in names]
        if bad:
            raise ConfigError(key, ",".join(map(str, value)), "names from " + ", ".join(names),
                              detail=f"got unknown {', '.join(map(repr, bad))}")
    return rule


def boolean(key, value) -> None:
    if value is not None and not isinstance(value, bool):
        raise ConfigError(key, value, "true or false")


def checkpoint_path(key, value) -> None:
    """An existing .npz or .safetensors file (whether it reads is check_checkpoints' job)."""
    if value is None:
        return
    ext = os.path.splitext(value)[1].lower()
    if ext not in (".npz", ".safetensors"):
        raise ConfigError(key, value, "a fasttrain checkpoint file (.npz or .safetensors)")
    if not os.path.isfile(value):
        raise ConfigError(key, value, "an existing checkpoint file", detail=f"got {value!r} (no such file)")


# what a run folder holds to resume from (the trainer's checkpoint_name in either format)
RUN_CHECKPOINTS = ("checkpoint.npz", "checkpoint.safetensors")


def resume_file(value: str, key: str = "resume") -> str:
    """The checkpoint to resume from: `value` itself, or in a run folder its last-step checkpoint
    (the newer one when the folder holds both formats). Raises ConfigError for a folder without one."""
    if not os.path.isdir(value):
        return value
    found = [os.path.join(value, name) for name in RUN_CHECKPOINTS
             if os.path.isfile(os.path.join(value, name))]
    if not found:
        raise ConfigError(key, value, "a checkpoint file, or a run folder holding "
                          + " or ".join(RUN_CHECKPOINTS),
                          detail=f"got the folder {value!r}, which holds neither")
    return max(found, key=os.path.getmtime)


def resume_path(key, value) -> None:
    """A checkpoint file as checkpoint_path, or the run folder that holds one."""
    if value is not None:
        checkpoint_path(key, resume_file(value, key))


def init_path(key, value) -> None:
    """A checkpoint file as checkpoint_path, or a PyTorch state_dict (.pt/.pth/.bin; a safetensors
    file without fasttrain's metadata is one too)."""
    from .interop import TORCH_SUFFIXES

    ext = os.path.splitext(value)[1].lower() if value is not None else None
    if ext in TORCH_SUFFIXES:
        if not os.path.isfile(value):
            raise ConfigError(key, value, "an existing file", detail=f"got {value!r} (no such file)")
        return
    if value is not None and ext not in (".npz", ".safetensors"):
        raise ConfigError(key, value, "a fasttrain checkpoint (.npz or .safetensors) or a PyTorch state_dict "
                                      f"({', '.join(sorted(TORCH_SUFFIXES))} or .safetensors)")
    checkpoint_path(key, value)


def run_folder(key, value) -> None:
    if value is not None and os.path.exists(value) and not os.path.isdir(value):
        raise ConfigError(key, value, "a folder for the run's files", detail=f"got {value!r}, which is a file")


def _models():
    from .models import MODEL_NAMES
    return MODEL_NAMES


def _datasets():
    from .data.catalog import DATASETS
    return DATASETS


def optimizer_names() -> list[str]:
    """The optimizer classes of fasttrain.optim by their lower-case names (the base class left out)."""
    from . import optim
    return [k.lower() for k in optim.__all__
            if isinstance(getattr(optim, k), type) and issubclass(getattr(optim, k), optim.Optimizer)
            and getattr(optim, k) is not optim.Optimizer]


def _schedules():
    from .train.run import SCHEDULES
    return SCHEDULES


def _augmentations():
    from .train.augmentation import AUGMENTATIONS
    return AUGMENTATIONS


def _codecs():
    from .parallel.data_parallel import CODECS
    return CODECS


def _compress_schedules():
    from .parallel.ring import SCHEDULES
    return SCHEDULES


#: one rule per Config key (the key's own value); None values mean "the default" where allowed
RULES: dict[str, Rule] = {
    "model": one_of(_models),
    "dataset": one_of(_datasets),
    "data_path": lambda key, value: None,  # checked with the dataset (CROSS_CHECKS)
    "image_size": integer(lo=1, optional=True, meaning="pixels per side"),
    "limit": integer(lo=1, optional=True, meaning="training examples to keep"),
    "val_fraction": number(0, 1, lo_open=True, hi_open=True),
    "epochs": integer(lo=1),
    "batch_size": integer(lo=1),
    "optimizer": lambda key, value: one_of(optimizer_names)(key, value.lower() if isinstance(value, str) else value),
    "lr": number(0, lo_open=True),
    "weight_decay": number(0),
    "schedule": one_of(_schedules),
    "warmup_steps": integer(lo=0),
    "decay_epochs": integer(lo=1),
    "lr_decay": number(0, 1, lo_open=True),
    "restart_mult": number(1),
    "min_lr": number(0),
    "snapshots": integer(lo=0, meaning="SGDR cycles to ensemble; 0: off"),
    "dropout": number(0, 1, hi_open=True, optional=True),
    "seed": integer(lo=0),
    "run_dir": run_folder,
    "resume": resume_path,
    "threads": integer(lo=1, optional=True, meaning="CPU threads"),
    "backend": one_of(("auto", "cpp", "numba", "numpy", "cuda"), optional=True),
    "device": one_of(("cpu", "cuda")),
    "plot": boolean,
    "monitor_every": integer(lo=0, optional=True, meaning="steps between samples; 0: off"),
    "early_stopping": integer(lo=1, optional=True, meaning="patience in epochs"),
    "min_delta": number(0),
    "ema_decay": number(0, 1, lo_open=True, hi_open=True, optional=True),
    "augment": some_of(_augmentations),
    "mixup": number(0, optional=True),
    "init_from": init_path,
    "freeze_except": integer(lo=1, optional=True, meaning="parameterized layers to train"),
    "checkpoint_format": one_of(("npz", "safetensors")),
    "dist": one_of(("none", "ring", "mpi")),
    "compress": one_of(_codecs),
    "compress_schedule": one_of(_compress_schedules),
    "error_feedback": boolean,
    "bucket_kb": integer(lo=0, meaning="0: one all-reduce after backward"),
    "local_sgd": integer(lo=0, meaning="steps between parameter averages; 0: off"),
    "local_sgd_warmup": integer(lo=0),
    "local_sgd_optimizer": boolean,
    "lr_scaling": boolean,
    "fingerprint_every": integer(lo=1),
    "collective_timeout": number(0),
    "pipeline_stages": integer(lo=1, meaning="stages of the model, one per rank"),
    "micro_batches": integer(lo=1, meaning="micro-batches per batch"),
    "pipeline_schedule": one_of(("gpipe", "1f1b")),
}

BUNDLED_DATASETS = ("digits", "synthetic_cifar")


def _data_path(cfg) -> None:
    if cfg.dataset in BUNDLED_DATASETS and cfg.data_path:
        raise ConfigError("data_path", cfg.data_path, f"no data path with dataset {cfg.dataset!r} (it is generated "
                          "or bundled and reads no files); for your own files use --dataset npz, mnist, cifar10 "
                          "or image_folder")
    if cfg.dataset not in BUNDLED_DATASETS and not cfg.data_path:
        raise ConfigError("data_path", None, f"the location of the {cfg.dataset!r} data (dataset {cfg.dataset!r} "
                          "reads files)")
    if cfg.data_path and not os.path.exists(cfg.data_path):
        raise ConfigError("data_path", cfg.data_path, f"an existing {'file' if cfg.dataset == 'npz' else 'folder'}",
                          detail=f"got {cfg.data_path!r} (no such file or folder)")


def _keyed(exc: ValueError, cfg, fallback: str) -> NoReturn:
    """A layer's own option check (data parallel, pipeline) as a ConfigError on the key its message
    starts with ("key=value: ..." or "key: ..."), or on `fallback` when it names no config key."""
    key = str(exc).split("=")[0].split(":")[0]
    key = key if key in RULES else fallback
    raise ConfigError(key, getattr(cfg, key), "", detail=str(exc)) from None


def _dist(cfg) -> None:
    from .parallel.data_parallel import DIST_ONLY_DEFAULTS, check_options

    if cfg.dist == "none":
        for key, default in DIST_ONLY_DEFAULTS.items():
            if getattr(cfg, key) != default:
                raise ConfigError(key, getattr(cfg, key), f"--dist ring or mpi with it (a data-parallel option, "
                                  "launched with mpiexec -n K)", detail=f"got {getattr(cfg, key)!r} with dist 'none'")
        return
    try:
        check_options(cfg.dist, cfg.compress, cfg.compress_schedule, cfg.local_sgd, cfg.local_sgd_warmup,
                      cfg.bucket_kb * 1024, cfg.local_sgd_optimizer)
    except ValueError as exc:
        _keyed(exc, cfg, fallback="dist")
    if cfg.device == "cuda":
        raise ConfigError("device", "cuda", "device 'cpu' with --dist (the data-parallel layer reduces host arrays)")


def _gpu(cfg) -> None:
    for key in ("device", "backend"):
        if getattr(cfg, key) == "cuda":
            from .backend import backend_status

            status = backend_status("cuda")
            if status != "available":
                raise ConfigError(key, "cuda", "a usable CUDA GPU", detail=f"got 'cuda', but {status}")
    if cfg.backend in ("cpp", "numba"):
        from .backend import backend_status

        status = backend_status(cfg.backend)
        if status != "available":
            raise ConfigError("backend", cfg.backend, "an available backend", detail=f"got {cfg.backend!r}: {status}")


def _early_stopping(cfg) -> None:
    if cfg.early_stopping is not None and cfg.early_stopping >= cfg.epochs:
        warn(f"early_stopping={cfg.early_stopping} epochs of patience in a run of {cfg.epochs} epochs never "
             "stops early")


#: checks of several keys together, run after every key passed its own rule
def _image_size(cfg) -> None:
    if cfg.image_size is not None and cfg.dataset != "image_folder":
        raise ConfigError("image_size", cfg.image_size, f"no image size with dataset {cfg.dataset!r} (only "
                          "--dataset image_folder resizes its images)")


def _schedule(cfg) -> None:
    if cfg.min_lr > cfg.lr and cfg.schedule in ("cosine", "cosine_restarts"):
        raise ConfigError("min_lr", cfg.min_lr, f"at most lr = {cfg.lr:g} (the lr at the end of a cosine cycle)")
    if cfg.snapshots and cfg.schedule != "cosine_restarts":
        raise ConfigError("snapshots", cfg.snapshots, "--schedule cosine_restarts with it (a snapshot is taken at the "
                          f"end of each SGDR cycle)", detail=f"got {cfg.snapshots} with schedule {cfg.schedule!r}")
    if cfg.snapshots and cfg.decay_epochs > cfg.epochs:
        raise ConfigError("decay_epochs", cfg.decay_epochs, f"at most epochs = {cfg.epochs}, so that at least one "
                          "SGDR cycle ends inside the run for --snapshots")


def _pipeline(cfg) -> None:
    from .parallel.pipeline import check_config

    try:
        check_config(cfg)
    except ValueError as exc:
        _keyed(exc, cfg, fallback="pipeline_stages")


CROSS_CHECKS: list[Callable] = [_data_path, _image_size, _dist, _gpu, _early_stopping, _schedule, _pipeline]


def check_environment() -> None:
    """FASTTRAIN_BACKEND / FASTTRAIN_THREADS / FASTTRAIN_LAYOUT, reported as ConfigErrors keyed by the variable."""
    from . import settings

    try:
        settings.check_environment()
    except ValueError as exc:
        var, _, rest = str(exc).partition(": ")  # settings' messages name the variable first
        raise ConfigError(var, None, "", detail=rest) from None


def validate(cfg) -> None:
    """Every key's rule, then the combinations; raises the first ConfigError."""
    check_environment()
    for key, value in cfg.to_dict().items():
        rule = RULES.get(key)
        if rule is not None:
            rule(key, value)
    for check in CROSS_CHECKS:
        check(cfg)


def read_checkpoint_for(key: str, path: str):
    """(arrays, meta) of the checkpoint a config key names; an unreadable file is a ConfigError."""
    from .train.checkpoint import read_checkpoint

    if key == "init_from":
        from . import interop

        if interop.is_torch_file(path):  # a PyTorch state_dict: paired with the model in check_model
            try:
                sd, ordered = interop.read_state_dict(path)
            except (ValueError, OSError, ImportError) as exc:
                raise ConfigError(key, path, "a fasttrain checkpoint or a PyTorch state_dict",
                                  detail=f"got {path!r}: {str(exc).removeprefix(f'{path}: ')}") from None
            return sd, {"format": "torch", "ordered": ordered}
    try:
        return read_checkpoint(path)
    except (ValueError, OSError, KeyError) as exc:
        reason = str(exc).removeprefix(f"{path}: ")
        raise ConfigError(key, path, "a fasttrain checkpoint", detail=f"got {path!r}: {reason}") from None


def _differences(saved: dict, wanted: dict) -> str:
    missing = sorted(set(wanted) - set(saved))
    extra = sorted(set(saved) - set(wanted))
    shapes = sorted(k for k in set(saved) & set(wanted) if tuple(saved[k]) != tuple(wanted[k]))

    def few(names):
        return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    parts = [f"missing {few(missing)}" if missing else "", f"unexpected {few(extra)}" if extra else "",
             f"other shapes for {few(shapes)}" if shapes else ""]
    return "; ".join(p for p in parts if p)


def check_model(cfg, model, arena, checkpoints: dict) -> None:
    """What needs the built model: --freeze-except against its layers, and that --init-from and
    --resume checkpoints (already read: key -> (arrays, meta)) hold this model (and, for resume,
    this optimizer's state)."""
    from .train.checkpoint import module_buffers

    if cfg.freeze_except is not None:
        from .train.transfer import parameterized_layers

        n = len(parameterized_layers(model))
        if cfg.freeze_except > n:
            raise ConfigError("freeze_except", cfg.freeze_except,
                              f"an integer in 1..{n} (model {cfg.model!r} has {n} parameterized layers)")
    params = {name: p.shape for name, p in arena.named().items()}
    for key, (arrays, meta) in checkpoints.items():
        path = getattr(cfg, key)
        if meta.get("format") == "torch":
            from . import interop

            try:
                interop.pairing(model, arrays, ordered=meta["ordered"])
            except ValueError as exc:
                raise ConfigError(key, path, f"a PyTorch state_dict of model {cfg.model!r}",
                                  detail=f"got {path!r}: {exc}") from None
            continue
        saved = {k[6:]: v.shape for k, v in arrays.items() if k.startswith("param/")}
        if key == "init_from":  # a new head may differ in shape: names must match, shapes may not
            saved = {k: params[k] if k in params else s for k, s in saved.items()}
        diff = _differences(saved, params)
        if key == "resume":  # BatchNorm statistics too
            buffers = {k: m.buffers[name].shape for k, (m, name) in module_buffers(model).items()}
            diff = "; ".join(filter(None, [diff, _differences(
                {k[7:]: v.shape for k, v in arrays.items() if k.startswith("buffer/")}, buffers)]))
        if diff:
            was = (meta.get("config") or {}).get("model")
            raise ConfigError(key, path, f"a checkpoint of model {cfg.model!r} on this data",
                              detail=f"got {path!r}" + (f" (a {was!r} model)" if was else "") + f": {diff}")
        if key == "resume":
            saved_type = arrays.get("opt/type")
            saved_type = None if saved_type is None else str(saved_type)
            if saved_type is not None and saved_type.lower() != cfg.optimizer.lower():
                raise ConfigError("optimizer", cfg.optimizer, f"{saved_type.lower()!r}, the optimizer whose state "
                                  f"the checkpoint {path!r} holds (or no --optimizer when resuming)")


def check_data(cfg, data) -> None:
    """What needs the loaded dataset: a batch that fits, and enough examples to mean something."""
    n_train, n_val = len(data.y_train), len(data.y_val)
    if n_val == 0:
        raise ConfigError("val_fraction", cfg.val_fraction, "a fraction that leaves validation examples",
                          detail=f"got {cfg.val_fraction} (0 of {n_train} examples)")
    if cfg.batch_size > n_train:
        where = "left by --limit" if cfg.limit is not None else f"of dataset {cfg.dataset!r}"
        raise ConfigError("batch_size", cfg.batch_size, f"at most {n_train}, the training examples {where} "
                          "(a larger batch trains one step per epoch)")
    if n_train < data.num_classes:
        warn(f"{n_train} training examples for {data.num_classes} classes (limit={cfg.limit}): "
             "the accuracies of this run say nothing")


def warn(message: str, kind: str = "warning") -> None:
    """A one-line warning on stderr from rank 0 only."""
    from .settings import launcher_rank

    if launcher_rank() == 0:
        sys.stderr.write(f"fasttrain: {kind}: {message}\n")
        sys.stderr.flush()


def note(message: str) -> None:
    """A one-line notice (what the run does that the user may not expect) on stderr from rank 0."""
    warn(message, kind="note")
