"""What `rftbench report` and `rftbench plot` do between parsing flags and printing (the CLI calls these).

    sections = report_sections("main", db=None, grid=None, threshold=None, eps=["4/255"], results="ours",
                               compare=None, include_standard=False, run_id=None, spread="sd", pairs=[],
                               protocol="paper", precision="fp32", steps=None)
    print(render(sections, "md"))          # or: for table in rich_tables(sections): console.print(table)

Every refusal is one `ReportError` (a `StoreError` where the database cannot be opened; both are
`RftbenchError`s), whose text the CLI prints as `error: ...`. `--format` and `--out` stay the CLI's: `render`
refuses an unknown format with today's message.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from rich import box
from rich.table import Table

from rftbench.core.config import PLOTS, budget_arg
from rftbench.reports.render import LABEL_COLUMNS, Section, render
from rftbench.reports.results import ReportError, Results, Selection
from rftbench.reports.tables import build

__all__ = ["make_plot", "render", "report_sections", "rich_tables"]


@contextmanager
def one_line():
    """A ValueError from reading flags or results (a budget, an ε) is the user's input: one ReportError."""
    try:
        yield
    except ReportError:
        raise
    except ValueError as exc:
        raise ReportError(str(exc)) from exc


def load_results(db: str | None, grid: str | None, threshold: float | None, selection: Selection) -> Results:
    """The database's results, opened read-only; a --grid it does not hold is a typo, said as such."""
    from rftbench.results.connect import StoreError
    from rftbench.results.store import Store

    store = Store.open(db, create=False, write=False)
    try:
        store.check_grid(grid)
    except StoreError as exc:  # this function's callers catch ReportError for their input
        raise ReportError(str(exc)) from None
    return Results.from_store(store, grid=grid, threshold=threshold, selection=selection)


def load_studies(db: str | None, grid: str | None) -> Results:
    """The database's hyperparameter studies (of `grid`: those first tuned for it), opened read-only; none
    there, or none of that grid, is one ReportError naming `rftbench tune`."""
    from rftbench.results.store import Store

    return Results.studies(Store.open(db, create=False, write=False), grid)


def report_sections(
    table: str,
    *,
    db: str | None,
    grid: str | None,
    threshold: float | None,
    eps: list[str],
    results: str,
    compare: str | None,
    include_standard: bool,
    run_id: str | None,
    spread: str,
    pairs: list[str],
    protocol: str,
    precision: str,
    steps: int | None,
) -> list[Section]:
    """The sections `rftbench report` shows: its flags checked, the results read, the table built."""
    # The CLI's choices refuse these first; a caller of this function (a notebook, a script) has only this
    if results not in ("ours", "paper") or compare not in (None, "paper"):
        raise ReportError("--results takes ours or paper; --compare takes paper")
    if threshold is not None and not 0 <= threshold < 1:
        raise ReportError(
            f"--threshold {threshold:g}: an adaptation threshold is a validation accuracy in [0, 1)"
        )
    split = [tuple(p.split(":")) for p in pairs]
    if any(len(p) != 2 or not all(p) for p in split):
        raise ReportError(f"--pair {' '.join(pairs)}: write each as A:B, e.g. --pair adaptive:sched")
    with one_line():
        budgets = [budget_arg(e) for e in eps]
        selection = Selection(protocol, precision, steps)
        if compare and protocol != "paper":
            raise ReportError("--compare paper lines up against the paper protocol: drop --protocol monotone")
        if results == "paper":
            data = Results.paper(table)
        elif table == "tuning":  # --grid: the grid a study was tuned for, which may hold no run of its own
            data = load_studies(db, grid)
        else:
            data = load_results(db, grid, threshold, selection)
        return build(
            table,
            data,
            eps=budgets or None,
            compare=Results.paper(table) if compare else None,
            include_standard=include_standard,
            run_id=run_id,
            spread=spread,
            pairs=split or None,
        )


def rich_tables(sections: list[Section]) -> list[Table]:
    """The terminal's view of `sections`: the same cells as the Markdown, labels left, numbers right."""
    tables = []
    for section in sections:
        shown = section.table
        table = Table(title=section.title, box=box.SIMPLE_HEAD, caption=section.note or None)
        for column in shown.columns:
            table.add_column(str(column), justify="left" if column in LABEL_COLUMNS else "right")
        for row in shown.itertuples(index=False):
            table.add_row(*(str(v) for v in row))
        tables.append(table)
    return tables


def make_plot(
    kind: str,
    out: Path,
    *,
    backbone: str | None,
    dataset: str | None,
    eps: str | None,
    grid: str | None,
    epochs: int,
    t1: float,
    t2: float,
    protocol: str,
    precision: str,
    steps: int | None,
    db: str | None,
) -> Path | list[Path]:
    """`rftbench plot KIND`: the figure written to `out` (the schedule plot: one file per schedule)."""
    from rftbench.reports import plots  # matplotlib: only for the command that draws

    if kind not in PLOTS:
        raise ReportError(f"unknown plot {kind!r}: choose one of {', '.join(PLOTS)}")
    with one_line():
        budget = budget_arg(eps) if eps else None
        if kind == "schedule":
            return plots.plot_schedules(epochs, budget or "4/255", out, t1=t1, t2=t2)
        if kind == "tuning":
            return plots.plot_tuning(load_studies(db, grid), out, backbone, dataset, budget)
        results = load_results(db, grid, None, Selection(protocol, precision, steps))
        if kind == "curves":
            runs = results.runs
            backbone = backbone or (runs.backbone.iloc[0] if len(runs) else "")
            dataset = dataset or (runs.dataset.iloc[0] if len(runs) else "")
            return plots.plot_curves(results, backbone, dataset, budget, out)
        if kind == "robustness":
            return plots.plot_robustness(results, out, backbone, dataset, budget)
        return plots.plot_sweep(results, out, backbone)
