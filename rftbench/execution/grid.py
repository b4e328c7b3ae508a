"""What `run-grid`, `run` and `resume` do below the command line: expand and record jobs, check their data
and weights, and hand them to an executor. Lines to show go to `say` (console markup); nothing here
imports the terminal UI.

    plan = plan_grid(GridRequest(grid="smoke", db="r.db"))
    outcome = run_grid(plan, RunnerOptions(device="cpu"), LaunchOptions(), say=print)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rich.markup import escape  # lines are console markup: paths may hold [brackets]

from rftbench.core.config import RunConfig
from rftbench.core.schedules import SCHEDULES
from rftbench.execution.launch import execute, existing_statuses, existing_store, make_runner, preflight
from rftbench.execution.options import LaunchError, LaunchOptions, RunnerOptions
from rftbench.execution.workers import Outcome

Say = Callable[[str], None]


@dataclass(frozen=True)
class GridRequest:
    """A grid of the experiments file, filtered (`eps`: budgets in their stored form)."""

    grid: str = "paper"
    backbones: list[str] = field(default_factory=list)
    datasets: list[str] = field(default_factory=list)
    settings: list[str] = field(default_factory=list)
    eps: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    experiments: Path | None = None
    db: str | None = None
    roots: dict = field(default_factory=dict)


@dataclass
class GridPlan:
    """The jobs a request expands to, with their states in the database (none yet: "new")."""

    request: GridRequest
    spec: object  # rftbench.experiments.grids.Experiments
    jobs: list
    statuses: dict[str, str]

    def notes(self) -> list[str]:
        return schedule_notes(job.config for job in self.jobs)

    def source(self) -> list[str]:
        return source_lines(self.spec, self.jobs)

    def work(self) -> tuple[float, int]:
        return estimate_work([job.config for job in self.jobs])


def read_experiments(path: Path | None, roots: dict | None = None):
    from rftbench.experiments.files import find_experiments
    from rftbench.experiments.grids import load_experiments

    return load_experiments(find_experiments(path), roots)


def recorded_splits(db: str | None, grid: str | None) -> dict[str, str]:
    """Dataset -> the `splits` the grid's newest run of it was recorded with, so that `splits = "auto"`
    expands the grid to the runs it already has (rftbench.experiments.grids)."""
    store = existing_store(db)
    if store is None or grid is None or grid not in {g.name for g in store.grids()}:
        return {}
    runs = sorted(store.runs(grid=grid), key=lambda r: r.created_at)
    return {run.dataset: json.loads(run.config).get("splits", "rules") for run in runs}


def tuned_values(db: str | None) -> dict[str, tuple[dict | None, int]]:
    """Study key -> (its best trial's values, None before one completed; how many of its trials are still
    to end: pending, running or interrupted), for a grid's "tuned" knobs."""
    from rftbench.core.tuning import best_trial
    from rftbench.results.studies import Studies

    store = existing_store(db)
    if store is None:
        return {}
    tuned = {}
    for key, trials in Studies(store).summaries().items():
        best = best_trial([(t.number, t.state, t.value, t.params) for t in trials])
        unfinished = sum(t.state in ("pending", "running", "interrupted") for t in trials)
        tuned[key] = (best[2] if best else None, unfinished)
    return tuned


def check_filters(backbone: list[str], dataset: list[str], setting: list[str]) -> None:
    """A filter value that names nothing in the registries is a typo: say so instead of matching nothing."""
    from rftbench.data.registry import DATASETS
    from rftbench.models.registry import BACKBONES

    for flag, values, valid in (
        ("--backbone", backbone, BACKBONES),
        ("--dataset", dataset, DATASETS),
        ("--setting", setting, SCHEDULES),
    ):
        unknown = [v for v in values if v not in valid]
        if unknown:
            raise LaunchError(f"{flag} {', '.join(unknown)}: unknown; valid ones are {', '.join(valid)}")


def schedule_notes(configs) -> list[str]:
    """What a user should know about valid but perhaps unintended schedules (T2 at the last epoch, …)."""
    notes = dict.fromkeys(note for c in configs for note in c.schedule.notes(c.epochs))
    return [f"[yellow]note:[/] {note}" for note in notes]


