"""A dataset by name as decoded uint8 images, decoded once and cached on disk.

    train = build_dataset("Cub", "/data/cub", "train", transform=train_transform(), resolution=224)
    test = build_dataset("Aircraft", "/data/aircraft", "test")   # the scored 1,000-image subsample

Each registry entry turns its official on-disk layout into a list of (relative image path, label) per
split (`lists.samples`); split rules are seeded and deterministic (`seed`, default SPLIT_SEED, kept in each
run's config as `split_seed`), and images are decoded once per (dataset, split, resolution, sample list)
into a uint8 tensor cached on disk under $RFTBENCH_CACHE. `download=True` fetches what is missing first
(`fetch`, which never imports this module).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from rftbench.data.errors import DataNotFound
from rftbench.data.fetch import fetch
from rftbench.data.lists import paper_split_dir, samples
from rftbench.data.readers import FASHION_MNIST_CLASSES, fashion_mnist_arrays, synthetic_arrays
from rftbench.data.registry import expecting, resolve_root
from rftbench.data.splits import SPLIT_SEED, Samples

if TYPE_CHECKING:
    from torch import Tensor

    from rftbench.data.loading import ImageTensorDataset


def decoded_cache_path(name: str, split: str, resolution: int, key: str) -> Path:
    from rftbench.core.files import cache_dir

    return cache_dir() / "decoded" / f"{name}-{split}-{resolution}px-{key}.pt"


def decode_samples(s: Samples, resolution: int, cache: Path | None) -> Tensor:
    """uint8 N×3×R×R images of `s`, from `cache` when it holds them, else decoded (and cached)."""
    import torch
    from filelock import FileLock

    from rftbench.core.files import atomic_write

    if cache is None:
        return decode_all(s, resolution)
    if cache.exists():
        return torch.load(cache, map_location="cpu", weights_only=True)["images"]
    cache.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{cache}.lock"):  # N workers on a cold cache: one decodes, the others wait and read
        if cache.exists():
            return torch.load(cache, map_location="cpu", weights_only=True)["images"]
        images = decode_all(s, resolution)
        atomic_write(cache, lambda f: torch.save({"images": images}, f))
    return images


def decode_all(s: Samples, resolution: int) -> Tensor:
    import torch

    from rftbench.data.loading import decode_image

    if not s.paths:
        raise DataNotFound(f"no images in this split under {s.root}")
    return torch.stack([decode_image(s.root / p, resolution) for p in s.paths])


def build_dataset(
    name: str,
    root: str | Path | None,
    split: str,
    *,
    transform: Callable[[Tensor], Tensor] | None = None,
    resolution: int = 224,
    split_file: str | Path | None = None,
    cache: bool = True,
    download: bool = False,
    seed: int = SPLIT_SEED,
    splits: str = "rules",
) -> ImageTensorDataset:
    """Split `split` of dataset `name` as decoded uint8 images at `resolution` (cached on disk per
    dataset, split, resolution and sample list) with `transform` (default: evaluation, resize only).

    `splits="paper"` reads the paper's split lists (Caltech, Cub, Dogs); `download=True` fetches a dataset
    that is not there yet, with its paper split lists (`rftbench.data.fetch`)."""
    import torch
    import torch.nn.functional as F

    from rftbench.data.loading import ImageTensorDataset, eval_transform

    transform = transform or eval_transform()
    if download:
        path = resolve_root(name, root)
        if not path.exists() or (splits == "paper" and paper_split_dir(name, path, split_file) is None):
            fetch(name, path, splits_only=path.exists())
    if name == "synthetic":
        images, labels = synthetic_arrays(split, resolution, seed)
        return ImageTensorDataset(images, torch.tensor(labels), transform, [f"pattern{i}" for i in range(10)])
    if name == "fashion_mnist":
        with expecting(name):
            arrays, labels = fashion_mnist_arrays(resolve_root(name, root), split, seed)
        images = torch.from_numpy(arrays.copy()).unsqueeze(1).expand(-1, 3, -1, -1)
        if resolution != images.shape[-1]:
            resized = F.interpolate(images.float(), size=resolution, mode="bilinear", antialias=True)
            images = resized.round().clamp(0, 255).to(torch.uint8)
        return ImageTensorDataset(images.contiguous(), torch.tensor(labels), transform, FASHION_MNIST_CLASSES)
    s = samples(name, root, split, split_file, seed, splits)
    missing = next((p for p in s.paths if not (s.root / p).is_file()), None)
    if missing is not None:
        raise DataNotFound(f"dataset {name}: image {s.root / missing} of split {split} is missing")
    stats = [(st.st_size, st.st_mtime_ns) for st in (os.stat(s.root / p) for p in s.paths)]  # edits miss
    key = hashlib.sha256(json.dumps([str(s.root.resolve()), s.paths, s.labels, stats]).encode()).hexdigest()
    cached = decoded_cache_path(name, split, resolution, key[:16]) if cache else None
    images = decode_samples(s, resolution, cached)
    return ImageTensorDataset(images, torch.tensor(s.labels, dtype=torch.int64), transform, s.classes)
