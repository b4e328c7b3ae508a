"""Commands that show what is there: the version, a schedule, the backbone and dataset registries, and
`init`, which writes an editable copy of the bundled grids.

    rftbench schedule sched --eps 4/255 --t1 12 --t2 37 --epochs 50
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from rftbench.cli.app import app, console, fail, say
from rftbench.cli.options import (
    POINTS,
    check_out,
    complete_backbone,
    complete_setting,
    parse_roots,
    parse_weights,
)
from rftbench.core.config import eps_text, parse_eps
from rftbench.core.schedules import SCHEDULES, ScheduleSpec
from rftbench.version import __version__


@app.command()
def version() -> None:
    """Print the package version."""
    console.print(f"rftbench {__version__}")


def schedule_spec(setting, eps, epochs, t1, t2, points, val_acc) -> tuple[ScheduleSpec, list[float]]:
    """The canonical schedule and validation history the flags describe, or one line and exit 2."""
    from rftbench.core.schedules import HISTORY_SETTINGS, parse_points

    try:
        history = [float(v) for v in val_acc.split(",")] if val_acc else []
    except ValueError:
        fail(f"--val-acc {val_acc!r}: write fractions separated by commas, e.g. 0.2,0.5,0.6")
    try:
        shape = parse_points(points) if points else ()
        spec = ScheduleSpec(setting, float(parse_eps(eps)), t1=t1, t2=t2, points=shape).canonical()
        spec.validate(epochs)
    except ValueError as exc:
        fail(str(exc))
    if spec.setting in HISTORY_SETTINGS and len(history) < epochs - 1:
        fail(
            f"{spec.setting} depends on a run's validation accuracy: give the {epochs - 1} accuracies of "
            f"epochs 0-{epochs - 2} with --val-acc (got {len(history)})"
        )
    if any(not 0 <= v <= 1 for v in history):
        fail("--val-acc: accuracies are fractions in [0, 1], e.g. 0.2,0.5,0.6")
    return spec, history


def schedule_table(spec: ScheduleSpec, values: list[float], eps: str, epochs: int) -> Table:
    table = Table(title=f"{spec.label}: ε_g = {eps_text(eps)}, {epochs} epochs")
    for column in ("epoch", "α(t)", "ε(t) × 255", "ε(t)"):
        table.add_column(column, justify="right")
    for epoch, value in enumerate(values):
        alpha = value / spec.eps if spec.eps else 0.0
        table.add_row(str(epoch), f"{alpha:.4f}", f"{value * 255:.4f}", f"{value:.6f}")
    return table


@app.command()
def schedule(
    setting: str = typer.Argument(
        ..., help=f"one of: {', '.join(SCHEDULES)}", autocompletion=complete_setting
    ),
    eps: str = typer.Option("4/255", help="ε_g, written as k/255"),
    epochs: int = typer.Option(50, min=1),
    t1: float | None = typer.Option(None, help="sched: first epoch of the ramp (0-based)"),
    t2: float | None = typer.Option(None, help="sched/linear: epoch at which ε reaches ε_g"),
    points: str | None = POINTS,
    val_acc: str | None = typer.Option(
        None, "--val-acc", help="auto/adaptive: the clean validation accuracies per epoch, e.g. 0.2,0.5,0.6"
    ),
    seed: int = typer.Option(0, help="uniform: the run's seed"),
    plot: Path | None = typer.Option(None, "--plot", help="also draw ε(t) to this PNG"),
) -> None:
    """Print ε(t) per 0-based epoch for any schedule (auto and adaptive: for a given validation history)."""
    spec, history = schedule_spec(setting, eps, epochs, t1, t2, points, val_acc)
    for note in spec.notes(epochs):
        say(f"[yellow]note:[/] {note}")
    values = spec.values(epochs, seed=seed, val_accuracies=history)
    console.print(schedule_table(spec, values, eps, epochs))
    if plot is not None:
        from rftbench.reports.plots import plot_schedule

        check_out(plot, "--plot")
        console.print(f"wrote {plot_schedule(spec.label, values, eps_text(eps), plot)}")


@app.command()
def backbones(
    weights: list[str] = typer.Option(
        [],
        "--weights",
        help="NAME=FILE: check a local weights file (repeatable)",
        autocompletion=complete_backbone,
    ),
) -> None:
    """List the backbone registry and whether each backbone's weights are available locally."""
    from rftbench.models.build import check_weights_file
    from rftbench.models.registry import BACKBONES
    from rftbench.models.weights import WeightsUnavailable, weights_available

    files = parse_weights(weights)
    table = Table(title="backbones")
    for column in ("name", "source", "model", "pretrained tag", "size", "mean / std", "head", "weights here"):
        table.add_column(column, overflow="fold")
    for spec in BACKBONES.values():
        try:
            where = str(check_weights_file(spec.name, files[spec.name])) if spec.name in files else ""
        except (WeightsUnavailable, ValueError) as exc:
            fail(str(exc))
        where = where or weights_available(spec.name)
        mean, std = spec.normalization
        numbers = f"{'/'.join(f'{v:.3g}' for v in mean)} / {'/'.join(f'{v:.3g}' for v in std)}"
        here = f"[green]yes[/] {where}" if where else f"[red]no[/] (set {spec.env_var})"
        table.add_row(spec.name, spec.source, spec.model, spec.tag, str(spec.size), numbers, spec.head, here)
    console.print(table)


def dataset_row(spec, roots: dict[str, str]) -> list[str]:
    """One dataset's registry entry, where its data is and whether it is found there."""
    from rftbench.data.checks import check_layout
    from rftbench.data.lists import paper_split_dir
    from rftbench.data.registry import PAPER_SPLITS, SPLIT_FOLDER, env_var, resolve_root

    path = resolve_root(spec.name, roots.get(spec.name))
    splits = "-"
    if spec.name in PAPER_SPLITS:
        splits = (
            "[green]yes[/]"
            if paper_split_dir(spec.name, path)
            else f"[red]no[/] (not in {escape(str(path / SPLIT_FOLDER))}: `rftbench data fetch "
            f"{spec.name} --splits-only`)"
        )
    try:
        check_layout(spec.name, path)
        found = "[green]yes[/]"
    except (OSError, ValueError, RuntimeError) as exc:
        reason = escape(str(exc).split(";")[0].removeprefix(f"dataset {spec.name}: "))
        found = f"[red]no[/]: {reason}" + ("" if spec.name in roots else f" (or set {env_var(spec.name)})")
    where = str(path) if spec.default_root else "-"
    return [spec.name, str(spec.classes or "any"), spec.sizes, where, found, splits, spec.layout]


@app.command()
def datasets(
    root: list[str] = typer.Option([], "--root", help="NAME=PATH: a dataset's data root (repeatable)"),
) -> None:
    """List the dataset registry, whether each dataset's layout is found locally, and whether the paper's
    split lists are there (`rftbench data fetch` gets both)."""
    from rftbench.data.registry import DATASETS

    roots = parse_roots(root)
    table = Table(title="datasets")
    columns = ("name", "classes", "train / val / test (protocol)", "root", "found", "paper splits", "layout")
    for column in columns:
        table.add_column(column, overflow="fold")
    for spec in DATASETS.values():
        table.add_row(*dataset_row(spec, roots))
    console.print(table)
