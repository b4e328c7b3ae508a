"""`rftbench data fetch` against a real HTTP server on 127.0.0.1 (tests/servers.py) that serves small archives
in each source's real format (Caltech's and Dogs' plain tars, Aircraft's and CUB's gzipped tars, Kaggle's zip
of Stanford Cars with its nested folders, the devkit, a bare .mat, RoLI's JSON lists): a whole fetch, a
connection that breaks and resumes, a wrong checksum, a root it did not make, a fetch killed mid-unpack,
the paper's real split lists, and torchvision's own downloader for Fashion-MNIST."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import pytest
from conftest import SHARED, require
from layouts import write_aircraft, write_caltech, write_cars, write_cub, write_dogs
from servers import FileServer
from typer.testing import CliRunner

import rftbench.data.download as download_module
import rftbench.data.fetch as fetch_module
import rftbench.data.sources as sources_module
from rftbench.cli import app
from rftbench.data.download import FetchError
from rftbench.data.fetch import MARKER, fetch
from rftbench.data.lists import read_paper_splits, samples
from rftbench.data.registry import DATASETS, PAPER_SPLITS

PAPER = ["Aircraft", "Cars", "Caltech", "Cub", "Dogs"]
FOLDERS = {name: Path(DATASETS[name].default_root).name for name in DATASETS}
FASHION = Path("/usr/share/datasets/fashion-mnist")


def tar(members: dict[str, Path], gz: bool) -> bytes:
    """A tar of files and folders under the names they have in the real archive."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz" if gz else "w") as archive:
        for name, path in members.items():
            archive.add(path, arcname=name)
    return out.getvalue()


