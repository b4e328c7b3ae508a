"""Fetch the paper's datasets from their sources, checksum-verified, into the layouts `rftbench.data.datasets`
reads, with the paper's split lists for Caltech-256, CUB and Dogs.

    rftbench data fetch Caltech Cub Dogs --root data          # data/caltech256, data/cub, data/dogs
    rftbench data fetch Caltech --splits-only --root Caltech=/datasets/caltech256   # the split lists alone
    fetch("Cub", Path("data/cub"))                            # the library call behind both

Where each file comes from (looked up in 2026-12; every `Resource` names the source of its checksum):
- FGVC-Aircraft 2013b: the Oxford VGG archive torchvision's `FGVCAircraft` downloads (it checks no
  checksum). Two builds of it are known: the one served now (sha256 as pinned by recent scripts that hash
  what Oxford serves) and the one tensorflow_datasets pinned (`url_checksums/fgvc.txt`); either is accepted.
- Stanford Cars: the original host (ai.stanford.edu/~jkrause) is dead and torchvision's `StanfordCars`
  download only raises. What its users do instead (pytorch/vision issue 7545): the images from the Kaggle
  dataset jessicali9530/stanford-cars-dataset (version 2, its public download URL, no login), the devkit as
  re-attached to that issue, and the test labels from nguyentruonglau/stanford-cars at a pinned commit.
  The devkit and the labels are checked against the original files' sha256 (tensorflow_datasets
  `url_checksums/cars196.txt`); Kaggle publishes no checksum for its archive, so the unpacked tree is
  checked instead: every image the verified annotations list must be there and readable.
- Caltech-256: CaltechDATA record nyy15-4j048, as torchvision's `Caltech256` downloads it (md5 on the record
  page; sha256 and size from tensorflow_datasets `caltech256/checksums.tsv`).
- CUB-200-2011: CaltechDATA record 65de6-vp158 (sha256 and size: tensorflow_datasets
  `url_checksums/caltech_birds2011.txt`; the widely used md5 97eceeb1… names the same bytes).
- Stanford Dogs: images.tar and lists.tar from vision.stanford.edu/aditya86/ImageNetDogs (sha256 and size:
  tensorflow_datasets `url_checksums/stanford_dogs.txt`).
- The split lists: `data_splits/<dataset>/{train,val,test}.json` of Hua et al.'s DongXzz/RoLI at commit
  5f34b8f (the paper's appendix A takes its splits from there), sha256 of each file pinned.
- Fashion-MNIST: torchvision's own downloader (its mirrors and md5s), into a staging folder.
- Omniglot (the demo's task): the authors' two 5-alphabet background archives from brendenlake/omniglot
  (`python/images_background_small{1,2}.zip`, unchanged since 2015) and its LICENSE, at a pinned commit,
  sha256 computed from that commit's blobs. torchvision's `Omniglot` knows the same folder but pins only
  the 30-alphabet archives. The two archives share Greek and Latin (byte-identical; kept once): 242
  characters of 8 alphabets, split by drawer (01-15 train, 16-20 test), as ../shared/data/omniglot holds.

torchvision's other downloaders are not used: they neither resume a download nor filter archive members.

What a fetch guarantees:
- A download streams into `<parent>/.rftbench-downloads/<file>.part`; a broken connection is retried, and a
  later run resumes it with an HTTP Range request. The file gets its final name only once its size and
  checksum match; a wrong checksum deletes it and says so.
- Archives are unpacked into a hidden staging folder beside the dataset's root (tar's "data" filter: no
  absolute paths, no links leaving it), checked with the dataset registry's own reader, marked with
  `.rftbench-fetched.json`, and only then renamed to the root in one step. A root without the marker was
  never completed by a fetch, and a fetch refuses to write into a root it did not make.
- One fetch per root at a time (a file lock); leftovers of a killed fetch are removed by the next one.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import json
import os
import re
import shutil
import socket
import ssl
import tarfile
import time
import urllib.error
import urllib.request
import uuid
import zipfile
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from filelock import FileLock, Timeout

from rftbench.data.datasets import PAPER_SPLITS, SPLIT_FOLDER, check_data
from rftbench.errors import RftbenchError

MARKER = ".rftbench-fetched.json"
DOWNLOADS = ".rftbench-downloads"
USER_AGENT = "rftbench-data-fetch (+https://github.com; python urllib)"
ROLI_COMMIT = "5f34b8fb4ae48afe26de6e627022bb0db058e8c5"
ROLI_URL = "https://raw.githubusercontent.com/DongXzz/RoLI/{commit}/data_splits/{folder}/{split}.json"
CHUNK = 1 << 20
RETRIES, BACKOFF = 3, 2.0  # a broken connection is retried after 2, 4, 8 s


class FetchError(RftbenchError, RuntimeError):
    """A download or an archive that cannot be used; one line naming the file and what to do."""


@dataclass(frozen=True)
class Resource:
    url: str
    filename: str
    sha256: tuple[str, ...] = ()  # accepted digests; empty: no published checksum (see `checked_by`)
    size: int | None = None  # bytes, where known (one digest only)
    unpack: bool = True  # an archive to unpack, else a file to copy
    into: str = ""  # where, inside the dataset's root
    checked_by: str = ""  # the source of the checksum, or how the content is checked without one


@dataclass(frozen=True)
class Source:
    dataset: str
    resources: tuple[Resource, ...]
    fixup: Callable[[Path], None] | None = None  # layout repairs after unpacking (staging root)
    downloader: Callable[[Path], None] | None = None  # a library's own downloader instead of `resources`


def _cars_layout(root: Path) -> None:
    """Kaggle's archive nests its images (cars_train/cars_train/*.jpg) and carries a cars_annos.mat the
    registry does not read: move the image folders where torchvision's StanfordCars layout has them."""
    kaggle, cars = root / "kaggle", root / "stanford_cars"
    for name in ("cars_train", "cars_test"):
        folder = kaggle / name
        if (folder / name).is_dir():
            folder = folder / name
        if not folder.is_dir():
            raise FetchError(f"the Stanford Cars archive has no {name}/ folder; it is not the expected one")
        os.replace(folder, cars / name)
    shutil.rmtree(kaggle)


