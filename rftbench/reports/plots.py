"""Figures from the results database (matplotlib, written as PNG; readable without the paper's text).

    plot_curves(results, "SWIN", "Cars", "4/255", "curves.png")     # Figs 3 and 6
    plot_robustness(results, "robustness.png")                      # Fig. 4
    plot_sweep(results, "sweep.png")                                # Fig. 1
    plot_schedules(50, "4/255", "schedule.png", t1=12, t2=37)       # ε(t) of the named schedules
    plot_tuning(Results.studies(store), "tuning.png")               # each study's trials against its knobs

Reads `rftbench.reports.results.Results` and never trains. Accuracies are drawn in percent, epochs 0-based.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure  # the object API: no pyplot state, no display backend
from matplotlib.ticker import MaxNLocator

from rftbench.core.config import budget_value, parse_eps
from rftbench.core.metrics import adaptation_start_epoch
from rftbench.core.schedules import ScheduleSpec
from rftbench.core.tuning import TUNABLE
from rftbench.reports.results import ReportError, Results
from rftbench.reports.stats import base_setting, eps_order, setting_labels, summary, variant_of, with_variants
from rftbench.reports.weights import weights_note

COLOURS = {
    "standard": "tab:green",
    "fix": "tab:red",
    "sched": "tab:blue",
    "linear": "tab:purple",
    "piecewise": "tab:pink",
    "uniform": "tab:orange",
    "auto": "tab:brown",
    "adaptive": "tab:cyan",
}


def _save(fig, out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    return out


def _subplots(rows: int = 1, cols: int = 1, **kwargs):
    fig = Figure(figsize=kwargs.pop("figsize", None))
    return fig, fig.subplots(rows, cols, **kwargs)


def _decorate(ax, xlabel: str, ylabel: str, title: str, percent: bool = True) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if percent:
        ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


MARKERS = ("o", "s", "^", "D", "v", "P", "X")  # one per variant (objective, fine-tuning mode) off the paper's


def _colour(label: str) -> str:
    return COLOURS.get(base_setting(label), "tab:gray")


def _markers(labels) -> dict[str, dict]:
    """Per label, the marker its curves carry: none for the paper's recipe, one per other variant, so that
    fix and fix+trades (one colour) stay apart."""
    variants = sorted({variant_of(label) for label in labels} - {""})
    shapes = {v: MARKERS[i % len(MARKERS)] for i, v in enumerate(variants)}
    return {
        label: {"marker": shapes[variant_of(label)], "ms": 4} if variant_of(label) else {} for label in labels
    }


def _band(ax, x, curves: np.ndarray, colour: str, label: str, **style) -> None:
    """The mean of `curves` (one row per seed) as a line, ± their standard deviation as a band."""
    mean = np.nanmean(curves, axis=0)
    ax.plot(x, mean, color=colour, label=label, **style)
    if len(curves) > 1:
        sd = np.nanstd(curves, axis=0, ddof=1)
        ax.fill_between(x, mean - sd, mean + sd, color=colour, alpha=0.15, lw=0)


def _stack(histories: list, length: int, column: str) -> np.ndarray:
    """One row per run of `column` over epochs; a run still training is padded with NaN (its band narrows)."""
    return np.array(
        [np.pad(h[column].to_numpy(float), (0, length - len(h)), constant_values=np.nan) for h in histories]
    )


def _seeds(n: int) -> str:
    return f" (mean of {n} seeds ± sd)" if n > 1 else ""


def plot_curves(results: Results, backbone: str, dataset: str, eps: str | None, out: str | Path) -> Path:
    return _save(curves_figure(results, backbone, dataset, eps), out)


def curves_figure(results: Results, backbone: str, dataset: str, eps: str | None) -> Figure:
    """Validation clean (solid) and adversarial (dashed) accuracy per epoch for each setting of one backbone
    × dataset (ε_g = `eps`, plus standard fine-tuning), ε(t) on the right axis, adaptation starts marked;
    several seeds of a setting draw their mean and a ± standard deviation band."""
    runs = results.runs
    runs = runs[(runs.backbone == backbone) & (runs.dataset == dataset)]
    if eps is not None:
        runs = runs[(runs.eps == eps) | (runs.setting == "standard")]
    runs = runs[runs.run_id.isin(results.epochs.run_id)]
    if runs.empty:
        raise ReportError(
            f"no run of {backbone}/{dataset}{f' at {eps}' if eps else ''} has per-epoch metrics"
        )
    runs = runs.assign(label=setting_labels(runs))
    markers = _markers(runs.label)
    fig, ax = _subplots(figsize=(8, 4.5))
    eps_ax = ax.twinx()
    seeds = 1
    for i, ((label, budget), group) in enumerate(runs.groupby(["label", "eps"], sort=False)):
        histories = [results.epochs[results.epochs.run_id == r].sort_values("epoch") for r in group.run_id]
        x = np.arange(max(len(h) for h in histories))
        stack = functools.partial(_stack, histories, len(x))
        name = label if label == "standard" else f"{label} {budget}"
        colour, seeds = _colour(label), max(seeds, len(histories))
        _band(ax, x, 100 * stack("val_acc"), colour, f"{name}: clean", lw=2, **markers[label])
        if any(h.val_adv_acc.notna().any() for h in histories):
            adv_eps = next(
                (h.val_adv_eps.dropna().iloc[0] for h in histories if h.val_adv_eps.notna().any()), ""
            )
            adv = f"{name}: APGD at {adv_eps}"
            _band(ax, x, 100 * stack("val_adv_acc"), colour, adv, lw=1.5, ls="--", **markers[label])
        eps_ax.plot(x, np.nanmean(stack("eps"), axis=0) * 255, color=colour, lw=1, ls=":", alpha=0.8)
        starts = [
            adaptation_start_epoch(list(h.val_acc), r.threshold, r.epochs)
            for h, r in zip(histories, group.itertuples())
        ]
        reached = [v for v in starts if v < group.epochs.iloc[0]]
        if reached:
            start = float(np.mean(reached))
            ax.axvline(start, color=colour, lw=1, alpha=0.5)
            text = f"start {start:g}" if len(set(starts)) == 1 else f"starts {','.join(map(str, starts))}"
            # from the top, where early epochs leave room; settings that start together side by side
            ax.annotate(f"{label}: {text}", (start, 98), color=colour, fontsize=8, rotation=90, va="top",
                        xytext=(2 + 11 * i, 0), textcoords="offset points")  # fmt: skip
    thresholds = set(runs.threshold)
    if len(thresholds) == 1:  # what "start" means: the first epoch above this line
        threshold = 100 * thresholds.pop()
        ax.axhline(threshold, color="grey", lw=0.8, ls="-.", alpha=0.7)
        ax.annotate(f"adaptation threshold {threshold:g}%", (ax.get_xlim()[1], threshold), color="grey",
                    fontsize=8, xytext=(-2, 2), textcoords="offset points", ha="right")  # fmt: skip
    ax.set_xlabel("epoch (0-based)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("validation accuracy (%)")
    eps_ax.set_ylabel("ε(t) × 255 (dotted)")
    ax.set_ylim(0, 100)
    ax.set_title(f"{backbone} on {dataset}: task adaptation under fixed vs scheduled ε{_seeds(seeds)}")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.1, 1.0))  # outside: curves stay visible
    ax.grid(alpha=0.3)
    return fig


def plot_robustness(
    results: Results,
    out: str | Path,
    backbone: str | None = None,
    dataset: str | None = None,
    eps: str | None = None,
) -> Path:
    return _save(robustness_figure(results, backbone, dataset, eps), out)


def robustness_figure(
    results: Results, backbone: str | None = None, dataset: str | None = None, eps: str | None = None
) -> Figure:
    """Test accuracy against ε over each run's E.adv grid (the area under a curve is E.adv × ε_g); several
    seeds of a setting draw their mean and a ± standard deviation band."""
    ev = results.selected
    if ev.empty:
        raise ReportError(f"no evaluation in this database under {results.protocol}; {results.missing}")
    ev = ev.merge(results.runs, on="run_id", suffixes=("", "_run"))
    for column, value in (("backbone", backbone), ("dataset", dataset), ("budget", eps)):
        if value is not None:
            ev = ev[ev[column] == value]
    ev = ev[ev.budget_value > 0]
    if ev.empty:
        raise ReportError("no evaluation matches these filters")
    ev = ev.assign(label=setting_labels(ev))
    markers = {label: style or {"marker": "o", "ms": 3} for label, style in _markers(ev.label).items()}
    budgets = eps_order(ev.budget)
    fig, axes = _subplots(1, len(budgets), figsize=(6 * len(budgets), 4.5), squeeze=False)
    seeds = 1
    for ax, budget in zip(axes[0], budgets):
        for (b, d, label), group in ev[ev.budget == budget].groupby(
            ["backbone", "dataset", "label"], sort=False
        ):
            grids = {tuple(g) for g in group.eps_grid}
            if len(grids) > 1:
                raise ReportError(f"{b}/{d} {label}: its seeds were evaluated on different ε grids")
            x = [float(budget_value(e) * 255) if "/" in e else float(e) for e in group.eps_grid.iloc[0]]
            curves = 100 * np.array([list(a) for a in group.accuracies], dtype=float)
            eadv = summary(100 * group.eadv)
            text = f"{eadv['mean']:.1f}" + (f" ± {eadv['sd']:.1f}" if eadv["n"] > 1 else "")
            _band(ax, x, curves, _colour(label), f"{b}/{d} {label}: E.adv {text}%", **markers[label])
            seeds = max(seeds, len(group))
        _decorate(ax, "ε × 255", "test accuracy under APGD (%)", f"Robustness curves up to ε_g = {budget}")
    fig.suptitle(f"Test accuracy against ε{_seeds(seeds)}", fontsize=10)
    weights = weights_note(results.policies, " ".join(set(ev.label)))
    fig.text(0.01, -0.02, f"{results.protocol}; {weights}", fontsize=8, ha="left", va="top")
    return fig


def plot_sweep(results: Results, out: str | Path, backbone: str | None = None) -> Path:
    """Clean test accuracy against ε_g for fix runs (ε_g = 0 is standard fine-tuning), one line per dataset
    and variant (objective, fine-tuning mode; its ε_g = 0 point is its standard counterpart's,
    `Results.standard_variant`), one panel per backbone."""
    values = results.values[
        (results.values.metric == "clean") & results.values.setting.isin(["fix", "standard"])
    ]
    if backbone is not None:
        values = values[values.backbone == backbone]
    if values.empty:
        raise ReportError("no fix or standard runs with final evaluations")
    values = values.assign(
        x=[0.0 if s == "standard" else float(parse_eps(e)) * 255 for s, e in zip(values.setting, values.eps)]
    )
    # a standard run is stored once per scoring budget; its clean accuracy is the same at every one
    values = values.drop_duplicates(["run_id", "x"])
    backbones = list(dict.fromkeys(values.backbone))
    fig, axes = _subplots(1, len(backbones), figsize=(6 * len(backbones), 4.5), squeeze=False)
    for ax, name in zip(axes[0], backbones):
        for dataset, variant, group in _sweep_lines(values[values.backbone == name], results):
            curve = group.groupby("x").value.mean().sort_index()  # the mean over seeds
            ax.plot(curve.index, curve.values, marker="o", label=f"{dataset} {variant}".strip())
        _decorate(
            ax,
            "ε_g × 255 (0: standard fine-tuning)",
            "clean test accuracy (%)",
            f"{name}: fixed-ε adversarial fine-tuning",
        )
    return _save(fig, out)


def _sweep_lines(values, results: Results) -> list:
    """(dataset, variant, rows) per line of the sweep: a variant's fix runs with the standard runs of its
    ε_g = 0 counterpart; standard runs no fix line takes draw a line of their own."""
    fix, standard = values[values.setting == "fix"], values[values.setting == "standard"]
    lines, taken = [], set()
    for (dataset, variant), group in fix.groupby(["dataset", "variant"]):
        reference = results.standard_variant(variant)
        own = standard[(standard.dataset == dataset) & (standard.variant == reference)]
        lines.append((dataset, variant, pd.concat([group, own])))
        taken.add((dataset, reference))
    for (dataset, variant), group in standard.groupby(["dataset", "variant"]):
        if (dataset, variant) not in taken:
            lines.append((dataset, variant, group))
    return sorted(lines, key=lambda line: (line[0], line[1]))


def plot_schedule(label: str, values: list[float], eps: str, out: str | Path) -> Path:
    """One schedule's ε(t) per 0-based epoch (`rftbench schedule --plot`): any setting, points or history."""
    fig, ax = _subplots(figsize=(8, 4))
    ax.step(range(len(values)), np.array(values) * 255, where="post", color=_colour(label), label=label, lw=2)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _decorate(
        ax, "epoch (0-based)", "ε(t) × 255", f"{label}: ε_g = {eps}, {len(values)} epochs", percent=False
    )
    return _save(fig, out)


