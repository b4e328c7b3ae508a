"""Statistics over seeds and the order of a table's rows and columns, shared by every report table.

    summary([40.0, 44.0, 42.0])    # {"mean": 42.0, "sd": 2.0, "n": 3, "ci_low": 37.03, "ci_high": 46.97}

Seeds are an axis: a cell with several seeds is their mean, standard deviation and the 95% confidence
interval of the mean (`summary`); paired tests pair by (backbone, dataset, seed) (`paired`).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

from rftbench.core.config import budget_value
from rftbench.core.schedules import SCHEDULES
from rftbench.data.registry import DATASETS

DATASET_ORDER = list(
    dict.fromkeys(["Aircraft", "Caltech", "Cars", "Cub", "Dogs", *DATASETS])
)  # the paper's order


def setting_labels(frame: pd.DataFrame) -> pd.Series:
    """`sched` when a hinge setting appears with one T1/T2 only; `sched 12/37` when several are present;
    "+<variant>" appended where a row's variant is not "" (`fix+trades`, `sched 12/37+lora`)."""
    hinge = frame.setting.isin(["sched", "linear"])
    label = frame.setting.copy()
    if hinge.any():  # (groupby-apply on no rows gives a frame, not a series)
        pairs = frame[hinge].groupby("setting")[["t1", "t2"]].apply(lambda g: len(g.drop_duplicates()))
        several = hinge & frame.setting.map(pairs).fillna(0).gt(1)
        label[several] = (
            frame.setting[several]
            + " "
            + frame.t1[several].map("{:g}".format)
            + "/"
            + frame.t2[several].map("{:g}".format)
        )
    return with_variants(frame.assign(setting=label))


def with_variants(frame: pd.DataFrame) -> pd.Series:
    """Each row's `setting` with "+<variant>" appended where its variant is not "" (a frame without a
    variant column: the settings as they are)."""
    if "variant" not in frame or frame.empty:
        return frame.setting.copy()
    variant = frame.variant.fillna("").astype(str)
    return frame.setting.where(variant.eq(""), frame.setting + "+" + variant)


def labelled(setting: str, variant: str) -> str:
    """One label: `fix`, `fix+trades`."""
    return f"{setting}+{variant}" if variant else setting


def variant_of(label: str) -> str:
    """The variant a label names: "" for `sched 12/37`, "trades+lora" for `fix+trades+lora`."""
    return label.partition("+")[2]


def base_setting(label: str) -> str:
    """The setting a label names: `sched` for `sched 12/37+trades`."""
    return label.partition("+")[0].split()[0]


def order(values, registry) -> list:
    present = list(dict.fromkeys(values))
    known = [v for v in registry if v in present]
    return known + sorted(v for v in present if v not in registry)


def setting_order(labels) -> list:
    """Labels by their setting's place in SCHEDULES, then variant (the paper's recipe first), then name."""
    names = list(SCHEDULES)
    return sorted(dict.fromkeys(labels), key=lambda s: (names.index(base_setting(s)), variant_of(s), s))


def eps_order(values) -> list[str]:
    return sorted(dict.fromkeys(values), key=budget_value)


def summary(values) -> dict:
    """Mean, standard deviation (n - 1), n and the 95% confidence interval of the mean (Student t) of
    one cell's values over seeds; sd and the interval are NaN for a single seed."""
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=float)
    n = len(v)
    mean = float(v.mean()) if n else np.nan
    sd = float(v.std(ddof=1)) if n > 1 else np.nan
    half = float(stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)) if n > 1 else np.nan
    return {"mean": mean, "sd": sd, "n": n, "ci_low": mean - half, "ci_high": mean + half}


def paired(a: pd.Series, b: pd.Series) -> dict:
    """a − b pair by pair: `summary` of the differences, t and p of scipy.stats.ttest_rel (NaN for a single
    pair), and how many pairs a wins and loses."""
    diff = a - b
    t, p = stats.ttest_rel(a, b) if len(diff) > 1 else (np.nan, np.nan)
    return summary(diff) | {"t": t, "p": p, "wins": int((diff > 0).sum()), "losses": int((diff < 0).sum())}


def numbers_of(stat: dict) -> dict:
    """A cell's `summary` as a long frame's columns: its mean as `value`, with n, sd and the 95% CI."""
    return {"value": stat["mean"], **{k: stat[k] for k in ("n", "sd", "ci_low", "ci_high")}}


def cell_stats(frame: pd.DataFrame, by: list[str]) -> dict[tuple, dict]:
    """`summary` of `value` over seeds for every group of `by`."""
    return {key: summary(group.value) for key, group in frame.groupby(by, sort=False)}


def sort_keys(keys) -> list:
    """Index keys (backbone, dataset, setting, …) in the paper's order of datasets, then by name."""
    order = {d: i for i, d in enumerate(DATASET_ORDER)}
    return sorted(keys, key=lambda k: (str(k[0]), order.get(k[1], len(order)), str(k[1]), str(k[2]), k[-1]))
