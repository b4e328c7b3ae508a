"""Runs the demo grid and prints its effect sizes: fix's clean-accuracy gap to standard fine-tuning, how
much of it sched recovers, E.adv of sched vs fix, and the task-adaptation starts.

    python benchmarks/demo_effect.py                       # the demo grid of experiments.toml, as is
    python benchmarks/demo_effect.py --epochs 6 --train-subset 500 --eps 32/255 --resolution 24
                                                           # a calibration probe: the demo grid, changed

A probe keeps T1/T2 at the demo's fractions of training (25% and 75%). Runs go to a fresh database unless
--db names one (finished runs are reused, like `make demo`).
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

from rftbench.config import RuntimeOptions, eps_text
from rftbench.grids import load_experiments
from rftbench.report import Results
from rftbench.runner import Runner
from rftbench.store import Store

EXPERIMENTS = Path(__file__).resolve().parents[1] / "rftbench" / "experiments.toml"
PROBE = {
    "epochs": int,
    "train_subset": int,
    "resolution": int,
    "train_attack_steps": int,
    "lr": float,
    "batch_size": int,
    "val_subset": int,
    "test_subset": int,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eps", help="ε_g of fix and sched, as k/255")
    parser.add_argument("--backbone")
    for name, kind in PROBE.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind)
    parser.add_argument("--threshold", type=float, help="adaptation threshold [the demo grid's]")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--db", help="a database to reuse [a fresh temporary one]")
    args = parser.parse_args()
    experiments = load_experiments(EXPERIMENTS)
    threshold = args.threshold or experiments.threshold("demo")
    changes = {name: getattr(args, name) for name in PROBE if getattr(args, name) is not None}
    jobs = []
    for job in experiments.jobs("demo"):
        config = job.config
        new = dict(changes)
        if config.t2 is not None:  # keep the hinge at 25% and 75% of training (adaptive scales itself)
            epochs = new.get("epochs", config.epochs)
            new |= {"t1": 0.25 * epochs, "t2": 0.75 * epochs}
        if args.backbone:
            new["backbone"] = args.backbone
        if args.eps:
            budget = eps_text(args.eps)
            new |= (
                {"eval_budgets": (budget,)}
                if config.setting == "standard"
                else {"eps": budget, "eval_budgets": ()}
            )
        jobs.append(dataclasses.replace(job, config=dataclasses.replace(config, **new)))
    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(args.db or str(Path(tmp) / "demo.db"))
        store.record_grid("demo", jobs, adaptation_threshold=threshold)
        runner = Runner(store, RuntimeOptions(device=args.device), runs_dir=Path(tmp) / "runs")
        start = time.perf_counter()
        runner.run([j.run_id for j in jobs])
        wall = time.perf_counter() - start
        results = Results.from_store(store, grid="demo", threshold=threshold)
    print_effect(jobs, results, wall, threshold)


def print_effect(jobs, results: Results, wall: float, threshold: float) -> None:
    """Per setting, means over the grid's seeds (± sd where there are several), then the effect sizes."""
    c = jobs[0].config
    seeds = sorted({j.config.seed for j in jobs})
    print(
        f"demo: {c.backbone} on {c.dataset}, {c.train_subset or 'all'} training images at {c.resolution} px, "
        f"{c.epochs} epochs, APGD-{c.train_attack_steps} training, threshold {threshold:g}, seeds {seeds}; "
        f"wall {wall:.0f} s"
    )
    values = results.values.groupby(["setting", "metric"]).value
    mean, sd = values.mean(), values.std()
    epochs = results.epochs
    print(
        "| setting | ε_g | clean % | adv % | E.adv % | adaptation starts | val acc, epoch 0 | val acc, last |"
    )
    print("|---|---|---|---|---|---|---|---|")
    budget = next(j.config.eps for j in jobs if j.config.setting != "standard")
    for setting in ("standard", "fix", "sched", "adaptive"):
        runs = results.runs[results.runs.setting == setting].sort_values("seed")
        if runs.empty:
            continue
        curves = [epochs[epochs.run_id == r].sort_values("epoch").val_acc.tolist() for r in runs.run_id]
        starts = [next((i for i, a in enumerate(curve) if a > threshold), len(curve)) for curve in curves]
        cells = [
            f"{mean[(setting, m)]:.2f}" + (f" ± {sd[(setting, m)]:.2f}" if len(seeds) > 1 else "")
            for m in ("clean", "adv", "eadv")
        ]
        first = sum(curve[0] for curve in curves) / len(curves)
        last = sum(curve[-1] for curve in curves) / len(curves)
        print(
            f"| {setting} | {runs.eps.iloc[0] if setting != 'standard' else f'0 (at {budget})'} | "
            f"{' | '.join(cells)} | {', '.join(map(str, starts))} | {100 * first:.1f} | {100 * last:.1f} |"
        )
    if {"standard", "fix", "sched"} <= {s for s, _ in mean.index}:
        gap = mean[("standard", "clean")] - mean[("fix", "clean")]
        recovered = mean[("sched", "clean")] - mean[("fix", "clean")]
        print(
            f"effect (seed means): fix is {gap:.2f} pp below standard in clean accuracy; sched recovers "
            f"{recovered:.2f} pp ({100 * recovered / gap if gap > 0 else float('nan'):.0f}% of the gap); "
            f"sched - fix E.adv {mean[('sched', 'eadv')] - mean[('fix', 'eadv')]:+.2f} pp"
        )


if __name__ == "__main__":
    main()
