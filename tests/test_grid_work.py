"""`benchmarks/grid_work.py --quick` on this tree: it imports rftbench from the tree it is given, counts the
units the benchmark's docstring defines, and prints the side-by-side table (a benchmark is not a test: only
its contract is checked here)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "grid_work.py"


def test_grid_work_counts_this_tree_and_prints_it_side_by_side(capsys):
    command = [sys.executable, str(SCRIPT), "--root", str(ROOT), "--quick"]
    out = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True, cwd=ROOT, timeout=300)
    tree = json.loads(out.stdout.splitlines()[-1])
    assert Path(tree["file"]).resolve() == ROOT / "rftbench" / "__init__.py"
    f = tree["per_image"]
    assert tree["runs"] == 120 and tree["other"] == 0
    assert f["train_clean"] == 3.0  # forward + input-gradient backward + weight-gradient backward
    assert f["train_adv"] > f["train_clean"]
    for budget in ("4/255", "8/255"):
        assert 0 < f["eval"][budget] <= f["worst"][budget]
    assert f["worst"]["8/255"] > f["worst"]["4/255"]  # twice the ε grid
    assert f["last.pt"]["writes"] == 1.0 and f["last.pt"]["bytes_per_param"] > 12  # model + AdamW state
    assert all(phase[1] > 0 for rows in tree["rows"].values() for phase in rows.values())

    spec = importlib.util.spec_from_file_location("grid_work", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.show(tree, tree)
    lines = capsys.readouterr().out.splitlines()
    total = next(line for line in lines if line.startswith("total") and " all " in line)
    assert total.split()[-1] == "+0.0%" and total.split()[4] == "+0.0%"
