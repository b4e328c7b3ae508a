"""One reader per on-disk format: an official layout in, the (relative image path, label) list of a split out.

    samples = cub(Path("data/cub"), "train", seed=0)      # what the registry's "Cub" entry calls

A reader knows its format and its split rule (`splits`), not the registry: a file it needs and does not
find is a `MissingFile`, which the registry restates with the dataset's name and layout. Fashion-MNIST and
the synthetic task are arrays, not image files. Model libraries (torchvision, scipy) are imported by the
readers that use them, when they run.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from rftbench.data.errors import MissingFile
from rftbench.data.splits import (
    IMAGE_SUFFIXES,
    SPLIT_SEED,
    SPLITS,
    Samples,
    fraction_split,
    per_class_split,
    stratified_subsample,
)

if TYPE_CHECKING:
    from torch import Tensor


def _require(path: Path) -> None:
    if not path.exists():
        raise MissingFile(path)


def aircraft(root: Path, split: str, seed: int) -> Samples:
    from torchvision.datasets import FGVCAircraft

    _require(root / "fgvc-aircraft-2013b" / "data")
    tv_split = "test" if split == "test_full" else split
    ds = FGVCAircraft(str(root), split=tv_split, annotation_level="variant")
    paths = [str(Path(p).relative_to(root)) for p in ds._image_files]
    samples = Samples(root, paths, list(ds._labels), list(ds.classes))
    return samples.subset(stratified_subsample(samples.labels, 1000, seed)) if split == "test" else samples


def cars(root: Path, split: str, seed: int) -> Samples:
    from torchvision.datasets import StanfordCars

    _require(root / "stanford_cars" / "devkit")
    ds = StanfordCars(str(root), split="train" if split in ("train", "val") else "test")
    paths = [str(Path(p).relative_to(root)) for p, _ in ds._samples]
    samples = Samples(root, paths, [int(y) for _, y in ds._samples], list(ds.classes))
    if split in ("train", "val"):
        train, val = fraction_split(samples.labels, 0.15, seed)
        return samples.subset(train if split == "train" else val)
    return samples.subset(stratified_subsample(samples.labels, 1000, seed)) if split == "test" else samples


def caltech256(root: Path, split: str, seed: int) -> Samples:
    base = root / "caltech256" / "256_ObjectCategories"
    if not base.is_dir():
        base = root / "256_ObjectCategories"
    _require(base)
    classes = sorted(p.name for p in base.iterdir() if p.is_dir())
    paths, labels = [], []
    for label, name in enumerate(classes):
        for image in sorted((base / name).glob("*.jpg")):
            paths.append(str(image.relative_to(root)))
            labels.append(label)
    samples = Samples(root, paths, labels, classes)
    train, val, test = per_class_split(labels, (57, 3), seed)
    return samples.subset({"train": train, "val": val}.get(split, test))


def cub(root: Path, split: str, seed: int) -> Samples:
    base = root / "CUB_200_2011" if (root / "CUB_200_2011").is_dir() else root
    _require(base / "images.txt")

    def table(filename: str) -> dict[int, str]:
        lines = (base / filename).read_text().splitlines()
        return {int(k): v for k, v in (line.split(" ", 1) for line in lines if line.strip())}

    images, labels, is_train = (
        table("images.txt"),
        table("image_class_labels.txt"),
        table("train_test_split.txt"),
    )
    classes = [name for _, name in sorted(table("classes.txt").items())]
    ids = sorted(images)
    paths = [str((base / "images" / images[i]).relative_to(root)) for i in ids]
    samples = Samples(root, paths, [int(labels[i]) - 1 for i in ids], classes)
    train_ids = [n for n, i in enumerate(ids) if is_train[i] == "1"]
    if split in ("test", "test_full"):
        return samples.subset([n for n, i in enumerate(ids) if is_train[i] != "1"])
    official = samples.subset(train_ids)
    train, val = per_class_split(official.labels, (3,), seed)[::-1]  # 3 val images per class, the rest train
    return official.subset(train if split == "train" else val)


def dogs(root: Path, split: str, seed: int) -> Samples:
    from scipy.io import loadmat

    _require(root / "train_list.mat")
    classes = sorted(p.name for p in (root / "Images").iterdir() if p.is_dir())

    def official(filename: str) -> Samples:
        mat = loadmat(str(root / filename), squeeze_me=True)
        files = [str(f) for f in np.atleast_1d(mat["file_list"])]
        return Samples(
            root, [f"Images/{f}" for f in files], [int(y) - 1 for y in np.atleast_1d(mat["labels"])], classes
        )

    if split in ("test", "test_full"):
        return official("test_list.mat")
    train = official("train_list.mat")
    keep, val = per_class_split(train.labels, (90, 10), seed)[:2]
    return train.subset(keep if split == "train" else val)


def imagefolder(root: Path, split: str, seed: int) -> Samples:
    """root/{train,val,test}/<class>/<image> (without val/: 10% of train per class, seeded), or
    root/<class>/<image> split 80/10/10 per class (seeded)."""

    def listing(base: Path, classes: list[str]) -> tuple[list[str], list[int]]:
        paths, labels = [], []
        for label, name in enumerate(classes):
            for image in sorted((base / name).iterdir()) if (base / name).is_dir() else []:
                if image.suffix.lower() in IMAGE_SUFFIXES:
                    paths.append(str(image.relative_to(root)))
                    labels.append(label)
        return paths, labels

    if (root / "train").is_dir():
        classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
        folder = {"train": "train", "val": "val", "test": "test", "test_full": "test"}[split]
        if split in ("train", "val") and not (root / "val").is_dir():
            train = Samples(root, *listing(root / "train", classes), classes)
            keep, val = fraction_split(train.labels, 0.1, seed)
            return train.subset(keep if split == "train" else val)
        _require(root / folder)
        return Samples(root, *listing(root / folder, classes), classes)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    samples = Samples(root, *listing(root, classes), classes)
    rest, test = fraction_split(samples.labels, 0.1, seed)
    train, val = fraction_split([samples.labels[i] for i in rest], 1 / 9, seed)
    parts = {"train": [rest[i] for i in train], "val": [rest[i] for i in val]}
    return samples.subset(parts.get(split, test))


FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot"]  # fmt: skip


def read_idx(path: Path) -> np.ndarray:
    """An idx file (the MNIST format), gzipped or not."""
    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def fashion_mnist_folder(root: Path) -> Path:
    """Where the idx files are: ROOT, or ROOT/FashionMNIST/raw where torchvision's download puts them."""
    return root / "FashionMNIST" / "raw" if (root / "FashionMNIST" / "raw").is_dir() else root


