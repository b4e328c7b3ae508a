"""The job queue over the results database: which runs wait, which worker holds which, for how long.

    queue = JobQueue(store)
    worker = Worker(label="local 1/4 cuda:1")
    run = queue.claim(worker, queue.claimable(run_ids), lease_seconds=120)   # None: nothing left to take
    queue.heartbeat(run.id, worker, 120)          # renew the lease (False: another worker took the run)
    queue.record_epoch(run.id, worker, metrics)   # owner-checked: a lost lease writes nothing
    queue.complete(run.id, worker, evaluation)    # owner-checked, one transaction with the final rows

A claim is one transaction that picks the first free run of the caller's order and marks it running:
PostgreSQL locks that one row with `FOR UPDATE SKIP LOCKED` (concurrent claimers skip it instead of
waiting), SQLite takes its write lock up front (`BEGIN IMMEDIATE`, in `rftbench.results.connect`). A
running run holds a lease that its worker renews; a run whose lease expired, or whose process is gone, is
`interrupted` and can be claimed again. Whether a process is gone is asked only of a process id recorded on
this host, in this boot and in this PID namespace: anywhere else (another node, another container) the lease
alone decides, since the same number may name another process there.
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import func, update
from sqlmodel import Session, select

from rftbench.results.schema import Run, now
from rftbench.results.store import Store

CLAIMABLE = ("pending", "interrupted")


class LeaseLost(RuntimeError):
    """Another worker took this run over (its lease had expired): stop without touching its state."""


def pid_namespace() -> str | None:
    """This process's boot and PID namespace (`<boot id>/pid:[inode]`), or None where Linux's /proc does
    not tell: two processes may compare process ids only when this is equal and not None."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return f"{boot}/{os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return None


def pid_alive(pid: int) -> bool:
    """Whether process `pid` (of this PID namespace) still runs. A zombie does not: a worker killed by a
    signal stays one until its parent waits for it, and its run must be taken over at once."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # no /proc (or it just ended): kill() said it exists
        return True
    return stat[stat.rindex(")") + 2 :].split()[0] != "Z"  # the state field follows "(command) "


@dataclass(frozen=True)
class Worker:
    """Who claims runs: a lease owner unique to one claim loop, and what `status` shows of it."""

    label: str = "inline"
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    pid_namespace: str | None = field(default_factory=pid_namespace)
    owner: str = ""

    def __post_init__(self) -> None:
        if not self.owner:
            object.__setattr__(self, "owner", f"{self.host}:{self.pid}:{uuid.uuid4().hex[:8]}")


@dataclass
class JobQueue:
    store: Store

    def session(self) -> Session:
        return self.store.session()

    def claimable(self, run_ids: Sequence[str] | None = None) -> list[str]:
        """Ids of pending or interrupted runs, in the order given (else creation order)."""
        if run_ids is None:
            return [r.id for r in self.store.runs(states=CLAIMABLE)]
        with self.session() as session:
            query = select(Run.id).where(Run.id.in_(list(run_ids)), Run.status.in_(CLAIMABLE))
            found = set(session.exec(query).all())
        return [r for r in run_ids if r in found]

    def claim(self, worker: Worker, run_ids: Sequence[str], lease_seconds: float) -> Run | None:
        """Take the first of `run_ids` that is pending or interrupted, in one transaction; None if none is
        free. Of several workers claiming at once, each gets a different run or None."""
        if not run_ids:
            return None
        order = sa.case({run_id: i for i, run_id in enumerate(run_ids)}, value=Run.id)
        query = select(Run.id).where(Run.id.in_(list(run_ids)), Run.status.in_(CLAIMABLE))
        query = query.order_by(order).limit(1).with_for_update(skip_locked=True)  # (SQLite ignores it)
        with self.session() as session:
            run_id = session.exec(query).first()
            if run_id is None:
                return None
            t = now()
            session.exec(
                update(Run)
                .where(Run.id == run_id)
                .values(
                    status="running",
                    lease_owner=worker.owner,
                    lease_expires_at=t + timedelta(seconds=lease_seconds),
                    heartbeat_at=t,
                    started_at=func.coalesce(Run.started_at, t),
                    host=worker.host,
                    pid=worker.pid,
                    pid_namespace=worker.pid_namespace,
                    worker=worker.label,
                    attempts=Run.attempts + 1,
                    error=None,
                )
            )
            session.commit()
            return session.get(Run, run_id)

    def heartbeat(self, run_id: str, worker: Worker, lease_seconds: float) -> bool:
        """Renew the lease; False if this worker no longer holds the run (it was reaped or re-claimed)."""
        with self.session() as session:
            t = now()
            result = session.exec(
                update(Run)
                .where(*self.held(run_id, worker))
                .values(heartbeat_at=t, lease_expires_at=t + timedelta(seconds=lease_seconds))
            )
            session.commit()
            return result.rowcount == 1

    @staticmethod
    def held(run_id: str, worker: Worker) -> tuple:
        return Run.id == run_id, Run.lease_owner == worker.owner, Run.status == "running"

    def hold(self, session: Session, run_id: str, worker: Worker) -> None:
        """In `session`'s transaction: raise LeaseLost unless `worker` holds the run, and keep it so until
        the commit (PostgreSQL locks the row; SQLite's transaction holds the write lock already)."""
        query = select(Run.id).where(*self.held(run_id, worker)).with_for_update()
        if session.exec(query).first() is None:
            raise LeaseLost(f"run {run_id} was taken over by another worker (its lease had expired)")

    def record_epoch(self, run_id: str, worker: Worker, metrics: dict) -> None:
        """Store an epoch's metrics row if `worker` still holds the run; else LeaseLost, nothing written."""
        with self.session() as session:
            self.hold(session, run_id, worker)
            self.store.write_epoch(session, run_id, metrics)
            session.commit()

    def complete(
        self, run_id: str, worker: Worker, evaluation: dict, *, provenance: dict | None = None
    ) -> None:
        """One transaction: the final evaluation rows (of the last weights, and of the weights its policy
        keeps, `evaluation["kept"]`) and `completed`, if `worker` still holds the run; else
        LeaseLost and nothing written (the worker that took it over completes it)."""
        with self.session() as session:
            self.hold(session, run_id, worker)
            for scored in (evaluation, evaluation.get("kept")):  # the last weights, and those kept besides
                if scored is not None:
                    self.store.insert_evaluation(session, run_id, scored, kind="final")
            values = {"status": "completed", "lease_owner": None, "lease_expires_at": None, "error": None}
            values |= {"finished_at": now()} | ({"provenance": provenance} if provenance is not None else {})
            session.exec(update(Run).where(Run.id == run_id).values(**values))
            session.commit()
        self.store.update_adaptation([run_id])

    def release(self, run_id: str, worker: Worker, status: str, *, error: str | None = None) -> bool:
        """End this worker's hold on a run as failed (with its one-line error), pruned or interrupted;
        False (and nothing changed) if it no longer held it."""
        values = {"status": status, "lease_owner": None, "lease_expires_at": None, "error": error}
        if status in ("failed", "pruned"):
            values["finished_at"] = now()
        with self.session() as session:
            result = session.exec(update(Run).where(*self.held(run_id, worker)).values(**values))
            session.commit()
            return result.rowcount == 1

    def reap(self) -> int:
        """Mark `interrupted` every running run whose lease expired, or whose process is gone (asked only
        in this process's own host, boot and PID namespace); returns how many."""
        me = Worker()
        with self.session() as session:
            running = session.exec(select(Run).where(Run.status == "running")).all()
            expired = [r for r in running if r.lease_expires_at is not None and r.lease_expires_at < now()]
            here = [r for r in running if me.pid_namespace is not None and r.pid is not None
                    and (r.host, r.pid_namespace) == (me.host, me.pid_namespace)]  # fmt: skip
            gone = [r for r in here if not pid_alive(r.pid)]
            count = 0
            for run in {r.id: r for r in expired + gone}.values():  # never steal a lease renewed meanwhile
                result = session.exec(
                    update(Run)
                    .where(Run.id == run.id, Run.status == "running", Run.lease_owner == run.lease_owner)
                    .values(status="interrupted", lease_owner=None, lease_expires_at=None)
                )
                count += result.rowcount
            session.commit()
        return count

    def requeue(self, run_ids: Iterable[str], states: Sequence[str] = ("failed",)) -> int:
        """Put runs in `states` back to pending (`--retry-failed`); returns how many."""
        with self.session() as session:
            result = session.exec(
                update(Run)
                .where(Run.id.in_(list(run_ids)), Run.status.in_(states))
                .values(status="pending", error=None)
            )
            session.commit()
            return result.rowcount

    def held_by_others(self, run_ids: Sequence[str] | None) -> list[Run]:
        """The running runs among `run_ids` (None: all): what a worker with nothing to claim waits for."""
        runs = self.store.runs(states=("running",))
        return runs if run_ids is None else [r for r in runs if r.id in set(run_ids)]


class Heartbeat(threading.Thread):
    """Renews a run's lease every quarter lease; `lost` turns True if the queue says we no longer hold it."""

    def __init__(self, queue: JobQueue, run_id: str, worker: Worker, lease_seconds: float) -> None:
        super().__init__(daemon=True)
        self.queue, self.run_id, self.worker, self.lease_seconds = queue, run_id, worker, lease_seconds
        self.stop, self.lost = threading.Event(), False

    def run(self) -> None:
        while not self.stop.wait(self.lease_seconds / 4):
            try:
                self.lost = not self.queue.heartbeat(self.run_id, self.worker, self.lease_seconds)
            except Exception:  # a busy database: the next beat retries; the lease has slack for it
                continue
