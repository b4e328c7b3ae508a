"""The paper's Tables 1 and 2 (`main_table`) and 10 and 11 (`averages_table`): test accuracy per cell.

sections = main_table(Results.paper("main"), ["4/255"])
"""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import pandas as pd

from rftbench.models.registry import BACKBONES
from rftbench.reports.render import Section, cell, fmt, spread_note, stat_columns
from rftbench.reports.results import METRICS, Results, no_results
from rftbench.reports.stats import (
    DATASET_ORDER,
    cell_stats,
    numbers_of,
    order,
    setting_labels,
    setting_order,
    summary,
    variant_of,
    with_variants,
)


def main_table(
    results: Results, eps: list[str], compare: Results | None = None, spread: str = "sd"
) -> list[Section]:
    """Tables 1 and 2: rows backbone × setting, columns dataset × {Clean, Adv., E. adv.}, one per ε_g;
    several seeds of a cell show as their mean ± their spread. Each variant (objective, fine-tuning mode)
    has rows of its own (`fix+trades`). Where the table holds a fine-tuning mode other than `full` (so the
    counts differ; a `full` run trains every parameter) and runs recorded their trainable-parameter count,
    each cell holds it (`trainable_params`, in the CSV) and a note names it per backbone and variant."""
    frame = results.values.assign(label=setting_labels(results.values))
    params = _trainable(results)
    sections = []
    for budget in eps:
        sub = frame[frame.eps == budget]
        pending = results.pending[results.pending.eps == budget] if len(results.pending) else results.pending
        if sub.empty and pending.empty:
            continue
        cells = cell_stats(sub, ["backbone", "label", "dataset", "metric"])
        paper = _paper_means(compare, budget) if compare is not None else None
        counts = None if params is None else _cell_counts(sub, params)
        backbones = order(list(sub.backbone) + list(pending.get("backbone", [])), BACKBONES)
        datasets = order(list(sub.dataset) + list(pending.get("dataset", [])), DATASET_ORDER)
        labels = setting_order(list(sub.label) + (list(with_variants(pending)) if len(pending) else []))
        numbers = [
            {"backbone": backbone, "dataset": dataset, "setting": label, "eps": budget, "metric": metric}
            | numbers_of(cells.get((backbone, label, dataset, metric), summary([])))
            | {"status": _status(pending, backbone, label, dataset)}
            | ({"paper": paper.get((backbone, label, dataset, metric), np.nan)} if paper is not None else {})
            | ({"trainable_params": counts.get((backbone, label, dataset))} if counts is not None else {})
            for backbone in backbones
            for label in labels
            for dataset in datasets
            for metric in METRICS
        ]
        title = f"Main results at ε_g = {budget} (test accuracy, %)" + (
            " [paper]" if results.source == "paper" else ""
        )
        seeds = max((c["n"] for c in cells.values()), default=0)
        compared = "ours (paper, ours - paper)" if compare is not None else ""
        trainable = trainable_note(pd.DataFrame(numbers)) if counts is not None else ""
        note = "; ".join(n for n in (compared, spread_note(seeds, spread), trainable) if n)
        view = partial(_show_main, spread=spread)
        sections.append(Section(title, pd.DataFrame(numbers), view, note, _main_long))
    if not sections:
        raise no_results(eps, results)
    return sections


def _show_main(frame: pd.DataFrame, spread: str) -> pd.DataFrame:
    rows = []
    for (backbone, label), cells in frame.groupby(["backbone", "setting"], sort=False):
        row = {"Backbone": backbone, "Setting": label}
        for number in cells.to_dict("records"):
            text = cell(number, spread) or (number["status"] if number["metric"] == "clean" else "")
            if "paper" in number:
                text = _compare_cell(number["value"], number["paper"]) or text
            row[f"{number['dataset']} {METRICS[number['metric']]}"] = text
        if cells.value.notna().any() or cells.status.ne("").any():
            rows.append(row)
    return pd.DataFrame(rows)


def _main_long(frame: pd.DataFrame) -> pd.DataFrame:
    """The CSV rows: compared with the paper, every cell (ours or the paper's may be missing); else ours."""
    compared = "paper" in frame
    kept = frame if compared else frame[frame.value.notna()]
    long = pd.DataFrame(
        [
            long_row(n["backbone"], n["dataset"], n["setting"], n["eps"], n["metric"], n["value"],
                     n["paper"] if compared else None, stat=n)
            for n in kept.to_dict("records")
        ]
    )  # fmt: skip
    if "trainable_params" in kept:  # a count, where the cell's runs recorded one
        long["trainable_params"] = pd.array(kept.trainable_params, dtype="Int64")
    return long


def _trainable(results: Results) -> pd.Series | None:
    """Each run's trainable-parameter count, by run id; None where no run recorded one, or where every run
    is fine-tuned in full (a table of the paper's recipe reads as it always did)."""
    runs = results.runs
    if "trainable_params" not in runs or runs.trainable_params.isna().all():
        return None
    if "finetune" in runs and runs.finetune.eq("full").all():
        return None
    return runs.set_index("run_id").trainable_params.dropna()


def _cell_counts(sub: pd.DataFrame, params: pd.Series) -> dict[tuple, int]:
    """(backbone, label, dataset) -> the trainable-parameter count its runs recorded (the same for every
    seed; the largest should two differ)."""
    counts = sub.assign(n=sub.run_id.map(params).astype(float))
    found = counts.groupby(["backbone", "label", "dataset"]).n.max().dropna()
    return {key: int(n) for key, n in found.items()}


