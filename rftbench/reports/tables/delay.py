"""Task-adaptation delay: each run's start epoch, its spread over seeds, the correlation of start and final
validation accuracy over the fix sweep, and each fix run's clean drop from ε = 0 (`delay_table`).

    sections = delay_table(Results.from_store(Store.open("rftbench.db"), grid="eps-sweep"))
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

from rftbench.core.config import budget_value
from rftbench.reports.render import Section, cell, fmt
from rftbench.reports.results import Results
from rftbench.reports.stats import labelled, setting_labels, setting_order, summary, with_variants
from rftbench.reports.tables.paired import adaptation_starts

CORRELATIONS = ("n", "pearson_r", "spearman_rho")  # what the CSV holds; the p values are shown only


def delay_table(results: Results, include_standard: bool = False) -> list[Section]:
    """Per run: the task-adaptation start epoch and the final validation accuracy; per (backbone, dataset)
    over the fix sweep: their Pearson and Spearman correlations; each fix run's clean drop from ε = 0.

    Runs of a variant (objective, fine-tuning mode) are labelled `fix+trades`; the sweep is one per
    variant (its own correlation row, "Setting" naming it), and a fix run's drop is measured from its
    standard counterpart (`Results.standard_variant`: `standard` for TRADES, `standard+lora` for LoRA)."""
    runs, curves = adaptation_starts(results, "delay")
    clean = results.values[results.values.metric == "clean"].groupby("run_id").value.first()
    runs["clean"] = runs.run_id.map(clean)
    runs["done"] = [len(curves[r]) for r in runs.run_id]
    if "variant" not in runs:
        runs["variant"] = ""
    sections = [
        Section(
            "Task-adaptation start and final validation accuracy per run",
            runs,
            _show_runs,
            "start epoch: first 0-based epoch with validation accuracy above the threshold",
            lambda runs: runs.assign(setting=with_variants(runs)).melt(
                id_vars=["backbone", "dataset", "setting", "eps", "seed", "run_id"],
                value_vars=["start", "final_val"],
                var_name="metric",
            ),
        )
    ]
    if runs.seed.nunique() > 1:  # the start epoch is noisy too: its spread over seeds, per setting
        labelled = runs.assign(label=setting_labels(runs))
        keys = ["backbone", "dataset", "eps"]
        spread = pd.concat(
            labelled[labelled.label == label].sort_values([*keys, "seed"])
            for label in setting_order(labelled.label)
        )
        note = "mean ± standard deviation over seeds; starts in seed order"
        sections.append(Section("Task-adaptation start over seeds", spread, _show_spread, note, _show_spread))
    correlations = _correlations(runs, include_standard, results.standard_variant)
    scope = "ε_g ≥ 0" if include_standard else "ε_g > 0"
    pearson = correlations[correlations.statistic == "pearson_r"].value if len(correlations) else []
    complete = len(pearson) and pearson.notna().all()
    few = "a correlation needs 3 or more finished fix runs of a pair, with varying start epochs"
    seeds = "every seed's run is one point" if runs.seed.nunique() > 1 else ""
    note = "; ".join(n for n in (seeds, "" if complete else few) if n)
    sections.append(
        Section(
            f"Delay correlations over the fix sweep ({scope}): start epoch vs final val acc",
            correlations,
            _show_correlations,
            note,
            lambda frame: (
                _plain(frame[frame.statistic.isin(CORRELATIONS)].reset_index(drop=True))
                if len(frame)
                else frame
            ),
        )
    )
    drops = _drops(runs, results.standard_variant)
    if len(drops):
        sections.append(
            Section(
                "Clean-accuracy drop of fix runs from standard fine-tuning (ε = 0)",
                drops,
                _show_drops,
                csv=_show_drops,
            )
        )
    return sections


def _show_runs(runs: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "Run": runs.run_id.str[:8],
            "Backbone": runs.backbone,
            "Dataset": runs.dataset,
            "Setting": with_variants(runs),
            "ε_g": runs.eps,
            "Seed": runs.seed,
            "threshold": runs.threshold.map("{:g}".format),
            "start epoch": runs.start,
            "final val acc": runs.final_val.map(fmt),
            "test clean": runs.clean.map(fmt),
            "epochs": [f"{done}/{n}" for done, n in zip(runs.done, runs.epochs)],
        }
    )


def _show_spread(runs: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (label, backbone, dataset, budget), group in runs.groupby(
        ["label", "backbone", "dataset", "eps"], sort=False
    ):
        stat = summary(group.start)
        rows.append(
            {
                "Backbone": backbone,
                "Dataset": dataset,
                "Setting": label,
                "ε_g": budget,
                "seeds": stat["n"],
                "start epoch": cell({**stat, "value": stat["mean"]}, "sd"),
                "starts": ", ".join(str(v) for v in group.start),
            }
        )
    return pd.DataFrame(rows)


def _correlations(runs: pd.DataFrame, include_standard: bool, standard_of) -> pd.DataFrame:
    """Per (backbone, dataset) and variant over the complete fix (and standard) runs: n, Pearson's r and
    Spearman's ρ of start epoch and final validation accuracy, each with its p value (None where it cannot
    be taken). A variant's sweep holds its fix runs and its standard counterpart's runs (`standard_of`)."""
    sweep = runs[(runs.setting.isin(["fix", "standard"])) & runs.complete]
    if not include_standard:
        sweep = sweep[sweep.eps.map(budget_value) > 0]
    numbers = []
    for (backbone, dataset), runs_of in sweep.groupby(["backbone", "dataset"], sort=False):
        fix = runs_of.setting == "fix"
        for variant in sorted(set(runs_of.variant[fix])) or sorted(set(runs_of.variant)):
            group = runs_of[
                (fix & (runs_of.variant == variant)) | (~fix & (runs_of.variant == standard_of(variant)))
            ]
            n = len(group)
            varied = n > 2 and group.start.nunique() > 1 and group.final_val.nunique() > 1
            pearson = stats.pearsonr(group.start, group.final_val) if varied else None
            spearman = stats.spearmanr(group.start, group.final_val) if varied else None
            for stat, value in (
                ("n", n),
                ("pearson_r", pearson.statistic if pearson else None),
                ("spearman_rho", spearman.statistic if spearman else None),
                ("pearson_p", pearson.pvalue if pearson else None),
                ("spearman_p", spearman.pvalue if spearman else None),
            ):
                numbers.append({"backbone": backbone, "dataset": dataset, "variant": variant,
                                "statistic": stat, "value": value})  # fmt: skip
    return pd.DataFrame(numbers)


def _plain(frame: pd.DataFrame) -> pd.DataFrame:
    """A frame without its variant column where every row is the paper's recipe (the CSV as it was)."""
    return frame.drop(columns="variant") if frame.variant.eq("").all() else frame


