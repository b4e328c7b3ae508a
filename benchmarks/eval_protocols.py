"""Cost of the two per-ε evaluation protocols on the final weights of a grid's completed runs, side by side.

    python benchmarks/eval_protocols.py --db demo/demo.db --runs-dir demo/runs --grid demo [--device cuda]

For each run, `paper` (one independent APGD per ε of the E.adv grid) and `monotone` (early exit: each ε
attacks only what survived every smaller one) evaluate the same weights on the same test images, in
alternating order, `--repeat` times; nothing is stored. Prints per run and in total: seconds (median),
attacks run (per-sample APGD calls), the paper / monotone ratios, and both protocols' clean / adv / E.adv.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from rftbench.core.config import RunConfig, RuntimeOptions
from rftbench.core.metrics import EvalProtocol
from rftbench.engine.evaluation import evaluate_budgets
from rftbench.execution.evaluate import final_model
from rftbench.execution.runner import Runner
from rftbench.results.store import Store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True)
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"))
    parser.add_argument("--grid", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    store = Store.open(args.db, create=False, write=False)  # measures only: nothing is stored
    runner = Runner(store, RuntimeOptions(device=args.device), runs_dir=args.runs_dir)
    totals = {"paper": [0.0, 0], "monotone": [0.0, 0]}
    print(f"{'run':<17} {'setting':<9} {'budget':<7} {'protocol':<9} {'s (median)':>10} {'attacks':>8} "
          f"{'clean':>6} {'adv':>6} {'E.adv':>6}")  # fmt: skip
    for run in runner.store.runs(grid=args.grid, states=("completed",)):
        config = RunConfig.from_json(run.config)
        model, loader = final_model(runner, run)
        budgets = list(config.scored_budgets)
        seconds: dict[str, list[float]] = {"paper": [], "monotone": []}
        results = {}
        for i in range(args.repeat):
            for name in ("paper", "monotone") if i % 2 == 0 else ("monotone", "paper"):
                protocol = EvalProtocol(name, steps=config.eval_attack_steps, precision=args.precision)
                results[name] = evaluate_budgets(model, loader, budgets, protocol, device=args.device)
                seconds[name].append(results[name]["seconds"])
        for name, result in results.items():
            median = statistics.median(seconds[name])
            totals[name][0] += median
            totals[name][1] += result["attacks_run"]
            for row in result["budgets"]:
                print(f"{run.id:<17} {run.setting:<9} {row['budget']:<7} {name:<9} {median:>10.2f} "
                      f"{result['attacks_run']:>8} {100 * row['clean']:>6.2f} {100 * row['adv']:>6.2f} "
                      f"{100 * row['eadv']:>6.2f}")  # fmt: skip
        time_ratio = statistics.median(seconds["paper"]) / statistics.median(seconds["monotone"])
        attack_ratio = results["paper"]["attacks_run"] / max(results["monotone"]["attacks_run"], 1)
        print(f"{'':<17} paper / monotone: {time_ratio:.2f}× time, {attack_ratio:.2f}× attacks")
    (ps, pa), (ms, ma) = totals["paper"], totals["monotone"]
    if not ms:
        raise SystemExit(f"no completed run{f' in grid {args.grid}' if args.grid else ''} to evaluate")
    print(
        f"total: paper {ps:.2f} s, {pa} attacks; monotone {ms:.2f} s, {ma} attacks; "
        f"paper / monotone {ps / ms:.2f}× time, {pa / max(ma, 1):.2f}× attacks"
    )


if __name__ == "__main__":
    main()
