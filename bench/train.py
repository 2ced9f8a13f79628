"""End-to-end training throughput (images/s for forward + backward + Adam step) of the classic
conv-BN-ReLU net, ResNet-8, ResNet-20 and MobileNet (width 0.5) on 32x32x3 input at batch 128 and
32, next to the same model in PyTorch CPU when it is installed, measured interleaved in the same run.

PyTorch runs the way its users run it, so that a ratio means something:
  torch          NCHW, torch.optim.Adam's default (foreach) implementation: the out-of-the-box code;
  torch-cl       model and input in channels_last (oneDNN's blocked convolutions) + Adam(fused=True);
  torch-compile  torch-cl with the model under torch.compile (compiled, and its cache warm, before
                 the timing starts; a failure is reported in the output and the JSON, not hidden).
Ratios are taken against the fastest of these per workload (bench.harness.annotate_vs_torch).

Each record carries the model's useful FLOPs per step: forward, weight gradient and input gradient
of every convolution and linear layer, counted as direct convolution (2 N K C R S P Q), without the
input gradient of the layer that reads the images (no one needs it); `mfu` is those FLOPs per second
over the AVX-512 FMA peak the run measured (bench.harness.fma_peaks).
"""
from __future__ import annotations

import time

import numpy as np

import fasttrain as ft
from fasttrain import models, nn

from .harness import make_record, time_interleaved, torch_or_none

NETS = ("convnet_classic", "resnet8", "resnet20", "mobilenet")
TORCH_VARIANTS = ("torch", "torch-cl", "torch-compile")


def build_ours(name):
    return models.build(name, (3, 32, 32), 10)


def useful_flops(model, input_shape) -> float:
    """FLOPs of one training step (forward + both backward products) of every Conv2d and Linear of
    `model` on a batch of `input_shape`, found by running one forward with each such layer's forward
    wrapped to note its input and output shapes. The first such layer to run (the one fed the
    model's input) gets no input-gradient product. Shapes are the logical NCHW ones: inside a model
    activations may flow in the blocked layout (fasttrain/nn/layout.py)."""
    x = np.zeros(input_shape, np.float32)
    total, first = [0.0], [True]

    def wrap(module, orig):
        def forward(inp):
            out = orig(inp)
            size = float(np.prod(out.shape))
            if isinstance(module, nn.Conv2d):
                r, s = module.kernel_size
                fwd = 2.0 * size * (module.in_channels // module.groups) * r * s
            else:
                fwd = 2.0 * size * module.in_features
            total[0] += fwd * (2 if first[0] else 3)
            first[0] = False
            return out
        return forward

    layers = [m for _, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    for m in layers:
        m.forward = wrap(m, m.forward)
    try:
        ft.ParamArena.for_model(model, seed=0)
        model.forward(x)
    finally:
        for m in layers:
            del m.forward
    return total[0]


def _ours(name, batch, steps_per_sample):
    model = build_ours(name)
    arena = ft.ParamArena.for_model(model, seed=0)
    opt = ft.optim.Adam(arena, lr=1e-3)
    loss_fn = ft.losses.SoftmaxCrossEntropy()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 3, 32, 32), dtype=np.float32)
    y = rng.integers(0, 10, batch)
    state = {"step": 0}

    def run():
        for _ in range(steps_per_sample):
            model.set_step(state["step"])
            arena.zero_grad()
            _, dlogits = loss_fn(model.forward(x), y)
            model.backward(dlogits)
            opt.step()
            state["step"] += 1
    return run


