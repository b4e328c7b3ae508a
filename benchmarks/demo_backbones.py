"""The demo's candidate backbones side by side: the trainer's step time per image on one CPU thread (what
each of the demo's two worker processes has), clean and APGD-3, at the demo's 32 px and batch 64.

    .venv/bin/python benchmarks/demo_backbones.py [--batches 4] [--repeats 3] [--resolution 32]

Rounds alternate the backbones so machine noise hits them alike; the first round warms up and is
dropped. Why the demo runs MobileNetV2: at these sizes both networks are dominated by per-layer overhead,
not pixels, and EfficientNet-Lite0 (timm's TF port, "same" padding computed per call) costs more per step,
so 3 seeds of fix / sched / standard would not fit 15 minutes on 2 cores with it.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from rftbench.core.config import RunConfig
from rftbench.engine.trainer import train_one_epoch
from rftbench.models.build import build_backbone

BACKBONES = ("mobilenetv2_100", "tf_efficientnet_lite0")
CLASSES = 242  # Omniglot


def one_round(net, data, optimizer, config, eps: float) -> float:
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    start = time.perf_counter()
    train_one_epoch(net, data, optimizer, scheduler, scaler, lambda step: eps, config,
                    torch.device("cpu"), None, torch.contiguous_format)  # fmt: skip
    return (time.perf_counter() - start) / sum(len(y) for _, y in data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--resolution", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    r = args.resolution
    data = [(torch.rand(64, 3, r, r), torch.randint(0, CLASSES, (64,))) for _ in range(args.batches)]
    nets = {name: build_backbone(name, CLASSES, pretrained=False) for name in BACKBONES}
    optimizers = {name: torch.optim.AdamW(net.parameters(), lr=1e-3) for name, net in nets.items()}
    config = RunConfig(backbone="bench", dataset="random", eps="16/255", train_attack_steps=3)
    times = {(name, eps): [] for name in BACKBONES for eps in (0.0, 16 / 255)}
    for _ in range(args.repeats + 1):
        for (name, eps), seconds in times.items():
            seconds.append(one_round(nets[name], data, optimizers[name], config, eps))
    ms = {key: 1000 * statistics.median(values[1:]) for key, values in times.items()}
    print(f"{r} px, batch 64, {CLASSES} classes, one thread, median of {args.repeats} rounds (ms per image)")
    print("| backbone | clean step | APGD-3 step |")
    print("|---|---|---|")
    for name in BACKBONES:
        print(f"| {name} | {ms[name, 0.0]:.2f} | {ms[name, 16 / 255]:.2f} |")
    lite, mobile = BACKBONES[1], BACKBONES[0]
    print(
        f"{lite} / {mobile}: clean {ms[lite, 0.0] / ms[mobile, 0.0]:.2f}x, "
        f"APGD-3 {ms[lite, 16 / 255] / ms[mobile, 16 / 255]:.2f}x"
    )


if __name__ == "__main__":
    main()
