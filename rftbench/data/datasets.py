"""Datasets by name: the paper's five with their split rules, bring-your-own folders, Fashion-MNIST.

    train = build_dataset("Cub", "/data/cub", "train", transform=train_transform(), resolution=224)
    test = build_dataset("Aircraft", "/data/aircraft", "test")   # the scored 1,000-image subsample

Each entry turns its official on-disk layout into a list of (relative image path, label) per split; split
rules are seeded and deterministic (`seed`, default SPLIT_SEED, kept in each run's config as
`split_seed`), and images are decoded once per
(dataset, split, resolution, sample list) into a uint8 tensor cached on disk under $RFTBENCH_CACHE.

The paper's own split lists for Caltech-256, CUB and Dogs (`splits="paper"`; `PAPER_SPLITS`) are Hua et
al.'s (CVPR 2024) files from their repository DongXzz/RoLI, read as they are: a folder holding
`{train,val,test}.json`, each one JSON object mapping an image path (relative to the dataset's image folder)
to its class, labelled per dataset (Caltech 0-256, Dogs 1-120, CUB "001"-"200"). `rftbench data fetch`
puts them in ROOT/paper_splits/; a `split_file` that names a folder points elsewhere. Every label is
checked against its image's class folder.

Split files of your own (`split_file=` a file): JSON `{"classes": [...], "train": [["rel/path.jpg", label],
...], "val": [...], "test": [...]}`, paths relative to the dataset root, labels 0-based.

This module imports no torch until it decodes images (the CLI lists the registry at once).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from rftbench.core.config import SPLIT_SOURCES
from rftbench.errors import RftbenchError

if TYPE_CHECKING:
    from torch import Tensor

    from rftbench.data.loading import ImageTensorDataset

SPLIT_SEED = 0  # default seed of every split rule and test subsample (RunConfig.split_seed stores it)
SPLITS = ("train", "val", "test", "test_full")
SPLIT_FOLDER = "paper_splits"  # ROOT/paper_splits/{train,val,test}.json: where `data fetch` puts them
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp")


class DataNotFound(RftbenchError, FileNotFoundError):
    """A dataset root is missing or malformed; the message names the dataset, the layout and the path."""


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


# ---- the official layouts ----


def _require(path: Path, name: str, layout: str) -> None:
    if not path.exists():
        raise DataNotFound(f"dataset {name}: {path} not found; expected {layout}")


def _aircraft(root: Path, split: str, seed: int) -> Samples:
    from torchvision.datasets import FGVCAircraft

    _require(root / "fgvc-aircraft-2013b" / "data", "Aircraft", LAYOUTS["Aircraft"])
    tv_split = "test" if split == "test_full" else split
    ds = FGVCAircraft(str(root), split=tv_split, annotation_level="variant")
    paths = [str(Path(p).relative_to(root)) for p in ds._image_files]
    samples = Samples(root, paths, list(ds._labels), list(ds.classes))
    return samples.subset(stratified_subsample(samples.labels, 1000, seed)) if split == "test" else samples


def _cars(root: Path, split: str, seed: int) -> Samples:
    from torchvision.datasets import StanfordCars

    _require(root / "stanford_cars" / "devkit", "Cars", LAYOUTS["Cars"])
    ds = StanfordCars(str(root), split="train" if split in ("train", "val") else "test")
    paths = [str(Path(p).relative_to(root)) for p, _ in ds._samples]
    samples = Samples(root, paths, [int(y) for _, y in ds._samples], list(ds.classes))
    if split in ("train", "val"):
        train, val = fraction_split(samples.labels, 0.15, seed)
        return samples.subset(train if split == "train" else val)
    return samples.subset(stratified_subsample(samples.labels, 1000, seed)) if split == "test" else samples


def _caltech256(root: Path, split: str, seed: int) -> Samples:
    base = root / "caltech256" / "256_ObjectCategories"
    if not base.is_dir():
        base = root / "256_ObjectCategories"
    _require(base, "Caltech", LAYOUTS["Caltech"])
    classes = sorted(p.name for p in base.iterdir() if p.is_dir())
    paths, labels = [], []
    for label, name in enumerate(classes):
        for image in sorted((base / name).glob("*.jpg")):
            paths.append(str(image.relative_to(root)))
            labels.append(label)
    samples = Samples(root, paths, labels, classes)
    train, val, test = per_class_split(labels, (57, 3), seed)
    return samples.subset({"train": train, "val": val}.get(split, test))


def _cub(root: Path, split: str, seed: int) -> Samples:
    base = root / "CUB_200_2011" if (root / "CUB_200_2011").is_dir() else root
    _require(base / "images.txt", "Cub", LAYOUTS["Cub"])

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


def _dogs(root: Path, split: str, seed: int) -> Samples:
    from scipy.io import loadmat

    _require(root / "train_list.mat", "Dogs", LAYOUTS["Dogs"])
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


def _imagefolder(root: Path, split: str, seed: int) -> Samples:
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
        _require(root / folder, "imagefolder", LAYOUTS["imagefolder"])
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


def fashion_mnist_arrays(root: Path, split: str, seed: int = SPLIT_SEED) -> tuple[np.ndarray, list[int]]:
    """Images (N×28×28 uint8) and labels: the official test set, or the official training set split
    55,000 / 5,000 (stratified, seeded) into train / val."""
    official = "test" if split in ("test", "test_full") else "train"
    if (root / "FashionMNIST" / "raw").is_dir():  # where torchvision's download puts the files
        root = root / "FashionMNIST" / "raw"
    images_file, labels_file = (root / f for f in FASHION_MNIST_FILES[official])
    for path in (images_file, labels_file):
        _require(path, "fashion_mnist", LAYOUTS["fashion_mnist"])
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


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    classes: int
    sizes: str  # train / val / test as the protocol gives them
    load: Callable[[Path, str, int], Samples] | None  # None: not image files (see build_dataset)
    default_root: str
    train_images: int | None = None  # for work estimates (`run-grid --dry-run`); None: depends on the data
    val_images: int | None = None  # the same for the validation split and the scored test split
    test_images: int | None = None


LAYOUTS = {
    "Aircraft": "ROOT/fgvc-aircraft-2013b/data/{images/,variants.txt,images_variant_{train,val,test}.txt}",
    "Cars": "ROOT/stanford_cars/{cars_train/,cars_test/,devkit/cars_meta.mat,devkit/cars_train_annos.mat,"
    "cars_test_annos_withlabels.mat}",
    "Caltech": "ROOT/caltech256/256_ObjectCategories/<NNN.class>/*.jpg (or ROOT/256_ObjectCategories/...)",
    "Cub": "ROOT/CUB_200_2011/{images/,images.txt,image_class_labels.txt,train_test_split.txt,classes.txt}",
    "Dogs": "ROOT/{Images/<wnid-breed>/*.jpg,train_list.mat,test_list.mat}",
    "imagefolder": "ROOT/{train,val,test}/<class>/<image> or ROOT/<class>/<image>",
    "omniglot": "ROOT/{train,test}/<Alphabet>_<NN>/<image id>_<drawer>.png (`rftbench data fetch omniglot`)",
    "fashion_mnist": "ROOT/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz (Debian: dataset-fashion-mnist)",
    "synthetic": "generated in memory from split_seed (no files)",
}

# One line per dataset (STYLE.md 4).
DATASETS: dict[str, DatasetSpec] = {s.name: s for s in [
    DatasetSpec("Aircraft", 100, "3,334 / 3,333 / 1,000 of 3,333", _aircraft, "data/aircraft", 3334, 3333,
                1000),
    DatasetSpec("Cars", 196, "≈6,922 / 1,222 / 1,000 of 8,041", _cars, "data/cars", 6922, 1222, 1000),
    DatasetSpec("Caltech", 257, "14,649 / 771 / 15,187", _caltech256, "data/caltech256", 14649, 771,
                15187),
    DatasetSpec("Cub", 200, "5,394 / 600 / 5,794", _cub, "data/cub", 5394, 600, 5794),
    DatasetSpec("Dogs", 120, "10,800 / 1,200 / 8,580", _dogs, "data/dogs", 10800, 1200, 8580),
    DatasetSpec("imagefolder", 0, "folders, or 80 / 10 / 10 per class", _imagefolder, "data/imagefolder"),
    DatasetSpec("omniglot", 242, "3,146 / 484 / 1,210", _imagefolder, "data/omniglot", 3146, 484, 1210),
    DatasetSpec("fashion_mnist", 10, "55,000 / 5,000 / 10,000", None, "/usr/share/datasets/fashion-mnist",
                55000, 5000, 10000),
    DatasetSpec("synthetic", 10, "400 / 100 / 100 generated", None, "", 400, 100, 100),
]}  # fmt: skip


@dataclass(frozen=True)
class PaperSplits:
    """Where a dataset's paper split lists come from and how they read (module docstring)."""

    roli_folder: str  # data_splits/<folder>/ in DongXzz/RoLI
    image_dirs: tuple[str, ...]  # the folder its paths start from, relative to the root (first that exists)
    label_offset: int  # the label RoLI gives the first class


