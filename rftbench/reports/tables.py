"""The paper's tables, statistics and delay correlations, from the results database or the paper's numbers.

    results = Results.from_store(Store.open("rftbench.db"))    # or Results.paper("main")
    sections = build("main", results, eps=["4/255"])
    print(render(sections, "md"))

Reads the store and never trains (STYLE.md 7). Accuracies are stored as fractions and reported in percent
with two decimals (CONVENTIONS.md). `Results.paper(table)` reads the paper's published numbers shipped
with the package (`paper_results.csv`); CONVENTIONS.md says which paper table feeds which report.

A run may hold evaluations under several protocols (rftbench.core.metrics). A report shows one: `Selection`
picks, per run, the rows of that protocol (default: the paper's, fp32, each run's own attack steps), so no
cell mixes two protocols; every table says which one it shows, and names the runs that have no row under
it (`rftbench evaluate` adds one).

Seeds are an axis: a cell with several seeds shows their mean ± their standard deviation, or the half-width
of the 95% confidence interval of the mean (`spread`, SPREADS); paired tests pair by (backbone, dataset,
seed); delay correlations take every seed's run as a point. One seed, and the paper's numbers, show as is.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from importlib.resources import files

import numpy as np
import pandas as pd
from scipy import stats

from rftbench.core.config import PRECISIONS, PROTOCOLS, TABLES, RunConfig, budget_value
from rftbench.core.metrics import EvalProtocol, adaptation_start_epoch
from rftbench.core.schedules import SCHEDULES
from rftbench.data.datasets import DATASETS
from rftbench.errors import RftbenchError
from rftbench.models.registry import BACKBONES

METRICS = {"clean": "Clean", "adv": "Adv.", "eadv": "E. adv."}
PAPER_TABLES = {
    "main": ("1", "2"),
    "averages": ("1", "2"),
    "ttest": ("1", "2"),
    "ablation": ("7",),
    "baselines": ("4", "8"),
    "autoattack": ("6-apgd", "6-autoattack"),
}
ATTACK_LABELS = {"6-apgd": "APGD", "6-autoattack": "AutoAttack"}
BASELINE_SETTINGS = ("fix", "uniform", "auto", "sched", "adaptive")
DATASET_ORDER = list(
    dict.fromkeys(["Aircraft", "Caltech", "Cars", "Cub", "Dogs", *DATASETS])
)  # the paper's order
KEYS = ["backbone", "dataset", "setting", "eps", "t1", "t2"]
SPREADS = ("sd", "ci", "none")  # what ± shows over seeds: standard deviation, 95% CI, nothing


NORM_SIGNS = {"Linf": "ℓ∞", "L2": "ℓ2"}
PAPER_PROTOCOL = "the paper's published numbers (APGD-CE-10 ℓ∞, one attack per ε)"


class ReportError(RftbenchError, ValueError):
    """One line: what the report cannot show and why."""


@dataclass(frozen=True)
class Selection:
    """Which evaluation rows a report shows: per run, those measured under one `EvalProtocol` (a per-ε
    protocol, a precision and `steps`, None meaning each run's own `eval_attack_steps`; APGD-CE ℓ∞ from the
    clean image, one restart), at the run's own ε_g (a standard run: every budget it is scored at)."""

    protocol: str = "paper"
    precision: str = "fp32"
    steps: int | None = None

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ReportError(f"--protocol {self.protocol!r}: choose {' or '.join(PROTOCOLS)}")
        if self.precision not in PRECISIONS:
            raise ReportError(f"--precision {self.precision!r}: choose one of {', '.join(PRECISIONS)}")

    def rows(self, evaluations: list, config: RunConfig) -> list:
        wanted = EvalProtocol(
            self.protocol,
            steps=self.steps or config.eval_attack_steps,
            precision=self.precision,
            norm=config.norm,
        )
        budgets = config.scored_budgets if config.eps_value == 0 else (config.eps,)
        return [ev for ev in evaluations if ev.budget in budgets and ev.eval_protocol() == wanted]

    def command(self) -> str:
        """The `rftbench evaluate` that adds this selection's rows to a grid's completed runs."""
        flags = f" --precision {self.precision}" if self.precision != "fp32" else ""
        return f"rftbench evaluate --grid GRID --protocol {self.protocol}{flags}" + (
            f" --steps {self.steps}" if self.steps else ""
        )

    def label(self, steps: set[int], norms: set[str] = frozenset()) -> str:
        per_eps = "one attack per ε" if self.protocol == "paper" else "early exit, a union of attacks"
        shown = ", ".join(str(k) for k in sorted(steps)) or str(self.steps or "the run's")
        signs = "/".join(NORM_SIGNS[n] for n in sorted(norms, reverse=True)) or "ℓ∞"
        return (
            f"APGD-CE {signs} ({shown} steps), "
            f"{self.protocol} protocol ({per_eps}), clean start, {self.precision}"
        )


@dataclass
class Section:
    title: str
    table: pd.DataFrame  # what is shown: strings, already formatted
    long: pd.DataFrame  # the machine-readable rows behind it (values in percent)
    note: str = ""


