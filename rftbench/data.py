"""Decoded-image datasets and the paper's preprocessing.

    images, labels, classes = decode_image_folder("../shared/data/cifar10-jpeg/train", resolution=32)
    train = ImageTensorDataset(images, labels, train_transform())
    loader = make_loader(train, batch_size=64, shuffle=True)

Decoding and resizing are the expensive part of an epoch, so images are decoded once into a uint8
tensor (N×3×H×W at the run's resolution) and augmentation runs on those tensors.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision.transforms import v2

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp")


def decode_image(path: str | Path, resolution: int) -> Tensor:
    """One image as uint8 3×R×R: grayscale and palette images become RGB, then a bilinear resize."""
    with Image.open(path) as img:
        img = img.convert("RGB")
        if img.size != (resolution, resolution):
            img = img.resize((resolution, resolution), Image.BILINEAR)
        return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).contiguous()


def decode_image_folder(
    root: str | Path, resolution: int, per_class: int | None = None
) -> tuple[Tensor, Tensor, list[str]]:
    """Decode an ImageFolder tree (root/<class>/<image>), the first `per_class` files of each class in
    sorted order. Returns (uint8 images N×3×R×R, int64 labels, class names)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} not found: expected {root}/<class>/<image>.jpg")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    paths, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(p for p in (root / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        files = files[:per_class] if per_class is not None else files
        paths += files
        labels += [label] * len(files)
    if not paths:
        raise FileNotFoundError(f"no images under {root}: expected {root}/<class>/<image>.jpg")
    images = torch.stack([decode_image(p, resolution) for p in paths])
    return images, torch.tensor(labels, dtype=torch.int64), classes


def train_transform() -> Callable[[Tensor], Tensor]:
    """The paper's training augmentation on uint8 tensors; output float in [0, 1]."""
    return v2.Compose(
        [
            v2.RandomHorizontalFlip(),
            v2.ColorJitter(brightness=0.25, contrast=0.25, saturation=0.25),
            v2.RandomRotation(2),
            v2.ToDtype(torch.float32, scale=True),
        ]
    )


def eval_transform() -> Callable[[Tensor], Tensor]:
    return v2.ToDtype(torch.float32, scale=True)


class ImageTensorDataset(Dataset):
    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        transform: Callable[[Tensor], Tensor],
        classes: list[str] | None = None,
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError("images must be a uint8 tensor N×C×H×W")
        self.images, self.labels, self.transform = images, labels, transform
        self.classes = classes if classes is not None else [str(c) for c in range(int(labels.max()) + 1)]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.transform(self.images[index]), self.labels[index]


def apportion(sizes: np.ndarray, n: int) -> np.ndarray:
    """`n` split across groups in proportion to `sizes`, by the largest remainder (ties: earlier group)."""
    quota = sizes * n / sizes.sum()
    take = np.floor(quota).astype(int)
    for i in np.argsort(-(quota - take), kind="stable")[: n - take.sum()]:
        take[i] += 1
    return take


def covering_subsample(labels: list[int], n: int, seed: int) -> list[int]:
    """`n` indices in which every class appears (when n >= the number of classes): one image of each class,
    then the rest of `n` in proportion to the classes' remaining sizes (largest remainder), drawn per class
    with a seeded generator; sorted. Fewer than one per class: one image of each of `n` seeded classes.
    All indices when n >= len(labels)."""
    if n >= len(labels):
        return list(range(len(labels)))
    labels_arr = np.asarray(labels)
    classes, counts = np.unique(labels_arr, return_counts=True)
    rng = np.random.default_rng(seed)
    shuffled = [rng.permutation(np.flatnonzero(labels_arr == c)) for c in classes]
    if n < len(classes):
        return sorted(int(shuffled[c][0]) for c in rng.choice(len(classes), n, replace=False))
    take = 1 + apportion(counts - 1, n - len(classes))
    return sorted(int(i) for order, k in zip(shuffled, take) for i in order[:k])


def covering_loader(loader: DataLoader, n: int, seed: int) -> DataLoader:
    """The same loader over a fixed `covering_subsample` of its dataset (which must have `labels`, as
    ImageTensorDataset does): the first `n` images of a split sorted by class would miss most classes."""
    labels = getattr(loader.dataset, "labels", None)
    if labels is None:
        raise ValueError("the dataset needs a `labels` tensor to draw a subset covering every class")
    subset = Subset(loader.dataset, covering_subsample(labels.tolist(), n, seed))
    return DataLoader(subset, batch_size=loader.batch_size, num_workers=loader.num_workers,
                      pin_memory=loader.pin_memory, worker_init_fn=loader.worker_init_fn)  # fmt: skip


def ignore_stop_signals(worker_id: int) -> None:
    """In a loader worker: Ctrl-C and a scheduler's SIGTERM go to the whole process group; the main
    process stops the run and then its workers, which must not die first (a dead worker is an error)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def make_loader(
    dataset: Dataset, batch_size: int, *, shuffle: bool, num_workers: int = 0, device: str = "cpu"
) -> DataLoader:
    """A loader that keeps an accelerator fed (workers, pinned memory off the CPU). Workers are not
    persistent: the trainer reseeds the global RNG per epoch, and fresh workers draw their seeds from it,
    so an epoch's shuffle and augmentation are the same whether or not the run was resumed."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        pin_memory=not str(device).startswith("cpu"),
        drop_last=False,
        worker_init_fn=ignore_stop_signals if num_workers else None,
    )
