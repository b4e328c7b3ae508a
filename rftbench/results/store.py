"""The results database (SQLModel): runs, per-epoch metrics, evaluations, adaptation starts, grid links.

    store = Store.open("rftbench.db")              # or any SQLAlchemy URL: postgresql://host/db
    store.record_grid("smoke", jobs, adaptation_threshold=0.2)
    store.runs(grid="smoke"), store.epochs(run_id), store.evaluations(run_id)

The `Store` writes and reads rows; its tables are in `rftbench.results.schema`, connecting (SQLite's checks,
WAL mode) in `rftbench.results.connect`, upgrading an earlier release's database in
`rftbench.results.migrations`. With `rftbench.results.queue` (claims, leases, heartbeats, reaping: which
worker holds which run), the only modules that speak SQL (STYLE.md 7). Accuracies are fractions in [0, 1],
epochs 0-based (CONVENTIONS.md).

Stored results are permanent: a new evaluation protocol adds a row, the same protocol again adds nothing,
and a run's `final` evaluation is never replaced. Each evaluation's per-batch results make a killed
evaluation resumable (`EvalLog`) and the worst case over several evaluations recomputable (`worst_cases`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import func, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, delete, select

from rftbench.core.config import budget_text, parse_budget
from rftbench.core.metrics import EvalProtocol, adaptation_start_epoch
from rftbench.results.batches import worst_cases
from rftbench.results.connect import (
    StoreError,
    connect,
    database_url,
    exclusive,
    first_line,
    sqlite_path,
    upsert_insert,
)
from rftbench.results.migrations import stored_version, upgrade, upgraded_copy
from rftbench.results.schema import (
    EVALUATION_KEY,
    SCHEMA_VERSION,
    STATES,
    Adaptation,
    EpochMetric,
    Evaluation,
    Grid,
    GridRun,
    Run,
    Trial,
    now,
    run_row,
)

# Where callers found them before the module was split (the CLI, the runner, reports, tests, benchmarks).


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
        engine, read_only = connect(url, create=create, write=write)
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
                "weights": evaluation.get("weights", "last"),
                "details": (
                    {"per_attack": evaluation["per_attack"].get(row["budget"], {})}
                    if "per_attack" in evaluation
                    else {}
                )
                | evaluation.get("details", {}),  # kept weights: their epoch and metric, or decay
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
        return self.worst_cases([(run_id, budget)])[(run_id, budget)]

    def worst_cases(self, keys: Iterable[tuple[str, ...]]) -> dict[tuple[str, ...], float | None]:
        """`worst_case` of each (run id, budget[, weights]) key, in two queries whatever their number: what
        a report with many AutoAttack rows reads."""
        with self.session() as session:
            return worst_cases(session, keys)

    def grids_of(self, run_id: str) -> list[str]:
        """The grids that hold a run, by name."""
        with self.session() as session:
            query = select(GridRun.grid).where(GridRun.run_id == run_id).order_by(GridRun.grid)
            return list(session.exec(query).all())

    def adaptation(self, run_id: str) -> list[Adaptation]:
        with self.session() as session:
            return list(session.exec(select(Adaptation).where(Adaptation.run_id == run_id)).all())

    def everything(self, grid: str | None = None) -> dict[str, list]:
        """Runs (of one grid, or all) with all their epochs, evaluations and adaptation rows, in four
        queries: what reports read. Without a grid, a tuning trial that no grid holds is left out: its
        learning rate is one draw of a search, not a result (`report --table tuning` shows trials)."""
        runs = self.runs(grid=grid)
        if grid is None:
            with self.session() as session:
                trials = set(session.exec(select(Trial.run_id)).all())
                trials -= set(session.exec(select(GridRun.run_id)).all())
            runs = [run for run in runs if run.id not in trials]
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

    def check_grid(self, grid: str | None) -> None:
        """A grid filter that names no grid of this database is a typo: say so instead of showing nothing."""
        names = [g.name for g in self.grids()]
        if grid is not None and grid not in names:
            raise StoreError(f"no grid {grid!r} in this database; it has {', '.join(names) or 'none'}")

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
        per-ε protocol and precision, the run's own steps) at a budget it is scored at, of the weights its
        policy scores: scored by an earlier release, or by a grid that asked for another protocol. The rule
        reports select rows by."""
        ids = [job.run_id for job in jobs]
        with self.session() as session:
            done = set(session.exec(select(Run.id).where(Run.id.in_(ids), Run.status == "completed")).all())
            rows = session.exec(select(Evaluation).where(Evaluation.run_id.in_(list(done)))).all()
        have = {(e.run_id, e.budget, e.eval_protocol(), e.weights) for e in rows}
        lacking = []
        for job in jobs:
            wanted = EvalProtocol(
                job.eval_protocol,
                steps=job.config.eval_attack_steps,
                precision=job.eval_precision,
                norm=job.config.norm,
            )
            weights = job.config.weights_policy
            if job.run_id in done and any(
                (job.run_id, b, wanted, weights) not in have for b in job.config.scored_budgets
            ):
                lacking.append(job)
        return lacking

    def status_of(self, run_ids: Iterable[str]) -> dict[str, str]:
        with self.session() as session:
            return dict(session.exec(select(Run.id, Run.status).where(Run.id.in_(list(run_ids)))).all())