@dataclass
class Results:
    """Final test metrics in long format (one value per row, percent) plus what reports need besides."""

    values: pd.DataFrame  # KEYS + seed, metric, value, run_id
    pending: pd.DataFrame = field(default_factory=pd.DataFrame)  # KEYS + status, done, epochs
    epochs: pd.DataFrame = field(default_factory=pd.DataFrame)  # run_id, epoch, eps, val_acc, val_adv_acc
    runs: pd.DataFrame = field(default_factory=pd.DataFrame)  # run_id + KEYS + seed, epochs, threshold
    evaluations: pd.DataFrame = field(default_factory=pd.DataFrame)  # every row, every protocol
    selected: pd.DataFrame = field(default_factory=pd.DataFrame)  # the rows `values` come from
    source: str = "database"
    protocol: str = PAPER_PROTOCOL  # what `values` were measured with, for titles and notes
    missing: str = ""  # runs left out of `values`, and why, for notes
    # AutoAttack rows at each run's ε_g (KEYS + seed, run_id, version, metric, value) and the worst case
    # per sample over every evaluation stored with per-sample flags at that budget (metric "worst")
    autoattack: pd.DataFrame = field(default_factory=pd.DataFrame)

    @classmethod
    def from_store(
        cls,
        store,
        grid: str | None = None,
        threshold: float | None = None,
        selection: Selection = Selection(),
    ) -> Results:
        data = store.everything(grid)
        thresholds = {}
        for row in data["adaptation"]:
            thresholds.setdefault(row.run_id, row.threshold)
        runs, values, pending, selected, unread, autoattack = [], [], [], [], [], []
        data["runs"], aside = newest_per_cell(data["runs"])
        without: dict[str, set] = {}  # completed run id -> the protocols it does have
        rows: dict[str, list] = {}  # run id -> its evaluation rows
        for ev in data["evaluations"]:
            rows.setdefault(ev.run_id, []).append(ev)
        for run in data["runs"]:
            try:
                config = RunConfig.from_json(run.config)
            except (ValueError, TypeError):  # written by a newer release: shown nowhere, named in a note
                unread.append(run.id)
                continue
            keys = {
                "backbone": run.backbone,
                "dataset": run.dataset,
                "setting": config.schedule.label,  # a piecewise run names its points
                "eps": run.eps,
                "t1": run.t1,
                "t2": run.t2,
            }
            runs.append(
                {
                    "run_id": run.id,
                    **keys,
                    "seed": run.seed,
                    "epochs": run.epochs,
                    "status": run.status,
                    "threshold": threshold or thresholds.get(run.id, 0.05),
                }
            )
            if run.status != "completed":
                budgets = config.eval_budgets if config.eps_value == 0 else (config.eps,)
                pending += [{**keys, "eps": b, "status": run.status, "run_id": run.id} for b in budgets]
                continue
            chosen = selection.rows(rows.get(run.id, []), config)
            if not chosen:
                without[run.id] = {
                    f"{ev.protocol} APGD-{ev.steps} {ev.precision}" for ev in rows.get(run.id, [])
                }
            for ev in rows.get(run.id, []):
                if ev.attack.startswith("autoattack") and ev.budget == config.eps and config.eps_value > 0:
                    version = ev.attack.removeprefix("autoattack-")
                    measured = {m: getattr(ev, m) for m in METRICS} | {
                        "worst": store.worst_case(run.id, ev.budget)
                    }
                    autoattack += [
                        {**keys, "seed": run.seed, "run_id": run.id, "version": version, "steps": ev.steps,
                         "protocol": ev.protocol, "precision": ev.precision, "aa_seed": ev.seed, "metric": m,
                         "value": 100 * v}
                        for m, v in measured.items() if v is not None
                    ]  # fmt: skip
            for ev in chosen:
                selected.append(ev.model_dump())
                for metric in METRICS:
                    values.append(
                        {
                            **keys,
                            "eps": ev.budget,
                            "seed": run.seed,
                            "metric": metric,
                            "value": 100 * getattr(ev, metric),
                            "run_id": run.id,
                        }
                    )
        epochs = pd.DataFrame(
            [
                {
                    "run_id": e.run_id,
                    "epoch": e.epoch,
                    "eps": e.eps,
                    "val_acc": e.val_acc,
                    "val_adv_acc": e.val_adv_acc,
                    "val_adv_eps": e.val_adv_eps,
                }
                for e in data["epochs"]
            ],
            columns=["run_id", "epoch", "eps", "val_acc", "val_adv_acc", "val_adv_eps"],
        )
        evaluations = pd.DataFrame([e.model_dump() for e in data["evaluations"]])
        done = epochs.groupby("run_id").size().to_dict() if len(epochs) else {}
        pending = pd.DataFrame(pending, columns=[*KEYS, "status", "run_id"])
        pending["done"] = pending["run_id"].map(done).fillna(0).astype(int)
        frame = pd.DataFrame(values, columns=[*KEYS, "seed", "metric", "value", "run_id"])
        selected = pd.DataFrame(selected)
        label = selection.label(*((set(selected.steps), set(selected.norm)) if len(selected) else (set(),)))
        notes = "; ".join(n for n in (missing_note(without, unread, selection), aside) if n)
        return cls(frame, pending, epochs, pd.DataFrame(runs), evaluations, selected, "database", label,
                   notes, pd.DataFrame(autoattack))  # fmt: skip

    @classmethod
    def paper(cls, table: str) -> Results:
        """The paper's published numbers for report `table` (CONVENTIONS.md, "Paper numbers")."""
        if table not in PAPER_TABLES:
            raise ReportError(f"the paper publishes no numbers for the {table!r} report; it needs a database")
        frame = paper_frame()
        frame = frame[frame["table"].isin(PAPER_TABLES[table])]
        if table == "autoattack":  # Table 6: the same runs under both attacks
            aa = frame[frame.table == "6-autoattack"].drop(columns="table").assign(seed=0, run_id="")
            apgd = frame[frame.table == "6-apgd"].drop(columns="table")
            return cls(
                apgd.assign(seed=0, run_id=""), source="paper", autoattack=aa.assign(version="standard")
            )
        frame = frame.drop(columns="table").drop_duplicates([*KEYS, "metric"])  # Tables 4, 8 repeat runs
        return cls(frame.assign(seed=0, run_id=""), source="paper")


