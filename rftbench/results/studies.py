"""Hyperparameter studies in the results database: which configuration each tunes, which run each trial
is, and what they reached; the lock their workers ask under, and Optuna's storage in the same database.

    studies = Studies(store)
    studies.record(study_row)                         # once per configuration (`rftbench tune`)
    with tune_lock(store):                            # one asker at a time, across processes and nodes
        studies.add_trial(key, number, job, params)   # trial `number` is run `job.run_id`
    studies.summaries([key])                          # each trial's run state and its last val acc

A trial's state is its run's (`pending` … `completed`, `failed`, `pruned`) and its value the run's last
clean validation accuracy, so the runs are the one record of what happened; Optuna's tables (same URL,
`optuna_storage`) hold what its sampler and pruner need, and are brought in line with the runs under the
lock (rftbench.execution.tuning).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime

from filelock import FileLock
from sqlalchemy import func
from sqlmodel import select

from rftbench.core.tuning import best_trial
from rftbench.results.connect import exclusive, sqlite_events, sqlite_path
from rftbench.results.schema import EpochMetric, Run, Study, Trial, run_row
from rftbench.results.store import Store

TUNE_LOCK = 0x5F7B3F  # PostgreSQL's advisory lock key of `tune_lock` (connect.ADVISORY_LOCK + 1)


@dataclass(frozen=True)
class TrialSummary:
    number: int
    run_id: str
    params: dict
    state: str  # its run's
    value: float | None  # the last stored epoch's clean validation accuracy (the objective once completed)
    epochs_done: int
    created_at: datetime  # when it was asked


@contextlib.contextmanager
def tune_lock(store: Store) -> Iterator[None]:
    """Held while a worker counts a study's trials, asks Optuna for the next one and links it to its run,
    or reports to Optuna: a file lock beside a SQLite file (whose workers share one node), a session
    advisory lock on PostgreSQL (released by the server if the worker dies)."""
    path = sqlite_path(store.engine.url.render_as_string(hide_password=False))
    if path is not None:
        with FileLock(str(path) + ".tune.lock"):
            yield
        return
    with store.engine.connect() as connection:
        connection.exec_driver_sql(f"SELECT pg_advisory_lock({TUNE_LOCK})")
        connection.commit()
        try:
            yield
        finally:
            connection.exec_driver_sql(f"SELECT pg_advisory_unlock({TUNE_LOCK})")
            connection.commit()


def optuna_storage(store: Store):
    """Optuna's RDB storage in the results database (its own tables beside rftbench's). On SQLite its
    connections take the write lock when a transaction starts, as rftbench's do (`connect.sqlite_events`):
    a read-then-write transaction that another process's commit overtook would fail at once otherwise."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = store.engine.url.render_as_string(hide_password=False)
    if sqlite_path(url) is None:
        return optuna.storages.RDBStorage(url)
    storage = optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
    sqlite_events(storage.engine)
    storage.engine.dispose()  # the connection that created its tables predates the events
    return storage


class Studies:
    """The studies and trials of one results database."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def record(self, study: Study) -> bool:
        """Store a study if its key is new; True if it was."""
        with self.store.session() as session:
            exclusive(session.connection())
            if session.get(Study, study.key) is not None:
                return False
            session.add(study)
            session.commit()
            return True

    def get(self, key: str) -> Study | None:
        with self.store.session() as session:
            return session.get(Study, key)

    def all(self, keys: Iterable[str] | None = None) -> list[Study]:
        with self.store.session() as session:
            query = select(Study).order_by(Study.created_at)
            if keys is not None:
                query = query.where(Study.key.in_(list(keys)))
            return list(session.exec(query).all())

    def add_trial(self, key: str, number: int, job, params: dict) -> None:
        """One transaction: trial `number` of study `key` is `job`'s run, stored as pending if new (a run of
        the same config, from a grid say, is reused as it stands)."""
        with self.store.session() as session:
            exclusive(session.connection())
            if session.get(Run, job.run_id) is None:
                session.add(run_row(job.config, job.paths, job.eval_protocol, job.eval_precision))
            session.add(Trial(study=key, number=number, run_id=job.run_id, params=params))
            session.commit()

    def run_ids(self, keys: Iterable[str]) -> list[str]:
        """The trial runs of these studies, in the order their trials were asked."""
        with self.store.session() as session:
            query = select(Trial.run_id).where(Trial.study.in_(list(keys)))
            return list(dict.fromkeys(session.exec(query.order_by(Trial.created_at)).all()))

    def study_of(self, run_id: str) -> tuple[str, int] | None:
        """(study key, trial number) of the trial that is run `run_id`, if one is."""
        with self.store.session() as session:
            row = session.exec(select(Trial.study, Trial.number).where(Trial.run_id == run_id)).first()
            return tuple(row) if row is not None else None

    def summaries(self, keys: Iterable[str] | None = None) -> dict[str, list[TrialSummary]]:
        """Study key -> its trials in number order, each with its run's state and last val acc."""
        keys = [s.key for s in self.all()] if keys is None else list(keys)
        with self.store.session() as session:
            trials = session.exec(
                select(Trial, Run.status).join(Run, Run.id == Trial.run_id).where(Trial.study.in_(keys))
            ).all()
            ids = list({trial.run_id for trial, _ in trials})
            last = (
                select(EpochMetric.run_id, func.max(EpochMetric.epoch).label("epoch"))
                .where(EpochMetric.run_id.in_(ids))
                .group_by(EpochMetric.run_id)
                .subquery()
            )
            rows = session.exec(
                select(EpochMetric.run_id, EpochMetric.epoch, EpochMetric.val_acc).join(
                    last, (EpochMetric.run_id == last.c.run_id) & (EpochMetric.epoch == last.c.epoch)
                )
            ).all()
        values = {run_id: (epoch, acc) for run_id, epoch, acc in rows}
        out: dict[str, list[TrialSummary]] = {key: [] for key in keys}
        for trial, state in sorted(trials, key=lambda row: (row[0].study, row[0].number)):
            epoch, acc = values.get(trial.run_id, (-1, None))
            out[trial.study].append(
                TrialSummary(
                    trial.number, trial.run_id, dict(trial.params), state, acc, epoch + 1, trial.created_at
                )
            )
        return out

    def best(self, keys: Iterable[str]) -> dict[str, tuple[int, float, dict] | None]:
        """Study key -> (number, value, params) of its best completed trial (`core.tuning.best_trial`), or
        None where it has none yet; keys of studies not in the database are left out."""
        known = {study.key for study in self.all(keys)}
        summaries = self.summaries(known)
        return {
            key: best_trial([(t.number, t.state, t.value, t.params) for t in summaries[key]]) for key in known
        }
