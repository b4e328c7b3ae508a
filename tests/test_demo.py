"""`make demo` end to end on a reduced demo grid (fix and adaptive, 2 seeds, 100 training images, 2 epochs):
the same commands, offline, real EfficientNet-Lite0 weights and real Fashion-MNIST, two worker processes;
a second run reuses every finished run.
This checks the pipeline, not the effect (benchmarks/demo_effect.py measures that)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from rftbench.datasets import DATASETS
from rftbench.store import Store

ROOT = Path(__file__).resolve().parents[1]
FASHION_MNIST = Path(DATASETS["fashion_mnist"].default_root)


def reduced_demo(tmp_path: Path) -> Path:
    text = (ROOT / "rftbench" / "experiments.toml").read_text()
    block = text[text.index("[grids.demo]") :]
    reduced = re.sub(r"\nepochs = \d+", "\nepochs = 2", block)
    # two seeds of fix and adaptive: the spread over seeds and a schedule that reads the history, end to end
    reduced = re.sub(
        r"\nsettings = \[.*\]\n", '\nsettings = [{ setting = "fix" }, { setting = "adaptive" }]\n', reduced
    )
    reduced = reduced.replace("seeds = [0, 1, 2]", "seeds = [0, 1]")
    for key, value in (
        ("train_subset", 100),
        ("val_subset", 50),
        ("test_subset", 20),  # the final evaluation attacks each test image at all 24 budgets
        ("val_adv_samples", 20),
        ("eval_attack_steps", 2),
    ):
        reduced = re.sub(rf"\n{key} = \d+", f"\n{key} = {value}", reduced)
    assert reduced.count("= 2\n") >= 1 and '"adaptive" }]' in reduced and "seeds = [0, 1]\n" in reduced
    path = tmp_path / "experiments.toml"
    path.write_text(text.replace(block, reduced))
    return path


def make_demo(experiments: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["make", "-s", "demo", f"BIN={Path(sys.executable).parent}", f"DEMO_EXPERIMENTS={experiments}",
         f"DEMO_DIR={out}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


@pytest.mark.slow
def test_make_demo_runs_offline_and_reuses_finished_runs(tmp_path):
    if not FASHION_MNIST.is_dir():
        pytest.skip(f"{FASHION_MNIST} missing: `make setup` installs dataset-fashion-mnist as root on Debian")
    experiments, out = reduced_demo(tmp_path), tmp_path / "demo"
    first = make_demo(experiments, out)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "grid demo: 4 runs (4 new), 0 already completed" in first.stdout
    assert f"tables in {out}/main.md" in first.stdout
    store = Store.open(str(out / "demo.db"), create=False)
    runs = store.runs(grid="demo")
    assert sorted((r.setting, r.seed, r.status, r.attempts) for r in runs) == [
        ("adaptive", 0, "completed", 1), ("adaptive", 1, "completed", 1),
        ("fix", 0, "completed", 1), ("fix", 1, "completed", 1),
    ]  # fmt: skip
    assert all(len(store.epochs(r.id)) == 2 and store.adaptation(r.id) for r in runs)
    main = (out / "main.md").read_text()
    for setting in ("fix", "adaptive"):  # two seeds per cell: mean ± sd
        row = next(
            line for line in main.splitlines() if line.startswith(f"| tf_efficientnet_lite0 | {setting} |")
        )
        assert row.count(" ± ") == 3, row
    assert "fashion_mnist Clean" in main and "over up to 2 seeds" in main
    delay = (out / "delay.md").read_text()
    assert "Task-adaptation start over seeds" in delay and "Paired t-tests" in (out / "ttest.md").read_text()
    for png in ("curves.png", "robustness.png"):
        assert (out / png).stat().st_size > 10_000
    second = make_demo(experiments, out)
    assert second.returncode == 0 and "4 runs (0 new), 4 already completed" in second.stdout
    assert "nothing to run" in second.stdout
    assert [r.attempts for r in Store.open(str(out / "demo.db"), create=False).runs()] == [1, 1, 1, 1]
