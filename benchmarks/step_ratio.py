"""Adversarial-step / clean-step time of the trainer, measured side by side in one run.

    .venv/bin/python benchmarks/step_ratio.py [--batches 6] [--repeats 3]

Runs the trainer's real `train_one_epoch` on fixed random batches, alternating clean (ε = 0) and
adversarial (APGD-7, ε = 4/255) epochs so machine noise hits both alike, and prints the median time per
step of each and their ratio. An APGD-k step costs about k backward and k + 1 forward passes more than a
clean one, so the ideal ratio for k = 7 is roughly 1 + 7·(fwd+bwd)/(fwd+bwd+update) ≈ 8.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import timm
import torch

from rftbench.core.config import RunConfig
from rftbench.engine.trainer import train_one_epoch
from rftbench.models.nets import cifar_resnet20, with_normalization
from rftbench.models.registry import IMAGENET_MEAN, IMAGENET_STD

MODELS = {
    "cifar_resnet20@32px,bs64": (lambda: cifar_resnet20(), 32, 64),
    "timm resnet18@64px,bs32": (lambda: timm.create_model("resnet18", num_classes=10), 64, 32),
    "timm test_vit@64px,bs32": (lambda: timm.create_model("test_vit", num_classes=10, img_size=64), 64, 32),
}


def time_epochs(build, resolution, batch_size, batches, repeats, steps) -> tuple[float, float]:
    torch.manual_seed(0)
    net = with_normalization(build(), IMAGENET_MEAN, IMAGENET_STD)
    data = [
        (torch.rand(batch_size, 3, resolution, resolution), torch.randint(0, 10, (batch_size,)))
    ] * batches
    config = RunConfig(
        backbone="bench", dataset="random", setting="fix", eps="4/255", train_attack_steps=steps
    )
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    cpu, fmt = torch.device("cpu"), torch.contiguous_format
    per_step = {0.0: [], 4 / 255: []}
    for _ in range(repeats + 1):  # the first round warms up allocators and kernels; it is dropped
        for eps in per_step:
            start = time.perf_counter()
            train_one_epoch(
                net, data, optimizer, scheduler, scaler, lambda step, e=eps: e, config, cpu, None, fmt
            )
            per_step[eps].append((time.perf_counter() - start) / batches)
    clean, adv = (statistics.median(times[1:]) for times in per_step.values())
    return clean, adv


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=7)
    args = parser.parse_args()
    cpu = platform.processor() or platform.machine()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {cpu}")
    print(f"{'model':28} {'clean s/step':>13} {'APGD-' + str(args.steps) + ' s/step':>14} {'ratio':>7}")
    for name, (build, resolution, batch_size) in MODELS.items():
        clean, adv = time_epochs(build, resolution, batch_size, args.batches, args.repeats, args.steps)
        print(f"{name:28} {clean:13.4f} {adv:14.4f} {adv / clean:7.2f}")


if __name__ == "__main__":
    main()
