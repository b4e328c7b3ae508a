"""What `rftbench status` shows, read from the database and the experiments file (no terminal UI here).

view = status_view("rftbench.db", grid=None, experiments=None)
view.counts    # {"pending": 3, "running": 1, ...}
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class StatusView:
    grids: list[tuple[str, dict[str, int], str]]  # (grid, state -> runs, the file it came from)
    counts: dict[str, int]  # state -> runs, all grids
    running: list  # Run rows held by a worker, each with its epochs done
    failed: list  # Run rows that failed, each with its error line
    epochs_done: dict[str, int]  # run id -> epochs stored, for the running ones
    experiments: str  # the experiments file `run-grid` reads here
    studies: list[str]  # one line per hyperparameter study (of the grid): its trials by state, its best


def status_view(db: str | None, grid: str | None = None, experiments: Path | None = None) -> StatusView:
    """Runs by state and per grid, and the hyperparameter studies; a writable database first has its expired
    leases reaped."""
    from rftbench.execution.tuning import study_line
    from rftbench.experiments.files import describe_experiments, find_experiments, source_label
    from rftbench.results.queue import JobQueue
    from rftbench.results.store import Store
    from rftbench.results.studies import Studies

    store = Store.open(db, create=False, write=False)
    studies = [s for s in Studies(store).all() if grid is None or s.grid == grid]
    if not studies:  # a grid that was only tuned holds studies but no run of its own
        store.check_grid(grid)
    summaries = Studies(store).summaries([s.key for s in studies])
    if store.writable:  # a read-only database shows its runs as stored
        JobQueue(store).reap()
    chosen = [g for g in store.grids() if grid is None or g.name == grid]
    running = store.runs(grid=grid, states=("running",))
    return StatusView(
        grids=[(g.name, store.counts(g.name), source_label(g.source)) for g in chosen],
        counts=store.counts(),
        running=running,
        failed=store.runs(grid=grid, states=("failed",)),
        epochs_done={run.id: len(store.epochs(run.id)) for run in running},
        experiments=describe_experiments(find_experiments(experiments)),
        studies=[study_line(study, summaries[study.key]) for study in studies],
    )