PAPER_SPLITS: dict[str, PaperSplits] = {
    "Caltech": PaperSplits("caltech256", ("caltech256/256_ObjectCategories", "256_ObjectCategories"), 0),
    "Cub": PaperSplits("cub", ("CUB_200_2011/images", "images"), 1),
    "Dogs": PaperSplits("stanforddogs", ("Images",), 1),
}


def get_dataset_spec(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}: valid ones are {', '.join(DATASETS)}") from None


def env_var(name: str) -> str:
    return "RFTBENCH_DATA_" + name.upper()


def resolve_root(name: str, root: str | Path | None = None) -> Path:
    """The argument, else $RFTBENCH_DATA_<NAME>, else the registry's default root."""
    spec = get_dataset_spec(name)
    return Path(root or os.environ.get(env_var(name)) or spec.default_root).expanduser()


def data_root(name: str, flag: str | Path | None = None, configured: str | Path | None = None) -> str | None:
    """Which root a run reads (None: the registry's default): a --root flag, else $RFTBENCH_DATA_<NAME>,
    else the experiments file's `root`."""
    return flag or (None if os.environ.get(env_var(name)) else configured)


def load_split_file(path: str | Path, root: Path, split: str) -> Samples:
    """A split of a split file (module docstring); a file that is missing, not JSON or not in that form is a
    `DataNotFound` naming it."""
    key = "test" if split == "test_full" else split
    try:
        data = json.loads(Path(path).read_text())
        pairs = data[key]
        labels = [int(label) for _, label in pairs]
        paths = [str(p) for p, _ in pairs]
    except OSError as exc:
        raise DataNotFound(f"split file {path}: {exc.strerror}") from None
    except KeyError:
        raise DataNotFound(f"split file {path} has no {key!r} list (it has {sorted(data)})") from None
    except (ValueError, TypeError, AttributeError) as exc:
        raise DataNotFound(
            f'split file {path} is not {{"train": [["rel/path.jpg", label], ...], ...}} JSON '
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:80]})"
        ) from None
    classes = data.get("classes") or [str(i) for i in range(max(labels, default=-1) + 1)]
    return Samples(root, paths, labels, list(classes))


