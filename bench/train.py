"""End-to-end training throughput (images/s for forward + backward + optimizer step) of the classic
conv-BN-ReLU net, ResNet-8 and MobileNet (width 0.5) on 32x32x3 input at batch 128, next to the same
model in PyTorch CPU when it is installed, measured in the same run. PyTorch runs as its expert users
run it: channels_last tensors (oneDNN's fast layout, and the one its depthwise kernels want) and
Adam(fused=True)."""
from __future__ import annotations

import numpy as np

import fasttrain as ft
from fasttrain import models

from .harness import make_record, time_interleaved, torch_or_none


def _ours(name, batch, steps_per_sample):
    model = models.build(name, (3, 32, 32), 10)
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


def _torch_model(torch, name):
    nn = torch.nn

    def cbr(cin, cout, stride=1):
        return [nn.Conv2d(cin, cout, 3, stride, 1), nn.BatchNorm2d(cout), nn.ReLU()]

    if name == "convnet_classic":
        return nn.Sequential(*cbr(3, 32), *cbr(32, 32), nn.MaxPool2d(2), *cbr(32, 64), *cbr(64, 64), nn.MaxPool2d(2),
                             nn.Flatten(), nn.Dropout(0.5), nn.Linear(64 * 8 * 8, 10))

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.body = nn.Sequential(*cbr(cin, cout, stride), nn.Conv2d(cout, cout, 3, 1, 1), nn.BatchNorm2d(cout))
            self.short = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride), nn.BatchNorm2d(cout))
                          if stride != 1 or cin != cout else nn.Identity())

        def forward(self, x):
            return torch.relu(self.body(x) + self.short(x))

    if name == "mobilenet":  # the layers of models.mobilenet(width=0.5), without conv biases as there
        def separable(cin, cout, stride):
            return [nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin), nn.ReLU(),
                    nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

        layers, cin = [nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU()], 16
        for cout, stride in models.MOBILENET_BLOCKS:
            layers += separable(cin, cout // 2, stride)
            cin = cout // 2
        return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 10))

    return nn.Sequential(*cbr(3, 16), Block(16, 16, 1), Block(16, 32, 2), Block(32, 64, 2),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))


def _theirs(torch, name, batch, steps_per_sample):
    model = _torch_model(torch, name).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    loss_fn = torch.nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, 32, 32, generator=g).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), generator=g)

    def run():
        for _ in range(steps_per_sample):
            opt.zero_grad(set_to_none=False)
            loss_fn(model(x), y).backward()
            opt.step()
    return run


def run(limits, quick: bool = False, repeat: int = 5, log=print) -> list:
    batch = 8 if quick else 128
    steps = 1 if quick else 2
    torch = torch_or_none()
    records = []
    for name in ("convnet_classic", "resnet8", "mobilenet"):
        variants = [("cpp" if ft.backends()["cpp"] == "available" else "numpy", _ours(name, batch, steps))]
        if torch is not None:
            variants.append(("torch", _theirs(torch, name, batch, steps)))
        fns = dict(variants)
        interleaved = time_interleaved(fns, {b: 2 if quick else repeat for b in fns}, warmup=1)
        for backend in fns:
            samples = [t / steps for t in interleaved[backend]]
            rec = make_record("train", f"{name}_step", backend, (batch, 3, 32, 32), samples,
                              images_per_s=round(batch / np.median(samples), 1))
            records.append(rec)
            log(f"  {name:<16} {backend:<6} {batch / rec.median_s:8.1f} images/s")
    return records
