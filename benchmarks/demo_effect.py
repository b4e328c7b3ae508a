"""Runs the demo grid (or a probe: the demo grid with some keys changed) exactly as `make demo` does, and
prints its effect sizes against the demo's four criteria, paired over seeds.

    python benchmarks/demo_effect.py                                  # the demo grid of experiments.toml
    python benchmarks/demo_effect.py --seeds 3,4,5                    # the same grid on fresh seeds
    python benchmarks/demo_effect.py --set resolution=24 --set 'eps=["12/255"]' --set epochs=8 \\
        --set 'settings=[{setting="standard"},{setting="fix"},{setting="sched",t1=2,t2=6}]' \\
        --log benchmarks/demo_probes.jsonl                            # a calibration probe, logged

Each --set is `key=TOML value` for the grid's table (any grid key: settings, eps, seeds, run-config
fields, adaptation_threshold, eval_protocol). The probe is `rftbench run-grid --executor local --processes
2` on a fresh database (--db names one to reuse finished runs), then the demo's report selection: the
grid's evaluation protocol, fp32. The criteria (issue 25): standard - fix clean >= 10 pp; sched - fix
clean >= 5 pp with its paired 95% CI above 0; sched - fix E.adv > 0 (CI reported); fix's task-adaptation
start later than sched's in every seed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import pandas as pd
from scipy import stats

from rftbench.core.metrics import adaptation_start_epoch
from rftbench.reports.results import Results, Selection
from rftbench.reports.stats import paired
from rftbench.results.store import Store

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "rftbench" / "experiments.toml"
SETTINGS = ("standard", "fix", "sched", "adaptive")
PAIRS = (("standard", "fix"), ("sched", "fix"), ("adaptive", "fix"), ("adaptive", "sched"))


def toml_value(value) -> str:
    """A TOML literal of a value read by tomllib (strings, numbers, booleans, arrays, inline tables)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {value!r} as TOML")


def probe_grid(changes: dict, base: str = "demo") -> tuple[str, dict]:
    """The experiments file of a probe: `base`'s grid with `changes`, named `probe`; and that grid."""
    data = tomllib.loads(EXPERIMENTS.read_text())
    grid = {k: v for k, v in data["grids"][base].items() if k != "description"} | changes
    lines = ["[defaults]", *(f"{k} = {toml_value(v)}" for k, v in data.get("defaults", {}).items())]
    for table in ("datasets", "backbones"):
        for name, keys in data.get(table, {}).items():
            lines += [f"[{table}.{json.dumps(name)}]", *(f"{k} = {toml_value(v)}" for k, v in keys.items())]
    lines += ["[grids.probe]", *(f"{k} = {toml_value(v)}" for k, v in grid.items())]
    return "\n".join(lines) + "\n", grid


def seed_pairs(a: dict, b: dict) -> dict | None:
    """a - b over the seeds both have (`reports.stats.paired`): mean, 95% CI of the mean, wins, p."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    stat = paired(pd.Series([a[s] for s in seeds]), pd.Series([b[s] for s in seeds]))
    out = {"n": stat["n"], "mean": stat["mean"], "wins": stat["wins"], "diffs": [a[s] - b[s] for s in seeds]}
    if stat["n"] > 1:
        out |= {"ci": [stat["ci_low"], stat["ci_high"]], "p": float(stat["p"])}
    return out


def measure(db: str, grid: dict) -> dict:
    """Per setting and seed: clean / adv / E.adv (%), the validation curve and its adaptation start."""
    store = Store.open(db, create=False)
    protocol = grid.get("eval_protocol", "paper")
    results = Results.from_store(store, grid="probe", selection=Selection(protocol))
    threshold = grid.get("adaptation_threshold", 0.05)
    per = {}
    for run in results.runs.itertuples():
        setting = run.setting.split()[0]
        curve = results.epochs[results.epochs.run_id == run.run_id].sort_values("epoch")
        values = results.values[results.values.run_id == run.run_id].set_index("metric").value
        per.setdefault(setting, {})[int(run.seed)] = {
            **{m: float(values.get(m, float("nan"))) for m in ("clean", "adv", "eadv")},
            "val": [round(100 * v, 2) for v in curve.val_acc],
            "eps": list(curve.eps),
            "start": adaptation_start_epoch(list(curve.val_acc), threshold, run.epochs),
            "start_5pct": adaptation_start_epoch(list(curve.val_acc), 0.05, run.epochs),
        }
    return per


def effects(per: dict) -> dict:
    out = {}
    for a, b in PAIRS:
        if a in per and b in per:
            for metric in ("clean", "eadv"):
                out[f"{a}-{b} {metric}"] = seed_pairs(
                    {s: r[metric] for s, r in per[a].items()}, {s: r[metric] for s, r in per[b].items()}
                )
    return out


def criteria(per: dict, eff: dict) -> dict:
    """The issue's four criteria, each True / False (none where the grid lacks a setting)."""
    if not {"standard", "fix", "sched"} <= set(per):
        return {}
    gap, rec, eadv = eff["standard-fix clean"], eff["sched-fix clean"], eff["sched-fix eadv"]
    seeds = sorted(set(per["fix"]) & set(per["sched"]))
    met = {
        "1 standard-fix clean >= 10": gap["mean"] >= 10,
        "2 sched-fix clean >= 5, CI > 0": rec["mean"] >= 5 and rec.get("ci", [0])[0] > 0,
        "3 sched-fix E.adv > 0": eadv["mean"] > 0,
        "3' sched-fix E.adv CI > 0": eadv.get("ci", [0])[0] > 0,
        "4 fix starts later, every seed": all(
            per["fix"][s]["start"] > per["sched"][s]["start"] for s in seeds
        ),
    }
    return {name: bool(ok) for name, ok in met.items()}


