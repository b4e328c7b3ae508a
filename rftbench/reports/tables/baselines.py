"""Schedules against each other: the T1/T2 ablation (`ablation_table`, the paper's Table 7) and the
baseline schedules side by side (`baselines_table`, Tables 4 and 8).

    sections = ablation_table(Results.paper("ablation"), ["4/255", "8/255"])
"""

from __future__ import annotations

from functools import partial

import pandas as pd

from rftbench.reports.render import Section, cell, spread_note
from rftbench.reports.results import BASELINE_SETTINGS, METRICS, ReportError, Results
from rftbench.reports.stats import cell_stats, eps_order, labelled, numbers_of, summary
from rftbench.reports.tables.main import long_row


def ablation_table(results: Results, eps: list[str], spread: str = "sd") -> list[Section]:
    """Table 7: T1/T2 pairs (fix is 0/0, linear 0/T2) of every backbone × dataset with hinge runs; one
    section per variant (objective, fine-tuning mode), its name in the title and the CSV's setting."""
    frame = results.values[results.values.setting.isin(["fix", "linear", "sched"])].copy()
    frame["t1"], frame["t2"] = frame.t1.fillna(0.0), frame.t2.fillna(0.0)
    pairs = frame[frame.setting != "fix"][["backbone", "dataset", "variant"]].drop_duplicates()
    sections = []
    for backbone, dataset, variant in pairs.sort_values("variant", kind="stable").itertuples(index=False):
        sub = frame[(frame.backbone == backbone) & (frame.dataset == dataset) & frame.eps.isin(eps)]
        sub = sub[sub.variant == variant]
        cells = cell_stats(sub, ["t1", "t2", "eps", "metric"])
        numbers = [
            {"backbone": backbone, "dataset": dataset, "setting": labelled("sched", variant), "t1": t1,
             "t2": t2, "eps": budget, "metric": metric}
            | numbers_of(cells.get((t1, t2, budget, metric), summary([])))
            for t1, t2 in sorted(set(zip(sub.t1, sub.t2)))
            for budget in eps_order(sub.eps)
            for metric in METRICS
        ]  # fmt: skip
        seeds = max((c["n"] for c in cells.values()), default=0)
        named = f", {variant}" if variant else ""
        sections.append(Section(f"T1/T2 ablation, {backbone}-{dataset}{named} (%)", pd.DataFrame(numbers),
                                partial(_show, rows=["t1", "t2"], columns="eps", spread=spread),
                                spread_note(seeds, spread), _long))  # fmt: skip
    if not sections:
        raise ReportError(f"no sched/linear runs in the {results.source}")
    return sections


def baselines_table(results: Results, eps: list[str], spread: str = "sd") -> list[Section]:
    """Tables 4 and 8: fix, uniform, auto and sched side by side on the pairs with a uniform or auto run,
    and adaptive beside them where it ran; one section per ε_g and variant (objective, fine-tuning mode)."""
    frame = results.values[results.values.setting.isin(BASELINE_SETTINGS)]
    sections = []
    for variant in sorted(set(frame.variant)):
        sections += _baselines(frame[frame.variant == variant], eps, spread, variant)
    if not sections and not frame.setting.isin(["uniform", "auto", "adaptive"]).any():
        raise ReportError(f"no uniform, auto or adaptive runs in the {results.source}")
    return sections


def _baselines(frame: pd.DataFrame, eps: list[str], spread: str, variant: str) -> list[Section]:
    """The baselines sections of one variant's rows."""
    sched = frame[frame.setting == "sched"]
    if len(sched):  # beside an ablation: one sched, the paper's 12/37 if present, else the most common T1/T2
        counts = sched.groupby(["t1", "t2"]).size()
        t1, t2 = (12.0, 37.0) if (12.0, 37.0) in counts.index else counts.idxmax()
        frame = frame[(frame.setting != "sched") | ((frame.t1 == t1) & (frame.t2 == t2))]
    pairs = frame[frame.setting.isin(["uniform", "auto", "adaptive"])][
        ["backbone", "dataset"]
    ].drop_duplicates()
    sections = []
    for budget in eps if len(pairs) else []:
        sub = frame[frame.eps == budget]
        cells = cell_stats(sub, ["backbone", "dataset", "setting", "metric"])
        settings = [s for s in BASELINE_SETTINGS if s in set(sub.setting)]
        if not settings:
            continue
        numbers = [
            {"backbone": backbone, "dataset": dataset, "setting": labelled(setting, variant), "eps": budget,
             "metric": metric}
            | numbers_of(cells.get((backbone, dataset, setting, metric), summary([])))
            for backbone, dataset in pairs.itertuples(index=False)
            for setting in settings
            for metric in METRICS
        ]  # fmt: skip
        seeds = max((c["n"] for c in cells.values()), default=0)
        view = partial(_show, rows=["backbone", "dataset"], columns="setting", spread=spread)
        title = f"Baselines at ε_g = {budget}{f', {variant}' if variant else ''} (%)"
        sections.append(Section(title, pd.DataFrame(numbers), view, spread_note(seeds, spread), _long))
    return sections


HEADS = {"t1": "T1", "t2": "T2", "backbone": "Backbone", "dataset": "Dataset"}


def _show(frame: pd.DataFrame, rows: list[str], columns: str, spread: str) -> pd.DataFrame:
    """One row per value of `rows`, one column per `columns` × metric."""
    shown = []
    for key, cells in frame.groupby(rows, sort=False):
        row = {HEADS[r]: f"{v:g}" if isinstance(v, float) else v for r, v in zip(rows, key)}
        for n in cells.to_dict("records"):
            row[f"{n[columns]} {METRICS[n['metric']]}"] = cell(n, spread)
        shown.append(row)
    return pd.DataFrame(shown)


def _long(frame: pd.DataFrame) -> pd.DataFrame:
    hinge = "t1" in frame
    return pd.DataFrame(
        [
            long_row(n["backbone"], n["dataset"], n["setting"], n["eps"], n["metric"], n["value"],
                     t1=n["t1"] if hinge else None, t2=n["t2"] if hinge else None, stat=n)
            for n in frame[frame.n > 0].to_dict("records")
        ]
    )  # fmt: skip
