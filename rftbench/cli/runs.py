"""Commands that run, continue, evaluate and follow jobs; each parses its flags, calls one function of
rftbench.execution and prints what it returns.

    rftbench run-grid --grid smoke --device cpu
    rftbench status
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from rftbench.cli.app import app, console, fail, finish, say
from rftbench.cli.options import (
    BACKBONE,
    DATASET,
    DB,
    DEVICE,
    EXPERIMENTS,
    POINTS,
    ROOTS,
    RUNS_DIR,
    SETTING,
    T2,
    TRACK,
    WORKERS,
    Precision,
    complete_backbone,
    complete_dataset,
    complete_grid,
    complete_run_id,
    complete_setting,
    launch_flags,
    parse_budgets,
    parse_roots,
    parse_tracks,
    runner_flags,
    variant_flags,
    with_options,
)
from rftbench.cli.progress import RichProgress
from rftbench.core.config import eps_text
from rftbench.core.metrics import EVAL_PROTOCOLS
from rftbench.core.schedules import points_text
from rftbench.execution.options import EvaluateRequest, LaunchOptions, RunnerOptions


def show_jobs(plan) -> None:
    """A dry run: the plan's jobs, their states and the work they are."""
    table = Table(title=f"grid {plan.request.grid}: {len(plan.jobs)} jobs", box=box.SIMPLE_HEAD)
    for column in ("#", "run id", "backbone", "dataset", "setting", "ε_g", "T1/T2", "seed", "status"):
        table.add_column(column, no_wrap=True)
    for job in plan.jobs:
        c = job.config
        hinge = f"{c.t1:g}/{c.t2:g}" if c.t2 is not None else points_text(c.points)
        state = plan.statuses.get(job.run_id, "new")
        table.add_row(
            str(job.position),
            job.run_id[:8],
            c.backbone,
            c.dataset,
            c.label,
            c.eps,
            hinge,
            str(c.seed),
            state,
        )
    console.print(table)
    passes, unknown = plan.work()
    done = sum(s == "completed" for s in plan.statuses.values())
    console.print(f"{len(plan.jobs)} jobs: {done} completed, {len(plan.jobs) - done} to run")
    console.print(
        f"work: {passes:.3g} training forward-backward passes (images × epochs × (attack steps + 1"
        + (", + 1 for TRADES and MART" if any(j.config.objective != "at" for j in plan.jobs) else "")
        + "))"
        + (f", plus {unknown} run(s) on data of unknown size" if unknown else "")
    )


