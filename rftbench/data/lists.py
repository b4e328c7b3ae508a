"""Which images make a split: the paper's split lists, a split file of your own, or the registry's rules.

    s = samples("Cub", "/data/cub", "train", splits="paper")   # Samples: root, paths, labels, classes

The paper's own split lists for Caltech-256, CUB and Dogs (`splits="paper"`; `PAPER_SPLITS`) are Hua et
al.'s (CVPR 2024) files from their repository DongXzz/RoLI, read as they are: a folder holding
`{train,val,test}.json`, each one JSON object mapping an image path (relative to the dataset's image folder)
to its class, labelled per dataset (Caltech 0-256, Dogs 1-120, CUB "001"-"200"). `rftbench data fetch`
puts them in ROOT/paper_splits/; a `split_file` that names a folder points elsewhere. Every label is
checked against its image's class folder.

Split files of your own (`split_file=` a file): JSON `{"classes": [...], "train": [["rel/path.jpg", label],
...], "val": [...], "test": [...]}`, paths relative to the dataset root, labels 0-based.
"""

from __future__ import annotations

import json
from pathlib import Path

from rftbench.core.config import SPLIT_SOURCES
from rftbench.data.errors import DataNotFound
from rftbench.data.registry import (
    DATASETS,
    PAPER_SPLITS,
    SPLIT_FOLDER,
    env_var,
    expecting,
    get_dataset_spec,
    resolve_root,
)
from rftbench.data.splits import SPLIT_SEED, SPLITS, Samples


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
            f"dataset {name}: no image folder {folders} under {root}; expected {DATASETS[name].layout}"
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
        raise DataNotFound(f"dataset {name}: data root {root} {problem}; expected {spec.layout} "
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
    if spec.reader is None:
        raise ValueError(f"dataset {name} is not made of image files")
    with expecting(name):
        return spec.reader(root, split, seed)