def zipped(members: dict[str, Path]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, folder in members.items():
            for file in sorted(folder.rglob("*")) if folder.is_dir() else [folder]:
                archive.write(file, f"{name}/{file.relative_to(folder)}" if folder.is_dir() else name)
    return out.getvalue()


def roli_lists(name: str, root: Path) -> dict[str, bytes]:
    """The fixture's own splits written as RoLI writes its files: paths from the image folder, labels in
    each dataset's numbering (Caltech 0-based from the folder number, CUB its "NNN" string, Dogs 1-based)."""
    base = next(d for d in PAPER_SPLITS[name].image_dirs if (root / d).is_dir())
    folders = sorted(p.name for p in (root / base).iterdir() if p.is_dir())
    label = {
        "Caltech": lambda folder: int(folder[:3]) - 1,
        "Cub": lambda folder: folder[:3],
        "Dogs": lambda folder: folders.index(folder) + 1,
    }[name]
    lists = {}
    for split in ("train", "val", "test"):
        relative = [str(Path(p).relative_to(base)) for p in samples(name, root, split).paths]
        lists[split] = json.dumps({p: label(p.split("/")[0]) for p in relative}).encode()
    return lists


@pytest.fixture(scope="module")
def archives(tmp_path_factory) -> dict[str, dict[str, bytes]]:
    """Per dataset: file name -> the bytes its source serves, built from the layouts' fixture trees."""
    tmp = tmp_path_factory.mktemp("trees")
    trees = {name: tmp / name for name in PAPER}
    write_aircraft(trees["Aircraft"])
    write_cars(trees["Cars"])
    write_caltech(trees["Caltech"])
    write_cub(trees["Cub"])
    write_dogs(trees["Dogs"])
    cars = trees["Cars"] / "stanford_cars"
    (tmp / "cars_annos.mat").write_bytes(b"Kaggle's all-images annotations: not read")
    (trees["Cub"] / "attributes.txt").write_text("1 has_bill_shape::curved\n")  # the tgz's stray file
    (trees["Dogs"] / "file_list.mat").write_bytes((trees["Dogs"] / "train_list.mat").read_bytes())
    served = {
        "Aircraft": {"fgvc-aircraft-2013b.tar.gz": tar(
            {"fgvc-aircraft-2013b": trees["Aircraft"] / "fgvc-aircraft-2013b"}, gz=True)},
        "Cars": {
            "stanford-cars-dataset-v2.zip": zipped({"cars_train/cars_train": cars / "cars_train",
                                                    "cars_test/cars_test": cars / "cars_test",
                                                    "cars_annos.mat": tmp / "cars_annos.mat"}),
            "car_devkit.tgz": tar({"devkit": cars / "devkit"}, gz=True),
            "cars_test_annos_withlabels.mat": (cars / "cars_test_annos_withlabels.mat").read_bytes(),
        },
        "Caltech": {"256_ObjectCategories.tar": tar(
            {"256_ObjectCategories": trees["Caltech"] / "caltech256" / "256_ObjectCategories"}, gz=False)},
        "Cub": {"CUB_200_2011.tgz": tar({"CUB_200_2011": trees["Cub"] / "CUB_200_2011",
                                         "attributes.txt": trees["Cub"] / "attributes.txt"}, gz=True)},
        "Dogs": {
            "images.tar": tar({"Images": trees["Dogs"] / "Images"}, gz=False),
            "lists.tar": tar({f: trees["Dogs"] / f for f in ("file_list.mat", "train_list.mat",
                                                              "test_list.mat")}, gz=False),
        },
    }  # fmt: skip
    for name in PAPER_SPLITS:
        served[name] |= {f"roli/{split}.json": data for split, data in roli_lists(name, trees[name]).items()}
    served["trees"] = trees
    return served


@pytest.fixture
def mirror(archives, monkeypatch):
    """A server with every source's files, and rftbench's sources pointed at it with the fixtures' sha256
    (a source without a published checksum keeps none)."""
    server = FileServer()
    sources = {}
    for name in PAPER:
        resources = []
        for resource in fetch_module.SOURCES[name].resources:
            data = archives[name][resource.filename]
            server.files[f"/{name}/{resource.filename}"] = data
            digest = (hashlib.sha256(data).hexdigest(),) if resource.sha256 else ()
            resources.append(dataclasses.replace(resource, url=f"{server.url}/{name}/{resource.filename}",
                                                 sha256=digest, size=None))  # fmt: skip
        sources[name] = dataclasses.replace(fetch_module.SOURCES[name], resources=tuple(resources))
    for name, info in PAPER_SPLITS.items():
        for split in ("train", "val", "test"):
            data = archives[name][f"roli/{split}.json"]
            server.files[f"/roli/{sources_module.ROLI_COMMIT}/{info.roli_folder}/{split}.json"] = data
            monkeypatch.setitem(
                sources_module.SPLIT_SHA256, (info.roli_folder, split), hashlib.sha256(data).hexdigest()
            )
    monkeypatch.setattr(
        fetch_module, "SOURCES", sources | {"fashion_mnist": fetch_module.SOURCES["fashion_mnist"]}
    )
    monkeypatch.setattr(sources_module, "ROLI_URL", server.url + "/roli/{commit}/{folder}/{split}.json")
    monkeypatch.setattr(download_module, "BACKOFF", 0.01)
    yield server
    server.stop()


def fetch_cli(*args: str):
    return CliRunner().invoke(app, ["data", "fetch", *args], env={"COLUMNS": "200"})


def test_every_paper_dataset_is_fetched_verified_and_read_by_the_registry(mirror, archives, tmp_path):
    result = fetch_cli(*PAPER, "--root", str(tmp_path / "data"))
    assert result.exit_code == 0, result.output
    for name in PAPER:
        root, fixture = tmp_path / "data" / FOLDERS[name], archives["trees"][name]
        assert f"{name}: fetched in {root}" in result.output
        for split in ("train", "val", "test"):  # the same images and labels as the tree the archives hold
            got, want = samples(name, root, split), samples(name, fixture, split)
            image = lambda s: [Path(p).parts[-2:] for p in s.paths]  # noqa: E731 (Caltech: ROOT/caltech256/ or not)
            assert (image(got), got.labels, got.classes) == (image(want), want.labels, want.classes)
            if name in PAPER_SPLITS:  # the paper's lists read back to the same split
                paper = samples(name, root, split, splits="paper")
                named = lambda s: sorted((p, s.classes[y]) for p, y in zip(s.paths, s.labels))  # noqa: E731
                assert named(paper) == named(got)  # (RoLI numbers Caltech's clutter 256 of 257 classes)
        marker = json.loads((root / MARKER).read_text())
        assert marker["dataset"] == name and len(marker["files"]) == len(fetch_module.SOURCES[name].resources)
    assert (tmp_path / "data" / "cub" / "attributes.txt").is_file()  # the archive's own stray file stays
    assert not (tmp_path / "data" / "cars" / "kaggle").exists()  # Kaggle's nesting undone
    left = [p.name for p in (tmp_path / "data" / ".rftbench-downloads").rglob("*") if p.suffix != ".lock"]
    assert not left, "archives deleted (only the download locks stay)"
    assert not list((tmp_path / "data").glob(".*partial*"))
    asked = len(mirror.requests)
    again = fetch_cli(*PAPER, "--root", str(tmp_path / "data"))
    assert again.exit_code == 0 and again.output.count("already complete") == 5
    assert len(mirror.requests) == asked, "nothing downloaded twice"
    roots = [f"--root={n}={tmp_path / 'data' / FOLDERS[n]}" for n in PAPER]
    listing = CliRunner().invoke(app, ["datasets", *roots], env={"COLUMNS": "400"})
    for name in PAPER:
        line = next(line for line in listing.output.splitlines() if line.startswith(f"│ {name} "))
        assert "yes" in line.split("│")[5] and (name not in PAPER_SPLITS or "yes" in line.split("│")[6])


def test_a_broken_connection_is_resumed_where_it_stopped(mirror, tmp_path):
    path = "/Caltech/256_ObjectCategories.tar"
    mirror.cut[path] = 5000  # the first response stops after 5,000 bytes
    result = fetch_cli("Caltech", "--root", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert [start for asked, start in mirror.requests if asked == path] == [0, 5000]
    assert "resuming" in result.output and (tmp_path / "caltech256" / MARKER).is_file()


def test_a_download_that_stays_broken_is_resumed_by_the_next_run(mirror, tmp_path):
    path = "/Dogs/images.tar"
    mirror.cut[path] = 30_000
    with pytest.raises(FetchError, match="run the same command again to resume it"):
        fetch("Dogs", tmp_path / "dogs", retries=0)
    part = tmp_path / ".rftbench-downloads" / "images.tar.part"
    assert part.stat().st_size == 30_000 and not (tmp_path / "dogs").exists()
    done = fetch("Dogs", tmp_path / "dogs")
    assert [start for asked, start in mirror.requests if asked == path] == [0, 30_000]
    assert not part.exists() and samples("Dogs", done.root, "test").paths


def test_a_wrong_checksum_deletes_the_download_and_the_other_datasets_go_on(mirror, tmp_path):
    mirror.files["/Caltech/256_ObjectCategories.tar"] = b"an error page, or a changed archive" * 100
    result = fetch_cli("Caltech", "Cub", "--root", str(tmp_path))
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "has sha256" in errors[0] and "the download was deleted" in errors[0]
    assert not (tmp_path / "caltech256").exists() and not list(tmp_path.rglob("*.part"))
    assert (tmp_path / "cub" / MARKER).is_file()


def test_a_root_it_did_not_make_is_left_alone(mirror, tmp_path):
    mine = tmp_path / "caltech256"
    (mine / "256_ObjectCategories").mkdir(parents=True)
    (mine / "notes.txt").write_text("my own copy")
    result = fetch_cli("Caltech", "--root", f"Caltech={mine}")
    assert result.exit_code == 2 and "was not made by `rftbench data fetch`" in result.output
    assert "--splits-only" in result.output and sorted(p.name for p in mine.iterdir()) == [
        "256_ObjectCategories", "notes.txt"]  # fmt: skip
    added = fetch_cli("Caltech", "--splits-only", "--root", f"Caltech={mine}")
    assert added.exit_code == 0, added.output
    assert sorted(p.name for p in (mine / "paper_splits").iterdir()) == [
        "test.json",
        "train.json",
        "val.json",
    ]
    assert (mine / "notes.txt").read_text() == "my own copy"


KILLED_FETCH = """
import os, sys, time
import rftbench.data.fetch as f
real, count = f.unpack, [0]
def unpack(archive, into):
    real(archive, into)
    count[0] += 1
    if count[0] == 1:  # Dogs' first archive is unpacked, its second not yet
        open(os.environ["MARKER"], "w").write("unpacked one")
        time.sleep(600)
f.unpack = unpack
f.fetch("Dogs", sys.argv[1])
"""


def test_a_fetch_killed_mid_unpack_leaves_nothing_that_looks_complete(mirror, tmp_path):
    """SIGKILL runs no cleanup: the staging folder stays, hidden beside a root that does not exist, and the
    next fetch removes it and completes. (The subprocess reaches the same server through the sources it is
    given: the test's patched table is written for it.)"""
    marker, root = tmp_path / "marker", tmp_path / "data" / "dogs"
    sources = {r.filename: r.url for r in fetch_module.SOURCES["Dogs"].resources}
    digests = {r.filename: r.sha256 for r in fetch_module.SOURCES["Dogs"].resources}
    patch = (
        "import dataclasses, rftbench.data.fetch as g, rftbench.data.sources as s\n"
        f"g.SOURCES['Dogs'] = dataclasses.replace(g.SOURCES['Dogs'], resources=tuple(dataclasses.replace("
        f"r, url={sources!r}[r.filename], sha256={digests!r}[r.filename], size=None) "
        f"for r in g.SOURCES['Dogs'].resources))\n"
        f"s.ROLI_URL = {sources_module.ROLI_URL!r}\n"
        f"s.SPLIT_SHA256.update({dict(sources_module.SPLIT_SHA256)!r})\n"
    )
    env = {**os.environ, "MARKER": str(marker)}
    process = subprocess.Popen([sys.executable, "-c", patch + KILLED_FETCH, str(root)], env=env)
    deadline = time.time() + 120
    while not marker.exists():
        assert process.poll() is None and time.time() < deadline, "the fetch ended before its first unpack"
        time.sleep(0.1)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not root.exists(), "a killed fetch must not leave a root behind"
    assert len(list(root.parent.glob(".dogs.partial-*"))) == 1
    done = fetch("Dogs", root)
    assert (root / MARKER).is_file() and not list(root.parent.glob(".dogs.partial-*"))
    assert samples("Dogs", done.root, "train", splits="paper").paths


def test_the_papers_split_lists_come_from_the_pinned_commit_with_their_checksums(tmp_path, monkeypatch):
    """The real RoLI files (../shared/paper/splits, byte copies of the pinned commit), served locally, pass
    the checksums pinned in rftbench.data.sources and arrive unchanged in each root's paper_splits/."""
    commit = sources_module.ROLI_COMMIT
    real = f"https://raw.githubusercontent.com/DongXzz/RoLI/{commit}/data_splits/cub/train.json"
    assert sources_module.split_resources("Cub")[0].url == real
    server = FileServer()
    try:
        for info in PAPER_SPLITS.values():
            for split in ("train", "val", "test"):
                data = (SHARED / "paper" / "splits" / info.roli_folder / f"{split}.json").read_bytes()
                server.files[f"/DongXzz/RoLI/{commit}/data_splits/{info.roli_folder}/{split}.json"] = data
        local = sources_module.ROLI_URL.replace("https://raw.githubusercontent.com", server.url)
        monkeypatch.setattr(sources_module, "ROLI_URL", local)
        roots = {name: tmp_path / FOLDERS[name] for name in PAPER_SPLITS}
        missing = fetch_cli("Cub", "--splits-only", "--root", str(tmp_path))
        assert (
            missing.exit_code == 2 and "cub does not exist: fetch Cub without --splits-only" in missing.output
        )
        for root in roots.values():  # the images are the user's own, already there
            root.mkdir()
        result = fetch_cli(*PAPER_SPLITS, "--splits-only", "--root", str(tmp_path))
        assert result.exit_code == 0, result.output
        for name, info in PAPER_SPLITS.items():
            for split in ("train", "val", "test"):
                got = (roots[name] / "paper_splits" / f"{split}.json").read_bytes()
                assert got == (SHARED / "paper" / "splits" / info.roli_folder / f"{split}.json").read_bytes()
            assert read_paper_splits(name, roots[name] / "paper_splits")[0]["train"]
    finally:
        server.stop()


@pytest.mark.skipif(not FASHION.exists(), reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_through_torchvisions_downloader(tmp_path, monkeypatch):
    """torchvision's FashionMNIST downloader from a local mirror, into a staging folder. Debian recompressed
    its copy, so torchvision's md5s refuse it (and nothing is left); with that copy's md5s it is fetched."""
    from torchvision.datasets import FashionMNIST

    from rftbench.data.readers import fashion_mnist_arrays

    server = FileServer()
    try:
        for file in FASHION.glob("*.gz"):
            server.files[f"/fashion/{file.name}"] = file.read_bytes()
        monkeypatch.setattr(FashionMNIST, "mirrors", [server.url + "/fashion/"])
        root = tmp_path / "fmnist"
        refused = fetch_cli("fashion_mnist", "--root", f"fashion_mnist={root}")
        assert refused.exit_code == 2 and "torchvision's download failed" in refused.output
        assert not root.exists() and not list(tmp_path.glob(".*partial*"))
        debian = [(f, hashlib.md5((FASHION / f).read_bytes()).hexdigest()) for f, _ in FashionMNIST.resources]
        monkeypatch.setattr(FashionMNIST, "resources", debian)
        result = fetch_cli("fashion_mnist", "--root", f"fashion_mnist={root}")
        assert result.exit_code == 0, result.output
        sizes = [len(fashion_mnist_arrays(root, split)[1]) for split in ("train", "val", "test")]
        assert sizes == [55_000, 5_000, 10_000] and (root / MARKER).is_file()
    finally:
        server.stop()


def test_unknown_names_and_two_parent_roots_are_one_line(tmp_path):
    unknown = fetch_cli("ImageNet")
    assert unknown.exit_code == 2 and "fetchable datasets are Aircraft, Cars, Caltech" in unknown.output
    two = fetch_cli("Cub", "--root", str(tmp_path / "a"), "--root", str(tmp_path / "b"))
    assert two.exit_code == 2 and "give one DIR for all datasets" in two.output
    rules = fetch_cli("Aircraft", "--splits-only")
    assert rules.exit_code == 2 and "Aircraft has no paper split lists" in rules.output
    assert not list(tmp_path.iterdir())
    shutil.rmtree(tmp_path, ignore_errors=True)


TINY_GRID = """
[grids.tiny]
backbones = ["cifar_resnet20"]
datasets = ["Caltech"]
settings = [{ setting = "fix" }]
eps = ["2/255"]
pretrained = false
precision = "fp32"
augmentation = "loader"
epochs = 1
resolution = 16
batch_size = 64
warmup_epochs = 0
train_attack_steps = 1
eval_attack_steps = 1
val_adv_samples = 10
"""


def test_fetch_then_run_grid_trains_on_the_papers_split_lists(mirror, archives, tmp_path, monkeypatch):
    """As a user chains it: `data fetch` into the default root, then `run-grid`, which finds the lists
    there, says so, records splits = "paper" and tests on the paper's test list."""
    from rftbench.results.store import Store

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RFTBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("RFTBENCH_DATA_CALTECH", raising=False)
    assert fetch_cli("Caltech").exit_code == 0  # into data/caltech256, where run-grid looks
    (tmp_path / "tiny.toml").write_text(TINY_GRID)
    run = CliRunner().invoke(
        app, ["run-grid", "--grid", "tiny", "--experiments", "tiny.toml", "--db", "r.db"]
    )
    assert run.exit_code == 0, run.output
    assert "note: Caltech: the paper's split lists from data/caltech256/paper_splits" in run.output
    (stored,) = Store.open("r.db").runs()
    assert json.loads(stored.config)["splits"] == "paper" and stored.status == "completed"
    (final,) = Store.open("r.db").evaluations(stored.id)
    assert final.n == len(json.loads(archives["Caltech"]["roli/test.json"]))


def test_servers_that_ignore_or_refuse_a_range_start_the_download_again(mirror, tmp_path):
    """A .part that is not a prefix of the file (the file changed, or another file's): a server that answers
    the range with the whole file (200), or with 416 for a .part longer than the file, is started over."""
    downloads = tmp_path / ".rftbench-downloads"
    downloads.mkdir()
    (downloads / "CUB_200_2011.tgz.part").write_bytes(b"x" * 10)  # not its start
    mirror.ranges_ignored.add("/Cub/CUB_200_2011.tgz")  # answered with 200 and the whole file
    assert (fetch("Cub", tmp_path / "cub").root / MARKER).is_file()
    assert [start for path, start in mirror.requests if path == "/Cub/CUB_200_2011.tgz"] == [10]
    (downloads / "256_ObjectCategories.tar.part").write_bytes(
        b"y" * (len(mirror.files["/Caltech/256_ObjectCategories.tar"]) + 5)
    )
    assert (fetch("Caltech", tmp_path / "caltech256").root / MARKER).is_file()
    asked = [start for path, start in mirror.requests if path == "/Caltech/256_ObjectCategories.tar"]
    assert asked[0] > 0 and asked[-1] == 0  # 416 for the long .part, then the whole file


def test_a_root_that_holds_the_dataset_already_is_used_and_lists_a_splits_only_fetch_put_are_kept(
    mirror, archives, tmp_path
):
    mine = tmp_path / "mine"
    shutil.copytree(archives["trees"]["Cub"], mine)  # the user's own copy, in the registry's layout
    found = fetch_cli("Cub", "--root", f"Cub={mine}")
    assert found.exit_code == 0 and "already there (not fetched by rftbench, left as it is)" in found.output
    assert (mine / "paper_splits" / "train.json").is_file() and not (mine / MARKER).exists()
    first = tmp_path / "dogs"
    first.mkdir()
    assert fetch_cli("Dogs", "--splits-only", "--root", f"Dogs={first}").exit_code == 0
    whole = fetch_cli(
        "Dogs", "--root", f"Dogs={first}"
    )  # a root holding only the lists: the fetch completes it
    assert whole.exit_code == 0, whole.output
    assert (first / MARKER).is_file() and samples("Dogs", first, "test", splits="paper").paths


def test_a_grid_keeps_the_splits_its_runs_were_recorded_with(mirror, tmp_path, monkeypatch):
    """`splits = "auto"` decides once per grid: lists that appear (or vanish) later change no run id."""
    from rftbench.results.store import Store

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RFTBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("RFTBENCH_DATA_CALTECH", raising=False)
    assert fetch_cli("Caltech").exit_code == 0
    shutil.move("data/caltech256/paper_splits", "lists")  # a root without the lists, as on another machine
    (tmp_path / "tiny.toml").write_text(TINY_GRID)
    args = ["--grid", "tiny", "--experiments", "tiny.toml", "--db", "r.db"]
    first = CliRunner().invoke(app, ["run-grid", *args])
    assert first.exit_code == 0 and "so its runs use the seeded split rules" in first.output
    shutil.move("lists", "data/caltech256/paper_splits")  # the lists arrive
    again = CliRunner().invoke(app, ["run-grid", *args], env={"COLUMNS": "300"})
    assert again.exit_code == 0 and "nothing to run" in again.output
    assert (
        "recorded with the seeded split rules and keep them, though the paper's lists are now" in again.output
    )
    (run,) = Store.open("r.db").runs()
    assert json.loads(run.config)["splits"] == "rules"


OMNIGLOT = SHARED / "data" / "omniglot"
# The authors' two background archives and their alphabets (Greek and Latin are in both)
OMNIGLOT_ARCHIVES = {
    "images_background_small1": ("Balinese", "Early_Aramaic", "Greek", "Korean", "Latin"),
    "images_background_small2": ("Greek", "Japanese_(katakana)", "Latin", "Sanskrit", "Tagalog"),
}
OMNIGLOT_SOURCE = fetch_module.SOURCES["omniglot"]  # as shipped (tests point copies of it at a local server)


def omniglot_archives(tree: Path, change: str = "") -> dict[str, bytes]:
    """The authors' archives rebuilt from a split tree in their own layout (<archive>/<Alphabet>/characterNN/
    <id>_<drawer>.png, every drawer of a character together), with the LICENSE; `change` names a member of
    the second archive whose bytes differ from the first's."""
    served = {"LICENSE": (tree / "LICENSE").read_bytes()}
    for archive, alphabets in OMNIGLOT_ARCHIVES.items():
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w") as z:
            for image in sorted(tree.glob("*/*/*.png")):
                alphabet, _, number = image.parent.name.rpartition("_")
                if alphabet in alphabets:
                    name = f"{archive}/{alphabet}/character{number}/{image.name}"
                    data = image.read_bytes()
                    z.writestr(name, data + b"\0" if name == change else data)
        served[f"python/{archive}.zip"] = out.getvalue()
    return served


def serve_omniglot(served: dict[str, bytes], monkeypatch) -> FileServer:
    """A server at the real URLs' paths, and the omniglot source pointed at it with these files' sha256."""
    server = FileServer()
    real = "https://raw.githubusercontent.com"
    resources = []
    for resource in OMNIGLOT_SOURCE.resources:
        path = resource.url.removeprefix(real)
        data = served[path.split(f"/{sources_module.OMNIGLOT_COMMIT}/")[1]]
        server.files[path] = data
        resources.append(dataclasses.replace(resource, url=server.url + path, size=len(data),
                                             sha256=(hashlib.sha256(data).hexdigest(),)))  # fmt: skip
    source = dataclasses.replace(OMNIGLOT_SOURCE, resources=tuple(resources))
    monkeypatch.setitem(fetch_module.SOURCES, "omniglot", source)
    return server


def test_omniglot_from_the_authors_archives_is_the_demos_tree_image_for_image(tmp_path, monkeypatch):
    """`data fetch omniglot` takes the authors' two archives at a pinned commit and lays them out as
    ../shared/data/omniglot is (the demo's data offline): the same files, byte for byte, so the same
    alphabets, characters and drawers, and the registry reads the same splits from both."""
    urls = [r.url for r in OMNIGLOT_SOURCE.resources]
    base = f"https://raw.githubusercontent.com/brendenlake/omniglot/{sources_module.OMNIGLOT_COMMIT}/"
    archives = [f"python/images_background_small{i}.zip" for i in (1, 2)]
    assert urls == [base + archives[0], base + archives[1], base + "LICENSE"]
    assert all(len(r.sha256) == 1 and r.size for r in OMNIGLOT_SOURCE.resources)
    server = serve_omniglot(omniglot_archives(require(OMNIGLOT)), monkeypatch)
    try:
        result = fetch_cli("omniglot", "--root", str(tmp_path / "data"))
        assert result.exit_code == 0, result.output
        root = tmp_path / "data" / "omniglot"
        assert f"omniglot: fetched in {root}" in result.output
        files = lambda tree: sorted(  # noqa: E731
            str(p.relative_to(tree)) for p in tree.rglob("*") if p.is_file() and p.name != MARKER
        )
        assert files(root) == files(OMNIGLOT) and len(files(root)) == 242 * 20 + 1
        assert all((root / f).read_bytes() == (OMNIGLOT / f).read_bytes() for f in files(OMNIGLOT))
        for split in ("train", "val", "test"):
            got, want = samples("omniglot", root, split), samples("omniglot", OMNIGLOT, split)
            assert (got.paths, got.labels, got.classes) == (want.paths, want.labels, want.classes)
        assert len(got.classes) == DATASETS["omniglot"].classes == 242
        assert not (root / "images_background_small1").exists()
    finally:
        server.stop()
    # archives that disagree on an alphabet both hold are not the authors': refused, nothing left behind
    changed = (
        "images_background_small2/Greek/character01/"
        + sorted((OMNIGLOT / "train" / "Greek_01").iterdir())[0].name
    )
    server = serve_omniglot(omniglot_archives(OMNIGLOT, change=changed), monkeypatch)
    try:
        refused = fetch_cli("omniglot", "--root", f"omniglot={tmp_path / 'other'}")
        assert refused.exit_code == 2 and "the two archives hold different images" in refused.output
        assert not (tmp_path / "other").exists() and not list(tmp_path.glob(".*partial*"))
    finally:
        server.stop()
