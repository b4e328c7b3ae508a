"""The package as a user gets it: a wheel built from this tree, installed into a folder of its own and used
from an empty directory with no repository on the path: the bundled grids, the paper's numbers shipped as
package data, and the smoke grid run, reported and listed there."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_an_installed_wheel_runs_the_smoke_grid_from_an_empty_directory(tmp_path):
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path / "wheel"), str(REPO)], capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (tmp_path / "wheel").glob("rftbench-*.whl")
    shipped = zipfile.ZipFile(wheel).namelist()
    assert {"rftbench/experiments.toml", "rftbench/paper_results.csv", "rftbench/py.typed"} <= set(shipped)
    site = tmp_path / "site"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr[-2000:]
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RFTBENCH_")}
    env |= {"PYTHONPATH": str(site), "RFTBENCH_CACHE": str(tmp_path / "cache")}

    def rftbench(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "rftbench.cli", *args], cwd=empty, env=env,
                              capture_output=True, text=True, timeout=600)  # fmt: skip

    where = subprocess.run([sys.executable, "-c", "import rftbench; print(rftbench.__file__)"], cwd=empty,
                           env=env, capture_output=True, text=True)  # fmt: skip
    assert where.stdout.startswith(str(site)), where.stdout  # the wheel, not this checkout
    run = rftbench("run-grid", "--grid", "smoke")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "(bundled with rftbench" in run.stdout and "3 completed, 0 failed" in run.stdout
    status = rftbench("status")
    assert status.returncode == 0 and "bundled" in status.stdout and "3 completed" in status.stdout
    main = rftbench("report", "--table", "main", "--format", "csv")
    assert main.returncode == 0 and main.stdout.count("cifar_resnet20,synthetic,") == 9  # 3 runs × 3 metrics
    paper = rftbench("report", "--table", "main", "--results", "paper", "--format", "csv")
    assert paper.returncode == 0 and "\nSWIN,Cars,fix,8/255,clean,13.2," in paper.stdout
    assert {p.name for p in empty.iterdir()} <= {"rftbench.db", "rftbench.db-wal", "rftbench.db-shm", "runs"}
