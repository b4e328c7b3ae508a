"""The store API on its own: schema version, grid links without duplicates, upserts, atomic claims under
threads, leases and reaping, evaluations and adaptation starts against hand-computed values."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlmodel import select

from rftbench.config import RunConfig
from rftbench.grids import Job
from rftbench.store import Run, SchemaVersion, Store, StoreError, now


def config(**kw) -> RunConfig:
    return RunConfig(**({"backbone": "cifar_resnet20", "dataset": "synthetic", "epochs": 4} | kw))


def jobs(*configs: RunConfig, grid: str = "g") -> list[Job]:
    return [Job(c, grid, i, {}) for i, c in enumerate(configs)]


def metrics(epoch: int, val_acc: float) -> dict:
    return {"epoch": epoch, "eps": 0.0, "lr": 1e-3, "train_loss": 1.0, "train_acc": 0.5, "val_loss": 1.0,
            "val_acc": val_acc, "val_adv_loss": None, "val_adv_acc": None, "val_adv_eps": "4/255",
            "epoch_seconds": 1.0, "images_per_second": 10.0}  # fmt: skip


@pytest.fixture
def store(tmp_path) -> Store:
    return Store.open(str(tmp_path / "s.db"))


def test_schema_version_is_written_once_and_checked(tmp_path):
    store = Store.open(str(tmp_path / "s.db"))
    Store.open(str(tmp_path / "s.db"))
    with store.session() as session:
        assert session.exec(select(SchemaVersion.version)).all() == [1]
        session.get(SchemaVersion, 1).version = 99
        session.commit()
    with pytest.raises(StoreError, match=r"schema version \[99\], this rftbench writes 1"):
        Store.open(str(tmp_path / "s.db"))
    (tmp_path / "junk.db").write_text("not a database")
    with pytest.raises(StoreError, match="cannot open database"):
        Store.open(str(tmp_path / "junk.db"))
    with pytest.raises(StoreError, match="not found"):
        Store.open(str(tmp_path / "none.db"), create=False)


def test_a_run_in_two_grids_is_stored_once_and_linked_twice(store):
    a, b, c = config(seed=0), config(seed=1), config(seed=2)
    assert store.record_grid("g1", jobs(a, b), adaptation_threshold=0.05) == (2, 0)
    assert store.record_grid("g2", jobs(b, c, grid="g2"), adaptation_threshold=0.2) == (1, 1)
    assert len(store.runs()) == 3
    assert [r.id for r in store.runs(grid="g2")] == [b.run_id, c.run_id]
    assert store.counts("g1") == {"pending": 2, "running": 0, "interrupted": 0, "completed": 0, "failed": 0}


def test_epoch_rows_are_upserted(store):
    c = config()
    store.record_run(c)
    store.upsert_epoch(c.run_id, metrics(0, 0.1))
    store.upsert_epoch(c.run_id, metrics(1, 0.2))
    store.upsert_epoch(c.run_id, metrics(1, 0.3))  # a re-run epoch replaces its row
    assert [(e.epoch, e.val_acc) for e in store.epochs(c.run_id)] == [(0, 0.1), (1, 0.3)]


def test_concurrent_workers_create_record_and_claim_each_run_once(tmp_path):
    """Six workers start together on a new database file, as six `run-grid` processes would: each creates
    the schema, records the grid and claims runs. Without transactions that take SQLite's write lock up
    front, the check-then-insert of the schema or the grid fails in some worker."""
    path = str(tmp_path / "s.db")
    configs = [config(seed=s) for s in range(24)]
    ids = [c.run_id for c in configs]
    claimed: dict[str, list[str]] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(6)

    def worker(name: str) -> None:
        try:
            barrier.wait()
            store = Store.open(path)  # each worker its own engine, as separate processes would
            store.record_grid("g", jobs(*configs), adaptation_threshold=0.05)
            mine = claimed.setdefault(name, [])
            while (run := store.claim(name, store.claimable(ids), 60)) is not None:
                mine.append(run.id)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    everything = [run_id for runs in claimed.values() for run_id in runs]
    assert sorted(everything) == sorted(ids)  # each run claimed exactly once
    assert all(r.attempts == 1 and r.status == "running" for r in Store.open(path).runs())


def test_leases_expire_and_dead_processes_are_reaped(store):
    a, b = config(seed=0), config(seed=1)
    store.record_grid("g", jobs(a, b), adaptation_threshold=0.05)
    run = store.claim("me", [a.run_id], lease_seconds=60)
    assert run.id == a.run_id and store.claim("other", [a.run_id], 60) is None  # held
    assert store.reap() == 0 and store.heartbeat(a.run_id, "me", 60)
    with store.session() as session:  # the lease ran out (its worker stopped beating)
        session.get(Run, a.run_id).lease_expires_at = now() - timedelta(seconds=1)
        session.commit()
    assert store.reap() == 1 and store.run(a.run_id).status == "interrupted"
    assert not store.heartbeat(a.run_id, "me", 60)  # the old owner learns it lost the run
    assert store.claim("other", [a.run_id], 60).attempts == 2
    store.claim("third", [b.run_id], 60)
    with store.session() as session:  # on this host, a pid that no longer exists
        session.get(Run, b.run_id).pid = 2**22 + 12345
        session.commit()
    assert store.reap() == 1 and store.run(b.run_id).status == "interrupted"


def test_completed_runs_are_never_claimed_and_failed_ones_only_when_requeued(store):
    a, b = config(seed=0), config(seed=1)
    store.record_grid("g", jobs(a, b), adaptation_threshold=0.05)
    store.claim("me", [a.run_id], 60)
    store.release(a.run_id, "me", "completed")
    store.claim("me", [b.run_id], 60)
    store.release(b.run_id, "me", "failed", error="ValueError: boom")
    assert store.claimable([a.run_id, b.run_id]) == []
    assert store.run(b.run_id).error == "ValueError: boom"
    assert store.requeue([a.run_id, b.run_id]) == 1
    assert store.claimable([a.run_id, b.run_id]) == [b.run_id]


def test_evaluations_and_adaptation_starts(store):
    c = config(eps="2/255")
    store.record_grid("five", jobs(c), adaptation_threshold=0.05)
    store.record_grid("quarter", jobs(c, grid="quarter"), adaptation_threshold=0.25)
    for epoch, acc in enumerate([0.04, 0.05, 0.2, 0.5]):  # > 0.05 first at epoch 2, > 0.25 at epoch 3
        store.upsert_epoch(c.run_id, metrics(epoch, acc))
    evaluation = {
        "n": 100, "clean": 0.8, "attacks_run": 150,
        "budgets": [{"budget": "2/255", "clean": 0.8, "adv": 0.4, "eadv": 0.575,
                     "eps": ["0/255", "1/255", "2/255"], "accuracies": [0.8, 0.55, 0.4]}],
    }  # fmt: skip
    store.claim("me", [c.run_id], 60)
    store.complete(c.run_id, "me", evaluation, steps=10, random_start=False)
    (row,) = store.evaluations(c.run_id)
    assert (row.budget, row.budget_value, row.clean, row.adv, row.eadv) == ("2/255", 2 / 255, 0.8, 0.4, 0.575)
    assert row.accuracies == [0.8, 0.55, 0.4] and row.kind == "final" and row.n == 100
    starts = {a.threshold: a.start_epoch for a in store.adaptation(c.run_id)}
    assert starts == {0.05: 2, 0.25: 3}
    assert store.run(c.run_id).status == "completed" and store.run(c.run_id).lease_owner is None
    store.add_evaluation(c.run_id, evaluation, steps=10, kind="extra")  # same attack again: replaces
    assert len(store.evaluations(c.run_id)) == 1


def test_an_unreached_threshold_gives_the_epoch_count(store):
    c = config()
    store.record_grid("g", jobs(c), adaptation_threshold=0.9)
    for epoch in range(4):
        store.upsert_epoch(c.run_id, metrics(epoch, 0.5))
    store.claim("me", [c.run_id], 60)
    store.complete(c.run_id, "me", {"n": 10, "clean": 0.5, "budgets": []}, steps=10, random_start=False)
    assert [(a.threshold, a.start_epoch, a.epochs) for a in store.adaptation(c.run_id)] == [(0.9, 4, 4)]
    (row,) = store.evaluations(c.run_id)  # a standard run with no budget: one row at 0/255
    assert (row.budget, row.clean, row.adv, row.eadv) == ("0/255", 0.5, 0.5, 0.5)


def test_find_run_by_prefix(store):
    a, b = config(seed=0), config(seed=1)
    store.record_grid("g", jobs(a, b), adaptation_threshold=0.05)
    assert store.find_run(a.run_id[:10]).id == a.run_id
    with pytest.raises(StoreError, match="2 runs with id ''"):
        store.find_run("")
