"""Tiny fixtures in each dataset's real on-disk layout (the official archives' trees), shared by the dataset,
fetch and run tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from scipy.io import savemat


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
