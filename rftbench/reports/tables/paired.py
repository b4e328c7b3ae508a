"""Paired comparisons over seeds: t-tests of one setting against another (`ttest_table`) and the paper's
story as a database tells it (`effect_table`).

    (section,) = ttest_table(Results.paper("ttest"), ["4/255"])

Both compare within a variant (objective and fine-tuning mode, labelled `fix+trades`): sched+trades against
fix+trades, never against fix, unless a pair names both labels in full.
"""

from __future__ import annotations

import math
from functools import partial

import pandas as pd

from rftbench.core.metrics import adaptation_start_epoch
from rftbench.reports.render import Section, fmt
from rftbench.reports.results import METRICS, ReportError, Results, no_results
from rftbench.reports.stats import base_setting, labelled, paired, setting_labels, setting_order, variant_of


def default_pairs(labels) -> list[tuple[str, str]]:
    """Per variant (the paper's recipe first): the paper's sched vs fix first, then every other setting vs
    fix, then every non-paper schedule vs sched (adaptive vs sched, …): the comparisons a table of these
    settings is read for."""
    labels = setting_order(labels)
    pairs = []
    for variant in sorted({variant_of(label) for label in labels}):
        own = [label for label in labels if variant_of(label) == variant]
        fix = labelled("fix", variant)
        sched = next((label for label in own if base_setting(label) == "sched"), None)
        pairs += [(sched, fix)] if sched and fix in own else []
        pairs += [(label, fix) for label in own if label not in (fix, sched) and fix in own]
        pairs += [
            (label, sched)
            for label in own
            if sched and base_setting(label) not in ("fix", "sched", "standard")
        ]
    return pairs


def named(setting: str, labels) -> str:
    """The shown label a pair's `setting` means: itself, or the one hinge label of its setting and variant
    (`sched` is `sched 12/37` when one T1/T2 pair is shown as such)."""
    plain = setting.partition("+")[0]
    if setting in labels or " " in plain:
        return setting
    alike = (x for x in sorted(labels) if base_setting(x) == plain and variant_of(x) == variant_of(setting))
    return next(alike, setting)


def resolve_pairs(pairs: list[tuple[str, str]] | None, labels) -> list[tuple[str, str]]:
    """The (a, b) labels to compare: `default_pairs`; a pair of plain settings (`sched:fix`) within each
    variant where both are shown (sched vs fix, sched+trades vs fix+trades); a pair naming a variant
    (`sched+trades:sched`) exactly those labels."""
    if not pairs:
        return default_pairs(labels)
    variants = sorted({variant_of(label) for label in labels})
    chosen = []
    for a, b in pairs:
        if "+" in a or "+" in b:
            chosen.append((named(a, labels), named(b, labels)))
            continue
        within = [(named(labelled(a, v), labels), named(labelled(b, v), labels)) for v in variants]
        chosen += [(x, y) for x, y in within if x in labels and y in labels] or [
            (named(a, labels), named(b, labels))
        ]
    return list(dict.fromkeys(chosen))


def ttest_table(
    results: Results, eps: list[str], pairs: list[tuple[str, str]] | None = None
) -> list[Section]:
    """Paired t-tests a vs b over the (backbone, dataset, seed) triples present in both, with the 95%
    confidence interval of the mean difference and each setting's seed-to-seed standard deviation (the
    mean over cells of the sd over seeds), so a difference can be read against the noise. `pairs`: as
    `resolve_pairs` reads them (default: `default_pairs`, within each variant)."""
    frame = results.values.assign(label=setting_labels(results.values))
    pairs = resolve_pairs(pairs, set(frame.label))
    numbers = []
    for a, b in pairs:
        for budget in eps:
            for metric in METRICS:
                sub = frame[(frame.eps == budget) & (frame.metric == metric)]
                pivot = sub.pivot_table(
                    index=["backbone", "dataset", "seed"], columns="label", values="value"
                )
                if a not in pivot or b not in pivot:
                    continue
                both = pivot[[a, b]].dropna()
                diff = paired(both[a], both[b])
                noise = both.groupby(level=["backbone", "dataset"]).std(ddof=1).mean()
                for stat, value in (
                    ("n", len(both)),
                    ("mean_diff", diff["mean"]),
                    ("ci_low", diff["ci_low"]),
                    ("ci_high", diff["ci_high"]),
                    ("seed_sd_a", noise[a]),
                    ("seed_sd_b", noise[b]),
                    ("t", diff["t"]),
                    ("p", diff["p"]),
                    ("wins", diff["wins"]),
                    ("losses", diff["losses"]),
                ):
                    numbers.append({"a": a, "b": b, "eps": budget, "metric": metric, "statistic": stat,
                                    "value": value})  # fmt: skip
    if not numbers:
        wanted = ", ".join(f"{a} and {b}" for a, b in pairs) or "two settings"
        raise ReportError(f"no (backbone, dataset, seed) has both {wanted} results in the {results.source}")
    title = "Paired t-tests over (backbone, dataset, seed) (percentage points)"
    note = "t and p from scipy.stats.ttest_rel; seed sd: standard deviation over seeds, mean over cells"
    return [Section(title, pd.DataFrame(numbers), _show_ttest, note)]


