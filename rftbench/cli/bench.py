"""`rftbench bench`: training and evaluation throughput on this device (rftbench.execution.bench
measures; this parses and prints).

    rftbench bench --backbone ViT --precision bf16 --compile off --compile default
"""

from __future__ import annotations

import enum
import json
from pathlib import Path

import typer
from rich.table import Table

from rftbench.cli.app import app, console, say
from rftbench.cli.options import (
    DEVICE,
    EXPERIMENTS,
    TF32,
    WORKERS,
    complete_backbone,
    complete_grid,
    with_options,
)
from rftbench.core.config import PRECISIONS
from rftbench.execution.options import BenchRequest, RunnerOptions

# a repeatable choice: Typer takes a list of an Enum, not of a Literal
PrecisionChoice = enum.Enum("PrecisionChoice", {p: p for p in PRECISIONS}, type=str)

BENCH_ROWS = [  # (label, row key, format, scale, suffix): one table row per measurement
    ("clean training img/s", "clean_img_s", ".1f", 1, ""),
    ("APGD training img/s", "apgd_img_s", ".1f", 1, ""),
    ("APGD/clean time", "ratio", ".2f", 1, "×"),
    ("APGD/clean FLOPs (limit)", "gradient_limit", ".2f", 1, "×"),
    ("time over limit", "overhead", ".2f", 1, "×"),
    ("TFLOP/s (APGD training)", "tflops", ".2f", 1, ""),
    ("MFU (of the dense peak)", "mfu", ".1f", 100, "%"),
    ("dense peak TFLOP/s", "peak_tflops", ".1f", 1, ""),
    ("FLOPs not counted (matrix ops)", "flops_uncounted", "", 1, ""),
    ("peak memory GiB", "peak_memory_gib", ".1f", 1, ""),
    ("data stall (clean epoch)", "data_stall", ".1f", 100, "%"),
    ("eval clean img/s", "eval_clean_img_s", ".1f", 1, ""),
    ("eval APGD img/s (one ε)", "eval_attack_img_s", ".1f", 1, ""),
    ("eval img/s, paper protocol", "eval_paper_img_s", ".1f", 1, ""),
    ("eval img/s, monotone protocol", "eval_monotone_img_s", ".1f", 1, ""),
    ("eval APGD, parameters frozen / not", "frozen_speedup", ".2f", 1, "×"),
    ("our APGD over torchattacks'", "speedup_vs_torchattacks", ".2f", 1, "×"),
    ("robust acc. ours / torchattacks", None, "", 1, ""),
    ("compile seconds", "compile_seconds", ".1f", 1, " s"),
    ("compiled graphs", "graphs", "d", 1, ""),
]


def bench_request(
    backbones: list[str] = typer.Option(
        ..., "--backbone", help="a registry backbone (repeatable)", autocompletion=complete_backbone
    ),
    resolution: int = typer.Option(224, "--resolution", min=8),
    batch_size: int = typer.Option(64, "--batch-size", min=1),
    precisions: list[PrecisionChoice] = typer.Option(
        [], "--precision", help="fp32, bf16, fp16 (repeatable) [default: bf16 on CUDA, fp32 elsewhere]"
    ),
    compile_modes: list[str] = typer.Option(
        ["off"], "--compile", help="off, default, reduce-overhead (CUDA graphs), max-autotune (repeatable)"
    ),
    attack_steps: int = typer.Option(7, "--attack-steps", min=1, help="APGD steps of the training attack"),
    eval_steps: int = typer.Option(10, "--eval-steps", min=1, help="APGD steps of the evaluation"),
    eps: str = typer.Option("4/255", "--eps", help="the attack's ε, as k/255"),
    batches: int = typer.Option(8, "--batches", min=1, help="timed batches per measurement"),
    grid: str | None = typer.Option(
        None, "--grid", help="project this grid's hours from the measurements", autocompletion=complete_grid
    ),
    experiments: Path | None = EXPERIMENTS,
    torchattacks: bool = typer.Option(
        True, "--torchattacks/--no-torchattacks", help="time torchattacks' APGD beside ours"
    ),
) -> BenchRequest:
    """The cases to measure (one option group)."""
    return BenchRequest(**(locals() | {"precisions": [p.value for p in precisions]}))


def bench_runtime(
    device: str | None = DEVICE, workers: int | None = WORKERS, tf32: bool = TF32
) -> RunnerOptions:
    return RunnerOptions(device=device, workers=workers, tf32=tf32)


@app.command()
@with_options(request=bench_request, options=bench_runtime)
def bench(
    request: BenchRequest = None,
    options: RunnerOptions = None,
    as_json: bool = typer.Option(False, "--json", help="print one JSON line per row instead of tables"),
) -> None:
    """Training and evaluation throughput of backbones on this device (random init), MFU, and a grid's
    projected hours. Each case is printed as soon as it is measured. A benchmark: run it on the machine
    you will train on."""
    from rftbench.execution.bench import bench_rows

    measured, totals = [], []
    for row in bench_rows(request, options, None if as_json else say):
        if as_json:
            print(json.dumps(row), flush=True)
        elif "grid" in row:
            totals.append(row)  # after every case: printed below the side-by-side table
        else:
            measured.append(row)
            console.print(bench_table(measured[-1:], request.grid))
    if len(measured) > 1:
        console.print(bench_table(measured, request.grid))
    for total in totals:
        print_total(total)


def cell(row: dict, key: str | None, spec: str, scale: float, suffix: str) -> str:
    if key is None:
        ours, theirs = row.get("robust_ours"), row.get("robust_torchattacks")
        return "—" if ours is None else f"{100 * ours:.1f}% / {100 * theirs:.1f}%"
    value = row.get(key)
    if value is None:
        return "—"
    if isinstance(value, list):
        return ", ".join(value) or "none"
    return f"{scale * value:{spec}}{suffix}"


def bench_table(measured: list[dict], grid: str | None) -> Table:
    first = measured[0]
    table = Table(
        title=f"{first['device']}, torch {first['torch']}: {first['resolution']} px, batch "
        f"{first['batch_size']}, APGD-{first['attack_steps']} training, APGD-{first['eval_steps']} "
        f"evaluation at {first['eps']}"
    )
    table.add_column("")
    for r in measured:
        table.add_column(f"{r['backbone']} {r['precision']} compile {r['compile']}", justify="right")
    for label, *how in BENCH_ROWS:
        table.add_row(label, *[cell(r, *how) for r in measured])
    if grid:
        table.add_row(
            f"{grid} grid hours (its runs)",
            *[
                "—" if r[f"{grid}_hours"] is None else f"{r[f'{grid}_hours']:.2f} ({r[f'{grid}_runs']})"
                for r in measured
            ],
        )
    return table


def print_total(total: dict) -> None:
    unprojected = total["unprojected"]
    note = f", {unprojected} runs not projected (backbone not measured)" * bool(unprojected)
    say(
        f"{total['grid']}: {total['hours']:.2f} hours for {total['runs']} runs in {total['precision']}, "
        f"compile {total['compile']}{note}"
    )