def plot_schedules(
    epochs: int, eps: str, out: str | Path, t1: float = 12, t2: float = 37, seed: int = 0
) -> Path:
    """ε(t) per 0-based epoch of standard, fix, sched (T1, T2), linear (T2) and uniform (one seed)."""
    eps_value = float(parse_eps(eps))
    if epochs < 1:
        raise ReportError(f"--epochs {epochs}: a schedule needs at least one epoch")
    ScheduleSpec("sched", eps_value, t1=t1, t2=t2).canonical().validate(epochs)  # T1 <= T2 <= epochs, finite
    fig, ax = _subplots(figsize=(8, 4))
    specs = {
        "standard": ScheduleSpec("standard", 0.0),
        "fix": ScheduleSpec("fix", eps_value),
        f"sched {t1:g}/{t2:g}": ScheduleSpec("sched", eps_value, t1=t1, t2=t2),
        f"linear 0/{t2:g}": ScheduleSpec("linear", eps_value, t2=t2),
        f"uniform (seed {seed})": ScheduleSpec("uniform", eps_value),
    }
    for label, spec in specs.items():
        values = np.array(spec.canonical().values(epochs, seed=seed)) * 255
        ax.step(range(epochs), values, where="post", color=_colour(label), label=label, lw=2, alpha=0.85)
    title = f"ε schedules, ε_g = {eps}, {epochs} epochs (auto depends on validation accuracy)"
    _decorate(ax, "epoch (0-based)", "ε(t) × 255", title, percent=False)
    return _save(fig, out)


