"""experiments.toml parses, and its paper grid multiplies out to the paper's 120 runs with valid configs."""

from __future__ import annotations

import itertools
import tomllib
from pathlib import Path

from rftbench import RunConfig

GRIDS = tomllib.loads((Path(__file__).resolve().parents[1] / "experiments.toml").read_text())


def expand(name: str) -> set[str]:
    grid, defaults = GRIDS["grids"][name], dict(GRIDS["defaults"])
    defaults.pop("adaptation_threshold")  # an analysis setting, not part of a run's identity
    standard_budgets = tuple(defaults.pop("standard_eval_budgets"))
    ids = set()
    for backbone, dataset, setting, eps in itertools.product(
        grid["backbones"], grid["datasets"], grid["settings"], grid["eps"]
    ):
        budgets = standard_budgets if eps.startswith("0/") else ()
        cfg = RunConfig(
            backbone=backbone, dataset=dataset, eps=eps, eval_budgets=budgets, **setting, **defaults
        )
        ids.add(cfg.run_id)
    return ids


def test_paper_grid_is_120_distinct_runs():
    assert len(expand("paper")) == 120


def test_sweep_is_100_runs():
    assert len(expand("sweep")) == 100


def test_sweep_shares_its_20_paper_budget_runs_with_the_paper_grid():
    assert len(expand("paper") & expand("sweep")) == 20
