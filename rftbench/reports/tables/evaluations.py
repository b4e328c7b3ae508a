"""Evaluation rows as stored (`evaluations_table`) and AutoAttack beside APGD (`autoattack_table`, the
paper's Table 6, with the worst case per sample over every stored attack).

    (section,) = autoattack_table(Results.paper("autoattack"))
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pandas as pd

from rftbench.reports.render import Section, fmt
from rftbench.reports.results import KEYS, METRICS, ReportError, Results
from rftbench.reports.stats import eps_order, labelled, sort_keys, with_variants
from rftbench.reports.tables.main import long_row


def evaluations_table(results: Results, run_id: str | None = None) -> list[Section]:
    """Every evaluation row: final ones from training, extra ones from `rftbench evaluate`; a run's setting
    names its variant (`fix+trades`), `weights` which of its weights a row scored (a best or EMA run has
    rows of its last epoch's weights too: the only table that shows them)."""
    if results.source == "paper" or results.evaluations.empty:
        raise ReportError("no evaluations to show: `evaluations` lists a database's evaluation rows")
    ev = results.evaluations.merge(results.runs, on="run_id", suffixes=("", "_run"))
    ev = ev.assign(setting=with_variants(ev))
    if run_id:
        ev = ev[ev.run_id.str.startswith(run_id)]
        if ev.empty:
            raise ReportError(f"no evaluated run with id {run_id!r}; `rftbench status` lists the runs")
    order = ["run_id", "budget_value", "protocol", "steps", "precision", "kept"]  # the last epoch's first
    ev = ev.assign(kept=ev.weights.ne("last")).sort_values(order).drop(columns="kept")
    return [Section("Evaluations", ev, _show_evaluations, csv=_evaluations_long)]


def _show_evaluations(ev: pd.DataFrame) -> pd.DataFrame:
    table = pd.DataFrame(
        {
            "Run": ev.run_id.str[:8],
            "Backbone": ev.backbone,
            "Dataset": ev.dataset,
            "Setting": ev.setting,
            "ε_g": ev.eps,
            "kind": ev.kind,
            "budget": ev.budget,
            "protocol": ev.protocol,
            "attack": ev.attack + " " + ev.norm,
            "steps": ev.steps,
            "restarts": ev.restarts,
            "start": ev.random_start.map({True: "random", False: "clean"}),
            "precision": ev.precision,
            "weights": ev.weights,
            "n": ev.n,
            "Clean": (100 * ev.clean).map(fmt),
            "Adv.": (100 * ev.adv).map(fmt),
            "E. adv.": (100 * ev.eadv).map(fmt),
            "measured by": ev.implementation.fillna("rftbench"),
        }
    )
    return table.reset_index(drop=True)


def _evaluations_long(ev: pd.DataFrame) -> pd.DataFrame:
    columns = [
        "run_id",
        "backbone",
        "dataset",
        "setting",
        "eps",
        "kind",
        "budget",
        "protocol",
        "attack",
        "norm",
    ]
    shown = [*columns, "steps", "restarts", "random_start", "seed", "precision", "weights", "implementation"]
    long = ev[shown].copy()
    return pd.concat([long.assign(metric=m, value=(100 * ev[m]).round(2)) for m in METRICS])


def autoattack_table(results: Results) -> list[Section]:
    """The paper's Table 6 layout: per run (backbone, dataset, setting, ε_g), the clean accuracy, then Adv.
    and E. adv. under APGD (the selected protocol) beside the same under AutoAttack, and from a database
    the worst case per sample over every evaluation of the run stored with per-sample flags at ε_g. A run's
    variant (objective, fine-tuning mode) is part of its row's keys and of its setting (`fix+trades`)."""
    aa = results.autoattack
    if aa.empty:
        where = "the paper's Table 6" if results.source == "paper" else "this database"
        raise ReportError(
            f"no AutoAttack evaluations in {where}: run `rftbench evaluate --grid GRID --attack autoattack` "
            f"(add --protocol budget to measure at ε_g only)"
        )
    index = [*KEYS, "seed"]

    def cells(frame: pd.DataFrame) -> dict[tuple, dict]:
        frame = frame.assign(**{c: frame[c].astype(object).where(frame[c].notna(), "") for c in ("t1", "t2")})
        return {
            key: dict(zip(g.metric, g.value)) for key, g in frame.groupby(index, dropna=False, sort=False)
        }

    # one AutoAttack evaluation per cell: rows of another version, protocol, steps, precision or seed apart
    aspects = [c for c in ("version", "protocol", "steps", "precision", "aa_seed") if c in aa.columns]
    variants = aa[aspects].drop_duplicates().sort_values(aspects).to_dict("records")
    apgd, versions = cells(results.values), sorted(set(aa.version))
    view = partial(
        _show_autoattack,
        seeds=len(set(aa.seed)) > 1,
        variants=len(variants) > 1,
        worst=results.source != "paper",
    )
    sections = []
    for budget in eps_order(set(aa.eps)):
        numbers = []  # per shown row: AutoAttack's numbers (attack autoattack-VERSION), then APGD's
        for variant in variants:
            chosen = (aa.eps == budget) & np.logical_and.reduce([aa[c] == v for c, v in variant.items()])
            measured = cells(aa[chosen])
            for key in sort_keys(measured):
                where = dict(zip(index, key)) | {"eps": budget, "row": len(numbers)}
                where["setting"] = labelled(where["setting"], where["variant"])
                where["variant"] = ", ".join(str(variant[c]) for c in aspects)
                numbers += [
                    where | {"attack": f"autoattack-{variant['version']}", "metric": m, "value": v}
                    for m, v in measured[key].items()
                ]
                numbers += [
                    where | {"attack": "apgd", "metric": m, "value": v} for m, v in apgd.get(key, {}).items()
                ]
        note = f"AA: AutoAttack {', '.join(versions)} (torchattacks, auto-attack's parameters); APGD: "
        note += results.protocol
        if results.source != "paper":
            note += "; Worst: robust only where every attack stored with per-sample flags at ε_g failed"
        sections.append(Section(f"AutoAttack and APGD at ε_g = {budget} (%)", pd.DataFrame(numbers), view,
                                note, _autoattack_long))  # fmt: skip
    return sections


def _show_autoattack(frame: pd.DataFrame, seeds: bool, variants: bool, worst: bool) -> pd.DataFrame:
    rows = []
    for _, group in frame.groupby("row", sort=False):
        first = group.iloc[0]
        theirs = dict(zip(group.metric[group.attack != "apgd"], group.value[group.attack != "apgd"]))
        ours = dict(zip(group.metric[group.attack == "apgd"], group.value[group.attack == "apgd"]))
        out = {"Backbone": first.backbone, "Dataset": first.dataset, "Setting": first.setting}
        out |= {"Seed": first.seed} if seeds else {}
        if variants:
            out["AutoAttack"] = first.variant
        out["Clean"] = fmt(theirs.get("clean", ours.get("clean", np.nan)))
        for source, values in (("APGD", ours), ("AA", theirs)):
            for metric in ("adv", "eadv"):
                out[f"{source} {METRICS[metric]}"] = fmt(values.get(metric, np.nan))
        if worst:
            out["Worst Adv."] = fmt(theirs.get("worst", np.nan))
        rows.append(out)
    return pd.DataFrame(rows)


def _autoattack_long(frame: pd.DataFrame) -> pd.DataFrame:
    """The CSV holds AutoAttack's numbers; APGD's are the main table's."""
    return pd.DataFrame(
        [
            long_row(n["backbone"], n["dataset"], n["setting"], n["eps"], n["metric"], n["value"])
            | {"attack": n["attack"], "seed": n["seed"]}
            for n in frame[frame.attack != "apgd"].to_dict("records")
        ]
    )
