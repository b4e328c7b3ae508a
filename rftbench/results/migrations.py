"""Upgrading a results database written by an earlier release: versioned steps, one transaction, a copy kept.

    upgrade(engine, url)            # create a new database's schema, or bring an old one to SCHEMA_VERSION
    MIGRATIONS[1](connection)       # the step from schema v1 (rftbench 0.1) to v2, alembic's operations

Every step runs in the one transaction of `upgrade`, after a copy of a SQLite file is kept beside it
(`<name>.schema-v<k>.bak`); a database written by a newer release is refused. A caller that only reads sees
an earlier release's SQLite file through an upgraded copy in memory (`upgraded_copy`).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import StaticPool
from sqlmodel import SQLModel, create_engine

from rftbench.core.config import parse_eps
from rftbench.results.connect import (
    StoreError,
    exclusive,
    read_only_mode,
    sqlite_events,
    sqlite_path,
    wal_mode,
)
from rftbench.results.schema import (
    EVALUATION_KEY,
    SCHEMA_VERSION,
    EvalBatch,
    SchemaVersion,
    Study,
    Trial,
)

# The evaluation key schema v2 to v5 created (v6 adds `weights`): what the v1 -> v2 step builds.
V2_EVALUATION_KEY = tuple(k for k in EVALUATION_KEY if k != "weights")


def upgraded_copy(path: Path) -> Engine:
    """An earlier release's SQLite file copied into memory and upgraded there: what a command that only
    reads sees, so that it never changes the file (the first command that writes upgrades it in place)."""
    memory = create_engine("sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False})
    sqlite_events(memory)
    source = sqlite3.connect(f"file:{path.resolve()}?{read_only_mode(path)}", uri=True)
    try:
        with memory.connect() as connection:
            source.backup(connection.connection.driver_connection)
    finally:
        source.close()
    upgrade(memory, "sqlite://")
    return memory


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
        batch.create_unique_constraint("uq_evaluation_protocol", list(V2_EVALUATION_KEY))
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


def _v4_to_v5(connection: Connection) -> None:
    """Schema v4 to v5: hyperparameter studies and their trials (`rftbench tune`); a run may now be
    `pruned`, a state no v4 run holds."""
    Study.__table__.create(connection)
    Trial.__table__.create(connection)


def _v5_to_v6(connection: Connection) -> None:
    """Schema v5 to v6: which of a run's weights an evaluation scored (`weights`, part of its key; every v5
    row scored the last epoch's) and an epoch's E.adv on the validation subset (`val_eadv`, measured only
    where a run keeps its best weights by it)."""
    from alembic.migration import MigrationContext
    from alembic.operations import Operations

    op = Operations(MigrationContext.configure(connection))
    with op.batch_alter_table("evaluation", recreate="auto") as batch:
        batch.drop_constraint("uq_evaluation_protocol", type_="unique")
        batch.add_column(sa.Column("weights", sa.String, nullable=False, server_default="last"))
        batch.create_unique_constraint("uq_evaluation_protocol", list(EVALUATION_KEY))
    op.add_column("epoch_metric", sa.Column("val_eadv", sa.Float, nullable=True))


MIGRATIONS: dict[int, Callable[[Connection], None]] = {
    1: _v1_to_v2,
    2: _v2_to_v3,
    3: _v3_to_v4,
    4: _v4_to_v5,
    5: _v5_to_v6,
}  # from version k to k + 1
