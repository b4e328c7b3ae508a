"""The README runs: every code block marked `runnable` (```bash runnable, ```python runnable) is run in
order, in an empty folder beside ../shared, as a user would paste it (shell blocks with `bash -euo
pipefail`, Python blocks in a fresh interpreter), and its Python uses only names the package exports."""

from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, SHARED, copy_db

import rftbench

README = REPO / "README.md"
BLOCK = re.compile(r"^```(bash|python)( runnable)?\n(.*?)^```$", re.M | re.S)


def blocks(runnable_only: bool = True) -> list[tuple[str, str]]:
    return [
        (lang, code)
        for lang, runnable, code in BLOCK.findall(README.read_text())
        if runnable or not runnable_only
    ]


def test_the_readmes_python_uses_names_the_package_exports():
    code = "\n".join(code for lang, code in blocks(runnable_only=False) if lang == "python")
    imported = {
        n.strip()
        for names in re.findall(r"^from rftbench import (.+)$", code, re.M)
        for n in names.split(",")
    }
    without_imports = re.sub(r"^(from|import) .*$", "", code, flags=re.M)
    attributes = set(re.findall(r"\brftbench\.(\w+)", without_imports))
    modules = set(re.findall(r"^from (rftbench\.\w+) import", code, re.M))
    assert imported and attributes, "the README shows the library"
    assert imported | attributes <= set(rftbench.__all__), (imported | attributes) - set(rftbench.__all__)
    for module in modules:
        importlib.import_module(module)


@pytest.mark.slow
def test_every_runnable_readme_block_runs_in_order(reference, tmp_path):
    """The folder starts with the smoke grid done (the session's reference run, copied): its first
    `run-grid` then has nothing to run; the installed-wheel test runs it from nothing."""
    runnable = blocks()
    assert len(runnable) >= 8 and {lang for lang, _ in runnable} == {"bash", "python"}
    work = tmp_path / "work"
    work.mkdir()
    copy_db(reference, work / "rftbench.db")
    shutil.copytree(reference.parent / "runs", work / "runs")
    (tmp_path / "shared").symlink_to(SHARED)  # the README's ../shared paths
    env = {k: v for k, v in os.environ.items() if not k.startswith("RFTBENCH_")}
    env |= {"RFTBENCH_CACHE": str(tmp_path / "cache"), "COLUMNS": "160",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}  # fmt: skip
    for i, (lang, code) in enumerate(runnable):
        command = ["bash", "-euo", "pipefail", "-c", code] if lang == "bash" else [sys.executable, "-c", code]
        result = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, (
            f"README block {i} ({lang}):\n{code}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
