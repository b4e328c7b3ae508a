"""`rftbench tune`: the paper's hyperparameter search per configuration of a grid, as Optuna studies whose
trials are runs of the same database and workers (rftbench.execution.tuning).

    rftbench tune --grid demo --trials 8 --executor local --processes 2
"""

from __future__ import annotations

from pathlib import Path

import typer

from rftbench.cli.app import app, finish, say
from rftbench.cli.options import (
    DB,
    EXPERIMENTS,
    complete_backbone,
    complete_dataset,
    complete_grid,
    launch_flags,
    parse_budgets,
    runner_flags,
    with_options,
)
from rftbench.cli.progress import RichProgress
from rftbench.execution.options import LaunchOptions, RunnerOptions


@app.command()
@with_options(options=runner_flags, launch=launch_flags)
def tune(
    grid: str = typer.Option(
        ..., "--grid", help="tune this grid's configurations", autocompletion=complete_grid
    ),
    backbone: list[str] = typer.Option(
        [], "--backbone", help="only these backbones (repeatable)", autocompletion=complete_backbone
    ),
    dataset: list[str] = typer.Option(
        [], "--dataset", help="only these datasets (repeatable)", autocompletion=complete_dataset
    ),
    eps: list[str] = typer.Option([], "--eps", help="only these ε_g, as k/255 (repeatable)"),
    trials: int | None = typer.Option(
        None, "--trials", help="trials per configuration, in all [default: the [tune] table's]"
    ),
    minutes: float | None = typer.Option(
        None, "--minutes", help="no new trial of a configuration after this long since its first"
    ),
    experiments: Path | None = EXPERIMENTS,
    db: str | None = DB,
    options: RunnerOptions = None,
    launch: LaunchOptions = None,
) -> None:
    """Tune each configuration of a grid: one Optuna study each, whose trials are runs of this database.

    A configuration is a backbone × dataset × ε_g of the grid; its study searches the knobs of the [tune]
    table (default: the paper's lr and weight decay, log-uniform in [1e-5, 1e-1], on fix's clean
    validation accuracy, ASHA pruning), its trials spread over the executor's workers. Budgets are totals:
    run it again with a larger one to add trials. A grid takes the best values with lr = "tuned" (and
    weight_decay = "tuned")."""
    from rftbench.execution.tuning import TuneRequest, plan_tune
    from rftbench.execution.tuning import tune as run_tune

    request = TuneRequest(
        grid, backbone, dataset, parse_budgets(eps), trials, minutes, experiments, db, options.roots
    )
    finish(run_tune(plan_tune(request), options, launch, say=say, progress=RichProgress()))