def _show_correlations(frame: pd.DataFrame) -> pd.DataFrame:
    rows = []
    variants = len(frame) and frame.variant.ne("").any()
    for (backbone, dataset, variant), group in (
        frame.groupby(["backbone", "dataset", "variant"], sort=False) if len(frame) else ()
    ):
        s = dict(zip(group.statistic, group.value))
        shown = {k: v is not None and not (isinstance(v, float) and math.isnan(v)) for k, v in s.items()}
        rows.append(
            {
                "Backbone": backbone,
                "Dataset": dataset,
                **({"Setting": labelled("fix", variant)} if variants else {}),
                "n runs": int(s["n"]),
                "Pearson r": f"{s['pearson_r']:.3f}" if shown["pearson_r"] else "",
                "p (Pearson)": f"{s['pearson_p']:.2e}" if shown["pearson_p"] else "",
                "Spearman ρ": f"{s['spearman_rho']:.3f}" if shown["spearman_rho"] else "",
                "p (Spearman)": f"{s['spearman_p']:.2e}" if shown["spearman_p"] else "",
            }
        )
    return pd.DataFrame(rows)


def _drops(runs: pd.DataFrame, standard_of) -> pd.DataFrame:
    """Each fix run against standard fine-tuning of the same seed (else the mean over seeds), of its
    variant's standard counterpart (`standard_of`); labelled by variant where a run has one."""
    standard = runs[(runs.setting == "standard")]
    base = standard.groupby(["backbone", "dataset", "variant", "seed"]).clean.mean()
    base_mean = standard.groupby(["backbone", "dataset", "variant"]).clean.mean()
    variants = runs.variant[runs.setting == "fix"].ne("").any()
    drops = []
    for r in runs[(runs.setting == "fix")].itertuples():
        key = (r.backbone, r.dataset, standard_of(r.variant))
        ref = base.get((*key, r.seed), base_mean.get(key, np.nan))
        if not math.isnan(ref) and not math.isnan(r.clean):
            drops.append({"backbone": r.backbone, "dataset": r.dataset, "eps": r.eps, "seed": r.seed,
                          "clean": r.clean, "reference": ref}
                         | ({"setting": labelled("fix", r.variant)} if variants else {}))  # fmt: skip
    return pd.DataFrame(drops)


def _show_drops(drops: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "Backbone": drops.backbone,
            "Dataset": drops.dataset,
            **({"Setting": drops.setting} if "setting" in drops else {}),
            "ε_g": drops.eps,
            "Seed": drops.seed,
            "clean": drops.clean.map(fmt),
            "ε = 0 clean": drops.reference.map(fmt),
            "drop (pp)": (drops.reference - drops.clean).map(fmt),
        }
    )
