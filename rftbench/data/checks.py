"""Is the data there? A quick look for `rftbench datasets`, and a preflight before training.

    check_layout("Cub", "/data/cub")   # the layout's files are where the registry reads them; no image opened
    check_data("Cub", "/data/cub")     # every split listed, every image identified, first and last decoded

Both raise `DataNotFound` with one line: the dataset, the path, the layout it expects.
"""

from __future__ import annotations

from pathlib import Path

from rftbench.data.errors import DataNotFound, MissingFile
from rftbench.data.lists import samples
from rftbench.data.readers import FASHION_MNIST_FILES, fashion_mnist_arrays, fashion_mnist_folder
from rftbench.data.registry import expecting, get_dataset_spec, resolve_root


def _require(path: Path, name: str) -> None:
    with expecting(name):
        if not path.exists():
            raise MissingFile(path)


def check_layout(name: str, root: str | Path | None = None) -> None:
    """A quick look for `rftbench datasets`: the layout's files are where the registry reads them (each
    split listed and non-empty where that needs no model library; no image opened). `DataNotFound` if not."""
    spec, root = get_dataset_spec(name), resolve_root(name, root)
    if name == "synthetic":
        return
    if name == "fashion_mnist":
        for files in FASHION_MNIST_FILES.values():
            for file in files:
                _require(fashion_mnist_folder(root) / file, name)
        return
    if not root.is_dir():
        raise DataNotFound(f"dataset {name}: data root {root} not found; expected {spec.layout}")
    if spec.required:
        for relative in spec.required:
            _require(root / relative, name)
        return
    for split in ("train", "val", "test"):
        s = samples(name, root, split)
        if not s.paths:
            raise DataNotFound(
                f"dataset {name}: no images in its {split} split ({root}; expected {spec.layout})"
            )
        _require(root / s.paths[0], name)


def check_data(
    name: str, root: str | Path | None = None, split_file: str | Path | None = None, splits: str = "rules"
) -> None:
    """Preflight before training: raise `DataNotFound` (one line: dataset, path, layout, fix) unless every
    split of the dataset has images, every listed file is an image PIL can identify (its header), and the
    first and last image of each split decode. Cheap next to decoding everything; a file damaged past its
    header still fails its run, naming the file."""
    layout = get_dataset_spec(name).layout
    if name == "synthetic":
        return
    if name == "fashion_mnist":
        for split in ("train", "val", "test"):
            with expecting(name):
                if not len(fashion_mnist_arrays(resolve_root(name, root), split)[1]):
                    raise DataNotFound(f"dataset {name}: the {split} split is empty; expected {layout}")
        return
    from PIL import Image, UnidentifiedImageError

    for split in ("train", "val", "test_full"):  # the whole test split, not only the scored subsample
        s = samples(name, root, split, split_file, splits=splits)
        split = split.removesuffix("_full")
        if not s.paths:
            where = f"split file {split_file}" if split_file is not None else f"{s.root}; expected {layout}"
            raise DataNotFound(f"dataset {name}: no images in its {split} split ({where})")
        for i, relative in enumerate(s.paths):
            path = s.root / relative
            if not path.is_file():
                raise DataNotFound(f"dataset {name}: image {path} is missing; expected {layout}")
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