def source_lines(spec, jobs) -> list[str]:
    """Which experiments file the jobs came from, and which split lists their datasets use."""
    from rftbench.experiments.files import describe_experiments

    lines = [f"experiments: {escape(describe_experiments(spec.path))}"]
    return lines + [f"[yellow]note:[/] {escape(note)}" for note in spec.split_notes(jobs)]


def estimate_work(configs) -> tuple[float, int]:
    """Training forward-backward passes (images × epochs × (attack steps + 1, + 1 where TRADES or MART also
    pass the clean images)); runs of unknown size."""
    from rftbench.data.registry import DATASETS

    passes, unknown = 0.0, 0
    for config in configs:
        images = DATASETS[config.dataset].train_images
        if images is None:
            unknown += 1
            continue
        images = min(images, config.train_subset or images)
        steps = config.train_attack_steps if config.eps_value > 0 else 0
        clean = int(steps > 0 and config.objective != "at")
        passes += images * config.epochs * (steps + 1 + clean)
    return passes, unknown


def plan_grid(request: GridRequest) -> GridPlan:
    """The request's jobs, or one line (GridError, LaunchError) naming what is wrong with it."""
    r = request
    spec = read_experiments(r.experiments, r.roots)
    spec.recorded[r.grid] = recorded_splits(r.db, r.grid)
    spec.tuned = tuned_values(r.db)
    jobs = spec.jobs(
        r.grid, backbones=r.backbones, datasets=r.datasets, settings=r.settings, eps=r.eps, seeds=r.seeds
    )
    check_filters(r.backbones, r.datasets, r.settings)
    if not jobs:
        raise LaunchError(
            f"grid {r.grid!r} has no job matching these filters; drop a filter or check its values"
        )
    return GridPlan(request, spec, jobs, existing_statuses(r.db, [job.run_id for job in jobs]))


def run_grid(
    plan: GridPlan,
    options: RunnerOptions,
    launch: LaunchOptions,
    *,
    retry_failed: bool = False,
    say: Say = print,
    progress=None,
) -> Outcome:
    """Record the plan's jobs, then run every pending or interrupted one with the chosen executor."""
    from rftbench.results.store import Store

    grid, spec, jobs, db = plan.request.grid, plan.spec, plan.jobs, plan.request.db
    runner = make_runner(options, progress)
    ids = [job.run_id for job in jobs]
    preflight(runner, [(j.config, j.paths) for j in jobs if plan.statuses.get(j.run_id) != "completed"])
    runner.store = Store.open(db)
    new, known = runner.store.record_grid(
        grid,
        jobs,
        description=spec.description(grid),
        adaptation_threshold=spec.threshold(grid),
        source=str(spec.path.resolve()),
    )
    if retry_failed:
        say(f"re-queued {runner.queue.requeue(ids)} failed run(s)")
    done = len(runner.store.completed_ids(ids))
    for line in [*plan.source(), f"grid {grid}: {len(jobs)} runs ({new} new), {done} already completed"]:
        say(line)
    lacking = runner.store.lacking_evaluation(jobs)
    for protocol, precision in dict.fromkeys((j.eval_protocol, j.eval_precision) for j in lacking):
        count = sum((j.eval_protocol, j.eval_precision) == (protocol, precision) for j in lacking)
        flags = f"--protocol {protocol}" + (f" --precision {precision}" if precision != "fp32" else "")
        say(
            f"[yellow]note:[/] {count} completed run(s) have no {protocol} {precision} evaluation (scored by "
            f"an earlier release or another grid): `rftbench evaluate --grid {grid} {flags}` adds it"
        )
    if not runner.queue.claimable(ids) and not runner.queue.reap():
        failed = len(runner.store.runs(grid=grid, states=("failed",)))
        waiting = f": {failed} failed run(s) wait for --retry-failed" if failed else ""
        return Outcome(lines=[f"nothing to run{waiting}"])
    return execute(runner, ids, launch, db, spec.slurm, say)


