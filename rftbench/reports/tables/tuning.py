"""What `rftbench tune` found: per study (one configuration), its trials by state and its best trial's
knobs and validation accuracy.

    (section,) = tuning_table(Results.studies(store, grid="demo"))
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from rftbench.core.tuning import TUNABLE
from rftbench.reports.render import Section, fmt
from rftbench.reports.results import ReportError, Results
from rftbench.reports.stats import labelled

ENDED = ("completed", "pruned", "failed")  # the other states (pending, running, interrupted) count as others
NOTE = (
    "best: each study's completed trial of the highest clean validation accuracy at its last epoch (the "
    "objective; pruned, failed and unfinished trials never are), its knobs to 3 significant digits (in full "
    "in the CSV); others: pending, running or interrupted trials; a grid takes these values with "
    'lr = "tuned" (weight_decay = "tuned")'
)


def tuning_table(results: Results) -> list[Section]:
    """One row per study: backbone, dataset, ε_g, the setting its trials train (with its variant:
    `fix+trades`), the best trial's knobs, the trials by state and the best validation accuracy (%)."""
    trials = results.tuning
    if trials.empty:
        raise ReportError("no hyperparameter study in these results: `rftbench tune --grid NAME` makes one")
    knobs = [c for c in trials.columns if c.startswith("param_")]
    rows = []
    for key, group in trials.groupby("study", sort=False):
        first, asked = group.iloc[0], group[group.number.notna()]
        best = asked[asked.best.astype(bool)]
        counts = {state: int((asked.state == state).sum()) for state in ENDED}
        rows.append(
            {
                "backbone": first.backbone,
                "dataset": first.dataset,
                "setting": labelled(first.setting, first.get("variant", "")),
                "eps": first.eps,
                "metric": "val_acc",
                "value": best.value.iloc[0] if len(best) else np.nan,
                "study": key,
                "grid": first.grid,
                "trials": len(asked),
                **counts,
                "others": len(asked) - sum(counts.values()),
                "best_trial": int(best.number.iloc[0]) if len(best) else None,
            }
            | {knob.removeprefix("param_"): best[knob].iloc[0] if len(best) else np.nan for knob in knobs}
        )
    frame = pd.DataFrame(rows).astype({"best_trial": "Int64"})
    return [Section("Hyperparameter studies: each configuration's best trial", frame, _show, NOTE, _long)]


def knob_text(values: pd.Series) -> pd.Series:
    """Three significant digits in one style per column: scientific where a value is below 0.01 (a
    learning rate, a weight decay), plain otherwise (warm-up epochs, a head's lr scale)."""
    small = bool(((values.abs() < 0.01) & (values != 0)).any())
    return values.map(lambda v: "" if pd.isna(v) else format(v, ".2e" if small else ".3g"))


def _show(frame: pd.DataFrame) -> pd.DataFrame:
    knobs = [c for c in frame.columns if c in TUNABLE and frame[c].notna().any()]
    table = pd.DataFrame(
        {"Backbone": frame.backbone, "Dataset": frame.dataset, "ε_g": frame.eps, "Setting": frame.setting}
    )
    for knob in knobs:
        table[knob] = knob_text(frame[knob].astype(float))
    for column in ("trials", *ENDED, "others"):
        table[column] = frame[column]
    table["best val acc (%)"] = frame.value.map(fmt)
    table["Study"] = frame.study.str[:8]
    return table.reset_index(drop=True)


def _long(frame: pd.DataFrame) -> pd.DataFrame:
    """The labels and counts, the best value in percent (two decimals) and its knobs in full."""
    return frame.assign(value=frame.value.round(2))