def newest_per_cell(runs: list) -> tuple[list, str]:
    """One run per table cell and seed: where a grid holds several (its definition changed, e.g. from
    fp32 to bf16, and both were run), the newest, and a note naming what the others differ in. Averaging
    them would mix two experiments into one number."""
    newest: dict[tuple, object] = {}
    for run in sorted(runs, key=lambda r: r.created_at):
        newest[cell_key(run)] = run
    kept = {run.id for run in newest.values()}
    aside = [run for run in runs if run.id not in kept]
    if not aside:
        return runs, ""
    differ: set[str] = set()
    for run in aside:
        shown = newest[cell_key(run)]
        old, new = json.loads(run.config), json.loads(shown.config)
        differ |= {key for key in old.keys() | new.keys() if old.get(key) != new.get(key)}
    return [run for run in runs if run.id in kept], (
        f"{len(aside)} older run(s) set aside ({', '.join(r.id for r in aside[:5])}"
        f"{', …' if len(aside) > 5 else ''}): a newer run of the same cell differs in "
        f"{', '.join(sorted(differ))}; each cell shows its newest run"
    )


def cell_key(run) -> tuple:
    """The table cell and seed a stored run fills (piecewise runs of different points are different cells)."""
    points = json.loads(run.config).get("points") or []
    return (run.backbone, run.dataset, run.setting, run.eps, run.t1, run.t2, str(points), run.seed)


def missing_note(without: dict[str, set], unread: list[str], selection: Selection) -> str:
    """Runs a report cannot show under `selection`, and the command that fixes it."""
    notes = []
    if without:
        have = sorted(set().union(*without.values())) or ["none"]
        notes.append(
            f"{len(without)} completed run(s) have no {selection.protocol} {selection.precision} evaluation "
            f"(they have: {', '.join(have)}): "
            f"`{selection.command()}` adds it, or choose --protocol"
        )
    if unread:
        notes.append(
            f"{len(unread)} run(s) have a config this rftbench cannot read ({', '.join(unread)}): upgrade"
        )
    return "; ".join(notes)


def paper_frame() -> pd.DataFrame:
    """`paper_results.csv`: table, backbone, dataset, setting, eps, t1, t2, metric, value (percent).
    Hinge settings are put in the engine's canonical form (0/0 is fix, 0/T2 is linear)."""
    text = files("rftbench").joinpath("paper_results.csv").read_text()
    frame = pd.read_csv(io.StringIO(text), dtype={"table": str, "eps": str})
    hinge = frame["setting"] == "sched"
    frame.loc[hinge & (frame.t1 == 0) & (frame.t2 == 0), "setting"] = "fix"
    frame.loc[hinge & (frame.t1 == 0) & (frame.t2 > 0), "setting"] = "linear"
    frame.loc[frame.setting == "fix", ["t1", "t2"]] = np.nan
    frame.loc[(frame.setting == "sched") & frame.t1.isna(), ["t1", "t2"]] = [12.0, 37.0]  # Tables 1-6, 8
    return frame


# ---- labels and ordering ----------------------------------------------------------------------------


def setting_labels(frame: pd.DataFrame) -> pd.Series:
    """`sched` when a hinge setting appears with one T1/T2 only; `sched 12/37` when several are present."""
    hinge = frame.setting.isin(["sched", "linear"])
    label = frame.setting.copy()
    if not hinge.any():  # (groupby-apply on no rows gives a frame, not a series)
        return label
    pairs = frame[hinge].groupby("setting")[["t1", "t2"]].apply(lambda g: len(g.drop_duplicates()))
    several = hinge & frame.setting.map(pairs).fillna(0).gt(1)
    label[several] = (
        frame.setting[several]
        + " "
        + frame.t1[several].map("{:g}".format)
        + "/"
        + frame.t2[several].map("{:g}".format)
    )
    return label


def order(values, registry) -> list:
    present = list(dict.fromkeys(values))
    known = [v for v in registry if v in present]
    return known + sorted(v for v in present if v not in registry)


def setting_order(labels) -> list:
    return sorted(dict.fromkeys(labels), key=lambda s: (list(SCHEDULES).index(s.split()[0]), s))


def eps_order(values) -> list[str]:
    return sorted(dict.fromkeys(values), key=budget_value)


def fmt(value: float) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"


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


def cell(stat: dict, spread: str) -> str:
    """`53.60 ± 1.20`: the mean over seeds ± their standard deviation (spread "sd") or the half-width of
    the 95% confidence interval ("ci"); one seed, or spread "none", shows the value alone."""
    if stat["n"] < 2 or spread == "none":
        return fmt(stat["mean"])
    half = stat["sd"] if spread == "sd" else stat["ci_high"] - stat["mean"]
    return f"{stat['mean']:.2f} ± {half:.2f}"


def spread_note(seeds: int, spread: str) -> str:
    """What ± means in a table whose cells pool up to `seeds` seeds (empty for single-seed tables)."""
    if seeds < 2 or spread == "none":
        return f"means over up to {seeds} seeds" if seeds > 1 else ""
    what = "standard deviation" if spread == "sd" else "half-width of the 95% confidence interval (Student t)"
    return f"mean ± {what} over up to {seeds} seeds (n per cell in the CSV)"


def _stat_columns(stat: dict | None) -> dict:
    if stat is None or stat["n"] < 2:
        return {}
    return {"n": stat["n"], **{k: round(stat[k], 2) for k in ("sd", "ci_low", "ci_high")}}


# ---- the tables -----------------------------------------------------------------------------------


def cell_stats(frame: pd.DataFrame, by: list[str]) -> dict[tuple, dict]:
    """`summary` of `value` over seeds for every group of `by`."""
    return {key: summary(group.value) for key, group in frame.groupby(by, sort=False)}


