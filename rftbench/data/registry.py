"""Datasets by name: one `DatasetSpec` line each, with its reader, its on-disk layout and its default root.

    spec = get_dataset_spec("Cub")            # spec.reader(root, "train", seed), spec.layout, spec.classes
    root = resolve_root("Cub")                # the argument, $RFTBENCH_DATA_CUB, or data/cub

Adding a dataset is a reader (`readers`) and one line here; a `sources.SOURCES` entry makes it fetchable.
Torch-free at import: the CLI lists the registry at once.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from rftbench.data import readers
from rftbench.data.errors import DataNotFound, MissingFile
from rftbench.data.splits import Samples

SPLIT_FOLDER = "paper_splits"  # ROOT/paper_splits/{train,val,test}.json: where `data fetch` puts them


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    classes: int
    sizes: str  # train / val / test as the protocol gives them
    reader: Callable[[Path, str, int], Samples] | None  # None: arrays, not image files (see `build`)
    default_root: str
    layout: str  # the official layout the reader expects, as error messages and `rftbench datasets` show it
    train_images: int | None = None  # for work estimates (`run-grid --dry-run`); None: depends on the data
    val_images: int | None = None  # the same for the validation split and the scored test split
    test_images: int | None = None
    required: tuple[str, ...] = ()  # paths `check_layout` looks for instead of listing each split (readers
    # that need torchvision to list them; `rftbench datasets` imports no torch)


def _under(folder: str, *names: str) -> tuple[str, ...]:
    return tuple(folder + name for name in names)


# One line per dataset (STYLE.md 4).
D = DatasetSpec
DATASETS: dict[str, DatasetSpec] = {s.name: s for s in [
    D("Aircraft", 100, "3,334 / 3,333 / 1,000 of 3,333", readers.aircraft, "data/aircraft",
      "ROOT/fgvc-aircraft-2013b/data/{images/,variants.txt,images_variant_{train,val,test}.txt}", 3334, 3333,
      1000, _under("fgvc-aircraft-2013b/data/", "images", "variants.txt", "images_variant_train.txt",
                   "images_variant_val.txt", "images_variant_test.txt")),
    D("Cars", 196, "≈6,922 / 1,222 / 1,000 of 8,041", readers.cars, "data/cars",
      "ROOT/stanford_cars/{cars_train/,cars_test/,devkit/cars_meta.mat,devkit/cars_train_annos.mat,"
      "cars_test_annos_withlabels.mat}", 6922, 1222, 1000,
      _under("stanford_cars/", "cars_train", "cars_test", "devkit/cars_meta.mat",
             "devkit/cars_train_annos.mat", "cars_test_annos_withlabels.mat")),
    D("Caltech", 257, "14,649 / 771 / 15,187", readers.caltech256, "data/caltech256",
      "ROOT/caltech256/256_ObjectCategories/<NNN.class>/*.jpg (or ROOT/256_ObjectCategories/...)",
      14649, 771, 15187),
    D("Cub", 200, "5,394 / 600 / 5,794", readers.cub, "data/cub",
      "ROOT/CUB_200_2011/{images/,images.txt,image_class_labels.txt,train_test_split.txt,classes.txt}",
      5394, 600, 5794),
    D("Dogs", 120, "10,800 / 1,200 / 8,580", readers.dogs, "data/dogs",
      "ROOT/{Images/<wnid-breed>/*.jpg,train_list.mat,test_list.mat}", 10800, 1200, 8580),
    D("imagefolder", 0, "folders, or 80 / 10 / 10 per class", readers.imagefolder, "data/imagefolder",
      "ROOT/{train,val,test}/<class>/<image> or ROOT/<class>/<image>"),
    D("omniglot", 242, "3,146 / 484 / 1,210", readers.imagefolder, "data/omniglot",
      "ROOT/{train,test}/<Alphabet>_<NN>/<image id>_<drawer>.png (`rftbench data fetch omniglot`)",
      3146, 484, 1210),
    D("fashion_mnist", 10, "55,000 / 5,000 / 10,000", None, "/usr/share/datasets/fashion-mnist",
      "ROOT/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz (Debian: dataset-fashion-mnist)",
      55000, 5000, 10000),
    D("synthetic", 10, "400 / 100 / 100 generated", None, "",
      "generated in memory from split_seed (no files)", 400, 100, 100),
]}  # fmt: skip


@dataclass(frozen=True)
class PaperSplits:
    """Where a dataset's paper split lists come from and how they read (`lists`)."""

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


@contextmanager
def expecting(name: str) -> Iterator[None]:
    """A reader's `MissingFile` as the one line a user reads: the dataset, the path and its layout."""
    try:
        yield
    except MissingFile as exc:
        raise DataNotFound(
            f"dataset {name}: {exc.path} not found; expected {DATASETS[name].layout}"
        ) from None