def paper_split_dir(name: str, root: str | Path | None, split_file: str | Path | None = None) -> Path | None:
    """The folder of a dataset's paper split lists (a `split_file` folder, else ROOT/paper_splits) when it
    holds all three; None otherwise, or for a dataset without such lists."""
    if name not in PAPER_SPLITS:
        return None
    if split_file is not None and Path(split_file).expanduser().is_dir():
        folder = Path(split_file).expanduser()
    else:
        folder = resolve_root(name, root) / SPLIT_FOLDER
    return folder if all((folder / f"{s}.json").is_file() for s in ("train", "val", "test")) else None


def read_paper_splits(name: str, folder: str | Path) -> tuple[dict[str, list[tuple[str, int]]], list[str]]:
    """RoLI's three lists of `name` in `folder`: per split the (path, 0-based label) pairs sorted by path,
    and the class names (each class's image folder). One line (`DataNotFound`) for a file that is not such
    a list, a label outside the dataset's classes, or a class whose images sit in two folders."""
    info, folder = PAPER_SPLITS[name], Path(folder)
    lists, folder_of = {}, {}
    for split in ("train", "val", "test"):
        path = folder / f"{split}.json"
        try:
            data = json.loads(path.read_text())
        except OSError as exc:
            raise DataNotFound(f"split file {path}: {exc.strerror}") from None
        except ValueError as exc:
            raise DataNotFound(f"split file {path} is not JSON ({str(exc)[:80]})") from None
        if not isinstance(data, dict) or not data:
            raise DataNotFound(
                f"split file {path}: expected a non-empty JSON object mapping image paths to classes "
                f"(RoLI's format), got {type(data).__name__}"
            )
        pairs = []
        for image, label in sorted(data.items()):
            whole = isinstance(label, int) and not isinstance(label, bool) or str(label).isdigit()
            y = int(label) - info.label_offset if whole else -1
            if not 0 <= y < DATASETS[name].classes:
                raise DataNotFound(
                    f"split file {path}: {image} has label {label!r}, not a class of {name} (RoLI numbers "
                    f"its {DATASETS[name].classes} classes from {info.label_offset}); is it {name}'s file?"
                )
            if folder_of.setdefault(y, image.split("/")[0]) != image.split("/")[0]:
                raise DataNotFound(
                    f"split file {path}: class {label!r} holds images of two folders "
                    f"({folder_of[y]}, {image.split('/')[0]}); is it {name}'s file?"
                )
            if image.startswith("/") or ".." in Path(image).parts:
                raise DataNotFound(
                    f"split file {path}: {image} leaves the image folder; is it {name}'s file?"
                )
            pairs.append((image, y))
        lists[split] = pairs
    if len(set(folder_of.values())) != len(folder_of):
        raise DataNotFound(f"split files in {folder}: one image folder holds two classes; is it {name}'s?")
    seen = [{image for image, _ in lists[s]} for s in ("train", "val", "test")]
    shared = (seen[0] & seen[1]) | (seen[0] & seen[2]) | (seen[1] & seen[2])
    if shared:
        raise DataNotFound(
            f"split files in {folder}: {len(shared)} image(s) in two splits, e.g. {min(shared)}"
        )
    classes = [folder_of.get(y, f"class {y + info.label_offset}") for y in range(max(folder_of) + 1)]
    return lists, classes