def main_table(
    results: Results, eps: list[str], compare: Results | None = None, spread: str = "sd"
) -> list[Section]:
    """Tables 1 and 2: rows backbone × setting, columns dataset × {Clean, Adv., E. adv.}, one per ε_g;
    several seeds of a cell show as their mean ± their spread."""
    frame = results.values.assign(label=setting_labels(results.values))
    sections = []
    for budget in eps:
        sub = frame[frame.eps == budget]
        pending = results.pending[results.pending.eps == budget] if len(results.pending) else results.pending
        if sub.empty and pending.empty:
            continue
        cells = cell_stats(sub, ["backbone", "label", "dataset", "metric"])
        paper = _paper_means(compare, budget) if compare is not None else None
        backbones = order(list(sub.backbone) + list(pending.get("backbone", [])), BACKBONES)
        datasets = order(list(sub.dataset) + list(pending.get("dataset", [])), DATASET_ORDER)
        labels = setting_order(list(sub.label) + list(pending.get("setting", [])))
        rows, long = [], []
        for backbone in backbones:
            for label in labels:
                row = {"Backbone": backbone, "Setting": label}
                present = False
                for dataset in datasets:
                    status = _status(pending, backbone, label, dataset)
                    for metric, name in METRICS.items():
                        stat = cells.get((backbone, label, dataset, metric), summary([]))
                        value = stat["mean"]
                        present |= not math.isnan(value) or bool(status)
                        text = cell(stat, spread) or (status if metric == "clean" else "")
                        if paper is not None:
                            ref = paper.get((backbone, label, dataset, metric), np.nan)
                            text = _compare_cell(value, ref) or text
                            long.append(
                                _long(backbone, dataset, label, budget, metric, value, ref, stat=stat)
                            )
                        elif not math.isnan(value):
                            long.append(_long(backbone, dataset, label, budget, metric, value, stat=stat))
                        row[f"{dataset} {name}"] = text
                if present:
                    rows.append(row)
        title = f"Main results at ε_g = {budget} (test accuracy, %)" + (
            " [paper]" if results.source == "paper" else ""
        )
        seeds = max((c["n"] for c in cells.values()), default=0)
        compared = "ours (paper, ours - paper)" if compare is not None else ""
        note = "; ".join(n for n in (compared, spread_note(seeds, spread)) if n)
        sections.append(Section(title, pd.DataFrame(rows), pd.DataFrame(long), note))
    if not sections:
        raise ReportError(f"no results at ε_g = {', '.join(eps)} in the {results.source}")
    return sections