@app.command("run-grid")
@with_options(options=runner_flags, launch=launch_flags)
def run_grid(
    grid: str = typer.Option(
        "paper", "--grid", help="a grid named in the experiments file", autocompletion=complete_grid
    ),
    backbone: list[str] = typer.Option(
        [], "--backbone", help="only these backbones (repeatable)", autocompletion=complete_backbone
    ),
    dataset: list[str] = typer.Option(
        [], "--dataset", help="only these datasets (repeatable)", autocompletion=complete_dataset
    ),
    setting: list[str] = typer.Option(
        [], "--setting", help="only these settings (repeatable)", autocompletion=complete_setting
    ),
    eps: list[str] = typer.Option([], "--eps", help="only these ε_g, as k/255 (repeatable)"),
    seed: list[int] = typer.Option([], "--seed", help="only these seeds (repeatable)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="list the jobs and the work; run nothing"),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="re-queue this grid's failed runs"),
    experiments: Path | None = EXPERIMENTS,
    db: str | None = DB,
    options: RunnerOptions = None,
    launch: LaunchOptions = None,
) -> None:
    """Expand a grid into runs, record them, and run every pending or interrupted one in order (in this
    process, or spread over local workers or a SLURM job array: --executor)."""
    from rftbench.execution.grid import GridRequest, plan_grid
    from rftbench.execution.grid import run_grid as launch_grid

    budgets = parse_budgets(eps)
    plan = plan_grid(
        GridRequest(grid, backbone, dataset, setting, budgets, seed, experiments, db, options.roots)
    )
    for line in plan.notes() + (plan.source() if dry_run else []):
        say(line)
    if dry_run:
        return show_jobs(plan)
    finish(launch_grid(plan, options, launch, retry_failed=retry_failed, say=say, progress=RichProgress()))


def run_parse(eps: str, points: str | None) -> tuple[str, tuple]:
    """--eps in its stored form (k/255 canonical; a plain number as given, for ℓ2) and the parsed --points."""
    from rftbench.core.schedules import parse_points

    try:
        return eps_text(eps) if "/" in eps else eps.strip(), parse_points(points) if points else ()
    except ValueError as exc:
        fail(str(exc))


@app.command()
@with_options(options=runner_flags, variant=variant_flags)
def run(
    backbone: str = BACKBONE,
    dataset: str = DATASET,
    setting: str = SETTING,
    eps: str = typer.Option("4/255", "--eps", help='ε_g as k/255 (a number in a grid with norm = "L2")'),
    t1: float | None = typer.Option(None, "--t1", help="sched: first epoch of the ramp"),
    t2: float | None = T2,
    points: str | None = POINTS,
    seed: int | None = typer.Option(None, "--seed"),
    grid: str | None = typer.Option(
        None, "--grid", help="take this grid's defaults and overrides", autocompletion=complete_grid
    ),
    experiments: Path | None = EXPERIMENTS,
    db: str | None = DB,
    options: RunnerOptions = None,
    variant: dict = None,
) -> None:
    """Run one job with a grid's defaults (or the file's [defaults]); a finished identical run is reused."""
    from rftbench.execution.grid import RunRequest, run_one

    budget, shape = run_parse(eps, points)
    request = RunRequest(
        backbone, dataset, setting, budget, t1, t2, shape, seed, grid, experiments, db, options.roots, variant
    )
    finish(run_one(request, options, say=say, progress=RichProgress()))


@app.command()
@with_options(options=runner_flags, launch=launch_flags)
def resume(db: str | None = DB, options: RunnerOptions = None, launch: LaunchOptions = None) -> None:
    """Continue every pending or interrupted run from its last epoch checkpoint; completed runs are kept
    (--executor as for run-grid)."""
    from rftbench.execution.grid import resume as resume_runs

    finish(resume_runs(db, options, launch, say=say, progress=RichProgress()))


def show_evaluation(item) -> None:
    """One run's evaluation: a table of its budgets (and attacks), and whether it was measured now."""
    result = item.result
    table = Table(title=f"run {item.run_id}: {item.label}, {result['n']} test images", box=box.SIMPLE_HEAD)
    attacks = list(next(iter(result.get("per_attack", {}).values()), {}))
    for column in ("ε_g", "clean", "adv", "E.adv", *attacks):
        table.add_column(column, justify="right")
    for row in result["budgets"]:
        per_attack = result.get("per_attack", {}).get(row["budget"], {})
        cells = [row["clean"], row["adv"], row["eadv"], *(per_attack.get(a) for a in attacks)]
        table.add_row(row["budget"], *("—" if v is None else f"{100 * v:.2f}" for v in cells))
    console.print(table)
    if attacks:
        console.print("per attack: accuracy after it and every attack before it (auto-attack's order)")
    if result.get("outside_ball"):
        console.print(
            f"[yellow]{result['outside_ball']} adversarial point(s) fell outside the ball: not counted "
            f"as fooled[/]"
        )
    if item.added:
        console.print(f"stored {item.added} new evaluation row(s)")
    elif "seconds" in result:  # measured, while another process stored the same evaluation
        console.print("measured, but another process stored this evaluation first: its rows are kept")
    else:
        console.print("already stored under this protocol: nothing measured")


def evaluate_request(
    run_id: str | None = typer.Argument(
        None, help="a run id or a unique prefix of one", autocompletion=complete_run_id
    ),
    grid: str | None = typer.Option(
        None, "--grid", help="every completed run of this grid instead of one", autocompletion=complete_grid
    ),
    eps: list[str] = typer.Option(
        [], "--eps", help="budgets, k/255 for Linf, a number for L2 (repeatable) [default: the run's]"
    ),
    attack: Literal["apgd", "autoattack"] = typer.Option(
        "apgd", "--attack", help="apgd: rftbench's APGD-CE; autoattack: AutoAttack (torchattacks)"
    ),
    version: Literal["standard", "plus"] = typer.Option(
        "standard", "--version", help="with --attack autoattack: standard or plus"
    ),
    norm: str | None = typer.Option(None, "--norm", help="threat model: Linf or L2 [default: the run's]"),
    protocol: Literal[EVAL_PROTOCOLS] = typer.Option(
        "paper",
        "--protocol",
        help="paper: one attack per ε; monotone: early exit (cheaper, a union); budget: at ε_g only",
    ),
    steps: int | None = typer.Option(
        None, "--steps", min=1, help="APGD steps [default: the run's; AutoAttack: 100, as auto-attack]"
    ),
    precision: Precision = typer.Option(
        "fp32", "--precision", help="autocast of the attacked model: fp32, bf16, fp16"
    ),
    random_start: bool = typer.Option(False, "--random-start", help="start APGD from a random point"),
    seed: int = typer.Option(0, "--seed", help="the seed of random starts (AutoAttack's own too)"),
    db: str | None = DB,
) -> EvaluateRequest:
    """What to evaluate and how (one option group)."""
    return EvaluateRequest(**locals())


def evaluate_runtime(
    runs_dir: Path = RUNS_DIR,
    device: str | None = DEVICE,
    workers: int | None = WORKERS,
    root: list[str] = ROOTS,
    track: list[str] = TRACK,
) -> RunnerOptions:
    return RunnerOptions(runs_dir, device, workers, roots=parse_roots(root), track=parse_tracks(track))


@app.command()
@with_options(request=evaluate_request, options=evaluate_runtime)
def evaluate(request: EvaluateRequest = None, options: RunnerOptions = None) -> None:
    """Evaluate finished runs' final weights under a protocol, at their budgets or others (stored beside the
    final evaluation, never replacing it; an evaluation already stored is shown, not measured again). Each
    batch's result is stored as soon as it is measured: run the same command again after an interruption
    and it continues where it stopped."""
    from rftbench.execution.evaluate import Skipped, evaluate_runs

    skipped = []
    for item in evaluate_runs(request, options):
        skipped.append(item.line) if isinstance(item, Skipped) else show_evaluation(item)
    for line in skipped:
        console.print(f"[red]skipped[/] {line}", highlight=False)
    if skipped:
        raise typer.Exit(code=1)


def show_status(view) -> None:
    from rftbench.results.schema import STATES

    table = Table(title="grids", box=box.SIMPLE_HEAD)
    for column in ("grid", "runs", *STATES, "from"):
        table.add_column(
            column, no_wrap=column != "from", overflow="fold", min_width=7 if column == "from" else None
        )
    for name, counts, source in view.grids:
        table.add_row(name, str(sum(counts.values())), *(str(counts[s]) for s in STATES), escape(source))
    console.print(table)
    console.print("all runs: " + ", ".join(f"{view.counts[s]} {s}" for s in STATES))
    for run in view.running:
        console.print(
            f"[yellow]running[/] {run.id} {run.backbone}/{run.dataset} {run.setting} {run.eps} "
            f"held by {run.worker or 'a worker'} on {run.host} (pid {run.pid}), "
            f"{view.epochs_done[run.id]}/{run.epochs} epochs, lease until {run.lease_expires_at:%H:%M:%S} UTC"
        )
    for run in view.failed:
        say(f"[red]failed[/] {run.id} {run.backbone}/{run.dataset} {run.setting} {run.eps}: {run.error}")
    if view.studies:
        say("studies (rftbench tune; `rftbench report --table tuning` shows each one's best values):")
    for line in view.studies:
        say(f"  {escape(line)}")
    say(f"experiments file here: {escape(view.experiments)}")


@app.command()
def status(
    db: str | None = DB,
    grid: str | None = typer.Option(None, "--grid", help="only this grid", autocompletion=complete_grid),
    experiments: Path | None = EXPERIMENTS,
) -> None:
    """Runs by state, per-grid progress and the file each grid came from, each failed run's error line,
    each tuning study's trials and best values, and the experiments file `run-grid` reads here."""
    from rftbench.execution.status import status_view

    show_status(status_view(db, grid, experiments))
