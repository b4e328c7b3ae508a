"""The job queue on both backends, a SQLite file and a real PostgreSQL server: every run claimed once by
concurrent workers, leases that expire, owner-checked writes, and reaping that a PID namespace cannot fool."""

from __future__ import annotations

import os
import threading
from datetime import timedelta
from pathlib import Path

import pytest

from rftbench.core.config import RunConfig
from rftbench.core.metrics import EvalProtocol
from rftbench.experiments.grids import Job
from rftbench.results.queue import JobQueue, LeaseLost, Worker, pid_alive
from rftbench.results.schema import Run, now
from rftbench.results.store import Store


def config(**kw) -> RunConfig:
    return RunConfig(**({"backbone": "cifar_resnet20", "dataset": "synthetic", "epochs": 4} | kw))


def jobs(*configs: RunConfig, grid: str = "g") -> list[Job]:
    return [Job(c, grid, i, {}) for i, c in enumerate(configs)]


def metrics(epoch: int) -> dict:
    return {"epoch": epoch, "eps": 0.0, "lr": 1e-3, "train_loss": 1.0, "train_acc": 0.5, "val_loss": 1.0,
            "val_acc": 0.5, "val_adv_loss": None, "val_adv_acc": None, "val_adv_eps": "4/255",
            "epoch_seconds": 1.0, "images_per_second": 10.0}  # fmt: skip


EVALUATION = {"n": 10, "clean": 0.5, "budgets": [], "protocol": EvalProtocol().as_dict()}


@pytest.fixture
def queue(db_url) -> JobQueue:
    return JobQueue(Store.open(db_url))


def expire(queue: JobQueue, run_id: str) -> None:
    """The lease ran out: its worker stopped beating."""
    with queue.session() as session:
        session.get(Run, run_id).lease_expires_at = now() - timedelta(seconds=1)
        session.commit()