def _status(pending: pd.DataFrame, backbone: str, label: str, dataset: str) -> str:
    if pending.empty:
        return ""
    hit = pending[
        (pending.backbone == backbone)
        & pending.setting.isin([label, label.split()[0]])
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


def _long(backbone, dataset, setting, eps, metric, value, paper=None, t1=None, t2=None, stat=None) -> dict:
    """One long-format row; `stat` (a `summary` over several seeds) adds n, sd and the 95% CI."""
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
    return row | _stat_columns(stat)


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
            rows, long, seeds = [], [], 0
            for name in names:
                for label in setting_order(sub.label):
                    if (name, label, "clean") not in counts and (name, label, "adv") not in counts:
                        continue
                    n = max(counts.get((name, label, m), 0) for m in METRICS)
                    row = {group.capitalize(): name, "Setting": label, f"n {over}s": int(n)}
                    for metric, metric_name in METRICS.items():
                        stat = cells.get((name, label, metric))
                        row[metric_name] = cell(stat, spread) if stat else ""
                        if stat:
                            seeds = max(seeds, stat["n"])
                            long.append(
                                {"group": group, "name": name, "setting": label, "eps": budget,
                                 "metric": metric, "value": round(stat["mean"], 2)} | _stat_columns(stat)
                            )  # fmt: skip
                    rows.append(row)
            sections.append(Section(f"{title} at ε_g = {budget} (%)", pd.DataFrame(rows), pd.DataFrame(long),
                                    spread_note(seeds, spread)))  # fmt: skip
    if not sections:
        raise ReportError(f"no results at ε_g = {', '.join(eps)} in the {results.source}")
    return sections


def default_pairs(labels) -> list[tuple[str, str]]:
    """The paper's sched vs fix first, then every other setting vs fix, then every non-paper schedule vs
    sched (adaptive vs sched, …): the comparisons a table of these settings is read for."""
    labels = setting_order(labels)
    sched = next((label for label in labels if label.split()[0] == "sched"), None)
    pairs = [(sched, "fix")] if sched and "fix" in labels else []
    pairs += [(label, "fix") for label in labels if label not in ("fix", sched) and "fix" in labels]
    pairs += [
        (label, sched) for label in labels if sched and label.split()[0] not in ("fix", "sched", "standard")
    ]
    return pairs


def ttest_table(
    results: Results, eps: list[str], pairs: list[tuple[str, str]] | None = None
) -> list[Section]:
    """Paired t-tests a vs b over the (backbone, dataset, seed) triples present in both, with the 95%
    confidence interval of the mean difference and each setting's seed-to-seed standard deviation (the
    mean over cells of the sd over seeds), so a difference can be read against the noise."""
    frame = results.values.assign(label=setting_labels(results.values))
    labels = set(frame.label)

    def named(setting: str) -> str:  # "sched" names the hinge when one T1/T2 pair is shown as "sched 12/37"
        return (
            setting
            if setting in labels
            else next((x for x in sorted(labels) if x.split()[0] == setting), setting)
        )

    pairs = [(named(a), named(b)) for a, b in pairs or default_pairs(labels)]
    rows, long = [], []
    for a, b in pairs:
        for budget in eps:
            for metric, name in METRICS.items():
                sub = frame[(frame.eps == budget) & (frame.metric == metric)]
                pivot = sub.pivot_table(
                    index=["backbone", "dataset", "seed"], columns="label", values="value"
                )
                if a not in pivot or b not in pivot:
                    continue
                both = pivot[[a, b]].dropna()
                diff = paired(both[a], both[b])
                noise = both.groupby(level=["backbone", "dataset"]).std(ddof=1).mean()
                row = {
                    "Comparison": f"{a} vs {b}",
                    "ε_g": budget,
                    "Metric": name,
                    "n pairs": len(both),
                    "mean diff (pp)": fmt(diff["mean"]),
                    "95% CI (pp)": f"[{diff['ci_low']:.2f}, {diff['ci_high']:.2f}]" if diff["n"] > 1 else "",
                    "seed sd a / b (pp)": (
                        f"{noise[a]:.2f} / {noise[b]:.2f}" if not math.isnan(noise[a]) else ""
                    ),
                    "t": f"{diff['t']:.3f}" if not math.isnan(diff["t"]) else "",
                    "p": f"{diff['p']:.2e}" if not math.isnan(diff["p"]) else "",
                    "wins": diff["wins"],
                    "losses": diff["losses"],
                }
                rows.append(row)
                for stat, value in (
                    ("n", len(both)),
                    ("mean_diff", diff["mean"]),
                    ("ci_low", diff["ci_low"]),
                    ("ci_high", diff["ci_high"]),
                    ("seed_sd_a", noise[a]),
                    ("seed_sd_b", noise[b]),
                    ("t", diff["t"]),
                    ("p", diff["p"]),
                    ("wins", row["wins"]),
                    ("losses", row["losses"]),
                ):
                    long.append({"a": a, "b": b, "eps": budget, "metric": metric, "statistic": stat,
                                 "value": value})  # fmt: skip
    if not rows:
        wanted = ", ".join(f"{a} and {b}" for a, b in pairs) or "two settings"
        raise ReportError(f"no (backbone, dataset, seed) has both {wanted} results in the {results.source}")
    title = "Paired t-tests over (backbone, dataset, seed) (percentage points)"
    note = "t and p from scipy.stats.ttest_rel; seed sd: standard deviation over seeds, mean over cells"
    return [Section(title, pd.DataFrame(rows), pd.DataFrame(long), note)]


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
    enough to read in a terminal: the cell is named in the title when there is one."""
    runs, _ = adaptation_starts(results, "effect")
    frame = results.values.assign(label=setting_labels(results.values))
    frame = frame[frame.eps.isin(eps)]
    rows, long, starts = [], [], []
    for (backbone, dataset, budget), sub in frame.groupby(["backbone", "dataset", "eps"], sort=False):
        where = {"Backbone": backbone, "Dataset": dataset, "ε_g": budget}
        seeds = sub.pivot_table(index="seed", columns=["label", "metric"], values="value")
        labels = setting_order(sub.label)
        sched = next((label for label in labels if label.split()[0] == "sched"), None)
        others = [label for label in labels if label not in ("standard", "fix")]
        wanted = [("standard", "fix", "clean")] + [(a, "fix", m) for a in others for m in ("clean", "eadv")]
        wanted += [(a, sched, m) for a in others if a != sched and sched for m in ("clean", "eadv")]
        loss = None
        for a, b, metric in wanted:
            if (a, metric) not in seeds or (b, metric) not in seeds:
                continue
            both = seeds[[(a, metric), (b, metric)]].dropna()
            stat = paired(both[(a, metric)], both[(b, metric)])
            finding = f"{a} − {b}, {METRICS[metric]}"
            if (a, b, metric) == ("standard", "fix", "clean"):
                loss, finding = stat["mean"], "what fix lost to standard (clean, standard − fix)"
            elif b == "fix" and metric == "clean":
                share = f": {100 * stat['mean'] / loss:.0f}% of it" if loss and loss > 0 else ""
                finding = f"what {a} won back (clean, {a} − fix){share}"
            rows.append(
                {**where, "Finding": finding, "pp": f"{stat['mean']:+.2f}",
                 "95% CI": f"[{stat['ci_low']:+.2f}, {stat['ci_high']:+.2f}]" if stat["n"] > 1 else "",
                 "a > b": f"{stat['wins']} of {stat['n']} seeds",
                 "p": f"{stat['p']:.3f}" if not math.isnan(stat["p"]) else ""}
            )  # fmt: skip
            long.append(
                {"backbone": backbone, "dataset": dataset, "eps": budget, "a": a, "b": b, "metric": metric,
                 "n": stat["n"], "mean_diff": stat["mean"], "ci_low": stat["ci_low"],
                 "ci_high": stat["ci_high"], "wins": stat["wins"], "p": stat["p"]}
            )  # fmt: skip
        cell_runs = runs[runs.run_id.isin(set(sub.run_id))].assign(label=setting_labels)
        for label in setting_order(cell_runs.label):
            group = cell_runs[cell_runs.label == label].sort_values("seed")
            shown = [f"{s} (never)" if s == n else str(s) for s, n in zip(group.start, group.epochs)]
            starts.append(
                {**where, "Setting": label,
                 "threshold": ", ".join(f"{100 * t:g}%" for t in dict.fromkeys(group.threshold)),
                 "seeds": ", ".join(str(s) for s in group.seed), "start epoch per seed": ", ".join(shown),
                 "mean": fmt(group.start.mean())}
            )  # fmt: skip
    if not rows and not starts:
        raise ReportError(f"no results at ε_g = {', '.join(eps)} in the {results.source}")
    rows, starts = pd.DataFrame(rows), pd.DataFrame(starts)
    keys = ["Backbone", "Dataset", "ε_g"]
    cells = pd.concat([t[keys] for t in (rows, starts) if not t.empty]).drop_duplicates()
    named = ""
    if len(cells) == 1:  # one cell: named once in the titles, not on every row
        named = " — {} on {} at ε_g = {}".format(*cells.iloc[0])
        rows, starts = (t.drop(columns=keys, errors="ignore") for t in (rows, starts))
    return [
        Section(
            f"What ε-scheduling changed{named}: test accuracy, percentage points, paired over seeds",
            rows,
            pd.DataFrame(long),
            "a − b per seed, then the mean, its 95% CI (Student t) and p (scipy.stats.ttest_rel); a share "
            "won back is of fix's clean loss to standard",
        ),
        Section(
            f"Task-adaptation start{named}: the first 0-based epoch with validation accuracy above the "
            "threshold",
            starts,
            starts,
            "never: the run's epoch count, as the paper counts it",
        ),
    ]


def delay_table(results: Results, include_standard: bool = False) -> list[Section]:
    """Per run: the task-adaptation start epoch and the final validation accuracy; per (backbone, dataset)
    over the fix sweep: their Pearson and Spearman correlations; each fix run's clean drop from ε = 0."""
    runs, curves = adaptation_starts(results, "delay")
    clean = results.values[results.values.metric == "clean"].groupby("run_id").value.first()
    runs["clean"] = runs.run_id.map(clean)
    per_run = pd.DataFrame(
        {
            "Run": runs.run_id.str[:8],
            "Backbone": runs.backbone,
            "Dataset": runs.dataset,
            "Setting": runs.setting,
            "ε_g": runs.eps,
            "Seed": runs.seed,
            "threshold": runs.threshold.map("{:g}".format),
            "start epoch": runs.start,
            "final val acc": runs.final_val.map(fmt),
            "test clean": runs.clean.map(fmt),
            "epochs": [f"{len(curves[r])}/{n}" for r, n in zip(runs.run_id, runs.epochs)],
        }
    )
    per_run_long = runs.melt(
        id_vars=["backbone", "dataset", "setting", "eps", "seed", "run_id"],
        value_vars=["start", "final_val"],
        var_name="metric",
    )
    sweep = runs[(runs.setting.isin(["fix", "standard"])) & runs.complete]
    if not include_standard:
        sweep = sweep[sweep.eps.map(budget_value) > 0]
    rows, long = [], []
    for (backbone, dataset), group in sweep.groupby(["backbone", "dataset"], sort=False):
        n = len(group)
        varied = n > 2 and group.start.nunique() > 1 and group.final_val.nunique() > 1
        pearson = stats.pearsonr(group.start, group.final_val) if varied else None
        spearman = stats.spearmanr(group.start, group.final_val) if varied else None
        row = {
            "Backbone": backbone,
            "Dataset": dataset,
            "n runs": n,
            "Pearson r": f"{pearson.statistic:.3f}" if pearson else "",
            "p (Pearson)": f"{pearson.pvalue:.2e}" if pearson else "",
            "Spearman ρ": f"{spearman.statistic:.3f}" if spearman else "",
            "p (Spearman)": f"{spearman.pvalue:.2e}" if spearman else "",
        }
        rows.append(row)
        for stat, value in (
            ("n", n),
            ("pearson_r", pearson.statistic if pearson else None),
            ("spearman_rho", spearman.statistic if spearman else None),
        ):
            long.append({"backbone": backbone, "dataset": dataset, "statistic": stat, "value": value})
    drops = []  # each fix run against standard fine-tuning of the same seed (else the mean over seeds)
    standard = runs[(runs.setting == "standard")]
    base = standard.groupby(["backbone", "dataset", "seed"]).clean.mean()
    base_mean = standard.groupby(["backbone", "dataset"]).clean.mean()
    for r in runs[(runs.setting == "fix")].itertuples():
        ref = base.get((r.backbone, r.dataset, r.seed), base_mean.get((r.backbone, r.dataset), np.nan))
        if not math.isnan(ref) and not math.isnan(r.clean):
            drops.append(
                {
                    "Backbone": r.backbone,
                    "Dataset": r.dataset,
                    "ε_g": r.eps,
                    "Seed": r.seed,
                    "clean": fmt(r.clean),
                    "ε = 0 clean": fmt(ref),
                    "drop (pp)": fmt(ref - r.clean),
                }
            )
    sections = [
        Section(
            "Task-adaptation start and final validation accuracy per run",
            per_run,
            per_run_long,
            "start epoch: first 0-based epoch with validation accuracy above the threshold",
        )
    ]
    if runs.seed.nunique() > 1:  # the start epoch is noisy too: its spread over seeds, per setting
        runs["label"] = setting_labels(runs)
        starts = []
        for label in setting_order(runs.label):
            for (backbone, dataset, budget), group in runs[runs.label == label].groupby(
                ["backbone", "dataset", "eps"]
            ):
                stat = summary(group.start)
                starts.append(
                    {
                        "Backbone": backbone,
                        "Dataset": dataset,
                        "Setting": label,
                        "ε_g": budget,
                        "seeds": stat["n"],
                        "start epoch": cell(stat, "sd"),
                        "starts": ", ".join(str(v) for v in group.sort_values("seed").start),
                    }
                )
        note = "mean ± standard deviation over seeds; starts in seed order"
        table = pd.DataFrame(starts)
        sections.append(Section("Task-adaptation start over seeds", table, table, note))
    scope = "ε_g ≥ 0" if include_standard else "ε_g > 0"
    complete = rows and all(row["Pearson r"] for row in rows)
    few = "a correlation needs 3 or more finished fix runs of a pair, with varying start epochs"
    seeds = "every seed's run is one point" if runs.seed.nunique() > 1 else ""
    note = "; ".join(n for n in (seeds, "" if complete else few) if n)
    sections.append(
        Section(
            f"Delay correlations over the fix sweep ({scope}): start epoch vs final val acc",
            pd.DataFrame(rows),
            pd.DataFrame(long),
            note,
        )
    )
    if drops:
        sections.append(
            Section(
                "Clean-accuracy drop of fix runs from standard fine-tuning (ε = 0)",
                pd.DataFrame(drops),
                pd.DataFrame(drops),
            )
        )
    return sections


def ablation_table(results: Results, eps: list[str], spread: str = "sd") -> list[Section]:
    """Table 7: T1/T2 pairs (fix is 0/0, linear 0/T2) of every backbone × dataset with hinge runs."""
    frame = results.values[results.values.setting.isin(["fix", "linear", "sched"])].copy()
    frame["t1"], frame["t2"] = frame.t1.fillna(0.0), frame.t2.fillna(0.0)
    pairs = frame[frame.setting != "fix"][["backbone", "dataset"]].drop_duplicates()
    sections = []
    for backbone, dataset in pairs.itertuples(index=False):
        sub = frame[(frame.backbone == backbone) & (frame.dataset == dataset) & frame.eps.isin(eps)]
        cells = cell_stats(sub, ["t1", "t2", "eps", "metric"])
        rows, long = [], []
        for t1, t2 in sorted(set(zip(sub.t1, sub.t2))):
            row = {"T1": f"{t1:g}", "T2": f"{t2:g}"}
            for budget in eps_order(sub.eps):
                for metric, name in METRICS.items():
                    stat = cells.get((t1, t2, budget, metric), summary([]))
                    row[f"{budget} {name}"] = cell(stat, spread)
                    if stat["n"]:
                        long.append(
                            _long(
                                backbone,
                                dataset,
                                "sched",
                                budget,
                                metric,
                                stat["mean"],
                                t1=t1,
                                t2=t2,
                                stat=stat,
                            )
                        )
            rows.append(row)
        seeds = max((c["n"] for c in cells.values()), default=0)
        sections.append(Section(f"T1/T2 ablation, {backbone}-{dataset} (%)", pd.DataFrame(rows),
                                pd.DataFrame(long), spread_note(seeds, spread)))  # fmt: skip
    if not sections:
        raise ReportError(f"no sched/linear runs in the {results.source}")
    return sections


def baselines_table(results: Results, eps: list[str], spread: str = "sd") -> list[Section]:
    """Tables 4 and 8: fix, uniform, auto and sched side by side on the pairs with a uniform or auto run,
    and adaptive beside them where it ran."""
    frame = results.values[results.values.setting.isin(BASELINE_SETTINGS)]
    sched = frame[frame.setting == "sched"]
    if len(sched):  # beside an ablation: one sched, the paper's 12/37 if present, else the most common T1/T2
        counts = sched.groupby(["t1", "t2"]).size()
        t1, t2 = (12.0, 37.0) if (12.0, 37.0) in counts.index else counts.idxmax()
        frame = frame[(frame.setting != "sched") | ((frame.t1 == t1) & (frame.t2 == t2))]
    pairs = frame[frame.setting.isin(["uniform", "auto", "adaptive"])][
        ["backbone", "dataset"]
    ].drop_duplicates()
    if pairs.empty:
        raise ReportError(f"no uniform, auto or adaptive runs in the {results.source}")
    sections = []
    for budget in eps:
        sub = frame[frame.eps == budget]
        cells = cell_stats(sub, ["backbone", "dataset", "setting", "metric"])
        settings = [s for s in BASELINE_SETTINGS if s in set(sub.setting)]
        rows, long = [], []
        for backbone, dataset in pairs.itertuples(index=False):
            row = {"Backbone": backbone, "Dataset": dataset}
            for setting in settings:
                for metric, name in METRICS.items():
                    stat = cells.get((backbone, dataset, setting, metric), summary([]))
                    row[f"{setting} {name}"] = cell(stat, spread)
                    if stat["n"]:
                        long.append(
                            _long(backbone, dataset, setting, budget, metric, stat["mean"], stat=stat)
                        )
            rows.append(row)
        if settings:
            seeds = max((c["n"] for c in cells.values()), default=0)
            title = f"Baselines at ε_g = {budget} (%)"
            note = spread_note(seeds, spread)
            sections.append(Section(title, pd.DataFrame(rows), pd.DataFrame(long), note))
    return sections


def evaluations_table(results: Results, run_id: str | None = None) -> list[Section]:
    """Every evaluation row: final ones from training, extra ones from `rftbench evaluate`."""
    if results.source == "paper" or results.evaluations.empty:
        raise ReportError("no evaluations to show: `evaluations` lists a database's evaluation rows")
    ev = results.evaluations.merge(results.runs, on="run_id", suffixes=("", "_run"))
    if run_id:
        ev = ev[ev.run_id.str.startswith(run_id)]
        if ev.empty:
            raise ReportError(f"no evaluated run with id {run_id!r}; `rftbench status` lists the runs")
    ev = ev.sort_values(["run_id", "budget_value", "protocol", "steps", "precision"])
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
            "n": ev.n,
            "Clean": (100 * ev.clean).map(fmt),
            "Adv.": (100 * ev.adv).map(fmt),
            "E. adv.": (100 * ev.eadv).map(fmt),
            "measured by": ev.implementation.fillna("rftbench"),
        }
    )
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
    long = ev[[*columns, "steps", "restarts", "random_start", "seed", "precision", "implementation"]].copy()
    long = pd.concat([long.assign(metric=m, value=(100 * ev[m]).round(2)) for m in METRICS])
    return [Section("Evaluations", table.reset_index(drop=True), long)]


