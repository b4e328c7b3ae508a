"""The store API on its own: schema version and the upgrade of a release-0.1 database, grid links without
duplicates, upserts, atomic claims under threads, leases and reaping, evaluations that are never replaced,
adaptation starts against hand-computed values, and one-line errors for every kind of bad database."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa
from results_helpers import holder, write_epoch
from sqlmodel import select

from rftbench.core.config import RunConfig
from rftbench.core.metrics import EvalProtocol
from rftbench.experiments.grids import Job
from rftbench.results import migrations
from rftbench.results.batches import EvalLog, batches_key
from rftbench.results.connect import StoreError
from rftbench.results.queue import JobQueue, Worker
from rftbench.results.schema import SCHEMA_VERSION, SchemaVersion
from rftbench.results.store import Store

V1 = Path(__file__).parent / "fixtures" / "v1_smoke"


def config(**kw) -> RunConfig:
    return RunConfig(**({"backbone": "cifar_resnet20", "dataset": "synthetic", "epochs": 4} | kw))


def jobs(*configs: RunConfig, grid: str = "g") -> list[Job]:
    return [Job(c, grid, i, {}) for i, c in enumerate(configs)]


def metrics(epoch: int, val_acc: float) -> dict:
    return {"epoch": epoch, "eps": 0.0, "lr": 1e-3, "train_loss": 1.0, "train_acc": 0.5, "val_loss": 1.0,
            "val_acc": val_acc, "val_adv_loss": None, "val_adv_acc": None, "val_adv_eps": "4/255",
            "epoch_seconds": 1.0, "images_per_second": 10.0}  # fmt: skip


@pytest.fixture
def store(db_url) -> Store:
    """A new store on each backend: a SQLite file, then a database of a real PostgreSQL server."""
    return Store.open(db_url)


def finish(store: Store, run_id: str, evaluation: dict) -> None:
    """Complete a run with `evaluation` as the worker that holds it (claimed now if nobody does)."""
    JobQueue(store).complete(run_id, holder(store, run_id), evaluation)


def test_schema_version_is_written_once_and_checked(tmp_path):
    store = Store.open(str(tmp_path / "s.db"))
    Store.open(str(tmp_path / "s.db"))
    with store.session() as session:
        assert session.exec(select(SchemaVersion.version)).all() == [SCHEMA_VERSION] == [6]
        session.get(SchemaVersion, SCHEMA_VERSION).version = 99
        session.commit()
    with pytest.raises(StoreError, match=r"schema version 99, this rftbench reads up to 6: upgrade rftbench"):
        Store.open(str(tmp_path / "s.db"))
    with sqlite3.connect(tmp_path / "s.db") as connection:  # a new file is in WAL mode: readers never block
        assert connection.execute("pragma journal_mode").fetchone() == ("wal",)


def test_a_run_in_two_grids_is_stored_once_and_linked_twice(store):
    a, b, c = config(seed=0), config(seed=1), config(seed=2)
    assert store.record_grid("g1", jobs(a, b), adaptation_threshold=0.05) == (2, 0)
    assert store.record_grid("g2", jobs(b, c, grid="g2"), adaptation_threshold=0.2) == (1, 1)
    assert len(store.runs()) == 3
    assert [r.id for r in store.runs(grid="g2")] == [b.run_id, c.run_id]
    zeros = dict.fromkeys(("running", "interrupted", "completed", "failed", "pruned"), 0)
    assert store.counts("g1") == {"pending": 2} | zeros


def test_epoch_rows_are_upserted(store):
    c = config()
    store.record_run(Job(c, "", 0, {}))
    write_epoch(store, c.run_id, metrics(0, 0.1))
    write_epoch(store, c.run_id, metrics(1, 0.2))
    write_epoch(store, c.run_id, metrics(1, 0.3))  # a re-run epoch replaces its row
    assert [(e.epoch, e.val_acc) for e in store.epochs(c.run_id)] == [(0, 0.1), (1, 0.3)]


def evaluation(budget: str = "2/255", adv: float = 0.4, **protocol) -> dict:
    return {
        "n": 100, "clean": 0.8, "attacks_run": 150, "protocol": EvalProtocol(**protocol).as_dict(),
        "budgets": [{"budget": budget, "clean": 0.8, "adv": adv, "eadv": 0.575,
                     "eps": ["0/255", "1/255", "2/255"], "accuracies": [0.8, 0.55, adv]}],
    }  # fmt: skip


def test_evaluations_and_adaptation_starts(store):
    c = config(eps="2/255")
    store.record_grid("five", jobs(c), adaptation_threshold=0.05)
    store.record_grid("quarter", jobs(c, grid="quarter"), adaptation_threshold=0.25)
    for epoch, acc in enumerate([0.04, 0.05, 0.2, 0.5]):  # > 0.05 first at epoch 2, > 0.25 at epoch 3
        write_epoch(store, c.run_id, metrics(epoch, acc))
    finish(store, c.run_id, evaluation(steps=10))
    (row,) = store.evaluations(c.run_id)
    assert (row.budget, row.budget_value, row.clean, row.adv, row.eadv) == ("2/255", 2 / 255, 0.8, 0.4, 0.575)
    assert row.accuracies == [0.8, 0.55, 0.4] and row.kind == "final" and row.n == 100
    assert row.eval_protocol() == EvalProtocol(steps=10)  # what produced it is on record
    protocol = (row.protocol, row.attack, row.norm, row.restarts, row.precision)
    assert protocol == ("paper", "apgd-ce", "Linf", 1, "fp32")
    starts = {a.threshold: a.start_epoch for a in store.adaptation(c.run_id)}
    assert starts == {0.05: 2, 0.25: 3}
    assert store.run(c.run_id).status == "completed" and store.run(c.run_id).lease_owner is None


def test_a_final_evaluation_is_never_replaced_and_repeating_one_adds_nothing(store):
    c = config(eps="2/255")
    store.record_run(Job(c, "", 0, {}))
    finish(store, c.run_id, evaluation(steps=10))
    # the same protocol again (what `evaluate` with no flags asks for), even with other numbers: kept as is
    assert store.add_evaluation(c.run_id, evaluation(adv=0.1, steps=10), kind="extra") == 0
    (row,) = store.evaluations(c.run_id)
    assert (row.kind, row.adv) == ("final", 0.4)
    # another protocol, step count, precision or start adds a row beside it; the final stays final
    assert (
        store.add_evaluation(c.run_id, evaluation(adv=0.3, protocol="monotone", steps=10), kind="extra") == 1
    )
    assert store.add_evaluation(c.run_id, evaluation(adv=0.2, steps=20), kind="extra") == 1
    assert store.add_evaluation(c.run_id, evaluation(adv=0.2, steps=10, precision="bf16"), kind="extra") == 1
    assert store.add_evaluation(c.run_id, evaluation(adv=0.2, steps=10, random_start=True), kind="extra") == 1
    rows = store.evaluations(c.run_id)
    assert len(rows) == 5 and [r.kind for r in rows].count("final") == 1
    assert next(r for r in rows if r.kind == "final").adv == 0.4


def test_an_unreached_threshold_gives_the_epoch_count(store):
    c = config()
    store.record_grid("g", jobs(c), adaptation_threshold=0.9)
    for epoch in range(4):
        write_epoch(store, c.run_id, metrics(epoch, 0.5))
    finish(store, c.run_id, {"n": 10, "clean": 0.5, "budgets": [], "protocol": EvalProtocol().as_dict()})
    assert [(a.threshold, a.start_epoch, a.epochs) for a in store.adaptation(c.run_id)] == [(0.9, 4, 4)]
    (row,) = store.evaluations(c.run_id)  # a standard run with no budget: one row at 0/255
    assert (row.budget, row.clean, row.adv, row.eadv) == ("0/255", 0.5, 0.5, 0.5)


def test_find_run_by_prefix(store):
    a, b = config(seed=0), config(seed=1)
    store.record_grid("g", jobs(a, b), adaptation_threshold=0.05)
    assert store.find_run(a.run_id[:10]).id == a.run_id
    with pytest.raises(StoreError, match="2 runs with id ''"):
        store.find_run("")


# ---- a database written by release 0.1 (schema v1): upgraded in place, nothing lost ---------------------


def v1_copy(tmp_path: Path) -> Path:
    shutil.copytree(V1, tmp_path / "v1")
    return tmp_path / "v1" / "v1.db"


def rows(path: Path) -> dict[str, dict]:
    """Every row of every table, keyed by table and primary key."""
    keys = {"run": ("id",), "epoch_metric": ("id",), "evaluation": ("id",),
            "adaptation": ("run_id", "threshold"), "grid": ("name",), "grid_run": ("grid", "run_id"),
            "schema_version": ("version",)}  # fmt: skip
    with sqlite3.connect(path) as connection:
        connection.row_factory = sqlite3.Row
        return {
            table: {tuple(r[k] for k in key): dict(r) for r in connection.execute(f"select * from {table}")}
            for table, key in keys.items()
        }


def test_a_v1_database_is_upgraded_in_place_with_nothing_lost(tmp_path):
    db = v1_copy(tmp_path)
    before = rows(db)
    store = Store.open(str(db), create=False)
    after = rows(db)
    assert rows(db.with_name("v1.db.schema-v1.bak")) == before  # the copy kept beside it
    assert list(after["schema_version"]) == [(SCHEMA_VERSION,)]
    for table, old in before.items():  # every row and every v1 value is still there
        if table == "schema_version":
            continue
        assert after[table].keys() == old.keys(), table
        for key, values in old.items():
            changed = {k for k, v in values.items() if after[table][key][k] != v}
            assert changed <= ({"kind"} if table == "evaluation" else set()), (table, key, changed)
    for run in store.runs():  # the identity of every stored run survived the release
        assert RunConfig.from_json(run.config).run_id == run.id
    standard, fix, sched = store.runs(grid="smoke")
    # v1 measured every evaluation with the early exit, in the training precision: said so now
    evaluations = {(e.budget, e.steps): e for e in store.evaluations(standard.id)}
    assert {k: (e.kind, e.protocol, e.precision, e.norm, e.restarts) for k, e in evaluations.items()} == {
        ("8/255", 3): ("final", "monotone", "fp32", "Linf", 1),  # relabelled `extra` by the v1 bug: restored
        ("4/255", 5): ("extra", "monotone", "fp32", "Linf", 1),
    }
    assert (standard.eval_protocol, fix.eval_protocol, sched.eval_protocol) == ("monotone", "paper", "paper")
    assert {e.val_adv_subset for r in (standard, fix) for e in store.epochs(r.id)} == {"prefix"}
    # schema v6: every earlier row scored the last epoch's weights, and no epoch measured E.adv
    assert {e.weights for r in store.runs() for e in store.evaluations(r.id)} == {"last"}
    assert {e.val_eadv for r in store.runs() for e in store.epochs(r.id)} == {None}


def schema(path: Path) -> dict:
    inspector = sa.inspect(sa.create_engine(f"sqlite:///{path}"))
    return {
        table: (
            sorted((c["name"], str(c["type"]), c["nullable"]) for c in inspector.get_columns(table)),
            sorted(tuple(u["column_names"]) for u in inspector.get_unique_constraints(table)),
            sorted(
                (i["name"], tuple(i["column_names"]), bool(i["unique"])) for i in inspector.get_indexes(table)
            ),
            sorted(
                (f["referred_table"], tuple(f["constrained_columns"]))
                for f in inspector.get_foreign_keys(table)
            ),
        )
        for table in inspector.get_table_names()
    }


def test_an_upgraded_schema_equals_a_new_one(tmp_path):
    """Tables, columns (names, types, nullability), unique constraints, indexes and foreign keys; the columns
    a migration adds keep the server defaults that filled the existing rows."""
    db = v1_copy(tmp_path)
    Store.open(str(db))
    Store.open(str(tmp_path / "new.db"))
    assert schema(db) == schema(tmp_path / "new.db")


def test_a_failed_upgrade_leaves_the_database_as_it_was(tmp_path, monkeypatch):
    db = v1_copy(tmp_path)
    before = rows(db)

    def fails_half_way(connection):
        migrations._v1_to_v2(connection)
        raise OSError("disk full")

    monkeypatch.setitem(migrations.MIGRATIONS, 1, fails_half_way)
    with pytest.raises(StoreError, match="cannot open database .*: disk full"):
        Store.open(str(db))
    assert rows(db) == before
    with sqlite3.connect(db) as connection:  # not even half a schema change: one transaction
        assert (
            "protocol"
            not in connection.execute("select sql from sqlite_master where name='evaluation'").fetchone()[0]
        )


def test_processes_opening_a_v1_database_together_upgrade_it_once(tmp_path):
    db = v1_copy(tmp_path)
    evaluations = len(rows(db)["evaluation"])
    errors, barrier = [], threading.Barrier(4)

    def opener():
        try:
            barrier.wait()
            Store.open(str(db), create=False)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=opener) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    after = rows(db)
    assert list(after["schema_version"]) == [(SCHEMA_VERSION,)] and len(after["evaluation"]) == evaluations


# ---- bad databases: one line each, nothing created or changed ---------------------------------------------


@pytest.mark.parametrize(
    "url, message",
    [
        ("foo://x/y", "unknown dialect 'foo'; use a file path (SQLite) or postgresql://"),
        ("mysql://u@127.0.0.1/db", "needs the Python driver 'MySQLdb', which is not installed"),
        ("postgresql://u@127.0.0.1:1/db", "cannot open database postgresql+psycopg://u@127.0.0.1:1/db: "),
        ("sqlite:////nonexistent-folder/r.db", "cannot create database /nonexistent-folder/r.db: folder"),
    ],
)
def test_urls_dialects_drivers_and_servers_that_fail_give_one_line(url, message):
    with pytest.raises(StoreError) as info:
        Store.open(url)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_files_that_are_not_usable_databases_give_one_line_and_stay_as_they_were(tmp_path, read_only):
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(os.urandom(4096))
    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as connection:
        connection.execute("create table notes (x)")
    empty = tmp_path / "empty.db"
    empty.touch()
    good = tmp_path / "good.db"
    Store.open(str(good))
    locked = read_only(shutil.copy(good, tmp_path / "locked.db") and tmp_path / "locked.db")
    folder = tmp_path / "ro"
    folder.mkdir()
    shutil.copy(good, folder / "r.db")
    read_only(folder)
    cases = [
        (corrupt, True, "cannot open database sqlite:///" + str(corrupt) + ": file is not a database"),
        (foreign, True, "holds tables but none of rftbench's: use another --db"),
        (empty, False, "not found; run `rftbench run-grid` first or pass --db"),  # as if it were missing
        (tmp_path, True, "is a directory: pass a file path with --db"),
        (locked, True, "is read-only (file not writable)"),
        (folder / "r.db", False, f"is read-only (folder {folder} not writable)"),
        (tmp_path / "none.db", False, "not found; run `rftbench run-grid` first or pass --db"),
    ]
    for path, create, message in cases:
        before = path.read_bytes() if path.is_file() else None
        with pytest.raises(StoreError) as info:
            Store.open(str(path), create=create)
        assert message in str(info.value) and "\n" not in str(info.value), (path, str(info.value))
        assert (path.read_bytes() if path.is_file() else None) == before, path
    assert not (tmp_path / "none.db").exists()


def test_an_empty_file_is_a_new_database_to_a_writer_and_a_missing_one_to_a_reader(tmp_path):
    """A 0-byte file (`touch`, a job's prologue) holds nothing that could be lost: a command that may create
    a database initialises it as a new one; a command that only opens one says what it says for a missing
    file, the CLI's read-only `status` too, in one line, and leaves the file as it was."""
    empty = tmp_path / "empty.db"
    for create, write in ((False, False), (False, True)):
        empty.touch()
        with pytest.raises(StoreError) as info:
            Store.open(str(empty), create=create, write=write)
        assert str(info.value) == f"database {empty} not found; run `rftbench run-grid` first or pass --db"
        assert empty.stat().st_size == 0
    status = subprocess.run(
        [sys.executable, "-m", "rftbench.cli", "status", "--db", str(empty)], capture_output=True, text=True
    )
    missing = f"database {empty} not found; run `rftbench run-grid` first or pass --db"
    assert status.returncode == 2 and " ".join(status.stderr.split()) == f"error: {missing}", status.stderr
    assert empty.stat().st_size == 0
    store = Store.open(str(empty))
    store.record_run(Job(config(), "", 0, {}))
    assert [r.setting for r in Store.open(str(empty), create=False, write=False).runs()] == ["fix"]
    with sqlite3.connect(empty) as connection:
        assert connection.execute("select version from schema_version").fetchall() == [(SCHEMA_VERSION,)]
        assert connection.execute("pragma journal_mode").fetchone() == ("wal",)


def test_a_database_that_cannot_be_written_is_read_by_readers_only(tmp_path, read_only):
    db = tmp_path / "r.db"
    store = Store.open(str(db))
    store.record_run(Job(config(), "", 0, {}))
    read_only(db)
    reader = Store.open(str(db), create=False, write=False)
    assert not reader.writable and [r.setting for r in reader.runs()] == ["fix"]
    with pytest.raises(StoreError, match="is read-only \\(file not writable\\)"):
        Store.open(str(db), create=False)  # a writer is refused before anything is written
    folder, stale = tmp_path / "shared", tmp_path / "stale"  # folders that cannot hold SQLite's -shm file
    folder.mkdir()
    with sqlite3.connect(db) as source, sqlite3.connect(folder / "r.db") as copy:
        source.backup(copy)
    stale.mkdir()
    shutil.copy(db, stale / "r.db")
    (stale / "r.db-wal").write_bytes(b"changes not yet in the main file")
    read_only(folder)
    read_only(stale)
    assert len(Store.open(str(folder / "r.db"), create=False, write=False).runs()) == 1
    with pytest.raises(StoreError, match="holds changes not yet in it: open it once with write access"):
        Store.open(str(stale / "r.db"), create=False, write=False)  # never a silently stale read
    old = read_only(v1_copy(tmp_path))  # release 0.1's schema: read through an upgraded copy in memory
    seen = Store.open(str(old), create=False, write=False)
    assert [r.eval_protocol for r in seen.runs()] == ["monotone", "paper", "paper"] and not seen.writable


def test_readers_of_an_earlier_releases_database_never_write_it(tmp_path):
    """Reports, status and the checks before a run see the upgrade through a copy in memory: the file, its
    folder and its schema stay as they were until a command that writes opens it."""
    db = v1_copy(tmp_path)
    before, files = db.read_bytes(), sorted(p.name for p in db.parent.iterdir())
    reader = Store.open(str(db), create=False, write=False)
    assert {e.protocol for r in reader.runs() for e in reader.evaluations(r.id)} == {"monotone"}
    assert db.read_bytes() == before and sorted(p.name for p in db.parent.iterdir()) == files
    Store.open(str(db), create=False)  # a writer upgrades it in place
    assert rows(db)["schema_version"].keys() == {(SCHEMA_VERSION,)}


def test_an_l2_run_scored_at_no_budget_stores_its_clean_row_at_budget_0(store):
    """A standard ℓ2 run with no evaluation budget: one row at "0" (its scored budget), not "0/255"."""
    c = config(norm="L2", eps="0", setting="standard")
    assert c.scored_budgets == ("0",)
    store.record_grid("g", jobs(c), adaptation_threshold=0.05)
    queue, worker = JobQueue(store), Worker("test")
    queue.claim(worker, [c.run_id], 60)
    protocol = EvalProtocol(norm="L2").as_dict()
    queue.complete(c.run_id, worker, {"n": 10, "clean": 0.7, "budgets": [], "protocol": protocol})
    (row,) = store.evaluations(c.run_id)
    assert (row.budget, row.eps_grid, row.adv, row.norm) == ("0", ["0"], 0.7, "L2")


def test_worst_cases_of_many_runs_and_budgets_in_one_call_equal_each_worst_case(store):
    """Per (run, budget): the share of samples every evaluation with per-sample flags left robust, by hand:
    run a at 4/255 1101 0110 and 1011 0100 leave 1001 0100 (3/8), at 8/255 1100 0000 and 0110 0001 leave
    0100 0000 (1/8); run b has one evaluation (None); a partial log that no evaluation row names is ignored;
    an unknown run or budget gives None."""
    a, b = config(eps="4/255", seed=0), config(eps="4/255", seed=1)
    store.record_grid("g", jobs(a, b), adaptation_threshold=0.05)
    flags = {
        (a.run_id, 10): {"4/255": ("1101", "0110"), "8/255": ("1100", "0000")},
        (a.run_id, 20): {"4/255": ("1011", "0100"), "8/255": ("0110", "0001")},
        (b.run_id, 10): {"4/255": ("1111", "0000"), "8/255": ("1000", "0000")},
    }
    for (run_id, steps), by_budget in flags.items():
        key = {"protocol": EvalProtocol(steps=steps).as_dict(), "eps": ["0/255", "4/255", "8/255"]}
        log = EvalLog(store, run_id, key)
        for index in range(2):
            texts = {"0/255": "1111"} | {budget: pair[index] for budget, pair in by_budget.items()}
            log.save(index, {"n": 4, "start": 4 * index, "flags": texts})
        row = evaluation(steps=steps) | {"batches": batches_key(key)}
        store.add_evaluation(run_id, row, kind="extra")
    partial = EvalLog(store, a.run_id, {"protocol": EvalProtocol(steps=99).as_dict()})
    partial.save(0, {"n": 4, "start": 0, "flags": {"4/255": "0000", "8/255": "0000"}})
    keys = [(r, budget) for r in (a.run_id, b.run_id, "nothing") for budget in ("4/255", "8/255", "2/255")]
    worst = store.worst_cases(keys)
    assert worst == {key: store.worst_case(*key) for key in keys}
    assert worst[(a.run_id, "4/255")] == 3 / 8 and worst[(a.run_id, "8/255")] == 1 / 8
    assert {k: v for k, v in worst.items() if v is not None}.keys() == {
        (a.run_id, "4/255"),
        (a.run_id, "8/255"),
    }
    assert store.worst_cases([]) == {}
    # a second set of weights (an EMA's) of run a, scored twice: its worst case pools its own flags alone
    for steps, pair in ((10, ("1111", "0000")), (20, ("0111", "1000"))):
        key = {"protocol": EvalProtocol(steps=steps).as_dict(), "eps": ["0/255", "4/255"], "weights": "ema"}
        log = EvalLog(store, a.run_id, key)
        for index in range(2):
            log.save(index, {"n": 4, "start": 4 * index, "flags": {"0/255": "1111", "4/255": pair[index]}})
        row = evaluation(steps=steps) | {"batches": batches_key(key), "weights": "ema"}
        store.add_evaluation(a.run_id, row, kind="extra")
    worst = store.worst_cases([(a.run_id, "4/255", "ema"), (a.run_id, "4/255"), (a.run_id, "4/255", "last")])
    assert list(worst.values()) == [3 / 8, 3 / 8, 3 / 8]  # 0111 0000 by hand, and run a's last as before
    # run b's best epoch was its last: its `best` row shares the last weights' batch log, which serves both
    key = {"protocol": EvalProtocol(steps=10).as_dict(), "eps": ["0/255", "4/255", "8/255"]}
    store.add_evaluation(b.run_id, evaluation(steps=10) | {"batches": batches_key(key), "weights": "best"})
    key = {"protocol": EvalProtocol(steps=30).as_dict(), "eps": ["0/255", "4/255"]}
    log = EvalLog(store, b.run_id, key)
    for index, flags in enumerate(("0111", "1111")):
        log.save(index, {"n": 4, "start": 4 * index, "flags": {"0/255": "1111", "4/255": flags}})
    store.add_evaluation(b.run_id, evaluation(steps=30) | {"batches": batches_key(key)}, kind="extra")
    assert store.worst_cases([(b.run_id, "4/255"), (b.run_id, "4/255", "best")]) == {
        (b.run_id, "4/255"): 3 / 8,  # 1111 0000 and 0111 1111 by hand
        (b.run_id, "4/255", "best"): None,  # one evaluation of those weights
    }
    assert store.worst_cases([(a.run_id, "8/255", "ema"), (b.run_id, "4/255", "ema")]) == {
        (a.run_id, "8/255", "ema"): None,  # the EMA was never scored at 8/255
        (b.run_id, "4/255", "ema"): None,
    }
