"""The 'command center' of a training run (cs231n notes, "Babysitting the learning process"):
every `every` steps, on that step only, it records

- the update/weight ratio per parameter tensor, ||w_after - w_before|| / ||w_before||, from the
  arena before and after the optimizer step (healthy ~1e-3; > 1e-2: lr probably too high;
  < 1e-5: lr probably too low or the layer is not learning);
- the mean and std of every child output of the top-level Sequential (the saturation /
  vanishing picture: stds collapsing towards 0 or exploding with depth);
- the dead-ReLU fraction of every ReLU (and of every layer with a fused ReLU, `relu=True`): the
  share of units (features, or channel x position) that are zero for every example of the batch;
- the global gradient norm ||arena.grad||.

Cheap by design: nothing happens on the other steps; on a sampled step the cost is one copy of
the arena plus a few reductions per layer. Activations are observed by wrapping the children's
`forward` for that one forward pass (an instance attribute, removed right after)."""
from __future__ import annotations

import math

import numpy as np

from ..nn.layout import as_nchw
from ..settings import get_logger

log = get_logger(__name__)


def _host(a):
    return a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else np.asarray(a)


class Monitor:
    """Samples training statistics every `every` steps (see module docstring).

    ratio_high / ratio_low: the update/weight ratio band outside which a warning is logged.
    Parameters whose weights have zero norm (fresh biases) have no meaningful ratio and are
    skipped; warnings are given for weight tensors (the decayed ones), whose ratio is the one
    the notes' 1e-3 rule of thumb is about.

    A warning needs a sustained signal: the last `sustain` samples of a tensor all outside the
    band. A single sample misleads: an adaptive optimizer's first steps are about lr per element
    whatever the gradient (Adam's bias correction), so a small fresh head shows 0.3 at step 0 and
    settles by itself. The low edge follows the schedule: with base_lr (the run's peak lr) and the
    step's lr given to end(), it is ratio_low x lr / base_lr, so warmup and the end of a cosine
    decay, where a small update is the plan, are not reported as "lr too low". Each tensor is
    reported at most once per kind."""

    def __init__(self, model, arena, every: int = 50, ratio_high: float = 1e-2, ratio_low: float = 1e-5,
                 sustain: int = 3, base_lr: float | None = None):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"Monitor(every): expected a positive int, got {every!r}")
        if not 0 < ratio_low < ratio_high:
            raise ValueError(f"Monitor(ratio_low, ratio_high): expected 0 < low < high, got {ratio_low}, {ratio_high}")
        if isinstance(sustain, bool) or not isinstance(sustain, int) or sustain < 1:
            raise ValueError(f"Monitor(sustain): expected a positive int, got {sustain!r}")
        self.model, self.arena, self.every = model, arena, every
        self.ratio_high, self.ratio_low, self.sustain, self.base_lr = ratio_high, ratio_low, sustain, base_lr
        self._recent: dict[str, list] = {}   # tensor -> its last `sustain` (ratio, low edge)
        self._reported: set = set()
        self.records: list[dict] = []
        self.warnings: list[str] = []
        self._before = None
        self._acts: dict = {}
        self._wrapped: list = []
        # slices of the arena per parameter (computed once)
        self._slices = [(p.name, p.decay, arena.slice_of(p)) for p in arena.params]

    def due(self, step: int) -> bool:
        return step % self.every == 0

    # -- one sampled step --------------------------------------------------------------------------
    def begin(self) -> None:
        """Before forward: snapshot the parameters and start observing the children's outputs."""
        self._before = self.arena.xp.array(self.arena.data, copy=True)
        self._acts = {}
        children = getattr(self.model, "_children", [])
        for name, child in children:
            self._wrap(f"{name}:{type(child).__name__}", child)

    def _wrap(self, key: str, module) -> None:
        original = module.forward
        is_relu = type(module).__name__ == "ReLU" or getattr(module, "relu", False) is True
        acts = self._acts

        def observed(x):
            y = original(x)
            h = _host(as_nchw(y))   # a child inside the blocked flow returns that layout
            stats = {"mean": float(h.mean()), "std": float(h.std())}
            if is_relu and h.shape[0] > 0:
                stats["dead"] = float(np.mean(~(h > 0).any(axis=0)))
            acts[key] = stats
            return y

        module.forward = observed
        self._wrapped.append(module)

    def unhook(self) -> None:
        """After forward (also on error): restore the children's own forward."""
        for m in self._wrapped:
            m.__dict__.pop("forward", None)
        self._wrapped = []

    def end(self, step: int, loss: float, lr: float | None = None) -> dict:
        """After the optimizer step: compute the record for this step, warn when far off."""
        self.unhook()
        before, after = _host(self._before), _host(self.arena.data)
        grad = _host(self.arena.grad)
        self._before = None
        ratios = {}
        for name, decay, s in self._slices:
            w = float(np.linalg.norm(before[s]))
            if w == 0.0:
                continue
            ratios[name] = float(np.linalg.norm(after[s] - before[s])) / w
        record = {"event": "monitor", "step": step,
                  "grad_norm": float(np.linalg.norm(grad)), "update_ratio": ratios,
                  "activations": self._acts}
        self._acts = {}
        decayed = {n for n, d, _ in self._slices if d}
        low = self.ratio_low
        if lr is not None and self.base_lr:
            low *= max(float(lr), 0.0) / self.base_lr
        for name, r in ratios.items():
            if name not in decayed:
                continue
            recent = self._recent.setdefault(name, [])
            recent.append((r, low))
            del recent[:-self.sustain]
            if len(recent) < self.sustain:
                continue
            if all(ri > self.ratio_high for ri, _ in recent) and (name, "high") not in self._reported:
                self._reported.add((name, "high"))
                self._warn(f"step {step}: update/weight ratio of {name} is {r:.2e} (> {self.ratio_high:g} in the "
                           f"last {self.sustain} samples; healthy ~1e-3): the learning rate is probably too high")
            elif low > 0 and all(ri < li for ri, li in recent) and (name, "low") not in self._reported:
                self._reported.add((name, "low"))
                self._warn(f"step {step}: update/weight ratio of {name} is {r:.2e} (< {low:.2g} in the last "
                           f"{self.sustain} samples; healthy ~1e-3 at the peak lr): the learning rate is probably "
                           "too low, or the layer does not learn")
        for key, st in record["activations"].items():
            if st.get("dead", 0.0) > 0.5:
                self._warn(f"step {step}: {st['dead']:.0%} of the units of {key} are dead (zero for the whole batch)")
        if not math.isfinite(record["grad_norm"]):
            self._warn(f"step {step}: the gradient norm is {record['grad_norm']}")
        self.records.append(record)
        return record

    def _warn(self, message: str) -> None:
        self.warnings.append(message)
        log.warning(message)

    # -- the end of the run -------------------------------------------------------------------------
    def summary(self) -> dict:
        """Per-parameter median update ratio, last activation stats, gradient norms, warning count."""
        if not self.records:
            return {"event": "monitor_summary", "samples": 0}
        names = sorted({n for r in self.records for n in r["update_ratio"]})
        med = {n: float(np.median([r["update_ratio"][n] for r in self.records if n in r["update_ratio"]]))
               for n in names}
        norms = [r["grad_norm"] for r in self.records]
        return {"event": "monitor_summary", "samples": len(self.records),
                "median_update_ratio": med, "grad_norm_first": norms[0], "grad_norm_last": norms[-1],
                "grad_norm_max": float(np.max(norms)), "last_activations": self.records[-1]["activations"],
                "warnings": len(self.warnings)}

    @staticmethod
    def format_summary(summary: dict) -> str:
        if not summary.get("samples"):
            return "command center: no sampled steps"
        lines = [f"command center: {summary['samples']} sampled steps, {summary['warnings']} warnings; gradient norm "
                 f"{summary['grad_norm_first']:.3g} -> {summary['grad_norm_last']:.3g} (max {summary['grad_norm_max']:.3g})"]
        for n, r in summary["median_update_ratio"].items():
            lines.append(f"  update/weight {n:<24} {r:.2e}")
        for k, st in summary["last_activations"].items():
            dead = f"  dead {st['dead']:.0%}" if "dead" in st else ""
            lines.append(f"  activation {k:<24} mean {st['mean']:+.3f} std {st['std']:.3f}{dead}")
        return "\n".join(lines)
