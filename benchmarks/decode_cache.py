"""Epoch time of the data pipeline: decoding JPEGs every epoch vs. the decoded uint8 cache.

    .venv/bin/python benchmarks/decode_cache.py [--resolution 32 112] [--epochs 2]

Both pipelines feed the same augmentation (flip, ColorJitter, rotation ±2°) through a DataLoader over the
10,000 CIFAR-10 train JPEGs of ../shared, batch 64, in the main process; they alternate epoch by epoch
so machine noise hits both alike. Prints the median epoch time of each and the ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from rftbench.data.build import build_dataset
from rftbench.data.lists import samples
from rftbench.data.loading import decode_image, train_transform

CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg"


class DecodeEveryEpoch(Dataset):
    """What an ImageFolder pipeline does: open, decode and resize the JPEG on every access."""

    def __init__(self, root: Path, resolution: int) -> None:
        s = samples("imagefolder", root, "train")
        self.paths, self.labels = [root / p for p in s.paths], s.labels
        self.resolution, self.transform = resolution, train_transform()

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        return self.transform(decode_image(self.paths[i], self.resolution)), self.labels[i]


def epoch_seconds(dataset: Dataset) -> float:
    start = time.perf_counter()
    for _ in DataLoader(dataset, batch_size=64, shuffle=True):
        pass
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, nargs="+", default=[32, 112])
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    os.environ["RFTBENCH_CACHE"] = tempfile.mkdtemp(prefix="rftbench-bench-")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; CIFAR-10 train JPEGs from {CIFAR}")
    print(f"{'px':>4} {'first build s':>14} {'decode/epoch s':>15} {'cached/epoch s':>15} {'gain':>6}")
    for resolution in args.resolution:
        start = time.perf_counter()
        cached = build_dataset(
            "imagefolder", CIFAR, "train", transform=train_transform(), resolution=resolution
        )
        first_build = time.perf_counter() - start  # decodes once and writes the cache
        decoding = DecodeEveryEpoch(CIFAR, resolution)
        times = {"decode": [], "cached": []}
        for _ in range(args.epochs):
            times["decode"].append(epoch_seconds(decoding))
            times["cached"].append(epoch_seconds(cached))
        decode, cache = statistics.median(times["decode"]), statistics.median(times["cached"])
        print(f"{resolution:4d} {first_build:14.1f} {decode:15.1f} {cache:15.1f} {decode / cache:5.1f}x")


if __name__ == "__main__":
    main()
