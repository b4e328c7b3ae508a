"""The `Tuner` a worker's runner asks when nothing is left to claim: new trials of its studies within
their budgets, each stored as a pending run; after each epoch, Optuna's report and its pruner's verdict;
when a trial's run ends, Optuna told how (rftbench.execution.tuning says how `rftbench tune` uses it).

    tuner = Tuner(store, keys=[study.key], budgets={study.key: [8, None]})
    run_id = tuner.ask()                                   # None: every study's budget is spent
    tuner.should_prune(run_id, config, metrics)            # after an epoch (never the last)
    tuner.finished(run_id)                                 # completed, pruned or failed: Optuna learns it

Everything that counts or asks runs under `tune_lock`, so two workers never take the same trial slot, and
the runs stay the record: Optuna's trial states are brought in line with them (`sync`), also after a
worker died between the two writes. Steps are epochs trained (epoch + 1), so `min_epochs = 1` puts ASHA's
first rung after the first epoch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import sys
import warnings
from dataclasses import dataclass, field
from datetime import UTC, timedelta

from rftbench.core.config import RunConfig
from rftbench.core.tuning import Search
from rftbench.experiments.grids import Job
from rftbench.results.schema import Study, now
from rftbench.results.studies import Studies, TrialSummary, optuna_storage, tune_lock


def sampler(search: Search, asked: int, study: str):
    import optuna

    # One stream per trial of one study, reproducible whoever asks: the study's key (which holds the search's
    # seed) in it, so two studies of one configuration (another pruner, say) never draw the same runs;
    # hashed, because generators seeded with consecutive integers start alike (NumPy's first uniform draws
    # for seeds 0-3: 0.55, 0.42, 0.44, 0.55)
    text = f"{study}:{asked}".encode()
    seed = int.from_bytes(hashlib.sha256(text).digest()[:4], "little")
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
            sampler=sampler(search, asked, study.key),
            pruner=pruner(search, epochs),
        )

    def run_ids(self) -> list[str]:
        return self.studies.run_ids(self.keys)

    def left(self, study: Study, trials: list[TrialSummary]) -> float:
        """How many more trials the study may ask now (its budget less those asked; 0 once its minutes
        since the first trial have passed)."""
        trials_budget, minutes = self.budgets.get(study.key, (0, None))
        if minutes is not None and trials:
            first = min(t.created_at for t in trials)
            if now() - first.replace(tzinfo=first.tzinfo or UTC) > timedelta(minutes=minutes):
                return 0
        if trials_budget is None:
            return math.inf  # minutes only: the clock decides
        return max(0, trials_budget - len(trials))

    def trials_left(self) -> float:
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
        linked_trials = {t.number: t for t in self.studies.summaries([study.key])[study.key]}
        for trial in storage_study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            linked = linked_trials.get(trial.number)
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
        link = self.link(run_id)
        if link is None or metrics["epoch"] >= config.epochs - 1:
            return False
        try:
            return self.report(*link, config, metrics)
        except Exception as exc:  # a busy database: the trial trains on, `sync` puts Optuna right later
            print(f"note: run {run_id[:8]}: Optuna not reached ({exc}); not pruned here", file=sys.stderr)
            return False

    def report(self, study: Study, number: int, config: RunConfig, metrics: dict) -> bool:
        import optuna

        with tune_lock(self.store), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a resumed run reports its replayed epochs again: ignored
            storage_study, storage = self.optuna_study(study, epochs=config.epochs), self.storage
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
        if link is None:
            return
        try:
            with tune_lock(self.store):
                self.sync(link[0])
        except Exception as exc:  # the run's state is stored: the next ask or `tune` tells Optuna
            print(f"note: run {run_id[:8]}: Optuna not told yet ({exc})", file=sys.stderr)
