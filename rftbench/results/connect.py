"""Connecting to the results database: URLs and SQLite paths, the checks SQLite reports badly, WAL mode.

    url = database_url(db)                                 # a path, $RFTBENCH_DB or rftbench.db: sqlite:///...
    engine, read_only = connect(url, create=True, write=True)  # a StoreError names any problem in one line

SQLite runs in WAL mode with a busy timeout, and each transaction takes the write lock when it starts, so
several processes of one node can share one file; PostgreSQL's exclusive transactions take an advisory lock.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlmodel import create_engine

from rftbench.errors import RftbenchError

DEFAULT_DB = "rftbench.db"
ADVISORY_LOCK = 0x5F7B3E  # PostgreSQL's advisory lock key of rftbench's exclusive transactions


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


def sqlite_events(engine: Engine, *, write: bool = True) -> None:
    """The pragmas of every SQLite connection, and the write lock at the start of every transaction of an
    engine that writes."""
    event.listen(engine, "connect", _sqlite_connect)
    if write:
        event.listen(engine, "begin", _sqlite_begin)


def connect(url: str, *, create: bool = True, write: bool = True) -> tuple[Engine, bool]:
    """An engine on `url` after the checks of a SQLite file (`check_sqlite_file`), and whether it is
    read-only (a SQLite file that cannot be written, opened by a caller that only reads)."""
    path = sqlite_path(url)
    read_only = path is not None and check_sqlite_file(path, create, write)
    target = f"sqlite:///file:{path.resolve()}?{read_only_mode(path)}&uri=true" if read_only else url
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
        sqlite_events(engine, write=not read_only)
    return engine, read_only


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


def sqlite_is_new(path: Path) -> bool:
    """No database there yet: the file is missing, or 0 bytes (`touch`, a job's prologue), which SQLite
    takes for a new database: nothing is in it."""
    return not path.exists() or (path.is_file() and path.stat().st_size == 0)


def check_sqlite_file(path: Path, create: bool, write: bool = True) -> bool:
    """Problems with a SQLite path that SQLite itself reports badly (or only at the first write); True when
    the file must be opened read-only (it cannot be written, and the caller only reads)."""
    if path.is_dir():
        raise StoreError(f"database {path} is a directory: pass a file path with --db")
    if not create and sqlite_is_new(path):
        raise StoreError(f"database {path} not found; run `rftbench run-grid` first or pass --db")
    if not path.exists():
        if not path.parent.resolve().is_dir():
            raise StoreError(f"cannot create database {path}: folder {path.parent} does not exist")
        if not os.access(path.parent.resolve(), os.W_OK):
            raise StoreError(f"cannot create database {path}: folder {path.parent} is not writable")
        return False
    if not os.access(path, os.R_OK):
        raise StoreError(f"database {path} is not readable (permission denied)")
    if not os.access(path, os.W_OK) or not os.access(path.parent.resolve(), os.W_OK):
        if not write and not create:
            return True
        where = "file" if not os.access(path, os.W_OK) else f"folder {path.parent}"
        raise StoreError(
            f"database {path} is read-only ({where} not writable): rftbench needs write access to it and its "
            f"folder (for SQLite's -wal/-shm files); make them writable or work on a copy"
        )
    return False


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