def torch_model(torch, name):
    """The PyTorch twin of models.build(name): same layers, same shortcuts (a strided 1x1 conv + BN
    where a block changes shape, as in models._basic_block), no conv bias before a BN."""
    tnn = torch.nn

    def cbr(cin, cout, stride=1):
        return [tnn.Conv2d(cin, cout, 3, stride, 1, bias=False), tnn.BatchNorm2d(cout), tnn.ReLU()]

    if name == "convnet_classic":
        return tnn.Sequential(*cbr(3, 32), *cbr(32, 32), tnn.MaxPool2d(2), *cbr(32, 64), *cbr(64, 64),
                              tnn.MaxPool2d(2), tnn.Flatten(), tnn.Dropout(0.5), tnn.Linear(64 * 8 * 8, 10))

    class Block(tnn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.body = tnn.Sequential(*cbr(cin, cout, stride), tnn.Conv2d(cout, cout, 3, 1, 1, bias=False),
                                       tnn.BatchNorm2d(cout))
            self.short = (tnn.Sequential(tnn.Conv2d(cin, cout, 1, stride, bias=False), tnn.BatchNorm2d(cout))
                          if stride != 1 or cin != cout else tnn.Identity())

        def forward(self, x):
            return torch.relu(self.body(x) + self.short(x))

    if name == "mobilenet":  # the layers of models.mobilenet(width=0.5), without conv biases as there
        def separable(cin, cout, stride):
            return [tnn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), tnn.BatchNorm2d(cin), tnn.ReLU(),
                    tnn.Conv2d(cin, cout, 1, bias=False), tnn.BatchNorm2d(cout), tnn.ReLU()]

        layers, cin = cbr(3, 16), 16
        for cout, stride in models.MOBILENET_BLOCKS:
            layers += separable(cin, cout // 2, stride)
            cin = cout // 2
        return tnn.Sequential(*layers, tnn.AdaptiveAvgPool2d(1), tnn.Flatten(), tnn.Linear(cin, 10))

    n = (int(name[6:]) - 2) // 6
    layers, cin = cbr(3, 16), 16
    for stage, cout in enumerate((16, 32, 64)):
        for i in range(n):
            layers.append(Block(cin, cout, 2 if stage > 0 and i == 0 else 1))
            cin = cout
    return tnn.Sequential(*layers, tnn.AdaptiveAvgPool2d(1), tnn.Flatten(), tnn.Linear(64, 10))


def torch_step(torch, name, batch, variant):
    """(one training step as a zero-argument function, seconds spent compiling). The first call of a
    compiled model compiles it: done here, outside any timing, and one more step so the timed
    steps meet a warm cache."""
    model = torch_model(torch, name)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
    if variant == "torch":
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    else:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    forward = torch.compile(model, dynamic=False) if variant == "torch-compile" else model
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=False)
        loss_fn(forward(x), y).backward()
        opt.step()

    compile_s = 0.0
    if variant == "torch-compile":
        t0 = time.perf_counter()
        step()
        compile_s = time.perf_counter() - t0
        step()
    return step, compile_s


def _torch_variants(torch, name, batch, steps, log, compile_ok):
    """The PyTorch variants that could be built; a compile failure is logged and that variant left out."""
    out, notes = {}, {}
    for variant in TORCH_VARIANTS:
        if variant == "torch-compile" and not compile_ok:
            notes[variant] = "skipped (--no-compile, or --quick)"
            continue
        try:
            step, compile_s = torch_step(torch, name, batch, variant)
        except Exception as exc:  # reported in the output and the records, never silently dropped
            notes[variant] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
            log(f"  {name:<16} {variant:<14} {notes[variant]}")
            continue
        if compile_s:
            notes[variant] = f"compiled in {compile_s:.1f} s (before timing)"

        def run(step=step):
            for _ in range(steps):
                step()
        out[variant] = run
    return out, notes


def run(limits, quick: bool = False, repeat: int = 5, log=print, nets=NETS, batches=(128, 32),
        compile_torch: bool = True) -> list:
    if quick:
        batches, nets = (8,), tuple(n for n in nets if n != "resnet20")
    steps = 1 if quick else 2
    torch = torch_or_none()
    records = []
    for batch in batches:
        for name in nets:
            ours = "cpp" if ft.backends()["cpp"] == "available" else "numpy"
            fns = {ours: _ours(name, batch, steps)}
            notes = {}
            if torch is not None:
                theirs, notes = _torch_variants(torch, name, batch, steps, log, compile_torch and not quick)
                fns.update(theirs)
            flops = useful_flops(build_ours(name), (batch, 3, 32, 32))
            interleaved = time_interleaved(fns, {b: 2 if quick else repeat for b in fns}, warmup=1)
            for backend in fns:
                samples = [t / steps for t in interleaved[backend]]
                med = float(np.median(samples))
                extra = {"images_per_s": round(batch / med, 1)}
                if limits is not None and limits.peak:
                    extra["mfu"] = round(flops / med / limits.peak, 4)
                if backend in notes:
                    extra["note"] = notes[backend]
                if backend == ours:  # variants that could not run are named on our record
                    extra.update({f"{v}_note": n for v, n in notes.items() if v not in fns})
                rec = make_record("train", f"{name}_step", backend, (batch, 3, 32, 32), samples, flops=flops,
                                  **extra)
                records.append(rec)
                mfu = f"  MFU {100 * extra['mfu']:4.1f}%" if "mfu" in extra else ""
                log(f"  {name:<16} b{batch:<4} {backend:<14} {extra['images_per_s']:8.1f} images/s{mfu}")
    return records
