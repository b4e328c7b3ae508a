"""Commands that show results: the paper's tables and the figures (rftbench.reports.commands does the
work; these parse, call and print).

    rftbench report --table main --format md
    rftbench plot curves --out curves.png
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import typer

from rftbench.cli.app import app, console, fail
from rftbench.cli.options import (
    DB,
    GRID_FILTER,
    PRECISION,
    PROTOCOL,
    RUN_ID,
    RUNS_DIR,
    STEPS,
    Precision,
    Protocol,
    check_out,
    complete_backbone,
    complete_dataset,
    with_options,
)
from rftbench.core.config import PLOTS, TABLES

Tracker = Literal["tensorboard", "mlflow", "wandb"]  # rftbench.execution.tracking.TRACKERS

TABLE = typer.Option("main", "--table", help=", ".join(TABLES))
EPS = typer.Option([], "--eps", help="only these ε_g (repeatable) [default: all present]")
FORMAT = typer.Option("md", "--format", help="md (terminal + Markdown), csv (long format) or latex")
OUT = typer.Option(None, "--out", help="write the table to this file too")
RESULTS = typer.Option("ours", "--results", help="ours (the database) or paper (its published numbers)")
COMPARE = typer.Option(None, "--compare", help="paper: put the paper's value beside ours")
THRESHOLD = typer.Option(None, "--threshold", help="delay: adaptation threshold [grid's]")
INCLUDE_STANDARD = typer.Option(False, "--include-standard", help="delay: correlate ε = 0 runs too")
SPREAD = typer.Option(
    "sd", "--spread", help="over seeds: sd (mean ± standard deviation), ci (± 95% CI half-width), none"
)
PAIR = typer.Option(
    [],
    "--pair",
    help="ttest: compare A:B, e.g. adaptive:sched, within each objective/mode, or across them: "
    "sched+trades:sched (repeatable) [default: each vs fix, new vs sched]",
)


def stored_flags(
    grid: str | None = GRID_FILTER,
    protocol: Protocol = PROTOCOL,
    precision: Precision = PRECISION,
    steps: int | None = STEPS,
    db: str | None = DB,
) -> dict:
    """Which stored results a table or a figure reads (one option group, shared by both commands)."""
    return dict(locals())


def report_query(
    table: Literal[TABLES] = TABLE,
    eps: list[str] = EPS,
    results: Literal["ours", "paper"] = RESULTS,
    compare: Literal["paper"] | None = COMPARE,
    run_id: str | None = RUN_ID,
    threshold: float | None = THRESHOLD,
    include_standard: bool = INCLUDE_STANDARD,
    spread: Literal["sd", "ci", "none"] = SPREAD,
    pairs: list[str] = PAIR,
) -> dict:
    """`report_sections`' arguments, as the flags give them, but for `stored_flags`."""
    return dict(locals())


@app.command()
@with_options(query=report_query, stored=stored_flags)
def report(
    query: dict = None,
    stored: dict = None,
    format_: Literal["md", "csv", "latex"] = FORMAT,
    out: Path | None = OUT,
) -> None:
    """The paper's tables from the database (or from the paper's numbers), in %, two decimals; several
    seeds of a cell show as mean ± spread."""
    from rftbench.reports.commands import render, report_sections, rich_tables

    check_out(out)
    try:
        sections = report_sections(**query, **stored)
    except ValueError as exc:  # ReportError, and a bad budget or pair in the reports' own words
        fail(str(exc))
    text = render(sections, format_)
    for shown in rich_tables(sections) if format_ == "md" else []:
        console.print(shown)
    if format_ != "md":
        console.out(text, highlight=False)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        console.print(f"wrote {out}")


def plot_query(
    kind: Literal[PLOTS] = typer.Argument(..., help=", ".join(PLOTS)),
    out: Path = typer.Option(..., "--out", help="the PNG to write"),
    backbone: str | None = typer.Option(None, "--backbone", autocompletion=complete_backbone),
    dataset: str | None = typer.Option(None, "--dataset", autocompletion=complete_dataset),
    eps: str | None = typer.Option(None, "--eps", help="ε_g as k/255"),
    epochs: int = typer.Option(50, "--epochs", help="schedule: number of epochs"),
    t1: float = typer.Option(12, "--t1", help="schedule: sched's T1"),
    t2: float = typer.Option(37, "--t2", help="schedule: sched's and linear's T2"),
) -> dict:
    """`make_plot`'s arguments, as the flags give them, but for `stored_flags`."""
    return dict(locals())


@app.command()
@with_options(query=plot_query, stored=stored_flags)
def plot(query: dict = None, stored: dict = None) -> None:
    """Figures: validation curves with ε(t) and adaptation starts, robustness curves, ε sweep, schedules,
    each tuning study's trials against its knobs."""
    from rftbench.reports.commands import make_plot

    check_out(query["out"])
    try:
        written = make_plot(**query, **stored)
    except ValueError as exc:  # ReportError, and a schedule's own ValueError (T1 > T2)
        fail(str(exc))
    console.print(f"wrote {written}")


@app.command()
def export(
    to: Tracker = typer.Option(..., "--to", help="tensorboard, mlflow or wandb"),
    where: str | None = typer.Argument(
        None,
        help="TensorBoard: a folder; MLflow: a folder or a tracking URI; W&B: the project "
        "[RUNS_DIR/tensorboard, RUNS_DIR/mlflow.db, rftbench]",
    ),
    grid: str | None = GRID_FILTER,
    db: str | None = DB,
    runs_dir: Path = RUNS_DIR,
) -> None:
    """Replay a results database into a tracking sink (what `--track` mirrors live): every run's epochs,
    evaluations and adaptation start, named by run id. Again adds no step twice."""
    from rftbench.execution.tracking import destination, parse_track
    from rftbench.execution.tracking import export as replay
    from rftbench.results.store import Store

    (spec,) = parse_track([f"{to}={where or ''}"])
    store = Store.open(db, create=False, write=False)
    store.check_grid(grid)
    count = replay(store, spec, runs_dir, warn=lambda line: None, grid=grid)  # a failure: one error line
    console.print(f"exported {count} run(s) to {to} at {destination(spec, runs_dir)}", highlight=False)