def _fashion_mnist(staging: Path) -> None:
    from torchvision.datasets import FashionMNIST

    try:
        FashionMNIST(str(staging), download=True)
    except RuntimeError as exc:  # its md5 check, or every mirror failing
        said = " ".join(str(exc).split())
        raise FetchError(f"Fashion-MNIST: torchvision's download failed ({said[:200]}); run again") from None
    for leftover in (staging / "FashionMNIST" / "raw").glob("*-ubyte"):  # keep the .gz files it checked
        leftover.unlink()


OMNIGLOT_COMMIT = "057f034baf2ecb8530bc5710e5a23584d2a519cc"
OMNIGLOT_URL = f"https://raw.githubusercontent.com/brendenlake/omniglot/{OMNIGLOT_COMMIT}/"
OMNIGLOT_TRAIN_DRAWERS = 15  # drawers 01-15 train, 16-20 test: test images are by people never seen


def _omniglot_layout(root: Path) -> None:
    """The authors' archives (images_background_small{1,2}/<Alphabet>/characterNN/<id>_<drawer>.png) as
    one tree split by drawer, a class per <Alphabet>_<NN>; an alphabet both archives hold is kept once,
    and only if both hold the same images."""
    for archive in sorted(root.glob("images_background_small*")):
        for image in sorted(archive.glob("*/character*/*.png")):
            character = image.parent.name.removeprefix("character")
            drawer = image.stem.rpartition("_")[2]
            if not (drawer.isdigit() and character.isdigit()):
                raise FetchError(
                    f"Omniglot: {image.relative_to(root)} is not <id>_<drawer>.png in characterNN/"
                )
            split = "train" if int(drawer) <= OMNIGLOT_TRAIN_DRAWERS else "test"
            target = root / split / f"{image.parent.parent.name}_{character}" / image.name
            if target.exists():
                if target.read_bytes() != image.read_bytes():
                    raise FetchError(
                        f"Omniglot: the two archives hold different images {image.relative_to(archive)}; "
                        f"they are not the authors' archives: report it"
                    )
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(image, target)
        shutil.rmtree(archive)


