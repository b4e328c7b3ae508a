"""Datasets: tiny fixtures written in each dataset's real on-disk layout, split rules, the decoded cache."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CIFAR, require
from PIL import Image
from scipy.io import savemat
from typer.testing import CliRunner

from rftbench.cli import app
from rftbench.datasets import (
    DATASETS,
    DataNotFound,
    build_dataset,
    samples,
    stratified_subsample,
)

FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RFTBENCH_CACHE", str(tmp_path / "cache"))
    for name in DATASETS:
        monkeypatch.delenv("RFTBENCH_DATA_" + name.upper(), raising=False)


def jpeg(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (10, 13, 3), dtype=np.uint8)  # not square
    Image.fromarray(pixels).save(path, quality=90)


def write_aircraft(root: Path, per_split: int = 4) -> list[str]:
    variants = ["707-320", "Cessna 525", "F/A-18"]  # real variant names have spaces and slashes
    data = root / "fgvc-aircraft-2013b" / "data"
    data.mkdir(parents=True)
    (data / "variants.txt").write_text("\n".join(variants) + "\n")
    image_id = 1000000
    for split in ("train", "val", "test"):
        lines = []
        for variant in variants:
            for _ in range(per_split):
                image_id += 1
                jpeg(data / "images" / f"{image_id}.jpg", image_id)
                lines.append(f"{image_id} {variant}")
        (data / f"images_variant_{split}.txt").write_text("\n".join(lines) + "\n")
    return variants


def write_cars(root: Path, train_per_class: int = 20, test_per_class: int = 3) -> None:
    base = root / "stanford_cars"
    (base / "devkit").mkdir(parents=True)
    names = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Audi R8 Coupe 2012"]
    savemat(base / "devkit" / "cars_meta.mat", {"class_names": np.array([names], dtype=object)})
    fields = [(f, "O") for f in ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")]
    for folder, mat, per_class in (
        ("cars_train", base / "devkit" / "cars_train_annos.mat", train_per_class),
        ("cars_test", base / "cars_test_annos_withlabels.mat", test_per_class),
    ):
        annotations, n = np.zeros((1, per_class * len(names)), dtype=fields), 0
        for label in range(1, len(names) + 1):  # 1-based, as in the devkit
            for _ in range(per_class):
                n += 1
                fname = f"{n:05d}.jpg"
                jpeg(base / folder / fname, n + 7 * label)
                annotations[0, n - 1] = (1, 1, 12, 9, label, fname)
        savemat(mat, {"annotations": annotations})


def write_caltech(root: Path, per_class: int = 62) -> None:
    base = root / "caltech256" / "256_ObjectCategories"
    for c, name in enumerate(["001.ak47", "002.american-flag", "257.clutter"], start=1):
        for i in range(1, per_class + 1 + c):  # classes of different sizes
            jpeg(base / name / f"{c:03d}_{i:04d}.jpg", 1000 * c + i)


def write_cub(root: Path, train_per_class: int = 8, test_per_class: int = 4) -> None:
    base = root / "CUB_200_2011"
    classes = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]
    images, labels, split, image_id = [], [], [], 0
    for c, name in enumerate(classes, start=1):
        for i in range(train_per_class + test_per_class):
            image_id += 1
            relative = f"{name}/{name[4:]}_{i:04d}_{image_id}.jpg"
            jpeg(base / "images" / relative, image_id)
            images.append(f"{image_id} {relative}")
            labels.append(f"{image_id} {c}")
    # the official split interleaves train and test images within a class
    image_id = 0
    for _ in classes:
        flags = [1] * train_per_class + [0] * test_per_class
        np.random.default_rng(len(split)).shuffle(flags)
        for flag in flags:
            image_id += 1
            split.append(f"{image_id} {flag}")
    (base / "images.txt").write_text("\n".join(images) + "\n")
    (base / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (base / "train_test_split.txt").write_text("\n".join(split) + "\n")
    (base / "classes.txt").write_text("\n".join(f"{c} {n}" for c, n in enumerate(classes, start=1)) + "\n")


def write_dogs(root: Path, test_per_class: int = 3) -> None:
    breeds = ["n02085620-Chihuahua", "n02085782-Japanese_spaniel"]
    for listing, per_class in (("train_list.mat", 100), ("test_list.mat", test_per_class)):
        files, labels = [], []
        for label, breed in enumerate(breeds, start=1):
            wnid = breed.split("-")[0]
            for i in range(per_class):
                relative = f"{breed}/{wnid}_{listing[:4]}{i}.jpg"
                jpeg(root / "Images" / relative, hash(relative) % 10_000)
                files.append(relative)
                labels.append(label)
        savemat(root / listing, {
            "file_list": np.array(files, dtype=object).reshape(-1, 1),
            "annotation_list": np.array([f[:-4] for f in files], dtype=object).reshape(-1, 1),
            "labels": np.array(labels, dtype=np.uint8).reshape(-1, 1),
        })  # fmt: skip


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
    monkeypatch.setattr("rftbench.datasets.decode_image", lambda *a: pytest.fail("decoded despite the cache"))
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
