"""A/B of the fused ResNet block tail (add + ReLU inside the last batchnorm's passes) against the
add-then-ReLU path, on a whole training step, interleaved in one process.

    python -m bench.dev.residual_fusion_ab [--net resnet20] [--batch 128] [--repeat 7]
"""
from __future__ import annotations

import argparse
import statistics

from fasttrain import nn

from ..harness import time_interleaved
from ..train import _ours


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--net", default="resnet20")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args(argv)
    fused = _ours(args.net, args.batch, 1)
    unfused_step = _ours(args.net, args.batch, 1)
    model = unfused_step.__closure__  # the model is built inside _ours; find its Residual blocks below
    blocks = [c.cell_contents for c in model if isinstance(c.cell_contents, nn.Module)]
    for root in blocks:
        for _, m in root.named_modules():
            if isinstance(m, nn.Residual):
                m._fused_tail = lambda: None
    samples = time_interleaved({"fused": fused, "unfused": unfused_step}, {"fused": args.repeat, "unfused": args.repeat})
    med = {k: statistics.median(v) * 1e3 for k, v in samples.items()}
    print(f"{args.net} batch {args.batch}: fused {med['fused']:.1f} ms, add-then-ReLU {med['unfused']:.1f} ms per step "
          f"(unfused / fused {med['unfused'] / med['fused']:.3f}x; medians of {args.repeat}, interleaved)")


if __name__ == "__main__":
    main()