TFDS = "tensorflow_datasets url_checksums"
SOURCES: dict[str, Source] = {s.dataset: s for s in [
    Source("Aircraft", (Resource(
        "https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/archives/fgvc-aircraft-2013b.tar.gz",
        "fgvc-aircraft-2013b.tar.gz",
        ("e4e323d410e29f0370c81eabdcbb0e2b813acea1de22891b70b58ff41bfc9834",  # served now: 2,753,340,328 B
         "d5f68b1b81d6d7831eb9d5c5517074176b5dfbce6bcb43dc14ed1c66a87b8d75"),  # TFDS's: 2,770,575,360 B
        checked_by="scripts hashing Oxford's archive (2025-26); " + TFDS + "/fgvc.txt"),)),
    Source("Cars", (
        Resource("https://www.kaggle.com/api/v1/datasets/download/jessicali9530/stanford-cars-dataset"
                 "?dataset_version_number=2", "stanford-cars-dataset-v2.zip", into="kaggle",
                 checked_by="no published checksum: every image the devkit and test labels list is checked"),
        Resource("https://github.com/pytorch/vision/files/11644847/car_devkit.tgz", "car_devkit.tgz",
                 ("b97deb463af7d58b6bfaa18b2a4de9829f0f79e8ce663dfa9261bf7810e9accd",), 330960,
                 into="stanford_cars", checked_by=TFDS + "/cars196.txt (the original file)"),
        Resource("https://raw.githubusercontent.com/nguyentruonglau/stanford-cars/"
                 "5572a31e45368a9f4a5f5bfd0d5423319f6b7849/labeldata/cars_test_annos_withlabels.mat",
                 "cars_test_annos_withlabels.mat",
                 ("790f75be8ea34eeded134cc559332baf23e30e91367e9ddca97d26ed9b895f05",), 185758,
                 unpack=False, into="stanford_cars", checked_by=TFDS + "/cars196.txt (the original file)"),
    ), fixup=_cars_layout),
    Source("Caltech", (Resource(
        "https://data.caltech.edu/records/nyy15-4j048/files/256_ObjectCategories.tar",
        "256_ObjectCategories.tar",
        ("08ff01b03c65566014ae88eb0490dbe4419fc7ac4de726ee1163e39fd809543e",), 1183006720,
        checked_by=TFDS + " caltech256/checksums.tsv; md5 67b4f42c… on the record page"),)),
    Source("Cub", (Resource(
        "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz", "CUB_200_2011.tgz",
        ("0c685df5597a8b24909f6a7c9db6d11e008733779a671760afef78feb49bf081",), 1150585339,
        checked_by=TFDS + "/caltech_birds2011.txt"),)),
    Source("Dogs", (
        Resource("http://vision.stanford.edu/aditya86/ImageNetDogs/images.tar", "images.tar",
                 ("a443fc2f9a851aa1a7b8e4fa4af94b8459fce2c9f5a2f4dd4669cf9673a4ec58",), 793579520,
                 checked_by=TFDS + "/stanford_dogs.txt"),
        Resource("http://vision.stanford.edu/aditya86/ImageNetDogs/lists.tar", "lists.tar",
                 ("34b47cacd9a98b5d150e084f24d29391c084c55272295ec65c85651bc35f4d6c",), 481280,
                 checked_by=TFDS + "/stanford_dogs.txt"),
    )),
    Source("fashion_mnist", (), downloader=_fashion_mnist),
    Source("omniglot", (
        Resource(OMNIGLOT_URL + "python/images_background_small1.zip", "images_background_small1.zip",
                 ("f38eb80f801274ac2b4dff5b24289016bfaba4a7d5bb50deebf27104ad6cb8a4",), 1319022,
                 checked_by=f"brendenlake/omniglot at {OMNIGLOT_COMMIT[:7]} (md5 e704a628…)"),
        Resource(OMNIGLOT_URL + "python/images_background_small2.zip", "images_background_small2.zip",
                 ("3ccaa407515a8778e5d0861875af38b17e418f301ad5bb3b5a6b65d901a41c7f",), 1580917,
                 checked_by=f"brendenlake/omniglot at {OMNIGLOT_COMMIT[:7]} (md5 b75a71a5…)"),
        Resource(OMNIGLOT_URL + "LICENSE", "LICENSE",
                 ("2efb425d9850e7bce985f151dc2ee1f4485e926a3582e08fd879cd28eb0388f5",), 1080, unpack=False,
                 checked_by=f"brendenlake/omniglot at {OMNIGLOT_COMMIT[:7]}"),
    ), fixup=_omniglot_layout),
]}  # fmt: skip