def show(record: dict) -> None:
    per, eff = record["runs"], record["effects"]
    print(f"probe {json.dumps(record['changes'])}: wall {record['wall_s']:.0f} s")
    print("| setting | clean % | adv % | E.adv % | starts | val % by epoch (seed 0 or first) |")
    print("|---|---|---|---|---|---|")
    for setting in SETTINGS:
        if setting not in per:
            continue
        runs = [per[setting][s] for s in sorted(per[setting])]
        cells = []
        for m in ("clean", "adv", "eadv"):
            v = [r[m] for r in runs]
            mean = sum(v) / len(v)
            cells.append(f"{mean:.2f}" + (f" ± {stats.tstd(v):.2f}" if len(v) > 1 else ""))
        starts = ", ".join(str(r["start"]) for r in runs)
        print(
            f"| {setting} | {' | '.join(cells)} | {starts} | {' '.join(f'{v:.0f}' for v in runs[0]['val'])} |"
        )
    for name, e in eff.items():
        if e is None:
            continue
        ci = f" [{e['ci'][0]:+.2f}, {e['ci'][1]:+.2f}], p = {e['p']:.3f}" if "ci" in e else ""
        print(f"  {name}: {e['mean']:+.2f} pp{ci}, {e['wins']}/{e['n']} seeds")
    for name, ok in record["criteria"].items():
        print(f"  criterion {name}: {'met' if ok else 'MISSED'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=TOML", help="change a grid key")
    parser.add_argument("--seeds", help="comma-separated seeds [the grid's]")
    parser.add_argument("--base", default="demo", help="the grid of experiments.toml to start from")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--db", help="a database to reuse [a fresh temporary one]")
    parser.add_argument("--log", type=Path, help="append the probe's numbers to this JSON-lines file")
    parser.add_argument("--label", default="", help="a name for the probe in the log")
    parser.add_argument("--no-run", action="store_true", help="only measure the runs --db holds")
    args = parser.parse_args()
    changes = {}
    for item in args.set:
        key, _, value = item.partition("=")
        changes[key.strip()] = tomllib.loads(f"v = {value}")["v"]
    if args.seeds:
        changes["seeds"] = [int(s) for s in args.seeds.split(",")]
    if "eps" in changes and "standard_eval_budgets" not in changes:  # standard is scored at the new ε_g
        changes["standard_eval_budgets"] = changes["eps"]
    text, grid = probe_grid(changes, args.base)
    with tempfile.TemporaryDirectory() as tmp:
        experiments = Path(tmp) / "experiments.toml"
        experiments.write_text(text)
        db = args.db or str(Path(tmp) / "probe.db")
        command = [str(Path(sys.executable).parent / "rftbench"), "run-grid", "--grid", "probe",
                   "--experiments", str(experiments), "--db", db, "--runs-dir", str(Path(tmp) / "runs"),
                   "--prune-checkpoints", "--executor", "local",
                   "--processes", str(args.processes)]  # fmt: skip
        start = time.perf_counter()
        if args.no_run:
            done = subprocess.CompletedProcess(command, 0)
        else:
            done = subprocess.run(
                command, capture_output=True, text=True, env=os.environ | {"COLUMNS": "200"}
            )
        wall = time.perf_counter() - start if not args.no_run else float("nan")
        if done.returncode:
            sys.exit(f"run-grid failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        per = measure(db, grid)
    eff = effects(per)
    record = {
        "label": args.label,
        "changes": changes,
        "grid": grid,
        "wall_s": round(wall, 1),
        "runs": per,
        "effects": eff,
        "criteria": criteria(per, eff),
        "when": time.strftime("%Y-%m-%d %H:%M"),
    }
    show(record)
    if args.log:
        with args.log.open("a") as f:
            f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