def autoattack_table(results: Results) -> list[Section]:
    """The paper's Table 6 layout: per run (backbone, dataset, setting, ε_g), the clean accuracy, then Adv.
    and E. adv. under APGD (the selected protocol) beside the same under AutoAttack, and from a database
    the worst case per sample over every evaluation of the run stored with per-sample flags at ε_g."""
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
    apgd, seeds, versions = cells(results.values), len(set(aa.seed)) > 1, sorted(set(aa.version))
    sections = []
    for budget in eps_order(set(aa.eps)):
        rows, long = [], []
        for variant in variants:
            version = variant["version"]
            chosen = (aa.eps == budget) & np.logical_and.reduce([aa[c] == v for c, v in variant.items()])
            measured = cells(aa[chosen])
            for key in sort_keys(measured):
                row, theirs, ours = dict(zip(index, key)), measured[key], apgd.get(key, {})
                out = {"Backbone": row["backbone"], "Dataset": row["dataset"], "Setting": row["setting"]}
                out |= {"Seed": row["seed"]} if seeds else {}
                if len(variants) > 1:
                    out["AutoAttack"] = ", ".join(str(variant[c]) for c in aspects)
                out["Clean"] = fmt(theirs.get("clean", ours.get("clean", np.nan)))
                for source, values in (("APGD", ours), ("AA", theirs)):
                    for metric in ("adv", "eadv"):
                        out[f"{source} {METRICS[metric]}"] = fmt(values.get(metric, np.nan))
                if results.source != "paper":
                    out["Worst Adv."] = fmt(theirs.get("worst", np.nan))
                rows.append(out)
                for metric, value in theirs.items():
                    cell = _long(row["backbone"], row["dataset"], row["setting"], budget, metric, value)
                    long.append(cell | {"attack": f"autoattack-{version}", "seed": row["seed"]})
        note = f"AA: AutoAttack {', '.join(versions)} (torchattacks, auto-attack's parameters); APGD: "
        note += results.protocol
        if results.source != "paper":
            note += "; Worst: robust only where every attack stored with per-sample flags at ε_g failed"
        sections.append(Section(f"AutoAttack and APGD at ε_g = {budget} (%)", pd.DataFrame(rows),
                                pd.DataFrame(long), note))  # fmt: skip
    return sections


