"""Decoded-image datasets and the paper's preprocessing.

    images, labels, classes = decode_image_folder("../shared/data/cifar10-jpeg/train", resolution=32)
    train = ImageTensorDataset(images, labels, train_transform())
    loader = make_loader(train, batch_size=64, shuffle=True)

Decoding and resizing are the expensive part of an epoch, so images are decoded once into a uint8
tensor (N×3×H×W at the run's resolution) and augmentation runs on those tensors: per image in the loader
(`train_transform`, the run config's `augmentation = "loader"`), or on the run's device for the whole
batch (`augment_params` + `augment_batch`, `augmentation = "device"`), where loaders ship uint8 batches:

    params = augment_params(len(x), generator)        # on the CPU, from (seed, epoch): any device agrees
    x = augment_batch(to_device(x, "cuda"), to_device(params, "cuda"))   # pinned, asynchronous
"""

from __future__ import annotations

import functools
import itertools
import math
import signal
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision.transforms import v2

from rftbench.data.splits import IMAGE_SUFFIXES, apportion

JITTER = 0.25  # ColorJitter's brightness, contrast and saturation
DEGREES = 2.0  # RandomRotation's range, ±


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


def to_device(t: Tensor, device: torch.device) -> Tensor:
    """`t` on `device` without making the host wait: an accelerator copies asynchronously only from pinned
    memory (from pageable memory, `non_blocking` is ignored and the host waits), so a host tensor is pinned
    first (PyTorch's caching host allocator makes that cheap after the first batches)."""
    if torch.device(device).type == "cuda" and t.device.type == "cpu" and not t.is_pinned():
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


def to_unit_float(x: Tensor) -> Tensor:
    """uint8 images to float32 in [0, 1] exactly as `eval_transform` computes them; float images as given."""
    return v2.functional.to_dtype(x, torch.float32, scale=True) if x.dtype == torch.uint8 else x


# The six orders of (brightness, contrast, saturation): torchvision's ColorJitter draws one per image.
JITTER_ORDERS = torch.tensor(list(itertools.permutations(range(3))))


def augment_params(n: int, generator: torch.Generator) -> Tensor:
    """`n` images' draws of the training augmentation, n×6 float32 on the CPU: flip (0 or 1), brightness,
    contrast and saturation factors in [1 - JITTER, 1 + JITTER], the jitter order (0-5, an index into
    JITTER_ORDERS) and the rotation in degrees in [-DEGREES, DEGREES]. Drawn on the CPU so that every device
    augments alike."""
    u = torch.rand(n, 5, generator=generator, dtype=torch.float64)
    order = torch.randint(len(JITTER_ORDERS), (n, 1), generator=generator, dtype=torch.float64)
    params = torch.cat([(u[:, :1] < 0.5), 1 - JITTER + 2 * JITTER * u[:, 1:4], order,
                        -DEGREES + 2 * DEGREES * u[:, 4:]], dim=1)  # fmt: skip
    return params.float()


def _grayscale(x: Tensor) -> Tensor:
    r, g, b = x.unbind(dim=-3)
    return r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).unsqueeze(-3)


def _blend(x: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    return (factor * x + (1 - factor) * other).clamp(0, 1)


@functools.cache
def jitter_orders(device: torch.device) -> Tensor:
    """`JITTER_ORDERS` on `device`, copied once per process rather than once per batch."""
    return JITTER_ORDERS.to(device)


def augment_batch(x: Tensor, params: Tensor) -> Tensor:
    """`train_transform` on a whole batch where it lives (uint8 or [0, 1] float B×3×H×W; `params` from
    `augment_params`, on the same device): horizontal flip, ColorJitter (brightness, contrast, saturation
    in each image's own order, torchvision's formulas on floats) and a nearest-neighbour rotation about the
    centre with zero fill. Returns float32 in [0, 1]. Unlike the loader path, the jitter is computed on
    floats and not rounded back to uint8 between its steps."""
    x = to_unit_float(x)
    per_image = (-1, 1, 1, 1)
    flip, factors, order, degrees = params[:, 0], params[:, 1:4], params[:, 4].long(), params[:, 5]
    x = torch.where(flip.view(per_image) > 0, x.flip(-1), x)
    orders = jitter_orders(x.device)[order]  # B×3: the operation at each position
    for position in range(3):
        op = orders[:, position].view(per_image)
        factor = factors.gather(1, orders[:, position : position + 1]).view(per_image)
        brightness = (factor * x).clamp(0, 1)
        contrast = _blend(x, _grayscale(x).mean(dim=(-3, -2, -1), keepdim=True), factor)
        saturation = _blend(x, _grayscale(x), factor)
        x = torch.where(op == 0, brightness, torch.where(op == 1, contrast, saturation))
    angle = degrees * (math.pi / 180)
    cos, sin, zero = angle.cos(), angle.sin(), torch.zeros_like(angle)
    height, width = x.shape[-2:]
    theta = torch.stack([torch.stack([cos, -sin * height / width, zero], 1),
                         torch.stack([sin * width / height, cos, zero], 1)], 1)  # fmt: skip
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


class ImageTensorDataset(Dataset):
    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        transform: Callable[[Tensor], Tensor] | None,
        classes: list[str] | None = None,
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError("images must be a uint8 tensor N×C×H×W")
        self.images, self.labels, self.transform = images, labels, transform
        self.classes = classes if classes is not None else [str(c) for c in range(int(labels.max()) + 1)]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image = self.images[index]  # transform None: uint8, for the device to convert (`to_unit_float`)
        return (self.transform(image) if self.transform is not None else image), self.labels[index]


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
                      pin_memory=loader.pin_memory, worker_init_fn=loader.worker_init_fn,
                      persistent_workers=loader.persistent_workers)  # fmt: skip


def ignore_stop_signals(worker_id: int) -> None:
    """In a loader worker: Ctrl-C and a scheduler's SIGTERM go to the whole process group; the main
    process stops the run and then its workers, which must not die first (a dead worker is an error)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def make_loader(
    dataset: Dataset, batch_size: int, *, shuffle: bool, num_workers: int = 0, device: str = "cpu"
) -> DataLoader:
    """A loader that keeps an accelerator fed: workers, and pinned memory off the CPU so that copies to
    the device are asynchronous. Workers persist across epochs only where they draw no random numbers (a
    dataset without a transform, which ships uint8 images): the trainer reseeds the global RNG per epoch
    and fresh workers draw their seeds from it, so an epoch's loader-side augmentation is the same whether
    or not the run was resumed. The shuffle is drawn in the main process either way."""
    random_in_workers = getattr(dataset, "transform", None) is not None
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        pin_memory=not str(device).startswith("cpu"),
        drop_last=False,
        worker_init_fn=ignore_stop_signals if num_workers else None,
        persistent_workers=num_workers > 0 and not random_in_workers,
    )
