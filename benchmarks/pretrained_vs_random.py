"""Does pretraining transfer? tf_efficientnet_lite0 with its real ImageNet weights vs. random init.

    .venv/bin/python benchmarks/pretrained_vs_random.py [--epochs 2] [--train-per-class 200] [--size 64]

Both runs fine-tune the same way through the real trainer (fix at ε_g, APGD-2 training attack) on CIFAR-10
JPEGs from ../shared, and are scored on held-out test JPEGs: clean accuracy, APGD-10 accuracy at ε_g and
E.adv. Prints both and their difference, with wall times.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from rftbench import RunConfig, train
from rftbench.data.loading import (
    ImageTensorDataset,
    decode_image_folder,
    eval_transform,
    make_loader,
    train_transform,
)
from rftbench.models.build import build_backbone

CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-per-class", type=int, default=200)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--eps", default="4/255")
    parser.add_argument("--setting", default="fix")
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()

    start = time.perf_counter()
    train_x, train_y, _ = decode_image_folder(CIFAR / "train", args.size, per_class=args.train_per_class)
    held_x, held_y, _ = decode_image_folder(CIFAR / "test", args.size, per_class=150)
    val = (held_x[0::3], held_y[0::3])  # 500 validation, 1,000 test images
    test = (torch.cat([held_x[1::3], held_x[2::3]]), torch.cat([held_y[1::3], held_y[2::3]]))
    print(
        f"decoded {len(train_y)} train / {len(val[1])} val / {len(test[1])} test JPEGs at {args.size} px "
        f"in {time.perf_counter() - start:.1f}s; torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    config = RunConfig(
        backbone="tf_efficientnet_lite0",
        dataset="cifar10-jpeg",
        setting=args.setting,
        eps=args.eps,
        epochs=args.epochs,
        batch_size=64,
        lr=args.lr,
        warmup_epochs=0.2,
        resolution=args.size,
        train_attack_steps=2,
        eval_attack_steps=10,
        val_adv_samples=200,
    )
    loaders = (
        make_loader(ImageTensorDataset(train_x, train_y, train_transform()), 64, shuffle=True),
        make_loader(ImageTensorDataset(*val, eval_transform()), 250, shuffle=False),
        make_loader(ImageTensorDataset(*test, eval_transform()), 250, shuffle=False),
    )
    results = {}
    for pretrained in (True, False):
        torch.manual_seed(config.seed)
        model = build_backbone("tf_efficientnet_lite0", 10, pretrained=pretrained, size=args.size)
        start = time.perf_counter()

        def report(m, label="ImageNet" if pretrained else "random"):
            print(
                f"  [{label}] epoch {m['epoch']}: eps {m['eps'] * 255:.2f}/255 train {m['train_acc']:.3f} "
                f"val_acc {m['val_acc']:.3f} val_adv_acc {m['val_adv_acc']:.3f} ({m['epoch_seconds']:.0f}s)"
            )

        result = train(config, model, *loaders, callback=report)
        (budget,) = result["budgets"]
        results[pretrained] = (result["clean"], budget["adv"], budget["eadv"], time.perf_counter() - start)
    print(
        f"\n{'init':10} {'clean':>7} {'adv':>7} {'E.adv':>7} {'wall s':>7}   "
        f"({args.setting} {args.eps}, {args.epochs} epochs, APGD-2 training, APGD-10 test)"
    )
    for pretrained, (clean, adv, eadv, wall) in results.items():
        print(f"{'ImageNet' if pretrained else 'random':10} {clean:7.2%} {adv:7.2%} {eadv:7.2%} {wall:7.0f}")
    gain = [a - b for a, b in zip(results[True][:3], results[False][:3])]
    print(f"{'gain':10} {gain[0]:+7.2%} {gain[1]:+7.2%} {gain[2]:+7.2%}")


if __name__ == "__main__":
    main()
