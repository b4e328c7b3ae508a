"""`rftbench bench` once on a tiny model on CPU (a benchmark is not a test: only its contract is checked
here), and the grid projection against a hand computation."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from rftbench.cli import app
from rftbench.core.config import RunConfig
from rftbench.engine.bench import grid_hours, run_hours


def test_bench_measures_a_tiny_model_on_cpu_and_projects_a_grid():
    args = ["bench", "--backbone", "cifar_resnet20", "--resolution", "16", "--batch-size", "8",
            "--batches", "2", "--attack-steps", "2", "--eval-steps", "3", "--eps", "8/255", "--grid", "smoke",
            "--device", "cpu", "--json"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    row, total = json.loads(result.output)
    assert (row["backbone"], row["precision"], row["compile"], row["device"]) == (
        "cifar_resnet20",
        "fp32",
        "off",
        "cpu",
    )
    speeds = ("clean_img_s", "apgd_img_s", "tflops", "eval_clean_img_s", "eval_attack_img_s")
    for key in speeds + ("eval_paper_img_s", "eval_monotone_img_s", "torchattacks_img_s", "frozen_speedup"):
        assert row[key] > 0, key
    # APGD-2 costs 2 forward + input-gradient passes and a forward on top of the training step
    assert 1.5 < row["gradient_limit"] < 4 and row["ratio"] == pytest.approx(
        row["clean_img_s"] / row["apgd_img_s"]
    )
    assert row["mfu"] is None and row["peak_memory_gib"] is None  # no known peak, no CUDA memory on a CPU
    assert (
        0 <= row["robust_ours"] <= 1 and 0 <= row["robust_torchattacks"] <= 1 and 0 <= row["data_stall"] < 1
    )
    assert row["smoke_runs"] == 3 and row["smoke_hours"] > 0
    assert total == {"grid": "smoke", "precision": "fp32", "compile": "off", "hours": row["smoke_hours"],
                     "runs": 3, "unprojected": 0}  # fmt: skip
    table = CliRunner().invoke(app, args[:-1])
    assert table.exit_code == 0 and "our APGD over torchattacks'" in table.output
    assert "smoke: " in table.output and "hours for 3 runs in fp32" in table.output
    bad = CliRunner().invoke(app, ["bench", "--backbone", "Swin"])
    assert bad.exit_code == 2 and "--backbone Swin: unknown; valid ones are ViT" in bad.output


def test_a_runs_projected_hours_follow_its_schedule_and_evaluation():
    """sched 1/2 over 3 epochs: clean epochs 0 and 1, APGD in epoch 2; clean + APGD validation every epoch;
    the final paper evaluation attacks every test image at 1/255 … 4/255."""
    row = {"clean_img_s": 100.0, "apgd_img_s": 10.0, "eval_clean_img_s": 1000.0, "eval_attack_img_s": 50.0,
           "eval_steps": 10}  # fmt: skip
    config = RunConfig(backbone="ViT", dataset="Cars", setting="sched", eps="4/255", t1=1, t2=2, epochs=3)
    train = 6922 / 100 * 2 + 6922 / 10
    validation = 3 * (1222 / 1000 + 500 / 50)
    final = 1000 * (1 / 1000 + 4 / 50)
    assert run_hours(config, row) == pytest.approx((train + validation + final) / 3600)
    other = RunConfig(backbone="SWIN", dataset="Cars", setting="fix", eps="4/255", epochs=3)
    mine = RunConfig(backbone="ViT", dataset="imagefolder", setting="fix", eps="4/255", epochs=3)
    projected = grid_hours([config, config, other, mine], {"ViT": row})
    assert projected["hours"] == {"ViT": pytest.approx(2 * run_hours(config, row))}
    assert projected["runs"] == {"ViT": 2} and projected["unprojected"] == 2  # no SWIN row; no dataset size