def fashion_mnist_arrays(root: Path, split: str, seed: int = SPLIT_SEED) -> tuple[np.ndarray, list[int]]:
    """Images (N×28×28 uint8) and labels: the official test set, or the official training set split
    55,000 / 5,000 (stratified, seeded) into train / val."""
    official = "test" if split in ("test", "test_full") else "train"
    images_file, labels_file = (fashion_mnist_folder(root) / f for f in FASHION_MNIST_FILES[official])
    for path in (images_file, labels_file):
        _require(path)
    images, labels = read_idx(images_file), read_idx(labels_file).astype(int).tolist()
    if official == "test":
        return images, labels
    train, val = fraction_split(labels, 1 / 12, seed)
    index = train if split == "train" else val
    return images[index], [labels[i] for i in index]


SYNTHETIC_PER_CLASS = {"train": 40, "val": 10, "test": 10, "test_full": 10}


def synthetic_arrays(split: str, resolution: int, seed: int = SPLIT_SEED) -> tuple[Tensor, list[int]]:
    """A generated 10-class task for smoke tests and pipeline checks (no files, no download): each class is
    a smooth random colour pattern, each image that pattern shifted, rescaled in brightness and noised.
    The patterns depend on `seed` alone, the samples on `seed` and the split, so splits never overlap."""
    import torch
    import torch.nn.functional as F

    patterns = torch.rand(10, 3, 4, 4, generator=torch.Generator().manual_seed(seed)) * 0.6 + 0.2
    patterns = F.interpolate(patterns, size=resolution, mode="bicubic", align_corners=False)
    g = torch.Generator().manual_seed(seed * 1000 + 1 + SPLITS.index(split.replace("_full", "")))
    labels = torch.arange(10).repeat_interleave(SYNTHETIC_PER_CLASS[split])
    shifts = torch.randint(-resolution // 8, resolution // 8 + 1, (len(labels), 2), generator=g)
    images = torch.stack([patterns[c].roll(tuple(s.tolist()), dims=(1, 2)) for c, s in zip(labels, shifts)])
    images = images * (0.7 + 0.6 * torch.rand(len(labels), 1, 1, 1, generator=g))
    images = images + 0.12 * torch.randn(images.shape, generator=g)
    return (images.clamp(0, 1) * 255).round().to(torch.uint8), labels.tolist()
