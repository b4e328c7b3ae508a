"""What `rftbench tune` does below the command line: one Optuna study per configuration of a grid, whose
trials are runs claimed and trained by the same workers, executors and database as `run-grid`'s.

    plan = plan_tune(TuneRequest(grid="demo", trials=8, db="r.db"))
    outcome = tune(plan, RunnerOptions(device="cpu"), LaunchOptions(executor="local", processes=2), say=print)

A worker with nothing to claim asks a `Tuner` for a new trial: under `tune_lock` it brings Optuna's trial
states in line with the runs (a run completed, pruned or failed since, a trial whose asker died before it
was linked), counts the study's trials against its budget, asks Optuna's sampler for the knobs, and stores
trial number -> run (pending). Any worker then claims that run like any other, so a trial runs once, and
a killed worker's trial is its run: `interrupted`, continued from its checkpoint by the next claimer (under
the same trial number). After each epoch but the last the worker reports the clean validation accuracy to
Optuna at step epoch + 1 (epochs trained) and asks the pruner; a pruned trial's run is `pruned`, not failed.
Each trial's sampler is seeded with a hash of (search seed, trials asked so far), so with `random` trial
k's draw is the same whichever worker asks for it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from rftbench.core.config import template_variant
from rftbench.core.tuning import Search, SearchError, best_trial
from rftbench.execution.grid import Say, check_filters, read_experiments, recorded_splits
from rftbench.execution.launch import execute, make_runner, preflight
from rftbench.execution.options import LaunchError, LaunchOptions, RunnerOptions
from rftbench.execution.trials import Tuner
from rftbench.execution.workers import Outcome
from rftbench.experiments.grids import StudyPlan
from rftbench.results.schema import Study
from rftbench.results.studies import Studies, TrialSummary, optuna_storage, tune_lock


@dataclass(frozen=True)
class TuneRequest:
    grid: str
    backbones: list[str] = field(default_factory=list)
    datasets: list[str] = field(default_factory=list)
    eps: list[str] = field(default_factory=list)
    trials: int | None = None  # None: the [tune] table's
    minutes: float | None = None
    experiments: Path | None = None
    db: str | None = None
    roots: dict = field(default_factory=dict)


@dataclass
class TunePlan:
    request: TuneRequest
    spec: object  # rftbench.experiments.grids.Experiments
    studies: list[StudyPlan]


def plan_tune(request: TuneRequest) -> TunePlan:
    """The studies a request tunes, their budgets checked; one line (GridError, LaunchError) if not."""
    r = request
    spec = read_experiments(r.experiments, r.roots)
    spec.recorded[r.grid] = recorded_splits(r.db, r.grid)  # the split lists its runs have: run-grid's key
    check_filters(r.backbones, r.datasets, [])
    plans = spec.studies(r.grid, backbones=r.backbones, datasets=r.datasets, eps=r.eps)
    if not plans:
        raise LaunchError(f"grid {r.grid!r} has no configuration matching these filters; drop a filter")
    try:
        plans = [
            dataclasses.replace(p, search=dataclasses.replace(p.search, **budget(r, p.search))) for p in plans
        ]
    except SearchError as exc:
        raise LaunchError(f"--trials/--minutes: {exc}") from None
    return TunePlan(request, spec, plans)


def budget(request: TuneRequest, search: Search) -> dict:
    """The flags' budget over the table's: a flag given alone replaces both."""
    if request.trials is None and request.minutes is None:
        return {}
    return {"trials": request.trials, "minutes": request.minutes}


def record_studies(store, plans: list[StudyPlan]) -> None:
    """Each plan's study in the database (once) and in Optuna's tables (the same database)."""
    import optuna

    studies, storage = Studies(store), optuna_storage(store)
    with tune_lock(store):
        for plan in plans:
            config = plan.job.config
            studies.record(
                Study(
                    key=plan.key,
                    optuna_name=f"rftbench-{plan.key}",
                    grid=plan.job.grid,
                    backbone=config.backbone,
                    dataset=config.dataset,
                    eps=config.eps,
                    setting=config.setting,
                    template=config.canonical_json(),
                    search=plan.search.definition(),
                    paths=plan.job.paths,
                    eval_protocol=plan.job.eval_protocol,
                    eval_precision=plan.job.eval_precision,
                )
            )
            optuna.create_study(
                study_name=f"rftbench-{plan.key}",
                storage=storage,
                direction="maximize",
                load_if_exists=True,
            )


def study_line(study: Study, trials: list[TrialSummary], budget: list | None = None) -> str:
    """One study: its trials by state, and its best trial's values."""
    count = {state: sum(t.state == state for t in trials) for state in ("completed", "pruned", "failed")}
    best = best_trial([(t.number, t.state, t.value, t.params) for t in trials])
    shown = (
        f"best {best[1]:.2%} at " + ", ".join(f"{k} {v:.3g}" for k, v in best[2].items())
        if best
        else "no completed trial yet"
    )
    limit = "" if not budget or budget[0] is None else f" of {budget[0]}"
    states = ", ".join(f"{n} {state}" for state, n in count.items())
    trains = "+".join(part for part in (study.setting, template_variant(study.template)) if part)
    where = f"{study.backbone}/{study.dataset} {study.eps} {trains} [{study.key[:8]}]"
    return f"{where}: {len(trials)}{limit} trial(s), {states}; {shown}"


def tune(
    plan: TunePlan, options: RunnerOptions, launch: LaunchOptions, *, say: Say = print, progress=None
) -> Outcome:
    """Record the plan's studies, then let the executor's workers ask, train and prune their trials until
    every study's budget is spent; one line per study after."""
    from rftbench.results.store import Store

    runner = make_runner(options, progress)
    preflight(runner, [(p.job.config, p.job.paths) for p in plan.studies])
    runner.store = Store.open(plan.request.db)
    record_studies(runner.store, plan.studies)
    budgets = {p.key: [p.search.trials, p.search.minutes] for p in plan.studies}
    runner.tuner = Tuner(runner.store, [p.key for p in plan.studies], budgets)
    studies = Studies(runner.store)
    summaries = studies.summaries(runner.tuner.keys)
    say(f"grid {plan.request.grid}: {len(plan.studies)} configuration(s) to tune")
    for study in studies.all(runner.tuner.keys):
        say(study_line(study, summaries[study.key], runner.tuner.budgets[study.key]))
    outcome = execute(runner, None, launch, plan.request.db, plan.spec.slurm, say)
    with tune_lock(runner.store):
        for study in studies.all(runner.tuner.keys):
            runner.tuner.sync(study)
    summaries = studies.summaries(runner.tuner.keys)
    for study in studies.all(runner.tuner.keys):
        outcome.lines.append(study_line(study, summaries[study.key], runner.tuner.budgets[study.key]))
    return outcome