def paper_samples(name: str, root: Path, split: str, folder: Path) -> Samples:
    lists, classes = read_paper_splits(name, folder)
    base = next((d for d in PAPER_SPLITS[name].image_dirs if (root / d).is_dir()), None)
    if base is None:
        folders = " or ".join(PAPER_SPLITS[name].image_dirs)
        raise DataNotFound(
            f"dataset {name}: no image folder {folders} under {root}; expected {LAYOUTS[name]}"
        )
    pairs = lists["test" if split == "test_full" else split]
    return Samples(root, [f"{base}/{p}" for p, _ in pairs], [y for _, y in pairs], classes)


def samples(
    name: str,
    root: str | Path | None,
    split: str,
    split_file: str | Path | None = None,
    seed: int = SPLIT_SEED,
    splits: str = "rules",
) -> Samples:
    """The (path, label) list of a split, without decoding anything: by the paper's split lists
    (`splits="paper"`), else a split file of your own, else the registry's rules (seeded by `seed`)."""
    spec, root = get_dataset_spec(name), resolve_root(name, root)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    if splits not in SPLIT_SOURCES:
        raise ValueError(f"splits {splits!r} unknown: choose one of {', '.join(SPLIT_SOURCES)}")
    if not root.is_dir():
        problem = "is a file, not a folder" if root.exists() else "not found"
        raise DataNotFound(f"dataset {name}: data root {root} {problem}; expected {LAYOUTS[name]} "
                           f"(set it with {env_var(name)}=PATH)")  # fmt: skip
    if splits == "paper":
        if name not in PAPER_SPLITS:
            raise ValueError(f"dataset {name} has no paper split lists (only {', '.join(PAPER_SPLITS)} do)")
        if split_file is not None and not Path(split_file).expanduser().is_dir():
            raise DataNotFound(
                f'dataset {name}: splits = "paper" reads the paper\'s lists, but split_file {split_file} '
                f"is a file of your own lists: drop one of the two"
            )
        folder = paper_split_dir(name, root, split_file)
        if folder is None:
            where = split_file if split_file is not None else root / SPLIT_FOLDER
            raise DataNotFound(
                f"dataset {name}: the paper's split lists (train.json, val.json, test.json) are not in "
                f"{where}; `rftbench data fetch {name} --splits-only --root {name}={root}` downloads them"
            )
        return paper_samples(name, root, split, folder)
    if split_file is not None:
        if Path(split_file).is_dir():
            raise DataNotFound(
                f"split file {split_file} is a folder, which holds the paper's lists: set splits = "
                f'"paper" (or "auto") to use them'
            )
        return load_split_file(split_file, root, split)
    if spec.load is None:
        raise ValueError(f"dataset {name} is not made of image files")
    return spec.load(root, split, seed)