# how the tuning plot draws each trial state: ended ones apart, unfinished ones (their value so far) grey
TRIAL_STYLES = {
    "completed": dict(marker="o", color="tab:blue", label="completed"),
    "pruned": dict(marker="x", color="tab:red", label="pruned (when stopped)"),
    "other": dict(marker="^", color="tab:gray", label="failed or unfinished (so far)", alpha=0.6),
}


def plot_tuning(
    results: Results,
    out: str | Path,
    backbone: str | None = None,
    dataset: str | None = None,
    eps: str | None = None,
) -> Path:
    return _save(tuning_figure(results, backbone, dataset, eps), out)


def tuning_figure(
    results: Results, backbone: str | None = None, dataset: str | None = None, eps: str | None = None
) -> Figure:
    """One row of panels per study (a configuration), one column per knob: each trial's validation accuracy
    (its last stored epoch's clean one, %) against the knob's value on a log axis; completed trials as dots,
    pruned ones as crosses at the accuracy they were stopped with, the best trial ringed."""
    trials, filters = results.tuning, {"backbone": backbone, "dataset": dataset, "eps": eps}
    for column, value in filters.items():
        if value is not None and not trials.empty:
            trials = trials[trials[column] == value]
    trials = trials[trials.number.notna() & trials.value.notna()] if not trials.empty else trials
    if trials.empty:
        given = " ".join(f"--{column} {value}" for column, value in filters.items() if value is not None)
        raise ReportError(
            f"no trial{f' of {given}' if given else ''} has a validation accuracy yet: "
            "`rftbench tune --grid NAME` trains some"
        )
    knobs = [k for k in TUNABLE if f"param_{k}" in trials.columns and trials[f"param_{k}"].notna().any()]
    studies = list(dict.fromkeys(trials.study))
    fig, axes = _subplots(
        len(studies), len(knobs), figsize=(5.5 * len(knobs), 4 * len(studies)), squeeze=False
    )
    fig.set_layout_engine("constrained")  # the title above the panels' own
    for row, key in zip(axes, studies):
        group = trials[trials.study == key]
        first = group.iloc[0]
        for ax, knob in zip(row, knobs):
            shown = group[group[f"param_{knob}"].notna()]
            if shown.empty:  # a knob another study tunes
                ax.set_visible(False)
                continue
            x = shown[f"param_{knob}"].astype(float)
            kind = shown.state.where(shown.state.isin(["completed", "pruned"]), "other")
            for state, style in TRIAL_STYLES.items():
                chosen = kind == state
                if chosen.any():
                    ax.scatter(x[chosen], shown.value[chosen], s=36, **style)
            best = shown.best.astype(bool)
            if best.any():
                ax.scatter(x[best], shown.value[best], s=220, facecolors="none", edgecolors="black", lw=1.5,
                           label=f"best: {shown.value[best].iloc[0]:.2f}%")  # fmt: skip
            if (x > 0).all():
                ax.set_xscale("log")
            setting = with_variants(group.head(1)).iloc[0]
            where = f"{first.backbone}/{first.dataset} ε_g = {first.eps} {setting} [{key[:8]}]"
            _decorate(ax, knob, "validation accuracy (%)", where)
    fig.suptitle(
        "Hyperparameter studies: each trial's clean validation accuracy at its last stored epoch", fontsize=10
    )
    return fig