def sort_keys(keys) -> list:
    """Index keys (backbone, dataset, setting, …) in the paper's order of datasets, then by name."""
    order = {d: i for i, d in enumerate(DATASET_ORDER)}
    return sorted(keys, key=lambda k: (str(k[0]), order.get(k[1], len(order)), str(k[1]), str(k[2]), k[-1]))


def build(
    name: str,
    results: Results,
    *,
    eps: list[str] | None = None,
    compare: Results | None = None,
    include_standard: bool = False,
    run_id: str | None = None,
    spread: str = "sd",
    pairs: list[tuple[str, str]] | None = None,
) -> list[Section]:
    """The sections of report `name` (one of TABLES); `spread` is what ± shows over seeds (SPREADS),
    `pairs` the (a, b) settings the t-test table compares (default: `default_pairs`)."""
    if name not in TABLES:
        raise ReportError(f"unknown table {name!r}: choose one of {', '.join(TABLES)}")
    if spread not in SPREADS:
        raise ReportError(f"--spread {spread!r}: choose one of {', '.join(SPREADS)}")
    budgets = eps or eps_order(v for v in results.values.eps if budget_value(v) > 0)
    if compare is not None and name != "main":
        raise ReportError("--compare paper is available for the main table")
    if name == "evaluations":
        return evaluations_table(results, run_id)
    if name == "autoattack":
        return autoattack_table(results)
    sections = {
        "main": lambda: main_table(results, budgets, compare, spread),
        "averages": lambda: averages_table(results, budgets, spread),
        "ttest": lambda: ttest_table(results, budgets, pairs),
        "delay": lambda: delay_table(results, include_standard),
        "effect": lambda: effect_table(results, budgets),
        "ablation": lambda: ablation_table(results, budgets, spread),
        "baselines": lambda: baselines_table(results, budgets, spread),
    }[name]()
    said = f"test accuracies: {results.protocol}"
    for section in sections:  # every table says how its numbers were measured, and what it leaves out
        section.note = "; ".join(n for n in (section.note, said, results.missing) if n)
    return sections


