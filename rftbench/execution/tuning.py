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
Each trial asks its sampler seeded with (search seed, trials asked so far), so with `random` trial k's draw
is the same whichever worker asks for it.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from datetime import UTC, timedelta
from pathlib import Path

from rftbench.core.config import RunConfig
from rftbench.core.tuning import Search, SearchError, best_trial
from rftbench.execution.grid import Say, check_filters, read_experiments
from rftbench.execution.launch import execute, make_runner, preflight
from rftbench.execution.options import LaunchError, LaunchOptions, RunnerOptions
from rftbench.execution.workers import Outcome
from rftbench.experiments.grids import Job, StudyPlan
from rftbench.results.schema import Study, now
from rftbench.results.studies import Studies, TrialSummary, optuna_storage, tune_lock


def sampler(search: Search, asked: int):
    import optuna

    seed = search.seed * 1_000_003 + asked  # a new stream per trial: reproducible whoever asks
    if search.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


def pruner(search: Search, epochs: int):
    import optuna

    if search.pruner == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=search.min_epochs, reduction_factor=search.reduction_factor
        )
    if search.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=search.min_epochs, max_resource=epochs, reduction_factor=search.reduction_factor
        )
    return optuna.pruners.NopPruner()


@dataclass
class Tuner:
    """Asks new trials of `keys`' studies within a budget (`asks`), reports epochs to Optuna and prunes,
    and tells Optuna how trials ended; its plain values (`spec`) cross processes in a WorkerSpec."""

    store: object  # rftbench.results.store.Store
    keys: list[str]
    budgets: dict[str, list] = field(default_factory=dict)  # study key -> [trials, minutes] (None: no limit)
    asks: bool = True  # False (`resume`): only continue, prune and tell the trials already asked
    links: dict[str, tuple[str, int] | None] = field(default_factory=dict)  # run id -> (study key, number)
    storage: object = None  # Optuna's, opened once

    def spec(self) -> dict:
        return {"keys": self.keys, "budgets": self.budgets, "asks": self.asks}

    @property
    def studies(self) -> Studies:
        return Studies(self.store)

    def search(self, study: Study) -> Search:
        trials, minutes = self.budgets.get(study.key, (1, None))
        return Search.from_definition(study.search, trials=trials, minutes=minutes)

    def optuna_study(self, study: Study, asked: int = 0, epochs: int | None = None):
        import optuna

        search = self.search(study)
        epochs = epochs or RunConfig.from_json(study.template).epochs
        self.storage = self.storage or optuna_storage(self.store)
        return optuna.load_study(
            study_name=study.optuna_name,
            storage=self.storage,
            sampler=sampler(search, asked),
            pruner=pruner(search, epochs),
        )

    def run_ids(self) -> list[str]:
        return self.studies.run_ids(self.keys)

    def left(self, study: Study, trials: list[TrialSummary]) -> int:
        """How many more trials the study may ask now (its budget less those asked; 0 once its minutes
        since the first trial have passed)."""
        trials_budget, minutes = self.budgets.get(study.key, (0, None))
        if minutes is not None and trials:
            first = min(t.created_at for t in trials)
            if now() - first.replace(tzinfo=first.tzinfo or UTC) > timedelta(minutes=minutes):
                return 0
        if trials_budget is None:
            return 1  # minutes only: one at a time, the clock decides
        return max(0, trials_budget - len(trials))

    def trials_left(self) -> int:
        """Trials the studies may still ask (for sizing a SLURM array)."""
        if not self.asks:
            return 0
        summaries = self.studies.summaries(self.keys)
        return sum(self.left(study, summaries[study.key]) for study in self.studies.all(self.keys))

    def ask(self) -> str | None:
        """A new trial of the first study with budget left, stored as a pending run; its id, or None."""
        if not self.asks:
            return None
        with tune_lock(self.store):
            order = {key: i for i, key in enumerate(self.keys)}
            for study in sorted(self.studies.all(self.keys), key=lambda s: order[s.key]):
                self.sync(study)
                if not self.left(study, self.studies.summaries([study.key])[study.key]):
                    continue
                return self.new_trial(study)
        return None

    def new_trial(self, study: Study) -> str:
        search = self.search(study)
        storage_study = self.optuna_study(study, asked=len(self.optuna_study(study).trials))
        trial = storage_study.ask()
        params = {k.name: trial.suggest_float(k.name, k.low, k.high, log=k.log) for k in search.space}
        config = dataclasses.replace(RunConfig.from_json(study.template), **params)
        job = Job(
            config, study.grid, trial.number, dict(study.paths), study.eval_protocol, study.eval_precision
        )
        self.studies.add_trial(study.key, trial.number, job, params)
        return job.run_id

    def sync(self, study: Study) -> None:
        """Tell Optuna how the runs of its running trials ended (a worker may have died between the two
        writes); a trial no run was linked to (its asker died first) is failed. Under the lock."""
        import optuna

        storage_study = self.optuna_study(study)
        numbers = self.studies.trial_numbers(study.key)
        states = {t.number: t for t in self.studies.summaries([study.key])[study.key]}
        for trial in storage_study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            linked = states.get(trial.number) if trial.number in numbers else None
            if linked is None:
                storage_study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
            elif linked.state == "completed":
                storage_study.tell(trial.number, linked.value)
            elif linked.state == "pruned":
                storage_study.tell(trial.number, state=optuna.trial.TrialState.PRUNED)
            elif linked.state == "failed":
                storage_study.tell(trial.number, state=optuna.trial.TrialState.FAIL)

    def link(self, run_id: str) -> tuple[Study, int] | None:
        if run_id not in self.links:
            self.links[run_id] = self.studies.study_of(run_id)
        found = self.links[run_id]
        return None if found is None else (self.studies.get(found[0]), found[1])

    def should_prune(self, run_id: str, config: RunConfig, metrics: dict) -> bool:
        """Report this epoch's clean validation accuracy to the run's trial (if it is one) and ask its
        pruner; never at the last epoch, whose run is as good as completed."""
        import optuna

        link = self.link(run_id)
        if link is None or metrics["epoch"] >= config.epochs - 1:
            return False
        study, number = link
        with tune_lock(self.store), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a resumed run reports its replayed epochs again: ignored
            storage_study = self.optuna_study(study, epochs=config.epochs)
            storage = storage_study._storage
            study_id = storage.get_study_id_from_name(study.optuna_name)
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, number)
            if storage.get_trial(trial_id).state.is_finished():
                return False
            trial = optuna.trial.Trial(storage_study, trial_id)
            trial.report(metrics["val_acc"], metrics["epoch"] + 1)
            return trial.should_prune()

    def finished(self, run_id: str) -> None:
        """Tell Optuna how the run's trial ended (completed, pruned or failed), if it is one."""
        link = self.link(run_id)
        if link is not None:
            with tune_lock(self.store):
                self.sync(link[0])


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

    studies = Studies(store)
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
                storage=optuna_storage(store),
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
    where = f"{study.backbone}/{study.dataset} {study.eps} {study.setting} [{study.key[:8]}]"
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
