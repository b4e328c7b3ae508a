"""Mixed precision in the attack: APGD-10 and AutoAttack in bf16 against fp32, accuracy and time.

    python benchmarks/attack_precision.py [--device cuda] [--images 200] [--eps 0.5/255] [--norm Linf]

On the real (non-robust) CIFAR-10 ResNet-20 from ../shared, at a budget it partly survives: each attack
measures the robust accuracy at ε_g (the `budget` protocol) of the same test images in fp32 and in bf16
autocast (the loss always in fp32), in alternating order. Prints per attack: both accuracies, their
difference in points, both wall times and the bf16 / fp32 time ratio. Nothing is stored.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from rftbench.core.metrics import EvalProtocol
from rftbench.data.loading import decode_image_folder
from rftbench.engine.evaluation import evaluate_budgets
from rftbench.models.nets import cifar_resnet20, load_cifar_resnet20_weights, with_normalization
from rftbench.models.registry import IMAGENET_MEAN, IMAGENET_STD

SHARED = Path(__file__).resolve().parents[2] / "shared"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--eps", default="0.5/255")
    parser.add_argument("--norm", default="Linf")
    parser.add_argument("--attacks", nargs="+", default=["apgd-ce", "autoattack-standard"])
    args = parser.parse_args()
    device = torch.device(args.device)
    net = cifar_resnet20()
    load_cifar_resnet20_weights(net, SHARED / "weights" / "resnet20-12fca82f.th")
    net = with_normalization(net, IMAGENET_MEAN, IMAGENET_STD).eval().to(device)
    per_class = -(-args.images // 10)
    images, labels, _ = decode_image_folder(
        SHARED / "data" / "cifar10-jpeg" / "test", 32, per_class=per_class
    )
    x, y = images[: args.images], labels[: args.images]
    batches = [
        (x[i : i + args.batch_size], y[i : i + args.batch_size]) for i in range(0, len(y), args.batch_size)
    ]
    print(f"ResNet-20, {len(y)} CIFAR-10 test images, {args.norm} ε_g = {args.eps}, {device}")
    print(
        f"{'attack':<22}{'fp32 %':>8}{'bf16 %':>8}{'diff pp':>9}{'fp32 s':>9}{'bf16 s':>9}{'bf16/fp32':>11}"
    )
    for attack in args.attacks:
        steps = 10 if attack == "apgd-ce" else 100
        found = {}
        for precision in ("fp32", "bf16"):
            protocol = EvalProtocol(
                attack=attack, steps=steps, norm=args.norm, precision=precision, protocol="budget"
            )
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            result = evaluate_budgets(net, batches, [args.eps], protocol, device=device, n_classes=10)
            if device.type == "cuda":
                torch.cuda.synchronize()
            found[precision] = (100 * result["budgets"][0]["adv"], time.perf_counter() - start)
        (a32, t32), (a16, t16) = found["fp32"], found["bf16"]
        print(f"{attack:<22}{a32:>8.2f}{a16:>8.2f}{a16 - a32:>+9.2f}{t32:>9.1f}{t16:>9.1f}{t16 / t32:>11.2f}")


if __name__ == "__main__":
    main()
