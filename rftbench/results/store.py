"""The results database (SQLModel): runs, per-epoch metrics, evaluations, adaptation starts, grid links.

    store = Store.open("rftbench.db")              # or any SQLAlchemy URL: postgresql://host/db
    store.record_grid("smoke", jobs, adaptation_threshold=0.2)
    store.runs(grid="smoke"), store.epochs(run_id), store.evaluations(run_id)

With `rftbench.results.queue` (claims, leases, heartbeats, reaping: which worker holds which run), the only
modules that speak SQL (STYLE.md 7). Accuracies are fractions in [0, 1], epochs 0-based (CONVENTIONS.md).
SQLite runs in WAL mode with a busy timeout, so several processes of one node can share one file.

Stored results are permanent: an evaluation row is keyed by its run, budget and full protocol
(`EVALUATION_KEY`), so a new protocol adds a row, the same protocol again adds nothing, and a run's `final`
evaluation is never replaced. Each evaluation's per-batch results (`EvalBatch`: every sample's robust flag
at every ε, and after each attack of AutoAttack) are kept under the evaluation's `batches` key: they make
a killed evaluation resumable (`EvalLog`) and the worst case over several evaluations recomputable.

A database written by an earlier release is upgraded on open by the versioned `MIGRATIONS`, in one
transaction, after a copy of a SQLite file is kept beside it.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import JSON, Column, UniqueConstraint, event, func, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import StaticPool
from sqlmodel import Field, Session, SQLModel, create_engine, delete, select

from rftbench.core.config import budget_text, parse_budget, parse_eps
from rftbench.core.metrics import EvalProtocol, adaptation_start_epoch
from rftbench.errors import RftbenchError

SCHEMA_VERSION = 4
STATES = ("pending", "running", "interrupted", "completed", "failed")
DEFAULT_DB = "rftbench.db"
ADVISORY_LOCK = 0x5F7B3E  # PostgreSQL's advisory lock key of rftbench's exclusive transactions
# What makes two evaluation rows the same measurement: a row with this key is never replaced.
EVALUATION_KEY = (
    "run_id", "budget", "protocol", "attack", "norm", "steps", "restarts", "random_start", "seed",
    "precision",
)  # fmt: skip


def now() -> datetime:
    return datetime.now(UTC)


class SchemaVersion(SQLModel, table=True):
    __tablename__ = "schema_version"
    version: int = Field(primary_key=True)


class Run(SQLModel, table=True):
    id: str = Field(primary_key=True)  # RunConfig.run_id
    config: str  # the canonical JSON the id hashes, as in every checkpoint
    backbone: str = Field(index=True)
    dataset: str = Field(index=True)
    setting: str
    eps: str  # "4/255"
    eps_value: float
    t1: float | None = None
    t2: float | None = None
    seed: int = 0
    epochs: int
    status: str = Field(default="pending", index=True)
    paths: dict = Field(default_factory=dict, sa_column=Column(JSON))  # data root, split file, weights
    created_at: datetime = Field(default_factory=now)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    heartbeat_at: datetime | None = None
    lease_owner: str | None = None
    lease_expires_at: datetime | None = None
    host: str | None = None
    pid: int | None = None
    pid_namespace: str | None = None  # the holder's boot and PID namespace: where its pid means something
    worker: str | None = None  # who holds (or last held) it: "inline", "local 2/4 cuda:2", "slurm 4242_3"
    attempts: int = 0
    error: str | None = None
    provenance: dict = Field(default_factory=dict, sa_column=Column(JSON))
    # How its final evaluation is (or was) measured; not part of the id: one training, many evaluations.
    eval_protocol: str = "paper"
    eval_precision: str = "fp32"


class EpochMetric(SQLModel, table=True):
    __tablename__ = "epoch_metric"
    __table_args__ = (UniqueConstraint("run_id", "epoch"),)
    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(foreign_key="run.id", index=True)
    epoch: int
    eps: float  # ε(t) of this epoch
    lr: float
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    val_adv_loss: float | None = None
    val_adv_acc: float | None = None
    val_adv_eps: str | None = None
    val_adv_subset: str | None = None  # "stratified" (every class, seeded); "prefix": schema-v1 rows
    epoch_seconds: float
    images_per_second: float
    recorded_at: datetime = Field(default_factory=now)


class Evaluation(SQLModel, table=True):
    __table_args__ = (UniqueConstraint(*EVALUATION_KEY, name="uq_evaluation_protocol"),)
    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(foreign_key="run.id", index=True)
    kind: str = "final"  # "final": at the end of training; "extra": `rftbench evaluate`
    budget: str  # ε_g of this row, "8/255" (ℓ∞) or "0.5" (ℓ2)
    budget_value: float
    clean: float
    adv: float
    eadv: float | None = None  # None: measured at ε_g only (AutoAttack)
    eps_grid: list = Field(default_factory=list, sa_column=Column(JSON))  # ["0/255", ..., budget]
    accuracies: list = Field(default_factory=list, sa_column=Column(JSON))  # one per eps_grid point
    n: int
    # the protocol (rftbench.core.metrics.EvalProtocol): together with run and budget, the row's key
    protocol: str = "paper"  # per-ε protocol: "paper" (one attack per ε) or "monotone" (early exit)
    attack: str = "apgd-ce"
    norm: str = "Linf"
    steps: int
    restarts: int = 1
    random_start: bool = False
    seed: int = 0
    precision: str = "fp32"
    attacks_run: int = 0
    seconds: float | None = None  # wall time of the whole evaluation this row came from
    created_at: datetime = Field(default_factory=now)
    implementation: str | None = None  # the package that measured it: "rftbench 0.1.0", "torchattacks 3.5.1"
    batches: str | None = None  # its EvalBatch rows' key (None: measured before schema v4)
    details: dict = Field(default_factory=dict, sa_column=Column(JSON))  # AutoAttack: accuracy per attack

    def eval_protocol(self) -> EvalProtocol:
        return EvalProtocol(**{k: getattr(self, k) for k in EvalProtocol.__dataclass_fields__})


class EvalBatch(SQLModel, table=True):
    """One batch of one evaluation: which samples stayed robust at each ε (texts of '0'/'1' in the test
    loader's fixed order), what it cost; written as soon as it is measured, never changed."""

    __tablename__ = "eval_batch"
    __table_args__ = (UniqueConstraint("run_id", "key", "batch", name="uq_eval_batch"),)
    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(foreign_key="run.id", index=True)
    key: str  # evaluation_key's hash: protocol and ε grid
    batch: int  # 0-based, in the test loader's order
    start: int  # its first sample's index
    n: int
    result: dict = Field(default_factory=dict, sa_column=Column(JSON))  # flags, stages, attacks_run
    seconds: float | None = None  # what measuring it took
    created_at: datetime = Field(default_factory=now)


def batches_key(key: dict) -> str:
    """The EvalBatch key of an evaluation (`rftbench.engine.evaluation.evaluation_key`): 16 hex digits."""
    text = json.dumps(key, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class EvalLog:
    """The per-batch log of one evaluation of one run in the store (`rftbench.engine.evaluation.BatchLog`)."""

    def __init__(self, store: Store, run_id: str, key: dict) -> None:
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


class Adaptation(SQLModel, table=True):
    run_id: str = Field(foreign_key="run.id", primary_key=True)
    threshold: float = Field(primary_key=True)
    start_epoch: int  # first epoch with val_acc > threshold; `epochs` if none
    epochs: int


class Grid(SQLModel, table=True):
    name: str = Field(primary_key=True)
    description: str = ""
    adaptation_threshold: float = 0.05
    source: str = ""  # the experiments file it was read from
    recorded_at: datetime = Field(default_factory=now)


class GridRun(SQLModel, table=True):
    __tablename__ = "grid_run"
    grid: str = Field(foreign_key="grid.name", primary_key=True)
    run_id: str = Field(foreign_key="run.id", primary_key=True)
    position: int


class StoreError(RftbenchError, RuntimeError):
    pass


def database_url(db: str | None) -> str:
    """A path (or nothing: $RFTBENCH_DB, else rftbench.db here) becomes a SQLite URL; URLs pass through,
    `postgresql://` with the psycopg (3) driver this package installs."""
    db = db or os.environ.get("RFTBENCH_DB") or DEFAULT_DB
    if "://" not in db:
        return f"sqlite:///{db}"
    return (
        "postgresql+psycopg://" + db.removeprefix("postgresql://") if db.startswith("postgresql://") else db
    )


def sqlite_path(url: str) -> Path | None:
    return Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else None


def first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def _sqlite_connect(dbapi_connection, _record) -> None:
    dbapi_connection.isolation_level = None  # the driver's implicit BEGIN is replaced by `_sqlite_begin`
    cursor = dbapi_connection.cursor()  # (WAL mode is a property of the file, set once it is known ours)
    cursor.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes in WAL mode
    cursor.execute("PRAGMA busy_timeout=60000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _sqlite_begin(connection) -> None:
    """Every transaction takes the write lock when it starts: a read-then-write transaction (record a grid,
    reap, create the schema) can otherwise fail at once with "database is locked" when another process
    wrote in between, since SQLite's busy timeout does not cover a lock upgrade."""
    connection.exec_driver_sql("BEGIN IMMEDIATE")


class Store:
    def __init__(self, engine: Engine, writable: bool = True) -> None:
        self.engine, self.writable = engine, writable

    @classmethod
    def open(cls, db: str | None = None, *, create: bool = True, write: bool = True) -> Store:
        """Connect, create the schema if the database is new (`create`), upgrade one written by an earlier
        release, and refuse a newer one. A caller that only reads (`write=False`: reports, status, the
        checks before a run) never writes a SQLite file: one it cannot write is opened read-only, and one of
        an earlier release is read through an upgraded copy in memory. Every problem is one `StoreError`."""
        url = database_url(db)
        path = sqlite_path(url)
        read_only = path is not None and check_sqlite_file(path, create, write)
        target = url
        if read_only:
            target = f"sqlite:///file:{path.resolve()}?{read_only_mode(path)}&uri=true"
        try:
            engine = create_engine(
                target, connect_args={"check_same_thread": False, "timeout": 60} if path is not None else {}
            )
        except sa.exc.NoSuchModuleError:
            raise StoreError(
                f"database URL {url!r}: unknown dialect {url.split('://')[0]!r}; use a file path (SQLite) "
                f"or postgresql://user@host/db"
            ) from None
        except ModuleNotFoundError as exc:
            raise StoreError(
                f"database URL {url!r} needs the Python driver {exc.name!r}, which is not installed: "
                f"pip install it, or use postgresql://user@host/db (psycopg is installed)"
            ) from None
        except sa.exc.ArgumentError as exc:
            raise StoreError(f"database URL {url!r} cannot be read ({first_line(exc)})") from None
        if path is not None:
            event.listen(engine, "connect", _sqlite_connect)
            if not read_only:
                event.listen(engine, "begin", _sqlite_begin)
        try:
            if path is not None and not write:
                with engine.connect() as connection:
                    version = stored_version(connection)
                if version is not None and version < SCHEMA_VERSION:
                    return cls(upgraded_copy(path), writable=False)
            upgrade(engine, url, read_only)
        except StoreError:
            raise
        except Exception as exc:  # not a database, locked beyond the timeout, unreachable server, read-only
            raise StoreError(f"cannot open database {url}: {first_line(exc)}") from exc
        return cls(engine, writable=not read_only)

    def session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    # -- jobs and grids ---------------------------------------------------------------------------
    def record_grid(
        self,
        name: str,
        jobs: Sequence,
        *,
        description: str = "",
        adaptation_threshold: float,
        source: str = "",
    ) -> tuple[int, int]:
        """Insert the jobs' runs that are new (pending) and link every job to grid `name`; a run already
        stored under any grid is linked, not duplicated. Returns (new runs, runs already stored)."""
        new = 0
        with self.session() as session:
            exclusive(session.connection())  # check-then-insert: one recorder at a time
            grid = session.get(Grid, name) or Grid(name=name)
            grid.description, grid.adaptation_threshold, grid.source = (
                description,
                adaptation_threshold,
                source,
            )
            session.add(grid)
            existing = set(session.exec(select(Run.id).where(Run.id.in_([j.run_id for j in jobs]))).all())
            for job in jobs:
                if job.run_id not in existing:
                    session.add(run_row(job.config, job.paths, job.eval_protocol, job.eval_precision))
                    new += 1
                elif (run := session.get(Run, job.run_id)).status != "completed":
                    # where it reads its files and how it will be scored: the latest expansion wins
                    run.paths = job.paths or run.paths
                    run.eval_protocol, run.eval_precision = job.eval_protocol, job.eval_precision
                session.merge(GridRun(grid=name, run_id=job.run_id, position=job.position))
            session.commit()
        self.update_adaptation([j.run_id for j in jobs])
        return new, len(jobs) - new

    def record_run(self, job) -> bool:
        """A single job outside any grid (`rftbench run` with no grid); True if its run was new."""
        with self.session() as session:
            exclusive(session.connection())
            if session.get(Run, job.run_id) is not None:
                return False
            session.add(run_row(job.config, job.paths, job.eval_protocol, job.eval_precision))
            session.commit()
            return True

    def set_provenance(self, run_id: str, provenance: dict) -> None:
        with self.session() as session:
            session.exec(update(Run).where(Run.id == run_id).values(provenance=provenance))
            session.commit()

    # -- results ----------------------------------------------------------------------------------
    def upsert_epoch(self, run_id: str, metrics: dict) -> None:
        with self.session() as session:
            self.write_epoch(session, run_id, metrics)
            session.commit()

    def write_epoch(self, session: Session, run_id: str, metrics: dict) -> None:
        """One row per (run, epoch), in `session`'s transaction: a re-run epoch replaces its row
        (CONVENTIONS.md write order); the same metrics again (a resume replaying its checkpoint's history)
        leave the stored row as it was."""
        values = {k: metrics[k] for k in EpochMetric.model_fields if k in metrics} | {
            "run_id": run_id,
            "recorded_at": now(),
        }
        query = select(EpochMetric).where(EpochMetric.run_id == run_id, EpochMetric.epoch == values["epoch"])
        stored = session.exec(query).first()
        if stored is not None and all(getattr(stored, k) == values[k] for k in values if k != "recorded_at"):
            return
        if insert := upsert_insert(self.engine):
            stmt = insert(EpochMetric).values(**values)
            update_cols = {k: stmt.excluded[k] for k in values if k not in ("run_id", "epoch")}
            session.exec(stmt.on_conflict_do_update(index_elements=["run_id", "epoch"], set_=update_cols))
        else:  # portable fallback
            session.exec(
                delete(EpochMetric).where(EpochMetric.run_id == run_id, EpochMetric.epoch == values["epoch"])
            )
            session.add(EpochMetric(**values))

    def add_evaluation(self, run_id: str, evaluation: dict, *, kind: str = "final") -> int:
        """Store `evaluate_budgets`' result (`insert_evaluation`); returns how many rows were new."""
        with self.session() as session:
            added = self.insert_evaluation(session, run_id, evaluation, kind=kind)
            session.commit()
        return added

    def insert_evaluation(self, session: Session, run_id: str, evaluation: dict, *, kind: str) -> int:
        """Add `evaluate_budgets`' result to `session`'s transaction, one row per budget (an ε_g = 0 run
        with no budget: one row at 0/255), keyed by its protocol. A row already stored under the same key
        stays as it is (the same measurement again adds nothing; a final row is never relabelled); returns
        how many rows were new."""
        protocol = EvalProtocol(**evaluation["protocol"]).as_dict()
        zero = budget_text(0, protocol["norm"])
        rows = evaluation["budgets"] or [
            {
                "budget": zero,
                "clean": evaluation["clean"],
                "adv": evaluation["clean"],
                "eadv": evaluation["clean"],
                "eps": [zero],
                "accuracies": [evaluation["clean"]],
            }
        ]
        added = 0
        for row in rows:
            values = {
                "run_id": run_id,
                "kind": kind,
                "budget": row["budget"],
                "budget_value": float(parse_budget(row["budget"], protocol["norm"])),
                "clean": row["clean"],
                "adv": row["adv"],
                "eadv": row["eadv"],
                "eps_grid": row["eps"],
                "accuracies": row["accuracies"],
                "n": evaluation["n"],
                "attacks_run": evaluation.get("attacks_run", 0),
                "seconds": evaluation.get("seconds"),
                "implementation": evaluation.get("implementation"),
                "batches": evaluation.get("batches"),
                "details": {"per_attack": evaluation["per_attack"].get(row["budget"], {})}
                if "per_attack" in evaluation
                else {},
                **protocol,
            }
            same_key = [getattr(Evaluation, k) == values[k] for k in EVALUATION_KEY]
            if insert := upsert_insert(self.engine):  # atomic: two evaluators of one run never collide
                stmt = (
                    insert(Evaluation)
                    .values(**values)
                    .on_conflict_do_nothing(index_elements=EVALUATION_KEY)
                    .returning(Evaluation.id)  # (psycopg gives no rowcount for ON CONFLICT)
                )
                added += len(session.exec(stmt).all())
            elif session.exec(select(Evaluation.id).where(*same_key)).first() is None:
                session.add(Evaluation(**values))  # portable fallback
                added += 1
        return added

    def update_adaptation(self, run_ids: Iterable[str] | None = None) -> None:
        """(Re)compute the task-adaptation start of completed runs at the threshold of every grid they
        belong to (CONVENTIONS.md: the first epoch with val_acc > threshold, `epochs` if none)."""
        with self.session() as session:
            query = select(Run, Grid.adaptation_threshold).join(GridRun, GridRun.run_id == Run.id)
            query = query.join(Grid, Grid.name == GridRun.grid).where(Run.status == "completed")
            if run_ids is not None:
                query = query.where(Run.id.in_(list(run_ids)))
            pairs = {(run.id, threshold): run.epochs for run, threshold in session.exec(query).all()}
            for (run_id, threshold), epochs in pairs.items():
                accs = session.exec(
                    select(EpochMetric.val_acc)
                    .where(EpochMetric.run_id == run_id)
                    .order_by(EpochMetric.epoch)
                ).all()
                start = adaptation_start_epoch(accs, threshold, epochs)
                session.merge(
                    Adaptation(run_id=run_id, threshold=threshold, start_epoch=start, epochs=epochs)
                )
            session.commit()

    # -- queries ----------------------------------------------------------------------------------
    def run(self, run_id: str) -> Run | None:
        with self.session() as session:
            return session.get(Run, run_id)

    def find_run(self, prefix: str) -> Run:
        """A run by id or unique id prefix, or StoreError naming the problem."""
        with self.session() as session:
            matches = session.exec(select(Run).where(Run.id.startswith(prefix))).all()
        if len(matches) != 1:
            problem = "no run" if not matches else f"{len(matches)} runs"
            raise StoreError(f"{problem} with id {prefix!r} in this database; `rftbench status` lists them")
        return matches[0]

    def runs(self, *, grid: str | None = None, states: Sequence[str] | None = None) -> list[Run]:
        """Runs in order: a grid's by position, else by creation."""
        with self.session() as session:
            if grid is not None:
                query = select(Run).join(GridRun, GridRun.run_id == Run.id).where(GridRun.grid == grid)
                query = query.order_by(GridRun.position)
            else:
                query = select(Run).order_by(Run.created_at, Run.id)
            if states is not None:
                query = query.where(Run.status.in_(states))
            return list(session.exec(query).all())

    def epochs(self, run_id: str) -> list[EpochMetric]:
        with self.session() as session:
            query = select(EpochMetric).where(EpochMetric.run_id == run_id).order_by(EpochMetric.epoch)
            return list(session.exec(query).all())

    def evaluations(self, run_id: str) -> list[Evaluation]:
        with self.session() as session:
            query = select(Evaluation).where(Evaluation.run_id == run_id)
            return list(session.exec(query.order_by(Evaluation.budget_value, Evaluation.steps)).all())

    def worst_case(self, run_id: str, budget: str) -> float | None:
        """Accuracy at `budget` when a sample counts as robust only if every evaluation of the run stored
        with per-sample flags at that budget (any attack, protocol or precision) failed on it; None without
        two such evaluations of the same test samples."""
        with self.session() as session:
            keys = session.exec(
                select(Evaluation.batches).where(Evaluation.run_id == run_id, Evaluation.batches.is_not(None))
            ).all()
            vectors = {}  # layout (each batch's start and size) -> the evaluations' flags at `budget`
            for key in dict.fromkeys(keys):
                query = select(EvalBatch).where(EvalBatch.run_id == run_id, EvalBatch.key == key)
                batches = session.exec(query.order_by(EvalBatch.batch)).all()
                if batches and all(budget in b.result["flags"] for b in batches):
                    layout = tuple((b.start, b.n) for b in batches)
                    vectors.setdefault(layout, []).append("".join(b.result["flags"][budget] for b in batches))
        # the same test samples in the same order; where evaluations saw different data, the most of them
        flags = max(vectors.values(), key=len, default=[])
        if len(flags) < 2:
            return None
        return sum(all(v[i] == "1" for v in flags) for i in range(len(flags[0]))) / len(flags[0])

    def adaptation(self, run_id: str) -> list[Adaptation]:
        with self.session() as session:
            return list(session.exec(select(Adaptation).where(Adaptation.run_id == run_id)).all())

    def everything(self, grid: str | None = None) -> dict[str, list]:
        """Runs (of one grid, or all) with all their epochs, evaluations and adaptation rows, in four
        queries: what reports read."""
        runs = self.runs(grid=grid)
        ids = [r.id for r in runs]
        with self.session() as session:
            return {
                "runs": runs,
                "epochs": list(session.exec(select(EpochMetric).where(EpochMetric.run_id.in_(ids))).all()),
                "evaluations": list(session.exec(select(Evaluation).where(Evaluation.run_id.in_(ids))).all()),
                "adaptation": list(session.exec(select(Adaptation).where(Adaptation.run_id.in_(ids))).all()),
            }

    def grids(self) -> list[Grid]:
        with self.session() as session:
            return list(session.exec(select(Grid).order_by(Grid.name)).all())

    def counts(self, grid: str | None = None) -> dict[str, int]:
        """Runs per state (all states present, zeros included), for the whole database or one grid."""
        with self.session() as session:
            query = select(Run.status, func.count()).group_by(Run.status)
            if grid is not None:
                query = query.join(GridRun, GridRun.run_id == Run.id).where(GridRun.grid == grid)
            found = dict(session.exec(query).all())
        return {state: found.get(state, 0) for state in STATES}

    def completed_ids(self, run_ids: Iterable[str]) -> set[str]:
        with self.session() as session:
            query = select(Run.id).where(Run.id.in_(list(run_ids)), Run.status == "completed")
            return set(session.exec(query).all())

    def lacking_evaluation(self, jobs: Sequence) -> list:
        """The jobs whose run is completed but lacks an evaluation row under the job's protocol (its grid's
        per-ε protocol and precision, the run's own steps) at a budget it is scored at: scored by an
        earlier release, or by a grid that asked for another protocol. The rule reports select rows by."""
        ids = [job.run_id for job in jobs]
        with self.session() as session:
            done = set(session.exec(select(Run.id).where(Run.id.in_(ids), Run.status == "completed")).all())
            rows = session.exec(select(Evaluation).where(Evaluation.run_id.in_(list(done)))).all()
        have = {(e.run_id, e.budget, e.eval_protocol()) for e in rows}
        lacking = []
        for job in jobs:
            wanted = EvalProtocol(
                job.eval_protocol,
                steps=job.config.eval_attack_steps,
                precision=job.eval_precision,
                norm=job.config.norm,
            )
            if job.run_id in done and any(
                (job.run_id, b, wanted) not in have for b in job.config.scored_budgets
            ):
                lacking.append(job)
        return lacking

    def status_of(self, run_ids: Iterable[str]) -> dict[str, str]:
        with self.session() as session:
            return dict(session.exec(select(Run.id, Run.status).where(Run.id.in_(list(run_ids)))).all())


def exclusive(connection: Connection) -> None:
    """Make the rest of `connection`'s transaction exclusive among rftbench's writers that ask for it (the
    schema, grid records): SQLite's transactions already hold the write lock (`BEGIN IMMEDIATE`);
    PostgreSQL takes a transaction-scoped advisory lock, released at commit or rollback."""
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({ADVISORY_LOCK})")


def upsert_insert(engine: Engine):
    """The dialect's INSERT that takes ON CONFLICT clauses (SQLite, PostgreSQL), else None."""
    if engine.dialect.name not in ("sqlite", "postgresql"):
        return None
    return __import__(f"sqlalchemy.dialects.{engine.dialect.name}", fromlist=["insert"]).insert


def run_row(config, paths: dict, eval_protocol: str = "paper", eval_precision: str = "fp32") -> Run:
    return Run(
        id=config.run_id,
        config=config.canonical_json(),
        backbone=config.backbone,
        dataset=config.dataset,
        setting=config.setting,
        eps=config.eps,
        eps_value=config.eps_value,
        t1=config.t1,
        t2=config.t2,
        seed=config.seed,
        epochs=config.epochs,
        paths=dict(paths),
        eval_protocol=eval_protocol,
        eval_precision=eval_precision,
    )


# ---- opening and upgrading ---------------------------------------------------------------------------


def check_sqlite_file(path: Path, create: bool, write: bool = True) -> bool:
    """Problems with a SQLite path that SQLite itself reports badly (or only at the first write); True when
    the file must be opened read-only (it cannot be written, and the caller only reads)."""
    if path.is_dir():
        raise StoreError(f"database {path} is a directory: pass a file path with --db")
    if not path.exists():
        if not create:
            raise StoreError(f"database {path} not found; run `rftbench run-grid` first or pass --db")
        if not path.parent.resolve().is_dir():
            raise StoreError(f"cannot create database {path}: folder {path.parent} does not exist")
        if not os.access(path.parent.resolve(), os.W_OK):
            raise StoreError(f"cannot create database {path}: folder {path.parent} is not writable")
        return False
    if not os.access(path, os.R_OK):
        raise StoreError(f"database {path} is not readable (permission denied)")
    if not create and path.stat().st_size == 0:
        raise StoreError(f"database {path} is empty: it is not an rftbench database; pass another --db")
    if not os.access(path, os.W_OK) or not os.access(path.parent.resolve(), os.W_OK):
        if not write and not create:
            return True
        where = "file" if not os.access(path, os.W_OK) else f"folder {path.parent}"
        raise StoreError(
            f"database {path} is read-only ({where} not writable): rftbench needs write access to it and its "
            f"folder (for SQLite's -wal/-shm files); make them writable or work on a copy"
        )
    return False


def upgraded_copy(path: Path) -> Engine:
    """An earlier release's SQLite file copied into memory and upgraded there: what a command that only
    reads sees, so that it never changes the file (the first command that writes upgrades it in place)."""
    memory = create_engine("sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False})
    event.listen(memory, "connect", _sqlite_connect)
    event.listen(memory, "begin", _sqlite_begin)
    source = sqlite3.connect(f"file:{path.resolve()}?{read_only_mode(path)}", uri=True)
    try:
        with memory.connect() as connection:
            source.backup(connection.connection.driver_connection)
    finally:
        source.close()
    upgrade(memory, "sqlite://")
    return memory


def read_only_mode(path: Path) -> str:
    """How SQLite may read a file it cannot write: `mode=ro` where it can keep its -shm file beside it;
    else `immutable=1`, which reads the main file alone, so it is refused while a -wal file holds changes."""
    shm, wal = (path.with_name(f"{path.name}-{suffix}") for suffix in ("shm", "wal"))
    if os.access(path.resolve().parent, os.W_OK) or shm.exists():
        return "mode=ro"
    if wal.exists() and wal.stat().st_size:
        raise StoreError(
            f"database {path} and its folder are read-only, and {wal} holds changes not yet in it: open it "
            f"once with write access, or copy both files to a folder you can write"
        )
    return "immutable=1"


def upgrade(engine: Engine, url: str, read_only: bool = False) -> None:
    """Create a new database's schema, or bring an earlier release's up to SCHEMA_VERSION (keeping a copy of
    a SQLite file first) in one transaction; refuse a database written by a newer release. A read-only one
    must already be at SCHEMA_VERSION."""
    with engine.connect() as connection:
        version = stored_version(connection)
        if version is None and sa.inspect(connection).get_table_names():
            raise StoreError(f"database {url} holds tables but none of rftbench's: use another --db")
    if version is not None and version > SCHEMA_VERSION:
        raise StoreError(
            f"database {url} has schema version {version}, this rftbench reads up to {SCHEMA_VERSION}: "
            f"upgrade rftbench (pip install -U rftbench) or use another --db"
        )
    if read_only:
        if version != SCHEMA_VERSION:
            raise StoreError(
                f"database {url} is read-only and {'empty' if version is None else f'at schema v{version}'}: "
                f"open it once with write access, so this rftbench can upgrade it (a copy is kept)"
            )
        return
    path = sqlite_path(url)
    if path is not None:  # ours, or new: readers never block the writer (before any transaction, as required)
        wal_mode(engine)
    if version is not None and version < SCHEMA_VERSION and path is not None:
        backup = path.with_name(f"{path.name}.schema-v{version}.bak")
        if not backup.exists():
            with sqlite3.connect(path) as source, sqlite3.connect(backup) as copy:
                source.backup(copy)
    with engine.begin() as connection:  # one process creates or migrates at a time
        exclusive(connection)
        version = stored_version(connection)
        if version is None and sa.inspect(connection).get_table_names():
            raise StoreError(f"database {url} holds tables but none of rftbench's: use another --db")
        if version is None:
            SQLModel.metadata.create_all(connection)
            connection.execute(sa.insert(SchemaVersion.__table__).values(version=SCHEMA_VERSION))
        else:
            for step in range(version, SCHEMA_VERSION):
                MIGRATIONS[step](connection)
            if version < SCHEMA_VERSION:
                connection.execute(sa.update(SchemaVersion.__table__).values(version=SCHEMA_VERSION))


def wal_mode(engine: Engine, seconds: float = 60.0) -> None:
    """Switch a SQLite file to WAL mode (it persists: later calls change nothing). The switch needs an
    exclusive lock, which SQLite refuses at once, without waiting, while another process's transaction on
    the still rollback-journalled file could deadlock with it (several processes creating one database):
    so it is retried."""
    raw = engine.raw_connection()
    try:
        deadline = time.monotonic() + seconds
        while True:
            try:
                raw.cursor().execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
    finally:
        raw.close()


def stored_version(connection: Connection) -> int | None:
    if not sa.inspect(connection).has_table("schema_version"):
        return None
    versions = connection.execute(sa.select(SchemaVersion.__table__.c.version)).scalars().all()
    if len(versions) != 1:
        raise StoreError(
            f"the schema_version table holds {versions}, not one version: the database is damaged"
        )
    return versions[0]


def _v1_to_v2(connection: Connection) -> None:
    """Schema v1 (rftbench 0.1) to v2: evaluations keyed by their full protocol, the final-evaluation options
    of runs, the adversarial-validation subset of epoch rows. Every v1 evaluation was measured with the early
    exit (`monotone`), under the run's training precision, from the clean image, with one restart."""
    from alembic.migration import MigrationContext
    from alembic.operations import Operations

    op = Operations(MigrationContext.configure(connection))
    (old_key,) = sa.inspect(connection).get_unique_constraints("evaluation")
    # SQLite cannot drop a constraint, so its table is rebuilt; elsewhere it is altered in place, which keeps
    # the id sequence (a rebuilt PostgreSQL table restarted it under the copied ids)
    with op.batch_alter_table(
        "evaluation", recreate="auto", naming_convention={"uq": "uq_%(table_name)s_%(column_0_name)s"}
    ) as batch:
        batch.drop_constraint(old_key["name"] or "uq_evaluation_run_id", type_="unique")
        for column in (
            sa.Column("protocol", sa.String, nullable=False, server_default="monotone"),
            sa.Column("norm", sa.String, nullable=False, server_default="Linf"),
            sa.Column("restarts", sa.Integer, nullable=False, server_default="1"),
            sa.Column("seed", sa.Integer, nullable=False, server_default="0"),
            sa.Column("precision", sa.String, nullable=False, server_default="fp32"),
            sa.Column("seconds", sa.Float, nullable=True),
        ):
            batch.add_column(column)
        batch.create_unique_constraint("uq_evaluation_protocol", list(EVALUATION_KEY))
    op.add_column("run", sa.Column("eval_protocol", sa.String, nullable=False, server_default="paper"))
    op.add_column("run", sa.Column("eval_precision", sa.String, nullable=False, server_default="fp32"))
    op.add_column("epoch_metric", sa.Column("val_adv_subset", sa.String, nullable=True))

    run, evaluation, epoch = (sa.table(name, *cols) for name, cols in (
        ("run", [sa.column(c) for c in ("id", "config", "status", "eps", "eval_protocol", "eval_precision")]),
        ("evaluation", [sa.column(c) for c in ("id", "run_id", "kind", "budget", "steps", "random_start",
                                                 "precision")]),
        ("epoch_metric", [sa.column("val_adv_subset"), sa.column("val_adv_acc")]),
    ))  # fmt: skip
    connection.execute(
        sa.update(epoch).where(epoch.c.val_adv_acc.is_not(None)).values(val_adv_subset="prefix")
    )
    rows = connection.execute(sa.select(evaluation)).mappings().all()
    for r in connection.execute(sa.select(run)).mappings().all():
        config = json.loads(r["config"])
        precision = config.get("precision", "fp32")
        connection.execute(
            sa.update(evaluation).where(evaluation.c.run_id == r["id"]).values(precision=precision)
        )
        if r["status"] != "completed":
            continue  # its final evaluation will be measured by this release: the new defaults stand
        connection.execute(
            sa.update(run)
            .where(run.c.id == r["id"])
            .values(eval_protocol="monotone", eval_precision=precision)
        )
        # v1's `evaluate` with the run's own protocol replaced its final row by an identical `extra` one:
        # relabel it final (same weights, same protocol, same numbers), so the run is back in the tables.
        mine = [e for e in rows if e["run_id"] == r["id"]]
        budgets = config.get("eval_budgets") or ([r["eps"]] if parse_eps(r["eps"]) > 0 else ["0/255"])
        if not any(e["kind"] == "final" for e in mine):
            lost = [e["id"] for e in mine if e["budget"] in budgets and not e["random_start"]
                    and e["steps"] == config.get("eval_attack_steps")]  # fmt: skip
            connection.execute(sa.update(evaluation).where(evaluation.c.id.in_(lost)).values(kind="final"))


def _v2_to_v3(connection: Connection) -> None:
    """Schema v2 to v3: who holds a running run (`worker`) and where its process id means something
    (`pid_namespace`), for `status` and for reaping with several executors."""
    from alembic.migration import MigrationContext
    from alembic.operations import Operations

    op = Operations(MigrationContext.configure(connection))
    op.add_column("run", sa.Column("pid_namespace", sa.String, nullable=True))
    op.add_column("run", sa.Column("worker", sa.String, nullable=True))


def _v3_to_v4(connection: Connection) -> None:
    """Schema v3 to v4: evaluations without E.adv (AutoAttack, at ε_g only), the package that measured each
    one, the key of its per-batch results and its per-attack accuracies; the per-batch results themselves
    (`eval_batch`). Every v3 row was measured by rftbench's own APGD."""
    from alembic.migration import MigrationContext
    from alembic.operations import Operations

    op = Operations(MigrationContext.configure(connection))
    with op.batch_alter_table("evaluation", recreate="auto") as batch:
        batch.alter_column("eadv", existing_type=sa.Float, nullable=True)
        batch.add_column(sa.Column("implementation", sa.String, nullable=True))
        batch.add_column(sa.Column("batches", sa.String, nullable=True))
        batch.add_column(sa.Column("details", sa.JSON, nullable=True))
    evaluation = sa.table("evaluation", sa.column("implementation"))
    connection.execute(sa.update(evaluation).values(implementation="rftbench"))
    EvalBatch.__table__.create(connection)


MIGRATIONS: dict[int, Callable[[Connection], None]] = {
    1: _v1_to_v2,
    2: _v2_to_v3,
    3: _v3_to_v4,
}  # from version k to k + 1
