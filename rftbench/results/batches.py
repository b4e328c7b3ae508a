"""The per-batch results of evaluations: what makes a killed evaluation resumable, and the worst case over
several evaluations of one run recomputable.

    log = EvalLog(store, run_id, evaluation_key(protocol, budgets, model))   # rftbench.engine's BatchLog
    log.save(0, {"n": 4, "start": 0, "flags": {"4/255": "1101"}}); log.done()
    worst_cases(session, [(run_id, "4/255")])    # {(run_id, "4/255"): 0.375}, or None without two evaluations

Every batch's row (`EvalBatch`) holds each sample's robust flag at every ε, in the test loader's fixed order,
under its evaluation's key (`batches_key`, also stored in the evaluation row's `batches`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Protocol

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from rftbench.results.connect import upsert_insert
from rftbench.results.schema import EvalBatch, Evaluation


class Sessions(Protocol):
    """What an EvalLog writes through: a `rftbench.results.store.Store`."""

    engine: Engine

    def session(self) -> Session: ...


def batches_key(key: dict) -> str:
    """The EvalBatch key of an evaluation (`rftbench.engine.evaluation.evaluation_key`): 16 hex digits."""
    text = json.dumps(key, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class EvalLog:
    """The per-batch log of one evaluation of one run in the store (`rftbench.engine.evaluation.BatchLog`)."""

    def __init__(self, store: Sessions, run_id: str, key: dict) -> None:
        self.store, self.run_id, self.key = store, run_id, batches_key(key)

    def done(self) -> dict[int, dict]:
        with self.store.session() as session:
            query = select(EvalBatch).where(EvalBatch.run_id == self.run_id, EvalBatch.key == self.key)
            return {b.batch: b.result | {"n": b.n, "start": b.start} for b in session.exec(query).all()}

    def save(self, index: int, payload: dict) -> None:
        result = {k: v for k, v in payload.items() if k not in ("n", "start", "seconds")}
        values = {"run_id": self.run_id, "key": self.key, "batch": index, "start": payload["start"],
                  "n": payload["n"], "result": result, "seconds": payload.get("seconds")}  # fmt: skip
        with self.store.session() as session:
            if insert := upsert_insert(self.store.engine):  # a second evaluator of the same batch: kept once
                session.exec(
                    insert(EvalBatch)
                    .values(**values)
                    .on_conflict_do_nothing(index_elements=["run_id", "key", "batch"])
                )
            elif (
                session.exec(
                    select(EvalBatch.id).where(
                        *(getattr(EvalBatch, k) == values[k] for k in ("run_id", "key", "batch"))
                    )
                ).first()
                is None
            ):
                session.add(EvalBatch(**values))
            session.commit()


def worst_cases(session: Session, keys: Iterable[tuple[str, ...]]) -> dict[tuple[str, ...], float | None]:
    """Per (run id, budget[, weights]): the accuracy at the budget when a sample counts as robust only if
    every evaluation of those weights of the run (default: the last epoch's) stored with per-sample flags at
    that budget (any attack, protocol or precision) failed on it; None without two such evaluations of the
    same test samples. Two queries in all."""
    keys = list(dict.fromkeys(keys))
    ids = list({key[0] for key in keys})
    named = select(Evaluation.run_id, Evaluation.batches, Evaluation.weights).where(
        Evaluation.run_id.in_(ids), Evaluation.batches.is_not(None)
    )
    named_logs = session.exec(named.order_by(Evaluation.id)).all()
    logs = {(run, key): [] for run, key, _ in named_logs}
    weights_of = {
        pair: set() for pair in logs
    }  # a log two rows share (the best epoch was the last) serves both
    for run, key, weights in named_logs:
        weights_of[(run, key)].add(weights)
    query = select(EvalBatch).where(EvalBatch.run_id.in_(ids), EvalBatch.key.in_({k for _, k in logs}))
    for row in session.exec(query.order_by(EvalBatch.batch)).all():
        if (row.run_id, row.key) in logs:  # (a partial log that no evaluation names is not one)
            logs[(row.run_id, row.key)].append(row)
    worst = {}
    for key in keys:
        run_id, budget, weights = (*key, "last")[:3]
        vectors = {}  # layout (each batch's start and size) -> the evaluations' flags at `budget`
        for pair, batches in logs.items():
            mine = pair[0] == run_id and weights in weights_of[pair]
            if mine and batches and all(budget in b.result["flags"] for b in batches):
                layout = tuple((b.start, b.n) for b in batches)
                vectors.setdefault(layout, []).append("".join(b.result["flags"][budget] for b in batches))
        # the same test samples in the same order; where evaluations saw different data, the most of them
        flags = max(vectors.values(), key=len, default=[])
        robust = sum(all(v[i] == "1" for v in flags) for i in range(len(flags[0]))) if len(flags) > 1 else 0
        worst[key] = robust / len(flags[0]) if len(flags) > 1 else None
    return worst
