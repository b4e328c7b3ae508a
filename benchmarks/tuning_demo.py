"""The README's tuning studies on the demo task, from their database: what each search did (trials, pruned,
wall time, best values) and the tuned grid's runs beside the same settings untuned, paired by seed.

    rftbench tune --grid demo_tuned --db tune.db --executor local --processes 2      # the search
    rftbench run-grid --grid demo_tuned --db tune.db --executor local --processes 2  # fix, sched tuned
    rftbench run-grid --grid demo --setting fix --setting sched --db tune.db ...     # the same, untuned
    python benchmarks/tuning_demo.py --db tune.db                                    # this table
    # the linear probe and LoRA, one study each, against demo_variants' untuned runs:
    python benchmarks/tuning_demo.py --db modes.db --grid demo_modes_tuned --untuned-db variants.db \
        --untuned-grid demo_variants

Test accuracies under each grid's own protocol (monotone APGD-CE-5, fp32), in percent; tuned − untuned per
seed with its mean, the 95% interval of the mean and scipy's paired t-test (rftbench.reports.stats).
"""

from __future__ import annotations

import argparse

import pandas as pd

from rftbench.core.config import RunConfig
from rftbench.reports.results import Results, Selection
from rftbench.reports.stats import paired
from rftbench.results.store import Store
from rftbench.results.studies import Studies


def search(store: Store) -> None:
    studies = Studies(store)
    for study in studies.all():
        trials = studies.summaries([study.key])[study.key]
        runs = {r.id: r for r in store.runs()}
        started = min(runs[t.run_id].started_at for t in trials if runs[t.run_id].started_at)
        ended = max(runs[t.run_id].finished_at for t in trials if runs[t.run_id].finished_at)
        states = pd.Series([t.state for t in trials]).value_counts().to_dict()
        epochs, full = sum(t.epochs_done for t in trials), RunConfig.from_json(study.template).epochs
        best = studies.best([study.key])[study.key]
        trains = RunConfig.from_json(study.template).label
        print(f"study {study.key} ({study.backbone}/{study.dataset} {study.eps} {trains}):")
        print(f"  {len(trials)} trials {states}, {epochs} epochs trained of {len(trials) * full} unpruned")
        print(f"  wall time {(ended - started).total_seconds() / 60:.1f} min (first start to last end)")
        print(
            f"  best: trial {best[0]}, val {100 * best[1]:.2f}%, "
            + ", ".join(f"{k} {v:.3g}" for k, v in best[2].items())
        )
        for t in trials:
            shown = ", ".join(f"{k} {v:.2e}" for k, v in t.params.items())
            value = 100 * (t.value or 0)
            print(f"    trial {t.number:2d} {t.state:9s} {t.epochs_done} epochs, val {value:5.2f}%  {shown}")


def comparison(store: Store, untuned: Store, grid: str, untuned_grid: str) -> None:
    selection = Selection("monotone")
    frames = {
        name: Results.from_store(db, grid=g, selection=selection).values.assign(lr=name)
        for name, g, db in (("tuned", grid, store), ("untuned", untuned_grid, untuned))
    }
    values = pd.concat(frames.values())
    values["setting"] = values.setting.str.cat(values.variant, sep="+").str.rstrip("+")  # fix, fix+linear
    values = values[values.setting.isin(set(values[values.lr == "tuned"].setting))]  # what the tuned grid ran
    table = values.pivot_table(index=["setting", "metric", "seed"], columns="lr", values="value")
    header = "untuned (mean ± sd)   tuned (mean ± sd)   tuned − untuned (mean [95% CI], t, p)"
    print(f"\n{'setting':12s} metric  {header}")
    for (setting, metric), rows in table.groupby(level=["setting", "metric"]):
        d = paired(rows["tuned"], rows["untuned"])
        print(
            f"{setting:12s} {metric:6s}  {rows['untuned'].mean():6.2f} ± {rows['untuned'].std():5.2f}"
            f"       {rows['tuned'].mean():6.2f} ± {rows['tuned'].std():5.2f}"
            f"      {d['mean']:+6.2f} [{d['ci_low']:+.2f}, {d['ci_high']:+.2f}], "
            f"t {d['t']:.2f}, p {d['p']:.3f}"
            f"  (per seed: {', '.join(f'{x:+.1f}' for x in rows['tuned'] - rows['untuned'])})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default="tune.db")
    parser.add_argument("--grid", default="demo_tuned", help="the grid that took the tuned values")
    parser.add_argument("--untuned-db", help="where the untuned runs are [default: --db]")
    parser.add_argument("--untuned-grid", default="demo", help="the grid of the same settings untuned")
    args = parser.parse_args()
    store = Store.open(args.db, create=False, write=False)
    search(store)
    untuned = Store.open(args.untuned_db, create=False, write=False) if args.untuned_db else store
    comparison(store, untuned, args.grid, args.untuned_grid)


if __name__ == "__main__":
    main()