def _show_ttest(frame: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (a, b, budget, metric), group in frame.groupby(["a", "b", "eps", "metric"], sort=False):
        s = dict(zip(group.statistic, group.value))
        rows.append(
            {
                "Comparison": f"{a} vs {b}",
                "ε_g": budget,
                "Metric": METRICS[metric],
                "n pairs": int(s["n"]),
                "mean diff (pp)": fmt(s["mean_diff"]),
                "95% CI (pp)": f"[{s['ci_low']:.2f}, {s['ci_high']:.2f}]" if s["n"] > 1 else "",
                "seed sd a / b (pp)": (
                    f"{s['seed_sd_a']:.2f} / {s['seed_sd_b']:.2f}" if not math.isnan(s["seed_sd_a"]) else ""
                ),
                "t": f"{s['t']:.3f}" if not math.isnan(s["t"]) else "",
                "p": f"{s['p']:.2e}" if not math.isnan(s["p"]) else "",
                "wins": int(s["wins"]),
                "losses": int(s["losses"]),
            }
        )
    return pd.DataFrame(rows)


def adaptation_starts(results: Results, table: str) -> tuple[pd.DataFrame, pd.Series]:
    """The runs with per-epoch metrics, each with its task-adaptation start (at its threshold), final
    validation accuracy (%) and whether its history is complete; and each run's validation curve."""
    if results.source == "paper":
        raise ReportError(f"the paper publishes no per-run delay numbers: `{table}` needs a database")
    if results.runs.empty or results.epochs.empty:
        raise ReportError("no run has per-epoch metrics in this database yet")
    epochs = results.epochs.sort_values(["run_id", "epoch"])
    curves = epochs.groupby("run_id").val_acc.apply(list)
    runs = results.runs[results.runs.run_id.isin(curves.index)].copy()
    runs["start"] = [
        adaptation_start_epoch(curves[r.run_id], r.threshold, r.epochs) for r in runs.itertuples()
    ]
    runs["final_val"] = [100 * curves[r][-1] for r in runs.run_id]
    runs["complete"] = [len(curves[r.run_id]) == r.epochs for r in runs.itertuples()]
    return runs, curves


def effect_table(results: Results, eps: list[str]) -> list[Section]:
    """The paper's story as this database tells it, per (backbone, dataset, ε_g), paired over seeds: what
    fix lost to standard fine-tuning in clean accuracy, what each schedule won back (clean, and E.adv
    against fix), new schedules against sched, and each setting's task-adaptation start per seed. Narrow
    enough to read in a terminal: the cell is named in the title when there is one.

    The story is told per variant (objective, fine-tuning mode): sched+trades against fix+trades, and
    fix+trades against its standard fine-tuning counterpart, `standard` itself (TRADES at ε = 0 is
    cross-entropy; `Results.standard_variant`) or `standard+lora` for LoRA runs."""
    runs, _ = adaptation_starts(results, "effect")
    frame = results.values.assign(label=setting_labels(results.values))
    frame = frame[frame.eps.isin(eps)]
    numbers, starts = [], []
    for (backbone, dataset, budget), sub in frame.groupby(["backbone", "dataset", "eps"], sort=False):
        seeds = sub.pivot_table(index="seed", columns=["label", "metric"], values="value")
        labels = setting_order(sub.label)
        wanted = []
        for variant in sorted({variant_of(label) for label in labels}):
            own = [label for label in labels if variant_of(label) == variant]
            fix, standard = labelled("fix", variant), labelled("standard", results.standard_variant(variant))
            sched = next((label for label in own if base_setting(label) == "sched"), None)
            others = [label for label in own if base_setting(label) not in ("standard", "fix")]
            wanted += [(standard, fix, "clean")] + [(a, fix, m) for a in others for m in ("clean", "eadv")]
            wanted += [(a, sched, m) for a in others if a != sched and sched for m in ("clean", "eadv")]
        for a, b, metric in wanted:
            if (a, metric) not in seeds or (b, metric) not in seeds:
                continue
            both = seeds[[(a, metric), (b, metric)]].dropna()
            stat = paired(both[(a, metric)], both[(b, metric)])
            numbers.append(
                {"backbone": backbone, "dataset": dataset, "eps": budget, "a": a, "b": b, "metric": metric,
                 "n": stat["n"], "mean_diff": stat["mean"], "ci_low": stat["ci_low"],
                 "ci_high": stat["ci_high"], "wins": stat["wins"], "p": stat["p"]}
            )  # fmt: skip
        cell_runs = runs[runs.run_id.isin(set(sub.run_id))].assign(label=setting_labels)
        for label in setting_order(cell_runs.label):
            group = cell_runs[cell_runs.label == label].sort_values("seed")
            starts += [
                {"backbone": backbone, "dataset": dataset, "eps": budget, "setting": label, "seed": r.seed,
                 "threshold": r.threshold, "start": r.start, "epochs": r.epochs}
                for r in group.itertuples()
            ]  # fmt: skip
    if not numbers and not starts:
        raise no_results(eps, results)
    numbers, starts = pd.DataFrame(numbers), pd.DataFrame(starts)
    keys = ["backbone", "dataset", "eps"]
    cells = pd.concat([t[keys] for t in (numbers, starts) if not t.empty]).drop_duplicates()
    named = ""
    if len(cells) == 1:  # one cell: named once in the titles, not on every row
        named = " — {} on {} at ε_g = {}".format(*cells.iloc[0])
    show_starts = partial(_show_starts, named=bool(named))
    return [
        Section(
            f"What ε-scheduling changed{named}: test accuracy, percentage points, paired over seeds",
            numbers,
            partial(_show_effect, named=bool(named)),
            "a − b per seed, then the mean, its 95% CI (Student t) and p (scipy.stats.ttest_rel); a share "
            "won back is of fix's clean loss to standard",
        ),
        Section(
            f"Task-adaptation start{named}: the first 0-based epoch with validation accuracy above the "
            "threshold",
            starts,
            show_starts,
            "never: the run's epoch count, as the paper counts it",
            show_starts,
        ),
    ]


def _where(backbone: str, dataset: str, budget: str, named: bool) -> dict:
    return {} if named else {"Backbone": backbone, "Dataset": dataset, "ε_g": budget}


def _show_effect(frame: pd.DataFrame, named: bool) -> pd.DataFrame:
    rows, loss = [], {}  # (backbone, dataset, ε_g, fix label) -> what it lost to standard in clean accuracy
    for n in frame.to_dict("records"):
        a, b, cell = n["a"], n["b"], (n["backbone"], n["dataset"], n["eps"])
        finding = f"{a} − {b}, {METRICS[n['metric']]}"
        against_fix = base_setting(b) == "fix" and n["metric"] == "clean"
        if against_fix and base_setting(a) == "standard":
            loss[(*cell, b)], finding = n["mean_diff"], f"what {b} lost to {a} (clean, {a} − {b})"
        elif against_fix:
            lost = loss.get((*cell, b))
            share = f": {100 * n['mean_diff'] / lost:.0f}% of it" if lost and lost > 0 else ""
            finding = f"what {a} won back (clean, {a} − {b}){share}"
        rows.append(
            {**_where(*cell, named), "Finding": finding, "pp": f"{n['mean_diff']:+.2f}",
             "95% CI": f"[{n['ci_low']:+.2f}, {n['ci_high']:+.2f}]" if n["n"] > 1 else "",
             "a > b": f"{n['wins']} of {n['n']} seeds",
             "p": f"{n['p']:.3f}" if not math.isnan(n["p"]) else ""}
        )  # fmt: skip
    return pd.DataFrame(rows)


def _show_starts(frame: pd.DataFrame, named: bool) -> pd.DataFrame:
    rows = []
    if frame.empty:
        return pd.DataFrame()
    for (backbone, dataset, budget, label), group in frame.groupby(
        ["backbone", "dataset", "eps", "setting"], sort=False
    ):
        shown = [f"{s} (never)" if s == n else str(s) for s, n in zip(group.start, group.epochs)]
        rows.append(
            {**_where(backbone, dataset, budget, named), "Setting": label,
             "threshold": ", ".join(f"{100 * t:g}%" for t in dict.fromkeys(group.threshold)),
             "seeds": ", ".join(str(s) for s in group.seed), "start epoch per seed": ", ".join(shown),
             "mean": fmt(group.start.mean())}
        )  # fmt: skip
    return pd.DataFrame(rows)