@dataclass(frozen=True)
class RunRequest:
    """One job: a grid's defaults (or the file's [defaults]) with this backbone, dataset and schedule."""

    backbone: str
    dataset: str
    setting: str = "fix"
    eps: str = "4/255"  # in its stored form
    t1: float | None = None
    t2: float | None = None
    points: tuple = ()  # parsed EPOCH:FRACTION pairs
    seed: int | None = None
    grid: str | None = None
    experiments: Path | None = None
    db: str | None = None
    roots: dict = field(default_factory=dict)
    fields: dict = field(default_factory=dict)  # run-config fields over the grid's (--objective, --finetune…)


def run_one(request: RunRequest, options: RunnerOptions, *, say: Say = print, progress=None) -> Outcome:
    """Record one job (in its grid, if it belongs to it) and run it, unless an identical run finished."""
    from rftbench.results.store import Store

    r = request
    spec = read_experiments(r.experiments, r.roots)
    check_filters([r.backbone], [r.dataset], [r.setting])
    entry = {"setting": r.setting} | {k: v for k, v in (("t1", r.t1), ("t2", r.t2)) if v is not None}
    entry |= {"points": r.points} if r.points else {}
    spec.recorded[r.grid or "defaults"] = recorded_splits(r.db, r.grid)
    spec.tuned = tuned_values(r.db)
    try:
        job = spec.single(r.backbone, r.dataset, entry, r.eps, r.seed, grid=r.grid, fields=r.fields)
    except ValueError as exc:  # GridError is a RftbenchError already; a schedule's ValueError is not
        raise LaunchError(str(exc)) from None
    for line in schedule_notes([job.config]):
        say(line)
    runner = make_runner(options, progress)
    if existing_statuses(r.db, [job.run_id]).get(job.run_id) != "completed":
        preflight(runner, [(job.config, job.paths)])
    runner.store = Store.open(r.db)
    if r.grid is not None and job.run_id in {
        j.run_id for j in spec.jobs(r.grid, backbones=[r.backbone], datasets=[r.dataset])
    }:
        runner.store.record_grid(
            r.grid,
            [job],
            description=spec.description(r.grid),
            adaptation_threshold=spec.threshold(r.grid),
            source=str(spec.path.resolve()),
        )
    else:
        runner.store.record_run(job)
    stored = runner.store.run(job.run_id)
    for line in source_lines(spec, [job]):
        say(line)
    c = job.config
    say(f"run {job.run_id}: {r.backbone}/{r.dataset} {c.label} {c.eps} ({stored.status})")
    if stored.status == "completed":
        return Outcome(lines=["nothing to run: it is completed (`rftbench evaluate` scores it again)"])
    if stored.status == "failed":  # asked for by name: run it again
        runner.queue.requeue([job.run_id])
        say(f"retrying it (it failed with: {escape(stored.error or '')})")
    return execute(runner, [job.run_id], db=r.db, say=say)


def trial_tuner(store):
    """A tuner that asks nothing but prunes and tells the tuning trials `resume` continues (None: the
    database holds no study)."""
    from rftbench.execution.trials import Tuner
    from rftbench.results.studies import Studies

    keys = [study.key for study in Studies(store).all()]
    return Tuner(store, keys, asks=False) if keys else None


def resume(
    db: str | None, options: RunnerOptions, launch: LaunchOptions, *, say: Say = print, progress=None
) -> Outcome:
    """Continue every pending or interrupted run from its last epoch checkpoint."""
    from rftbench.results.store import Store

    runner = make_runner(options, progress)
    runner.store = Store.open(db, create=False)
    # the data and weights of every unfinished run first: a problem leaves the database as it was
    unfinished = runner.store.runs(states=("pending", "interrupted", "running"))
    preflight(runner, [(RunConfig.from_json(r.config), r.paths) for r in unfinished])
    reaped = runner.queue.reap()
    todo = runner.queue.claimable()
    runner.tuner = trial_tuner(runner.store)
    say(f"{len(todo)} run(s) to continue ({reaped} found interrupted now)")
    return execute(runner, None, launch, db, say=say) if todo else Outcome()