def check_layout(name: str, root: str | Path | None = None) -> None:
    """A quick look for `rftbench datasets`: the layout's files are where the registry reads them (each
    split listed and non-empty where that needs no model library; no image opened). `DataNotFound` if not."""
    root = resolve_root(name, root)
    if name == "synthetic":
        return
    if name == "fashion_mnist":
        base = root / "FashionMNIST" / "raw" if (root / "FashionMNIST" / "raw").is_dir() else root
        for files in FASHION_MNIST_FILES.values():
            for file in files:
                _require(base / file, name, LAYOUTS[name])
        return
    if not root.is_dir():
        raise DataNotFound(f"dataset {name}: data root {root} not found; expected {LAYOUTS[name]}")
    required = {
        "Aircraft": ["fgvc-aircraft-2013b/data/images", "fgvc-aircraft-2013b/data/variants.txt"]
        + [f"fgvc-aircraft-2013b/data/images_variant_{s}.txt" for s in ("train", "val", "test")],
        "Cars": ["stanford_cars/cars_train", "stanford_cars/cars_test", "stanford_cars/devkit/cars_meta.mat",
                 "stanford_cars/devkit/cars_train_annos.mat", "stanford_cars/cars_test_annos_withlabels.mat"],
    }  # fmt: skip
    if name in required:
        for relative in required[name]:
            _require(root / relative, name, LAYOUTS[name])
        return
    for split in ("train", "val", "test"):
        s = samples(name, root, split)
        if not s.paths:
            raise DataNotFound(
                f"dataset {name}: no images in its {split} split ({root}; expected {LAYOUTS[name]})"
            )
        _require(root / s.paths[0], name, LAYOUTS[name])


def check_data(
    name: str, root: str | Path | None = None, split_file: str | Path | None = None, splits: str = "rules"
) -> None:
    """Preflight before training: raise `DataNotFound` (one line: dataset, path, layout, fix) unless every
    split of the dataset has images, every listed file is an image PIL can identify (its header), and the
    first and last image of each split decode. Cheap next to decoding everything; a file damaged past its
    header still fails its run, naming the file."""
    if name == "synthetic":
        return
    if name == "fashion_mnist":
        for split in ("train", "val", "test"):
            if not len(fashion_mnist_arrays(resolve_root(name, root), split)[1]):
                raise DataNotFound(f"dataset {name}: the {split} split is empty; expected {LAYOUTS[name]}")
        return
    from PIL import Image, UnidentifiedImageError

    for split in ("train", "val", "test_full"):  # the whole test split, not only the scored subsample
        s = samples(name, root, split, split_file, splits=splits)
        split = split.removesuffix("_full")
        if not s.paths:
            where = (
                f"split file {split_file}"
                if split_file is not None
                else f"{s.root}; expected {LAYOUTS[name]}"
            )
            raise DataNotFound(f"dataset {name}: no images in its {split} split ({where})")
        for i, relative in enumerate(s.paths):
            path = s.root / relative
            if not path.is_file():
                raise DataNotFound(f"dataset {name}: image {path} is missing; expected {LAYOUTS[name]}")
            try:
                if i in (0, len(s.paths) - 1):
                    with Image.open(path) as image:
                        image.convert("RGB")  # decodes it (what training does first)
                else:
                    Image.open(path).close()  # reads the header only
            except (UnidentifiedImageError, OSError, ValueError) as exc:
                raise DataNotFound(
                    f"dataset {name}: image {path} cannot be decoded ({type(exc).__name__}); replace or "
                    f"remove it"
                ) from None


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
        from rftbench.data.fetch import fetch

        path = resolve_root(name, root)
        if not path.exists() or (splits == "paper" and paper_split_dir(name, path, split_file) is None):
            fetch(name, path, splits_only=path.exists())
    if name == "synthetic":
        images, labels = synthetic_arrays(split, resolution, seed)
        return ImageTensorDataset(images, torch.tensor(labels), transform, [f"pattern{i}" for i in range(10)])
    if name == "fashion_mnist":
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
    key = hashlib.sha256(json.dumps([str(s.root.resolve()), s.paths, s.labels, stats]).encode()).hexdigest()[
        :16
    ]
    images = decode_samples(
        s, resolution, decoded_cache_path(name, split, resolution, key) if cache else None
    )
    return ImageTensorDataset(images, torch.tensor(s.labels, dtype=torch.int64), transform, s.classes)
