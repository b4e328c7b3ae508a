"""Datasets: tiny fixtures written in each dataset's real on-disk layout, split rules, the decoded cache."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import CIFAR, SHARED, require
from layouts import jpeg, write_aircraft, write_caltech, write_cars, write_cub, write_dogs
from typer.testing import CliRunner

from rftbench.cli import app
from rftbench.data.build import build_dataset
from rftbench.data.checks import check_data
from rftbench.data.errors import DataNotFound
from rftbench.data.lists import read_paper_splits, samples
from rftbench.data.registry import DATASETS
from rftbench.data.splits import stratified_subsample

FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RFTBENCH_CACHE", str(tmp_path / "cache"))
    for name in DATASETS:
        monkeypatch.delenv("RFTBENCH_DATA_" + name.upper(), raising=False)


def split_counts(name, root, **kwargs):
    return {split: Counter(samples(name, root, split, **kwargs).labels) for split in ("train", "val", "test")}


def assert_disjoint(name, root, **kwargs):
    paths = [set(samples(name, root, split, **kwargs).paths) for split in ("train", "val", "test")]
    assert not (paths[0] & paths[1]) and not (paths[0] & paths[2]) and not (paths[1] & paths[2])


def test_aircraft_official_variant_splits(tmp_path):
    variants = write_aircraft(tmp_path)
    ds = build_dataset("Aircraft", tmp_path, "train", resolution=16)
    assert ds.classes == variants and len(ds) == 12 and ds.images.shape == (12, 3, 16, 16)
    assert split_counts("Aircraft", tmp_path) == {
        s: Counter({0: 4, 1: 4, 2: 4}) for s in ("train", "val", "test")
    }
    assert samples("Aircraft", tmp_path, "test").paths == samples("Aircraft", tmp_path, "test_full").paths
    assert_disjoint("Aircraft", tmp_path)


def test_cars_train_split_85_15_stratified_and_official_test(tmp_path):
    write_cars(tmp_path)
    counts = split_counts("Cars", tmp_path)
    assert counts["train"] == Counter({0: 17, 1: 17, 2: 17}) and counts["val"] == Counter({0: 3, 1: 3, 2: 3})
    assert counts["test"] == Counter({0: 3, 1: 3, 2: 3})
    ds = build_dataset("Cars", tmp_path, "val", resolution=8)
    assert ds.classes[0] == "AM General Hummer SUV 2000" and len(ds.classes) == 3
    assert samples("Cars", tmp_path, "train").paths == samples("Cars", tmp_path, "train").paths  # seeded
    assert_disjoint("Cars", tmp_path)


def test_caltech256_57_train_3_val_per_class_rest_test(tmp_path):
    write_caltech(tmp_path)
    counts = split_counts("Caltech", tmp_path)
    assert counts["train"] == Counter({0: 57, 1: 57, 2: 57}) and counts["val"] == Counter({0: 3, 1: 3, 2: 3})
    assert counts["test"] == Counter({0: 3, 1: 4, 2: 5})  # 63, 64, 65 images per class
    assert samples("Caltech", tmp_path, "train").classes == ["001.ak47", "002.american-flag", "257.clutter"]
    assert_disjoint("Caltech", tmp_path)


def test_cub_official_train_less_3_val_per_class(tmp_path):
    write_cub(tmp_path)
    counts = split_counts("Cub", tmp_path)
    assert counts == {"train": Counter({0: 5, 1: 5, 2: 5}), "val": Counter({0: 3, 1: 3, 2: 3}),
                      "test": Counter({0: 4, 1: 4, 2: 4})}  # fmt: skip
    official_train = {line.split()[0] for line in (tmp_path / "CUB_200_2011" / "train_test_split.txt")
                      .read_text().split("\n") if line.endswith(" 1")}  # fmt: skip
    assert len(official_train) == 24
    assert_disjoint("Cub", tmp_path)


def test_dogs_official_train_as_90_train_10_val_per_class(tmp_path):
    write_dogs(tmp_path)
    counts = split_counts("Dogs", tmp_path)
    assert counts == {"train": Counter({0: 90, 1: 90}), "val": Counter({0: 10, 1: 10}),
                      "test": Counter({0: 3, 1: 3})}  # fmt: skip
    assert build_dataset("Dogs", tmp_path, "test", resolution=8).classes == [
        "n02085620-Chihuahua", "n02085782-Japanese_spaniel"]  # fmt: skip
    assert_disjoint("Dogs", tmp_path)


def test_split_rules_are_deterministic_and_seeded(tmp_path):
    write_caltech(tmp_path)
    val = samples("Caltech", tmp_path, "val")
    assert val.paths == samples("Caltech", tmp_path, "val").paths
    every = samples("Caltech", tmp_path, "test_full").paths
    first_three = [p for c in val.classes for p in sorted(x for x in every if f"/{c}/" in x)[:3]]
    assert sorted(val.paths) != sorted(first_three), "the per-class split is shuffled, not the first files"
    assert samples("Caltech", tmp_path, "val", seed=1).paths != val.paths


def test_stratified_subsample_of_a_test_split():
    labels = [i % 100 for i in range(3333)]  # 100 classes, 33 or 34 images each (Aircraft's test split)
    index = stratified_subsample(labels, 1000)
    per_class = Counter(labels[i] for i in index)
    assert len(index) == len(set(index)) == 1000 and set(per_class.values()) == {10}
    assert index == stratified_subsample(labels, 1000) and index != stratified_subsample(labels, 1000, seed=1)
    skewed = [0] * 600 + [1] * 300 + [2] * 100
    assert Counter(skewed[i] for i in stratified_subsample(skewed, 100)) == Counter({0: 60, 1: 30, 2: 10})


def test_split_json_file_lists_paths_and_labels(tmp_path):
    write_cub(tmp_path)
    images = sorted((tmp_path / "CUB_200_2011" / "images").rglob("*.jpg"))
    relative = [str(p.relative_to(tmp_path)) for p in images]
    split = {"classes": ["a", "b", "c"], "train": [[p, i % 3] for i, p in enumerate(relative[:20])],
             "val": [[relative[20], 1]], "test": [[p, 2] for p in relative[21:]]}  # fmt: skip
    path = tmp_path / "split.json"
    path.write_text(json.dumps(split))
    train = build_dataset("Cub", tmp_path, "train", split_file=path, resolution=8)
    assert (
        len(train) == 20
        and train.classes == ["a", "b", "c"]
        and train.labels.tolist() == [i % 3 for i in range(20)]
    )
    assert len(build_dataset("Cub", tmp_path, "test", split_file=path, resolution=8)) == len(relative) - 21


def test_imagefolder_on_the_cifar10_jpegs():
    root = require(CIFAR)
    train, val = (samples("imagefolder", root, split) for split in ("train", "val"))
    test = build_dataset("imagefolder", root, "test", resolution=32)
    assert (len(train.labels), len(val.labels), len(test)) == (9000, 1000, 10000)
    assert Counter(val.labels) == Counter({c: 100 for c in range(10)}) and test.classes[0] == "airplane"
    assert not set(train.paths) & set(val.paths)
    image, label = test[0]
    assert (
        image.shape == (3, 32, 32) and image.dtype == torch.float32 and 0 <= image.min() <= image.max() <= 1
    )


def test_imagefolder_without_split_folders_splits_80_10_10(tmp_path):
    for c in range(2):
        for i in range(20):
            jpeg(tmp_path / f"class{c}" / f"{i}.png", 100 * c + i)
    counts = split_counts("imagefolder", tmp_path)
    assert counts == {
        "train": Counter({0: 16, 1: 16}),
        "val": Counter({0: 2, 1: 2}),
        "test": Counter({0: 2, 1: 2}),
    }
    assert_disjoint("imagefolder", tmp_path)


@pytest.mark.skipif(not FASHION.exists(), reason="Debian package dataset-fashion-mnist not installed")
def test_omniglot_the_demos_many_class_task_split_by_drawer():
    """Omniglot as the demo reads it (../shared/data/omniglot, or `data fetch omniglot`): 242 characters,
    drawers 01-15 for training (2 of them per character held out for validation, seeded) and 16-20 for
    testing, so no test image is by a person seen in training; 1-bit PNGs decode to 3-channel images."""
    root = require(SHARED / "data" / "omniglot")
    counts = split_counts("omniglot", root)
    assert [len(counts[s]) for s in ("train", "val", "test")] == [242] * 3
    assert set(counts["train"].values()) == {13} and set(counts["val"].values()) == {2}
    assert set(counts["test"].values()) == {5}
    drawer = lambda path: int(Path(path).stem.rpartition("_")[2])  # noqa: E731
    assert {drawer(p) for p in samples("omniglot", root, "test").paths} == {16, 17, 18, 19, 20}
    assert max(drawer(p) for s in ("train", "val") for p in samples("omniglot", root, s).paths) == 15
    assert_disjoint("omniglot", root)
    spec = DATASETS["omniglot"]
    assert (spec.train_images, spec.val_images, spec.test_images) == (3146, 484, 1210)
    val = build_dataset("omniglot", root, "val", resolution=32)
    assert val.images.shape == (484, 3, 32, 32) and len(val.classes) == 242
    assert torch.equal(val.images[:, 0], val.images[:, 2]) and val.images.float().std() > 50  # strokes


def test_fashion_mnist_from_the_debian_package():
    train = build_dataset("fashion_mnist", None, "val", resolution=32)
    test = build_dataset("fashion_mnist", None, "test", resolution=28)
    assert len(train) == 5000 and len(test) == 10000 and train.classes[9] == "Ankle boot"
    assert train.images.shape == (5000, 3, 32, 32) and test.labels.bincount().tolist() == [1000] * 10
    assert torch.equal(test.images[:, 0], test.images[:, 2])  # grayscale replicated to RGB


def test_decoded_cache_returns_exactly_what_decoding_returns(tmp_path, monkeypatch):
    write_caltech(tmp_path / "data")
    decoded = build_dataset("Caltech", tmp_path / "data", "train", resolution=24, cache=False)
    first = build_dataset("Caltech", tmp_path / "data", "train", resolution=24)  # decodes and writes
    files = list((tmp_path / "cache" / "decoded").glob("Caltech-train-24px-*.pt"))
    assert len(files) == 1
    monkeypatch.setattr(
        "rftbench.data.loading.decode_image", lambda *a: pytest.fail("decoded despite the cache")
    )
    cached = build_dataset("Caltech", tmp_path / "data", "train", resolution=24)
    assert torch.equal(decoded.images, first.images) and torch.equal(decoded.images, cached.images)
    assert torch.equal(decoded.labels, cached.labels) and decoded.images.dtype == torch.uint8


def test_missing_or_malformed_roots_give_one_line(tmp_path):
    with pytest.raises(DataNotFound) as info:
        build_dataset("Cub", tmp_path / "nowhere", "train")
    message = str(info.value)
    assert "dataset Cub" in message and str(tmp_path / "nowhere") in message and "images.txt" in message
    assert "RFTBENCH_DATA_CUB" in message and "\n" not in message
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataNotFound, match=r"dataset Dogs: .*train_list.mat not found; expected"):
        build_dataset("Dogs", tmp_path / "empty", "train")
    with pytest.raises(ValueError, match="unknown dataset 'cub': valid ones are Aircraft, Cars"):
        build_dataset("cub", tmp_path, "train")


def test_the_data_root_comes_from_the_environment(tmp_path, monkeypatch):
    write_aircraft(tmp_path)
    monkeypatch.setenv("RFTBENCH_DATA_AIRCRAFT", str(tmp_path))
    assert len(samples("Aircraft", None, "val").paths) == 12


def test_datasets_command(tmp_path):
    write_aircraft(tmp_path)
    result = CliRunner().invoke(app, ["datasets", "--root", f"Aircraft={tmp_path}"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    for name in DATASETS:
        assert name in result.output
    line = next(line for line in result.output.splitlines() if "Aircraft" in line)
    assert "yes" in line and "100" in line


def test_the_decoded_cache_follows_changed_files(tmp_path):
    write_caltech(tmp_path)
    before = build_dataset("Caltech", tmp_path, "val", resolution=8)
    changed = samples("Caltech", tmp_path, "val").paths[0]
    jpeg(tmp_path / changed, seed=999_999)  # same name, new pixels
    after = build_dataset("Caltech", tmp_path, "val", resolution=8)
    assert not torch.equal(before.images[0], after.images[0]) and torch.equal(
        before.images[1:], after.images[1:]
    )


def test_datasets_command_rejects_unknown_names():
    result = CliRunner().invoke(app, ["datasets", "--root", "cub=/x"])
    assert result.exit_code == 2 and "unknown dataset(s) cub: valid ones are Aircraft, Cars" in result.output


SPLITS_DIR = SHARED / "paper" / "splits"


@pytest.mark.parametrize(
    "name, folder, sizes, classes",
    [
        ("Caltech", "caltech256", (14_649, 771, 15_187), 257),
        ("Cub", "cub", (5_394, 600, 5_794), 200),
        ("Dogs", "stanforddogs", (10_800, 1_200, 8_580), 120),
    ],
)
def test_the_papers_split_lists_read_with_the_published_counts(name, folder, sizes, classes):
    """RoLI's files as the paper used them (../shared/paper/splits): the counts of appendix A, every class,
    no image in two splits, and labels that follow each dataset's own numbering."""
    lists, names = read_paper_splits(name, require(SPLITS_DIR / folder))
    assert tuple(len(lists[s]) for s in ("train", "val", "test")) == sizes
    assert len(names) == classes and len({y for pairs in lists.values() for _, y in pairs}) == classes
    paths = [{p for p, _ in lists[s]} for s in ("train", "val", "test")]
    assert not (paths[0] & paths[1] or paths[0] & paths[2] or paths[1] & paths[2])
    assert all(names[y] == p.split("/")[0] for pairs in lists.values() for p, y in pairs)
    first = {"Caltech": "001.ak47", "Cub": "001.Black_footed_Albatross", "Dogs": "n02085620-Chihuahua"}
    assert names[0] == first[name] and names == sorted(names)  # label 0 is the first folder in every one


