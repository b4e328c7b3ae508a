"""`rftbench bench` and `benchmarks/gpu_matrix.py` on tiny models on CPU (a benchmark is not a test: only
their contracts are checked here), FLOP counts and device peaks, and the grid projection against a hand
computation."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from rftbench.cli import app
from rftbench.core.config import RunConfig
from rftbench.engine.bench import grid_hours, run_hours
from rftbench.engine.flops import flops_of, peak_tflops, step_flops
from rftbench.models.build import build_backbone

ROOT = Path(__file__).resolve().parent.parent


def test_bench_measures_a_tiny_model_on_cpu_and_projects_a_grid():
    args = ["bench", "--backbone", "cifar_resnet20", "--resolution", "16", "--batch-size", "8",
            "--batches", "2", "--attack-steps", "2", "--eval-steps", "3", "--eps", "8/255", "--grid", "smoke",
            "--device", "cpu", "--json"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    row, total = map(json.loads, result.output.splitlines())  # one JSON line per row
    assert (row["backbone"], row["precision"], row["compile"], row["device"]) == (
        "cifar_resnet20",
        "fp32",
        "off",
        "cpu",
    )
    speeds = ("clean_img_s", "apgd_img_s", "tflops", "eval_clean_img_s", "eval_attack_img_s")
    for key in speeds + ("eval_paper_img_s", "eval_monotone_img_s", "torchattacks_img_s", "frozen_speedup"):
        assert row[key] > 0, key
    assert row["flops_uncounted"] == [] and row["graphs"] is None and row["compile_seconds"] is None
    # APGD-2 costs 2 forward + input-gradient passes and a forward on top of the training step
    assert 1.5 < row["gradient_limit"] < 4 and row["ratio"] == pytest.approx(
        row["clean_img_s"] / row["apgd_img_s"]
    )
    assert row["mfu"] is None and row["peak_tflops"] is None  # no known peak on a CPU
    assert row["peak_memory_gib"] is None  # no CUDA memory
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


def test_bench_prints_each_row_as_soon_as_it_is_measured(monkeypatch):
    """A run cut short (a time-out, here the second case failing) keeps the rows measured before."""
    import rftbench.engine.bench as engine

    def measure(case, device, **options):
        if case.backbone != "cifar_resnet20":
            raise RuntimeError("cut short")
        return {"backbone": case.backbone, "apgd_img_s": 1.0}

    monkeypatch.setattr(engine, "measure", measure)
    args = ["bench", "--backbone", "cifar_resnet20", "--backbone", "R50", "--device", "cpu", "--json"]
    result = CliRunner().invoke(app, args)
    assert isinstance(result.exception, RuntimeError)
    assert [json.loads(line) for line in result.output.splitlines()] == [
        {"backbone": "cifar_resnet20", "apgd_img_s": 1.0}
    ]


def test_an_apgd_step_costs_about_seven_clean_steps_in_flops_for_depthwise_convnets_too():
    """torch counts a grouped convolution's weight gradient as dense (`groups` times too many FLOPs): the
    clean step of MobileNetV2 came out six times too costly, and its APGD-7/clean limit 1.7."""
    limits = {}
    for name, size in (("mobilenetv2_100", 64), ("cifar_resnet20", 32)):
        torch.manual_seed(0)
        model = build_backbone(name, 10, pretrained=False, size=size)
        x, y = torch.rand(2, 3, size, size), torch.tensor([0, 1])
        clean, adversarial, uncounted = step_flops(model, x, y, attack_steps=7)
        limits[name] = adversarial / clean
        assert uncounted == []
    assert limits["mobilenetv2_100"] >= 5
    assert limits["cifar_resnet20"] == pytest.approx(6.02, abs=0.05)
    depthwise = torch.nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False)
    x = torch.rand(2, 16, 8, 8)
    forward, _ = flops_of(lambda: depthwise(x))
    both = x.clone().requires_grad_()  # forward, then the input and weight gradients: each as costly
    assert flops_of(lambda: depthwise(both).sum().backward())[0] == 3 * forward == 3 * 2 * 2 * 16 * 64 * 9


def test_the_peak_comes_from_the_exact_device_name_or_not_at_all(monkeypatch):
    cuda = torch.device("cuda")
    parts = [("NVIDIA H100 80GB HBM3", 989, 67), ("NVIDIA H100 PCIe", 756, 51), ("NVIDIA H100 NVL", 835, 60),
             ("NVIDIA H200", 989, 67), ("NVIDIA H200 NVL", 835, 60), ("NVIDIA A100-SXM4-80GB", 312, 19.5),
             ("NVIDIA A100-PCIE-40GB", 312, 19.5), ("NVIDIA A100 80GB PCIe", 312, 19.5)]  # fmt: skip
    for name, bf16, fp32 in parts:
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None, name=name: name)
        assert peak_tflops(cuda, "bf16", tf32=True) == peak_tflops(cuda, "fp16", tf32=True) == bf16, name
        assert peak_tflops(cuda, "fp32", tf32=False) == fp32
        assert peak_tflops(cuda, "fp32", tf32=True) == bf16 / 2  # TF32: half the bf16 dense peak
    for name in ("NVIDIA H100 SXM5 64GB", "NVIDIA GeForce RTX 4090", "H100"):  # no guessed peaks
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None, name=name: name)
        assert peak_tflops(cuda, "bf16", tf32=True) is None
    assert peak_tflops(torch.device("cpu"), "fp32", tf32=True) is None


def gpu_matrix():
    spec = importlib.util.spec_from_file_location("gpu_matrix", ROOT / "benchmarks" / "gpu_matrix.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_matrix(tmp_path, capsys, *args: str) -> list[dict]:
    out = tmp_path / "matrix.jsonl"
    assert gpu_matrix().main(["--device", "cpu", "--tiny", "--out", str(out), *args]) == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == lines  # stdout = file
    return lines


def test_gpu_matrix_skips_the_cases_a_budget_cannot_hold_and_still_projects(tmp_path, capsys, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "open_clip" else find_spec(name, *a)
    )
    args = [
        "--budget-s",
        "4",
        "--backbone",
        "ClipCNX",
        "--backbone",
        "cifar_resnet20",
        "--backbone",
        "test_vit",
    ]
    start, missing, *skipped, grid = run_matrix(tmp_path, capsys, *args)
    assert start["start"]["device"] == "cpu" and start["start"]["budget_s"] == 4
    assert missing["missing"] == "open_clip" and missing["backbone"] == "ClipCNX"  # and the others go on
    assert [(s["skipped"]["kind"], s["skipped"]["backbone"]) for s in skipped] == [
        (kind, backbone)
        for kind in ("train", "eval", "checkpoint", "compiled")
        for backbone in ("cifar_resnet20", "test_vit")
    ]
    assert all(s["reason"] == "time" and s["estimate_s"] > s["left_s"] - 5 for s in skipped)
    assert grid["grid"] == "smoke" and grid["runs"] == 3 and grid["elapsed_s"] < 4
    assert grid["train"] == {"hours": {}, "total": 0, "projected_runs": 0, "unprojected": 3}


def test_gpu_matrix_estimates_from_a_finished_case_scaled_by_size():
    matrix = gpu_matrix().Matrix.__new__(gpu_matrix().Matrix)
    matrix.args = gpu_matrix().parse(["--out", "unused.jsonl"])
    matrix.done = {"train": [("R50", 10.0)]}
    assert matrix.estimate("train", "ViT") == pytest.approx(1.25 * 10 * 17.6 / 4.1)
    assert matrix.estimate("train", "R50") == pytest.approx(12.5)
    matrix.done = {"train": [("ViT", 20.0)]}
    assert matrix.estimate("train", "R50") == pytest.approx(1.25 * 20 * 0.5)  # never below half
    assert matrix.estimate("compiled", "SWIN") == 180  # nothing compiled yet: a cold compile's default


def test_gpu_matrix_stops_a_case_that_overruns_its_estimate_at_the_budgets_end(tmp_path, capsys):
    module = gpu_matrix()
    matrix = module.Matrix(module.parse(["--tiny", "--budget-s", "7", "--out", str(tmp_path / "m.jsonl")]))
    matrix.args.defaults = {"train": 0.01, "eval": 100.0}
    matrix.run("train", "failing", lambda: 1 / 0)
    matrix.run("train", "slow", lambda: time.sleep(30))  # started (estimated 0.01 s), stopped near 7 s
    matrix.run("eval", "slow", lambda: {})  # no time left: not started
    failed, aborted, skipped = map(json.loads, capsys.readouterr().out.splitlines())
    assert (
        failed == failed | {"kind": "train", "backbone": "failing"} and "ZeroDivisionError" in failed["error"]
    )
    assert aborted["aborted"] == {"kind": "train", "backbone": "slow"} and aborted["reason"] == "time"
    assert 5.5 <= aborted["elapsed_s"] < 9 and skipped["skipped"]["kind"] == "eval"


def test_gpu_matrix_measures_tiny_models_on_cpu_within_its_budget(tmp_path, capsys):
    start, *lines, grid = run_matrix(tmp_path, capsys, "--budget-s", "60")
    measured = {(line["kind"], line["backbone"]): line for line in lines if "kind" in line}
    train = measured[("train", "cifar_resnet20")]
    for key in ("clean_img_s", "apgd_img_s", "ratio", "gradient_limit", "tflops", "seconds", "estimate_s"):
        assert train[key] > 0, key
    assert train["mfu"] is None and train["peak_memory_gib"] is None and train["graphs"] is None
    assert train["flops_uncounted"] == [] and train["precision"] == "fp32" and train["resolution"] == 16
    for (kind, _), line in measured.items():
        keys = {"train": "apgd_img_s", "eval": "eval_attack_img_s", "checkpoint": "save_s"}[kind]
        assert line[keys] > 0 and "error" not in line
    if ("checkpoint", "test_vit") in measured:
        assert measured[("checkpoint", "test_vit")]["host_snapshot_s"] > 0
    # a CPU compile takes minutes: never started in this budget
    assert [s["skipped"]["backbone"] for s in lines if s.get("skipped", {}).get("kind") == "compiled"] == [
        "cifar_resnet20",
        "test_vit",
    ]
    assert all(line.get("reason", "time") == "time" for line in lines)
    assert grid["elapsed_s"] <= 60 + 1  # the budget held (a case overrunning its estimate is stopped)
    if ("eval", "cifar_resnet20") in measured:
        assert grid["train"]["projected_runs"] == 3 and grid["train"]["total"] > 0
