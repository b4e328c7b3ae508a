"""Fetch the paper's datasets from their sources (`sources`), checksum-verified, into the layouts the
registry reads, with the paper's split lists for Caltech-256, CUB and Dogs.

    rftbench data fetch Caltech Cub Dogs --root data          # data/caltech256, data/cub, data/dogs
    rftbench data fetch Caltech --splits-only --root Caltech=/datasets/caltech256   # the split lists alone
    fetch("Cub", Path("data/cub"))                            # the library call behind both

What a fetch guarantees:
- Each file is downloaded with resume and verified before it gets its name (`download`).
- Archives are unpacked into a hidden staging folder beside the dataset's root (tar's "data" filter: no
  absolute paths, no links leaving it), checked with the dataset registry's own reader, marked with
  `.rftbench-fetched.json`, and only then renamed to the root in one step. A root without the marker was
  never completed by a fetch, and a fetch refuses to write into a root it did not make.
- One fetch per root at a time (a file lock); leftovers of a killed fetch are removed by the next one.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from filelock import FileLock, Timeout

from rftbench.data.checks import check_data
from rftbench.data.download import FetchError, Progress, digest, download, unpack
from rftbench.data.registry import PAPER_SPLITS, SPLIT_FOLDER
from rftbench.data.sources import ROLI_COMMIT, SOURCES, Source, split_resources

MARKER = ".rftbench-fetched.json"
DOWNLOADS = ".rftbench-downloads"


@dataclass
class Fetched:
    dataset: str
    root: Path
    downloaded: list[str] = field(default_factory=list)  # files fetched by this call
    already: bool = False  # a fetch had completed the tree before this call
    found: bool = False  # the root already held the dataset (not made by a fetch): left as it is
    splits: str = ""  # where the paper's split lists are, if the dataset has them


@contextmanager
def _locked(root: Path, progress: Progress):
    """One fetch per root at a time; a second one says what it waits for."""
    lock = FileLock(root.parent / f".{root.name}.fetch.lock")
    try:
        lock.acquire(timeout=1)
    except Timeout:
        progress.note(f"waiting for another fetch of {root} to finish")
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _holds(dataset: str, root: Path) -> bool:
    """Whether a root a fetch did not make already holds the dataset, as the registry reads it."""
    try:
        check_data(dataset, root)
    except Exception:  # whatever the reader raises on a foreign tree: not the dataset
        return False
    return True


def _splits_verified(dataset: str, root: Path) -> bool:
    folder = root / SPLIT_FOLDER
    return all((folder / r.filename).is_file() and digest(folder / r.filename) in r.sha256
               for r in split_resources(dataset))  # fmt: skip


def fetch(
    dataset: str,
    root: str | Path,
    *,
    splits_only: bool = False,
    keep_archives: bool = False,
    progress: Progress | None = None,
    retries: int | None = None,
    backoff: float | None = None,
) -> Fetched:
    """Download, verify and unpack `dataset` into `root` with its paper split lists in `root`/paper_splits
    (module docstring). A root that already holds the dataset is left as it is (its missing or damaged
    split lists are fetched); `splits_only` fetches the split lists alone, into an existing root."""
    if dataset not in SOURCES:
        raise FetchError(f"no source for dataset {dataset!r}; fetchable ones are {', '.join(SOURCES)}")
    if splits_only and dataset not in PAPER_SPLITS:
        raise FetchError(f"{dataset} has no paper split lists (only {', '.join(PAPER_SPLITS)} have them)")
    progress = progress or Progress()
    root = Path(root).expanduser().absolute()
    get = dict(downloads=root.parent / DOWNLOADS, progress=progress, retries=retries, backoff=backoff)
    result = Fetched(dataset, root)
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FetchError(f"cannot create {root.parent}: {exc.strerror}; pick another --root") from None
    with _locked(root, progress):
        for stale in [*root.parent.glob(f".{root.name}.partial-*"), *root.glob(f".{SPLIT_FOLDER}.partial-*")]:
            shutil.rmtree(stale, ignore_errors=True)  # a killed fetch's staging folders
        result.already = (root / MARKER).is_file()
        if splits_only and not root.is_dir():
            raise FetchError(
                f"{root} does not exist: fetch {dataset} without --splits-only, or give the root holding it"
            )
        if not splits_only and not result.already:
            own = root.is_dir() and set(os.listdir(root)) <= {SPLIT_FOLDER}  # empty, or lists a fetch put
            if not own and root.exists():
                result.found = _holds(dataset, root)
                if not result.found:
                    raise FetchError(
                        f"{root} exists, does not hold {dataset} as the registry reads it, and was not made "
                        f"by `rftbench data fetch`; move it away to fetch {dataset} there"
                        + (", or add --splits-only to add the paper's split lists to it"
                           if dataset in PAPER_SPLITS else "")
                    )  # fmt: skip
            else:
                _fetch_tree(SOURCES[dataset], root, result, keep_archives, **get)
        if dataset in PAPER_SPLITS and not _splits_verified(dataset, root):
            _fetch_splits(dataset, root, result, **get)
    if dataset in PAPER_SPLITS:
        result.splits = str(root / SPLIT_FOLDER)
    return result


def _fetch_tree(source: Source, root: Path, result: Fetched, keep_archives: bool, **get) -> None:
    """Everything into a staging folder, checked by the registry's own reader, then one rename."""
    staging = root.parent / f".{root.name}.partial-{uuid.uuid4().hex[:8]}"
    progress = get["progress"]
    try:
        staging.mkdir()
        if source.downloader is not None:
            progress.note(f"{source.dataset}: torchvision's downloader")
            source.downloader(staging)
        fetched = [download(r, get["downloads"], progress, get["retries"], get["backoff"])
                   for r in source.resources]  # fmt: skip
        result.downloaded += [file.name for file, _ in fetched]
        for resource, (file, _) in zip(source.resources, fetched):
            progress.note(f"{source.dataset}: unpacking {file.name}")
            target = staging / resource.into
            if resource.unpack:
                unpack(file, target)
            else:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(file, target / resource.filename)
        if source.fixup is not None:
            source.fixup(staging)
        if source.dataset in PAPER_SPLITS:
            _fetch_splits(source.dataset, staging, result, **get)
        progress.note(f"{source.dataset}: checking every image the registry lists")
        _check_tree(source.dataset, staging, root)
        marker = {"dataset": source.dataset, "fetched_at": datetime.now(UTC).isoformat(timespec="seconds"),
                  "files": {file.name: {"url": r.url, "sha256": sha, "checked_by": r.checked_by}
                            for r, (file, sha) in zip(source.resources, fetched)}}  # fmt: skip
        (staging / MARKER).write_text(json.dumps(marker, indent=1))
        if root.exists():
            shutil.rmtree(root)  # empty, or the split lists a --splits-only fetch put there (in staging too)
        os.rename(staging, root)  # the commit: before it no root, after it a complete one
    except OSError as exc:
        raise FetchError(
            f"{source.dataset}: {exc.strerror or exc} while writing under {root.parent}; free space or pick "
            f"another --root, then run again (the downloads are kept)"
        ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if not keep_archives:
        for resource in source.resources:
            (get["downloads"] / resource.filename).unlink(missing_ok=True)


def _check_tree(dataset: str, staging: Path, root: Path) -> None:
    """The registry's own reader over the unpacked tree (every split, the whole test set, the paper's
    lists): a fetch that passes it is a dataset `run-grid` reads."""
    try:
        check_data(dataset, staging)
        if dataset in PAPER_SPLITS:
            check_data(dataset, staging, splits="paper")
    except FetchError:
        raise
    except Exception as exc:  # DataNotFound, torchvision's and scipy's readers: not the expected archives
        said = str(exc).strip().splitlines()[0].replace(str(staging), str(root)) if str(exc).strip() else ""
        raise FetchError(
            f"{dataset}: the unpacked archives are not the layout rftbench reads "
            f"({said or type(exc).__name__}); the downloads are kept: report it"
        ) from None


def _fetch_splits(dataset: str, root: Path, result: Fetched, **get) -> None:
    """The three split lists into `root`/paper_splits, which appears complete or not at all."""
    folder = get["downloads"] / f"{dataset}-splits-{ROLI_COMMIT[:7]}"
    fetched = [download(r, folder, get["progress"], get["retries"], get["backoff"])
               for r in split_resources(dataset)]  # fmt: skip
    result.downloaded += [f"{SPLIT_FOLDER}/{file.name}" for file, _ in fetched]
    staging = root / f".{SPLIT_FOLDER}.partial-{uuid.uuid4().hex[:8]}"
    target = root / SPLIT_FOLDER
    try:
        staging.mkdir()
        for file, _ in fetched:
            shutil.copyfile(file, staging / file.name)
        if target.exists():
            shutil.rmtree(target)  # incomplete or damaged: verified lists are never replaced
        os.rename(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(folder, ignore_errors=True)