def roli_files(folder: Path, lists: dict[str, dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split, pairs in lists.items():
        (folder / f"{split}.json").write_text(json.dumps(pairs))
    return folder


def test_a_caltech_root_with_the_papers_lists_splits_by_them(tmp_path):
    """The fixture's images carry Caltech's real file names, so the real lists, cut to those images, say
    which split each is in: the dataset must follow them (and label clutter 256, as RoLI does)."""
    write_caltech(tmp_path)
    base = tmp_path / "caltech256" / "256_ObjectCategories"
    real = {
        s: json.loads((SPLITS_DIR / "caltech256" / f"{s}.json").read_text()) for s in ("train", "val", "test")
    }
    for i, image in enumerate(
        sorted(p for pairs in real.values() for p in pairs if p.startswith("257."))[:12]
    ):
        jpeg(base / image, 90_000 + i)  # clutter images under their real names (the fixture's are 003_*)
    have = {str(p.relative_to(base)) for p in base.rglob("*.jpg")}
    cut = {s: {p: y for p, y in pairs.items() if p in have} for s, pairs in real.items()}
    assert all(cut.values()) and {y for pairs in cut.values() for y in pairs.values()} == {0, 1, 256}
    roli_files(tmp_path / "paper_splits", cut)
    for split in ("train", "val", "test"):
        s = samples("Caltech", tmp_path, split, splits="paper")
        assert sorted(p.split("/", 2)[2] for p in s.paths) == sorted(cut[split])
        assert {s.classes[y] for y in s.labels} <= {"001.ak47", "002.american-flag", "257.clutter"}
        assert ({256} & set(s.labels)) == ({256} & {y for y in cut[split].values()})
    data = build_dataset("Caltech", tmp_path, "val", resolution=8, splits="paper")
    assert len(data) == len(cut["val"]) and len(data.classes) == 257
    assert (
        samples("Caltech", tmp_path, "test", splits="paper").paths
        != samples("Caltech", tmp_path, "test").paths
    )


def test_cub_and_dogs_read_their_own_label_numbering(tmp_path):
    write_cub(tmp_path / "cub")
    write_dogs(tmp_path / "dogs")
    for name, root, label in (
        ("Cub", tmp_path / "cub", lambda folder, rank: folder[:3]),  # "001"…
        ("Dogs", tmp_path / "dogs", lambda folder, rank: rank + 1),  # 1…
    ):
        lists = {}
        for split in ("train", "val", "test"):
            s = samples(name, root, split)
            lists[split] = {
                "/".join(p.split("/")[-2:]): label(p.split("/")[-2], y) for p, y in zip(s.paths, s.labels)
            }
        roli_files(root / "paper_splits", lists)
        for split in ("train", "val", "test"):
            rules, paper = samples(name, root, split), samples(name, root, split, splits="paper")
            assert sorted(zip(paper.paths, paper.labels)) == sorted(zip(rules.paths, rules.labels))


def test_split_lists_that_are_not_the_datasets_are_one_line(tmp_path):
    write_caltech(tmp_path)
    folder = tmp_path / "paper_splits"
    with pytest.raises(DataNotFound, match="are not in"):
        samples("Caltech", tmp_path, "train", splits="paper")
    roli_files(
        folder, {"train": [["001.ak47/001_0001.jpg", 0]], "val": {"a/b.jpg": 0}, "test": {"a/c.jpg": 0}}
    )
    with pytest.raises(DataNotFound, match="expected a non-empty JSON object mapping image paths"):
        samples("Caltech", tmp_path, "train", splits="paper")
    roli_files(
        folder, {"train": {"001.ak47/001_0001.jpg": "ak47"}, "val": {"a/b.jpg": 0}, "test": {"a/c.jpg": 0}}
    )
    with pytest.raises(DataNotFound, match="has label 'ak47', not a class of Caltech"):
        samples("Caltech", tmp_path, "train", splits="paper")
    roli_files(
        folder, {"train": {"001.ak47/001_0001.jpg": 0}, "val": {"002.flag/b.jpg": 0}, "test": {"a/c.jpg": 1}}
    )
    with pytest.raises(DataNotFound, match="holds images of two folders"):
        samples("Caltech", tmp_path, "train", splits="paper")
    roli_files(folder, {"train": {"001.ak47/001_0001.jpg": 0}, "val": {"001.ak47/001_0002.jpg": 0},
                        "test": {"001.ak47/missing.jpg": 0}})  # fmt: skip
    with pytest.raises(DataNotFound, match="missing.jpg is missing"):
        check_data("Caltech", tmp_path, splits="paper")
