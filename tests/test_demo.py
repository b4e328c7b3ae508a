"""`make demo` end to end on a reduced demo grid (100 training images, 2 epochs): the same commands,
offline, real EfficientNet-Lite0 weights and real Fashion-MNIST; a second run reuses every finished run.
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
    reduced = reduced.replace("t1 = 2, t2 = 6", "t1 = 0.5, t2 = 1.5")
    for key, value in (
        ("train_subset", 100),
        ("val_subset", 50),
        ("test_subset", 20),  # the final evaluation attacks each test image at all 24 budgets
        ("val_adv_samples", 20),
        ("eval_attack_steps", 2),
    ):
        reduced = re.sub(rf"\n{key} = \d+", f"\n{key} = {value}", reduced)
    assert reduced.count("= 2\n") >= 1 and "t2 = 1.5" in reduced
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
    assert "grid demo: 3 runs (3 new), 0 already completed" in first.stdout
    assert f"tables in {out}/main.md" in first.stdout
    store = Store.open(str(out / "demo.db"), create=False)
    runs = store.runs(grid="demo")
    assert [(r.setting, r.status, r.attempts) for r in runs] == [
        ("standard", "completed", 1), ("fix", "completed", 1), ("sched", "completed", 1)
    ]  # fmt: skip
    assert all(len(store.epochs(r.id)) == 2 and store.adaptation(r.id) for r in runs)
    main = (out / "main.md").read_text()
    assert "| tf_efficientnet_lite0 | fix |" in main and "fashion_mnist Clean" in main
    assert "Task-adaptation start" in (out / "delay.md").read_text()
    for png in ("curves.png", "robustness.png"):
        assert (out / png).stat().st_size > 10_000
    second = make_demo(experiments, out)
    assert second.returncode == 0 and "3 runs (0 new), 3 already completed" in second.stdout
    assert "nothing to run" in second.stdout
    assert [r.attempts for r in Store.open(str(out / "demo.db"), create=False).runs()] == [1, 1, 1]