# The paper's split lists (RoLI at ROLI_COMMIT): sha256 of each file, computed from that commit's blobs.
SPLIT_SHA256 = {
    ("caltech256", "train"): "75bc9e9b9d9ca9fc074f1b99b670171f62614a511b7f941846cac192aa2d6cf4",
    ("caltech256", "val"): "22b52c2fac6820743af3e14ab0361b1de3e77d38c50348f9f7f1159986f51c1e",
    ("caltech256", "test"): "dc247dbb4603e7dc3f227825bcf95831e7902984025c60daeb91e01c922a4caa",
    ("cub", "train"): "2c8e8a0e70795ab5a992b51d3ab09aa2621b75bb7b34bb46fef0f910b3261f2d",
    ("cub", "val"): "d2bdc9030fe8682bb8a44fca9d44b7255f641195ac1a77d5f7431ed14d343f81",
    ("cub", "test"): "1fcf560553e94b5e56681a3981d90462de91ab4ba2dd6a2a99e1e3ff71993b6e",
    ("stanforddogs", "train"): "d9bfb65dc50f8e164d2b0d5195baf495c2f2fb184e42d9d774dbf90f4f76e836",
    ("stanforddogs", "val"): "d9a1ebbbc6299bc80d2570c9171ba1d9ab7c8ff869f6dc54232288a6b49b97c1",
    ("stanforddogs", "test"): "aed81b99b13be6ef9196bdb100c66eec0f277bc715bc9f015a2648e3fd9eb42d",
}


def split_resources(dataset: str, commit: str = ROLI_COMMIT) -> tuple[Resource, ...]:
    """The three RoLI split files of a dataset that has them, else ()."""
    if dataset not in PAPER_SPLITS:
        return ()
    folder = PAPER_SPLITS[dataset].roli_folder
    return tuple(
        Resource(
            ROLI_URL.format(commit=commit, folder=folder, split=split),
            f"{split}.json",
            (SPLIT_SHA256[folder, split],),
            unpack=False,
            into=SPLIT_FOLDER,
            checked_by=f"DongXzz/RoLI at {commit[:7]}",
        )  # fmt: skip
        for split in ("train", "val", "test")
    )


class Progress:
    """What a fetch reports; the CLI draws rich progress bars, tests may record it."""

    def start(self, label: str, total: int | None, completed: int) -> None: ...
    def advance(self, amount: int) -> None: ...
    def note(self, text: str) -> None: ...


@dataclass
class Fetched:
    dataset: str
    root: Path
    downloaded: list[str] = field(default_factory=list)  # files fetched by this call
    already: bool = False  # a fetch had completed the tree before this call
    found: bool = False  # the root already held the dataset (not made by a fetch): left as it is
    splits: str = ""  # where the paper's split lists are, if the dataset has them


class IncompleteDownload(Exception):
    pass


def digest(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def download(resource: Resource, folder: Path, progress: Progress, retries: int | None = None,
             backoff: float | None = None) -> tuple[Path, str]:  # fmt: skip
    """`resource` as a verified file in `folder` (reused when an earlier run finished it), and its sha256.
    A broken connection is retried from where it stopped; a run that still fails leaves the `.part` file
    for the next one. Two fetches sharing the folder take turns per file."""
    retries = RETRIES if retries is None else retries
    backoff = BACKOFF if backoff is None else backoff
    folder.mkdir(parents=True, exist_ok=True)
    final, part = folder / resource.filename, folder / f"{resource.filename}.part"
    with FileLock(f"{part}.lock"):
        if final.exists():
            got = digest(final)
            if not resource.sha256 or got in resource.sha256:
                progress.note(f"{resource.filename}: already downloaded and verified")
                return final, got
            final.unlink()
        for attempt in range(retries + 1):
            try:
                _stream(resource, part, progress)
                break
            except FetchError:
                raise
            except (OSError, http.client.HTTPException, IncompleteDownload) as exc:
                have = part.stat().st_size if part.exists() else 0
                if _hopeless(exc):
                    raise FetchError(
                        f"{resource.url}: {_reason(exc)}; retrying cannot help: check the network (proxy, "
                        f"DNS, certificates) or the disk, then run the same command again"
                    ) from None
                if attempt == retries:
                    raise FetchError(
                        f"{resource.url}: the download broke off ({_reason(exc)}) with {have:,} bytes in "
                        f"{part}; run the same command again to resume it"
                    ) from None
                progress.note(
                    f"{resource.filename}: {_reason(exc)}; resuming (try {attempt + 2} of {retries + 1})"
                )
                time.sleep(backoff * 2**attempt)
        got = digest(part)
        if resource.sha256 and got not in resource.sha256:
            part.unlink()
            raise FetchError(
                f"{resource.filename} from {resource.url} has sha256 {got}, expected "
                f"{' or '.join(resource.sha256)} ({resource.checked_by}); the download was deleted: run "
                f"again, and if it repeats, the source changed the file (report it)"
            )
        os.replace(part, final)
    return final, got


def _cause(exc: BaseException) -> BaseException:
    if isinstance(exc, urllib.error.URLError) and isinstance(getattr(exc, "reason", None), BaseException):
        return exc.reason
    return exc


def _hopeless(exc: BaseException) -> bool:
    """Errors a retry cannot fix: certificates, names that do not resolve, a full or read-only disk."""
    cause = _cause(exc)
    disk = getattr(cause, "errno", None) in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES)
    return isinstance(cause, ssl.SSLCertVerificationError | socket.gaierror) or disk


