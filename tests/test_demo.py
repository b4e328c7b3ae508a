"""`make demo` end to end on a reduced demo grid (fix and standard, 2 seeds, 100 training images, 2 epochs):
the same commands, offline, real MobileNetV2 weights and real Omniglot images (../shared/data/omniglot, or a
fetched copy), two worker processes; a second run reuses every finished run.
This checks the pipeline, not the effect (benchmarks/demo_effect.py measures that)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SHARED, require

from rftbench.results.store import Store

ROOT = Path(__file__).resolve().parents[1]


def reduced_demo(tmp_path: Path) -> Path:
    text = (ROOT / "rftbench" / "experiments.toml").read_text()
    start = text.index("[grids.demo]")
    end = text.find("\n[", start + 1)  # the demo grid alone: the grids after it keep their own values
    block = text[start:end] if end > 0 else text[start:]
    reduced = re.sub(
        r"\nsettings = \[.*\]\n", '\nsettings = [{ setting = "fix" }, { setting = "standard" }]\n', block
    )
    reduced = reduced.replace("seeds = [0, 1, 2]", "seeds = [0, 1]")
    changes = {
        "epochs": 2,
        "train_subset": 100,
        "val_subset": 50,
        "test_subset": 20,  # the final evaluation attacks each test image at up to every budget of the grid
        "val_adv_samples": 20,
        "eval_attack_steps": 2,
    }
    for key, value in changes.items():  # replaced where the grid sets it, else added
        reduced, found = re.subn(rf"\n{key} = \d+", f"\n{key} = {value}", reduced)
        reduced = reduced if found else reduced.replace("[grids.demo]\n", f"[grids.demo]\n{key} = {value}\n")
    assert '"standard" }]' in reduced and "seeds = [0, 1]\n" in reduced and "\nepochs = 2\n" in reduced
    path = tmp_path / "experiments.toml"
    path.write_text(text.replace(block, reduced))
    return path


def make_demo(experiments: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["make", "-s", "demo", f"BIN={Path(sys.executable).parent}", f"DEMO_EXPERIMENTS={experiments}",
         f"DEMO_DIR={out}", *extra],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


@pytest.mark.slow
def test_make_demo_runs_offline_and_reuses_finished_runs(tmp_path):
    require(SHARED / "data" / "omniglot")
    experiments, out = reduced_demo(tmp_path), tmp_path / "demo"
    first = make_demo(experiments, out)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "grid demo: 4 runs (4 new), 0 already completed" in first.stdout
    assert f"tables in {out}/main.md" in first.stdout
    store = Store.open(str(out / "demo.db"), create=False)
    runs = store.runs(grid="demo")
    assert sorted((r.setting, r.seed, r.status, r.attempts) for r in runs) == [
        ("fix", 0, "completed", 1), ("fix", 1, "completed", 1),
        ("standard", 0, "completed", 1), ("standard", 1, "completed", 1),
    ]  # fmt: skip
    assert all(len(store.epochs(r.id)) == 2 and store.adaptation(r.id) for r in runs)
    main = (out / "main.md").read_text()
    for setting in ("standard", "fix"):  # two seeds per cell: mean ± sd
        row = next(line for line in main.splitlines() if line.startswith(f"| mobilenetv2_100 | {setting} |"))
        assert row.count(" ± ") == 3, row
    assert "omniglot Clean" in main and "over up to 2 seeds" in main
    delay = (out / "delay.md").read_text()
    assert "Task-adaptation start over seeds" in delay and "Paired t-tests" in (out / "ttest.md").read_text()
    effect = (out / "effect.md").read_text()  # the story the demo ends with, in the terminal too
    assert "what fix lost to standard (clean, standard − fix)" in effect and "Task-adaptation start" in effect
    assert "what fix lost to standard" in first.stdout  # (rich wraps the rest at the terminal's width)
    for png in ("curves.png", "robustness.png"):
        assert (out / png).stat().st_size > 10_000
    second = make_demo(experiments, out)
    assert second.returncode == 0 and "4 runs (0 new), 4 already completed" in second.stdout
    assert "nothing to run" in second.stdout
    assert [r.attempts for r in Store.open(str(out / "demo.db"), create=False).runs()] == [1, 1, 1, 1]


def test_make_demo_reads_the_offline_copy_where_it_is_and_fetches_it_elsewhere(tmp_path):
    """Beside ../shared (here), the demo reads ../shared/data/omniglot and fetches nothing; in a checkout
    without it, it first fetches the same images (tests/test_fetch.py checks they are the same) into
    DEMO_DIR/data/omniglot and trains on that copy."""
    here = subprocess.run(["make", "-n", "demo"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert (
        "test -d ../shared/data/omniglot/train ||" in here
        and "--root omniglot=../shared/data/omniglot" in here
    )
    elsewhere = tmp_path / "checkout"  # a clone with no ../shared beside it
    elsewhere.mkdir()
    (elsewhere / "Makefile").write_text((ROOT / "Makefile").read_text())
    made = subprocess.run(["make", "-n", "demo"], cwd=elsewhere, capture_output=True, text=True, check=True)
    fetch = "test -d demo/data/omniglot/train || .venv/bin/rftbench data fetch omniglot"
    fetch += " --root omniglot=demo/data/omniglot"
    assert fetch in made.stdout and "--root omniglot=demo/data/omniglot" in made.stdout.split(fetch)[1]