# ---- output ---------------------------------------------------------------------------------------


def to_markdown(sections: list[Section]) -> str:
    out = []
    for section in sections:
        out.append(f"### {section.title}\n")
        table = section.table
        if table.empty:
            out.append("(no rows)\n")
        else:
            cells = [[str(c) for c in table.columns]] + [
                [str(v) for v in row] for row in table.itertuples(index=False)
            ]
            out.append("| " + " | ".join(cells[0]) + " |")
            out.append("|" + "|".join("---" for _ in cells[0]) + "|")
            out += ["| " + " | ".join(row) + " |" for row in cells[1:]]
            out.append("")
        if section.note:
            out.append(f"_{section.note}_\n")
    return "\n".join(out)


def to_csv(sections: list[Section]) -> str:
    frames = [s.long.assign(table=s.title) for s in sections if not s.long.empty]
    return pd.concat(frames, ignore_index=True).to_csv(index=False) if frames else ""


def to_latex(sections: list[Section]) -> str:
    out = []
    for section in sections:
        if section.table.empty:
            continue
        styler = section.table.style.hide(axis="index").format(escape="latex")
        caption = section.title.replace("%", r"\%").replace("_", r"\_")
        out.append(styler.to_latex(hrules=True, caption=caption, position_float="centering"))
    return "\n".join(out)


def render(sections: list[Section], fmt_: str) -> str:
    if fmt_ == "md":
        return to_markdown(sections)
    if fmt_ == "csv":
        return to_csv(sections)
    if fmt_ == "latex":
        return to_latex(sections)
    raise ReportError(f"unknown format {fmt_!r}: choose md, csv or latex")
