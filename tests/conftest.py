"""Shared fixtures: real offline assets from ../shared (CIFAR-10 JPEGs, the CIFAR-10 ResNet-20)."""

from __future__ import annotations

import os

# Before torch loads OpenMP: the tests run several torch processes at once on 2 cores (two run-grid
# processes, loader workers, local executors), and OpenMP threads that spin while they wait steal the cores
# the others need (the two-process test took 59 s spinning, 17 s sleeping). Waiting changes no number.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# The CLI's rich console fixes its width at import when COLUMNS is set (pytest-xdist sets it for its
# workers): unset, each command's width follows the COLUMNS a test invokes it with.
os.environ.pop("COLUMNS", None)
import shutil
import sqlite3
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch

from rftbench.data.loading import decode_image_folder
from rftbench.models.nets import cifar_resnet20, load_cifar_resnet20_weights, with_normalization
from rftbench.models.registry import IMAGENET_MEAN, IMAGENET_STD

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
EXPERIMENTS = REPO / "rftbench" / "experiments.toml"
CIFAR = SHARED / "data" / "cifar10-jpeg"
RESNET20 = SHARED / "weights" / "resnet20-12fca82f.th"


def copy_db(source: Path, target: Path) -> Path:
    """A consistent copy through SQLite's backup API (the WAL may hold what the main file does not yet)."""
    with sqlite3.connect(source) as src, sqlite3.connect(target) as dst:
        src.backup(dst)
    return target


def require(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"offline fixture {path} missing: the repository expects ../shared beside it")
    return path


@pytest.fixture(scope="session")
def cifar_test_500() -> tuple[torch.Tensor, torch.Tensor]:
    """500 CIFAR-10 test JPEGs (the first 50 per class), as floats in [0, 1]."""
    images, labels, _ = decode_image_folder(require(CIFAR / "test"), resolution=32, per_class=50)
    return images.float() / 255, labels


@pytest.fixture(scope="session")
def resnet20() -> torch.nn.Module:
    """The real pretrained (non-robust) CIFAR-10 ResNet-20, ImageNet normalisation inside, eval mode."""
    net = cifar_resnet20()
    load_cifar_resnet20_weights(net, require(RESNET20))
    return with_normalization(net, IMAGENET_MEAN, IMAGENET_STD).eval()


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


@pytest.fixture(scope="session")
def reference(tmp_path_factory) -> Path:
    """The smoke grid, uninterrupted, through `rftbench run-grid` (in process): its database, runs/ beside."""
    from typer.testing import CliRunner

    from rftbench.cli import app

    tmp = tmp_path_factory.mktemp("reference")
    args = ["--experiments", str(EXPERIMENTS), "--db", str(tmp / "r.db"), "--runs-dir", str(tmp / "runs")]
    result = CliRunner().invoke(app, ["run-grid", "--grid", "smoke", *args])
    assert result.exit_code == 0, result.output
    assert "3 completed, 0 failed" in result.output
    return tmp / "r.db"


@pytest.fixture
def read_only():
    """Make a file or folder unwritable even for root (CI runs as root, to whom chmod 444 means nothing:
    `chattr +i` is used there); undone after the test."""
    made = []

    def make(path: Path) -> Path:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "+i", str(path)], check=True)
        else:
            path.chmod(0o555 if path.is_dir() else 0o444)
        made.append(path)
        return path

    yield make
    for path in made:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(path)], check=True)
        else:
            path.chmod(0o755 if path.is_dir() else 0o644)


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server for the session (tests/servers.py); `postgres.database()` is a new one."""
    from servers import PostgresServer

    # not under pytest's tmp folder, which the postgres user may not enter
    folder = Path(tempfile.mkdtemp(prefix="rftbench-postgres-"))
    server = PostgresServer(folder)
    yield server
    server.stop()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def slurm():
    """A real one-node SLURM cluster for the session (tests/servers.py); SLURM_CONF is set for the session,
    so sbatch, sacct, submitit and the rftbench processes the tests start all reach it."""
    from servers import SlurmCluster

    cluster = SlurmCluster()
    previous = {name: os.environ.get(name) for name in cluster.env}
    os.environ.update(cluster.env)
    yield cluster
    cluster.stop()
    for name, value in previous.items():
        os.environ.pop(name) if value is None else os.environ.update({name: value})


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    """A new results database on each backend: a SQLite file, then a PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "store.db")
    return request.getfixturevalue("postgres").database()