def _reason(exc: BaseException) -> str:
    cause = exc if isinstance(exc, urllib.error.HTTPError) else _cause(exc)
    return str(cause).strip() or type(cause).__name__


def _content_range(header: str | None) -> tuple[int | None, int | None]:
    """(first byte, total size) of a Content-Range header: "bytes 100-999/1000", "bytes */1000"."""
    match = re.fullmatch(r"bytes (?:(\d+)-\d+|\*)/(\d+|\*)", (header or "").strip())
    if match is None:
        return None, None
    first, total = match.groups()
    return (int(first) if first else None), (int(total) if total != "*" else None)


def _stream(resource: Resource, part: Path, progress: Progress) -> None:
    have = part.stat().st_size if part.exists() else 0
    if resource.size is not None and have > resource.size:  # not a prefix of this file
        have = 0
    headers = {"User-Agent": USER_AGENT} | ({"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(urllib.request.Request(resource.url, headers=headers), timeout=60)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:
            if _content_range(exc.headers.get("Content-Range"))[1] == have:
                return  # the .part already holds the whole file
            part.unlink()
            raise IncompleteDownload(
                "the partial download is not a prefix of the file: starting again"
            ) from None
        if exc.code in (408, 429) or exc.code >= 500:
            raise  # the server is busy or failing: retried
        raise FetchError(
            f"{resource.url}: the server answered HTTP {exc.code} ({exc.reason}); the source may have "
            f"moved: `rftbench/data/fetch.py` says where each file comes from"
        ) from None
    with response:
        if have and (
            response.status != 206 or _content_range(response.headers.get("Content-Range"))[0] != have
        ):
            have = 0  # the server ignored or misread the range: start again
        try:
            total = have + int(response.headers.get("Content-Length"))
        except (TypeError, ValueError):
            total = None
        progress.start(resource.filename, total, have)
        written = have
        with open(part, "ab" if have else "wb") as f:
            while chunk := response.read(CHUNK):
                f.write(chunk)
                written += len(chunk)
                progress.advance(len(chunk))
    if total is not None and written < total:
        raise IncompleteDownload(f"connection closed at {written:,} of {total:,} bytes")


def unpack(archive: Path, into: Path) -> None:
    """Unpack a zip or a (compressed) tar, by its name; tar members that would land outside `into` (absolute
    paths, '..', links leaving it) are refused by tar's "data" filter, and zipfile drops them itself."""
    into.mkdir(parents=True, exist_ok=True)
    try:
        if archive.suffix == ".zip":
            with zipfile.ZipFile(archive) as z:
                z.extractall(into)
        else:
            with tarfile.open(archive, "r:*") as tar:
                tar.extractall(into, filter="data")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, NotImplementedError) as exc:
        raise FetchError(f"{archive} cannot be unpacked ({exc}); delete it and fetch again") from None
    except OSError as exc:
        raise FetchError(
            f"unpacking {archive.name} into {into.parent} failed: {exc.strerror or exc}"
        ) from None


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