def trainable_note(numbers: pd.DataFrame) -> str:
    """The trainable parameters per backbone and variant as recorded by the runs shown (a range where the
    head's size differs between datasets); how many of the cells recorded it where some did not."""
    rows = numbers[numbers.metric == "clean"].assign(variant=lambda f: f.setting.map(variant_of))
    rows = rows[rows.value.notna()]
    shown = []
    for (backbone, variant), group in rows.groupby(["backbone", "variant"], sort=False):
        counts = group.trainable_params.dropna()
        if counts.empty:
            continue
        low, high = _count(counts.min()), _count(counts.max())
        text = f"{backbone}{f' {variant}' if variant else ''} {low}{f'–{high}' if high != low else ''}"
        shown.append(text + (f" ({len(counts)} of {len(group)} cells)" if len(counts) < len(group) else ""))
    return f"trainable parameters: {', '.join(shown)}" if shown else ""


def _count(n: float) -> str:
    """1.23 M, 45.1 k, 512."""
    return f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n / 1e3:.1f} k" if n >= 1e3 else f"{n:.0f}"


def _status(pending: pd.DataFrame, backbone: str, label: str, dataset: str) -> str:
    if pending.empty:
        return ""
    plain = label.partition("+")[0]
    hit = pending[
        (pending.backbone == backbone)
        & pending.setting.isin([plain, plain.split()[0]])
        & (pending.variant == variant_of(label))
        & (pending.dataset == dataset)
    ]
    if hit.empty:
        return ""
    row = hit.iloc[0]
    return f"({row.status}{f' {row.done} ep.' if row.done else ''})"


def _paper_means(compare: Results, budget: str) -> pd.Series:
    frame = compare.values.assign(label=setting_labels(compare.values))
    return frame[frame.eps == budget].groupby(["backbone", "label", "dataset", "metric"]).value.mean()


def _compare_cell(value: float, ref: float) -> str:
    if math.isnan(value) or math.isnan(ref):
        return fmt(value) if not math.isnan(value) else (f"(paper {ref:.2f})" if not math.isnan(ref) else "")
    return f"{value:.2f} ({ref:.2f}, {_diff(value, ref):+.2f})"


def _diff(value: float, ref: float) -> float:
    """ours - paper on the two-decimal values shown (+ 0.0 turns -0.0 into 0.0)."""
    return round(round(value, 2) - round(ref, 2), 2) + 0.0


def long_row(backbone, dataset, setting, eps, metric, value, paper=None, t1=None, t2=None, stat=None) -> dict:
    """One long-format CSV row; `stat` (a cell over several seeds: n, sd, ci_low, ci_high) adds them."""
    row = {
        "backbone": backbone,
        "dataset": dataset,
        "setting": setting,
        "eps": eps,
        "metric": metric,
        "value": round(value, 2) if not math.isnan(value) else None,
    }
    if t1 is not None or t2 is not None:
        row |= {"t1": t1, "t2": t2}
    if paper is not None:
        row |= {
            "paper": round(paper, 2) if not math.isnan(paper) else None,
            "diff": _diff(value, paper) if not (math.isnan(value) or math.isnan(paper)) else None,
        }
    return row | (stat_columns(stat) if stat is not None else {})


def averages_table(results: Results, eps: list[str], spread: str = "sd") -> list[Section]:
    """Tables 10 and 11: per-backbone means over datasets and per-dataset means over backbones; with
    several seeds, the spread is over the per-seed means."""
    frame = results.values.assign(label=setting_labels(results.values))
    sections = []
    for group, over, title in (
        ("backbone", "dataset", "Per-backbone means over datasets"),
        ("dataset", "backbone", "Per-dataset means over backbones"),
    ):
        for budget in eps:
            sub = frame[frame.eps == budget]
            if sub.empty:
                continue
            per_seed = sub.groupby([group, "label", "metric", "seed"])
            counts = per_seed[over].nunique().groupby([group, "label", "metric"]).max()
            cells = cell_stats(per_seed.value.mean().reset_index(), [group, "label", "metric"])
            names = order(sub[group], BACKBONES if group == "backbone" else DATASET_ORDER)
            numbers = [
                {"group": group, "name": name, "setting": label, "eps": budget, "metric": metric,
                 "count": int(max(counts.get((name, label, m), 0) for m in METRICS)), "over": over}
                | numbers_of(cells.get((name, label, metric), summary([])))
                for name in names
                for label in setting_order(sub.label)
                if (name, label, "clean") in counts or (name, label, "adv") in counts
                for metric in METRICS
            ]  # fmt: skip
            seeds = max((c["n"] for c in cells.values()), default=0)
            sections.append(Section(f"{title} at ε_g = {budget} (%)", pd.DataFrame(numbers),
                                    partial(_show_averages, spread=spread), spread_note(seeds, spread),
                                    _averages_long))  # fmt: skip
    if not sections:
        raise no_results(eps, results)
    return sections


def _show_averages(frame: pd.DataFrame, spread: str) -> pd.DataFrame:
    rows = []
    for (group, name, label, over, count), cells in frame.groupby(
        ["group", "name", "setting", "over", "count"], sort=False
    ):
        row = {group.capitalize(): name, "Setting": label, f"n {over}s": count}
        rows.append(
            row | {METRICS[n["metric"]]: cell(n, spread) if n["n"] else "" for n in cells.to_dict("records")}
        )
    return pd.DataFrame(rows)


def _averages_long(frame: pd.DataFrame) -> pd.DataFrame:
    keys = ["group", "name", "setting", "eps", "metric"]
    return pd.DataFrame(
        [{**{k: n[k] for k in keys}, "value": round(n["value"], 2)} | stat_columns(n)
         for n in frame[frame.n > 0].to_dict("records")]
    )  # fmt: skip
