"""Where each dataset comes from: the files, their checksums and their origin, and the layout repairs.

    SOURCES["Cub"].resources     # (Resource(url, filename, sha256, size, ..., checked_by), ...)
    split_resources("Cub")       # the paper's three split lists, pinned

Adding a fetchable dataset is one `Source` line in SOURCES (with a `fixup` when its archives need moving
into the layout its reader expects).

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
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rftbench.data.download import FetchError, Resource
from rftbench.data.registry import PAPER_SPLITS, SPLIT_FOLDER

ROLI_COMMIT = "5f34b8fb4ae48afe26de6e627022bb0db058e8c5"
ROLI_URL = "https://raw.githubusercontent.com/DongXzz/RoLI/{commit}/data_splits/{folder}/{split}.json"


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