def test_concurrent_workers_create_record_and_claim_each_run_once(db_url):
    """Six workers start together on a new database, as six `run-grid` processes would: each creates the
    schema, records the grid and claims runs until none is left. Without transactions that serialise the
    check-then-insert of the schema and the grid (SQLite's write lock up front, PostgreSQL's advisory
    lock) or claims that lock their row, some worker fails or two workers run one run."""
    configs = [config(seed=s) for s in range(24)]
    ids = [c.run_id for c in configs]
    claimed: dict[str, list[str]] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(6)

    def work(name: str) -> None:
        try:
            barrier.wait()
            store = Store.open(db_url)  # each worker its own engine, as separate processes would
            store.record_grid("g", jobs(*configs), adaptation_threshold=0.05)
            queue, me = JobQueue(store), Worker(name)
            mine = claimed.setdefault(name, [])
            while (run := queue.claim(me, queue.claimable(ids), 60)) is not None:
                assert run.lease_owner == me.owner and run.worker == name
                mine.append(run.id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    everything = [run_id for runs in claimed.values() for run_id in runs]
    assert sorted(everything) == sorted(ids)  # each run claimed exactly once
    assert all(r.attempts == 1 and r.status == "running" for r in Store.open(db_url).runs())


def test_a_claim_takes_the_first_free_run_in_the_callers_order(queue):
    a, b, c = (config(seed=s) for s in range(3))
    queue.store.record_grid("g", jobs(a, b, c), adaptation_threshold=0.05)
    me = Worker("me")
    assert queue.claim(me, [c.run_id, a.run_id, b.run_id], 60).id == c.run_id
    assert queue.claim(me, [c.run_id, a.run_id, b.run_id], 60).id == a.run_id
    assert queue.claimable([c.run_id, b.run_id, a.run_id]) == [b.run_id]
    assert queue.claim(me, [], 60) is None


def test_leases_expire_and_dead_processes_are_reaped(queue):
    a, b = config(seed=0), config(seed=1)
    queue.store.record_grid("g", jobs(a, b), adaptation_threshold=0.05)
    me, other = Worker("me"), Worker("other")
    run = queue.claim(me, [a.run_id], lease_seconds=60)
    assert run.id == a.run_id and queue.claim(other, [a.run_id], 60) is None  # held
    assert queue.reap() == 0 and queue.heartbeat(a.run_id, me, 60)
    expire(queue, a.run_id)
    assert queue.reap() == 1 and queue.store.run(a.run_id).status == "interrupted"
    assert not queue.heartbeat(a.run_id, me, 60)  # the old owner learns it lost the run
    assert queue.claim(other, [a.run_id], 60).attempts == 2
    queue.claim(Worker("third"), [b.run_id], 60)
    with queue.session() as session:  # on this host, in this PID namespace: a pid that no longer exists
        session.get(Run, b.run_id).pid = 2**22 + 12345
        session.commit()
    assert queue.reap() == 1 and queue.store.run(b.run_id).status == "interrupted"


def test_a_killed_worker_not_yet_waited_for_is_dead():
    """A local worker killed by SIGKILL stays a zombie until its parent waits for it: its run must be taken
    over at once, not when its lease expires."""
    import signal
    import subprocess
    import time

    child = subprocess.Popen(["sleep", "60"])
    assert pid_alive(child.pid)
    os.kill(child.pid, signal.SIGKILL)
    stat = Path(f"/proc/{child.pid}/stat")
    while stat.read_text().rsplit(")", 1)[1].split()[0] != "Z":  # not waited for: a zombie
        time.sleep(0.01)
    assert not pid_alive(child.pid)
    child.wait()
    assert not pid_alive(child.pid) and pid_alive(os.getpid())


def test_a_process_id_from_another_pid_namespace_is_never_asked(queue):
    """Two containers on one host can share a hostname and a pid number: a run whose worker lives in another
    PID namespace (or another boot, or where /proc could not tell) is judged by its lease alone."""
    c = config()
    queue.store.record_grid("g", jobs(c), adaptation_threshold=0.05)
    here = Worker("here")
    assert here.pid_namespace is not None  # this is Linux: the shortcut is available for our own processes
    for namespace in (f"{here.pid_namespace.split('/')[0]}/pid:[1]", None):
        elsewhere = Worker("elsewhere", pid=2**22 + 12345, pid_namespace=namespace)  # a dead pid, here
        queue.claim(elsewhere, [c.run_id], 60)
        assert queue.reap() == 0 and queue.store.run(c.run_id).status == "running"
        expire(queue, c.run_id)
        assert queue.reap() == 1 and queue.store.run(c.run_id).status == "interrupted"


def test_a_worker_that_lost_its_lease_writes_nothing(queue):
    """Its epoch rows, its completion and its final evaluation are refused (LeaseLost), whatever its
    heartbeat thread has noticed; the worker that took the run over records and completes it."""
    c = config()
    queue.store.record_grid("g", jobs(c), adaptation_threshold=0.05)
    slow, fast = Worker("slow"), Worker("fast")
    queue.claim(slow, [c.run_id], 60)
    queue.record_epoch(c.run_id, slow, metrics(0))
    expire(queue, c.run_id)
    queue.reap()
    queue.claim(fast, [c.run_id], 60)
    with pytest.raises(LeaseLost):
        queue.record_epoch(c.run_id, slow, metrics(1))
    with pytest.raises(LeaseLost):
        queue.complete(c.run_id, slow, EVALUATION)
    assert not queue.release(c.run_id, slow, "failed", error="late")
    run = queue.store.run(c.run_id)
    assert (run.status, run.lease_owner, run.error, run.worker) == ("running", fast.owner, None, "fast")
    assert [e.epoch for e in queue.store.epochs(c.run_id)] == [0] and queue.store.evaluations(c.run_id) == []
    for epoch in range(4):
        queue.record_epoch(c.run_id, fast, metrics(epoch))
    queue.complete(c.run_id, fast, EVALUATION)
    run = queue.store.run(c.run_id)
    assert (run.status, run.lease_owner, run.finished_at is not None) == ("completed", None, True)
    assert len(queue.store.evaluations(c.run_id)) == 1 and len(queue.store.epochs(c.run_id)) == 4
    with pytest.raises(LeaseLost):  # completed: nobody holds it any more
        queue.complete(c.run_id, fast, EVALUATION)


def test_completed_runs_are_never_claimed_and_failed_ones_only_when_requeued(queue):
    a, b = config(seed=0), config(seed=1)
    queue.store.record_grid("g", jobs(a, b), adaptation_threshold=0.05)
    me = Worker("me")
    queue.claim(me, [a.run_id], 60)
    queue.complete(a.run_id, me, EVALUATION)
    queue.claim(me, [b.run_id], 60)
    assert queue.release(b.run_id, me, "failed", error="ValueError: boom")
    assert queue.claimable([a.run_id, b.run_id]) == []
    assert queue.store.run(b.run_id).error == "ValueError: boom"
    assert queue.requeue([a.run_id, b.run_id]) == 1
    assert queue.claimable([a.run_id, b.run_id]) == [b.run_id]
