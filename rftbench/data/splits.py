"""Split rules: which images of a dataset make each split, seeded and deterministic.

    train, val, test = per_class_split(samples.labels, (57, 3), seed=SPLIT_SEED)   # Caltech's rule

Numpy only, and nothing of the registry: the readers and the loaders both build on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

SPLIT_SEED = 0  # default seed of every split rule and test subsample (RunConfig.split_seed stores it)
SPLITS = ("train", "val", "test", "test_full")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp")  # what a folder listing counts as images


@dataclass(frozen=True)
class Samples:
    root: Path
    paths: list[str]  # relative to root
    labels: list[int]
    classes: list[str]

    def subset(self, index) -> Samples:
        return Samples(
            self.root, [self.paths[i] for i in index], [self.labels[i] for i in index], self.classes
        )


def apportion(sizes: np.ndarray, n: int) -> np.ndarray:
    """`n` split across groups in proportion to `sizes`, by the largest remainder (ties: earlier group)."""
    quota = sizes * n / sizes.sum()
    take = np.floor(quota).astype(int)
    for i in np.argsort(-(quota - take), kind="stable")[: n - take.sum()]:
        take[i] += 1
    return take


def stratified_subsample(labels: list[int], n: int, seed: int = SPLIT_SEED) -> list[int]:
    """`n` indices with each class represented in proportion (largest remainder), drawn per class with a
    seeded generator; sorted. All indices when n >= len(labels)."""
    if n >= len(labels):
        return list(range(len(labels)))
    labels_arr = np.asarray(labels)
    classes, counts = np.unique(labels_arr, return_counts=True)
    take = apportion(counts, n)
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(np.flatnonzero(labels_arr == c), k, replace=False) for c, k in zip(classes, take)]
    return sorted(int(i) for i in np.concatenate(chosen))


def per_class_split(labels: list[int], counts: tuple[int, ...], seed: int = SPLIT_SEED) -> list[list[int]]:
    """Shuffle each class (seeded) and cut it into len(counts) + 1 parts: counts[0] images, counts[1], …,
    and the rest. Returns the sorted indices of each part."""
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in range(len(counts) + 1)]
    labels_arr = np.asarray(labels)
    for c in np.unique(labels_arr):
        index = rng.permutation(np.flatnonzero(labels_arr == c))
        if len(index) < sum(counts):
            raise ValueError(f"class {c} has {len(index)} images, the split rule needs {sum(counts)}")
        for part, (lo, hi) in enumerate(zip(np.cumsum((0,) + counts), np.cumsum(counts + (len(index),)))):
            parts[part] += index[lo:hi].tolist()
    return [sorted(p) for p in parts]


def fraction_split(
    labels: list[int], val_fraction: float, seed: int = SPLIT_SEED
) -> tuple[list[int], list[int]]:
    """A stratified train/val split holding out `val_fraction` of each class (rounded, at least one)."""
    rng = np.random.default_rng(seed)
    labels_arr, train, val = np.asarray(labels), [], []
    for c in np.unique(labels_arr):
        index = rng.permutation(np.flatnonzero(labels_arr == c))
        k = max(1, round(len(index) * val_fraction)) if len(index) > 1 else 0
        val += index[:k].tolist()
        train += index[k:].tolist()
    return sorted(train), sorted(val)
