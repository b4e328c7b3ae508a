"""From options to a running launch: one runner (one database connection), its preflight, and the
executor picked by name.

    runner = make_runner(RunnerOptions(device="cpu"), progress)
    runner.store = Store.open(db)
    outcome = execute(runner, run_ids, LaunchOptions(executor="local", processes=2), db, say=print)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from rftbench.core.config import RuntimeOptions, SlurmOptions
from rftbench.execution.executors import EXECUTORS
from rftbench.execution.options import LaunchError, LaunchOptions, RunnerOptions
from rftbench.execution.workers import Outcome, WorkerSpec


def runtime_options(options: RunnerOptions) -> RuntimeOptions:
    """The device (checked usable here: one line if not), workers, math modes and checkpoint policy of
    `options`."""
    import torch

    device = options.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        if torch.device(device).type not in ("cpu", "cuda", "mps", "xpu"):
            raise RuntimeError("rftbench trains on cpu, cuda, mps or xpu devices")
        torch.empty(1, device=device)
    except (RuntimeError, AssertionError) as exc:
        raise LaunchError(
            f"device {device!r} is not usable here ({str(exc).splitlines()[0][:100]}); pick another --device"
        ) from None
    workers = options.workers
    workers = workers if workers is not None else (0 if device == "cpu" else min(4, os.cpu_count() or 1))
    return RuntimeOptions(
        device=device,
        channels_last=options.channels_last,
        compile=options.compile,
        num_workers=workers,
        tf32=options.tf32,
        checkpoint_every=options.checkpoint_every,
        checkpoint_minutes=options.checkpoint_minutes,
    )


def make_runner(options: RunnerOptions, progress=None):
    """A runner without its store: the database is opened only once the jobs passed their preflight (bad
    input leaves the database untouched). The same runner runs them inline."""
    from rftbench.execution.runner import Progress, Runner

    return Runner(
        store=None,
        runtime=runtime_options(options),
        runs_dir=options.runs_dir,
        roots=options.roots,
        weights=options.weights,
        lease_seconds=options.lease_seconds,
        prune=options.prune,
        track=options.track,
        progress=progress if progress is not None else Progress(),
    )


def preflight(runner, items) -> None:
    """Data roots and weights of every (config, stored paths) about to run, or one line."""
    try:
        runner.preflight(items)
    except ValueError as exc:  # DataNotFound and WeightsUnavailable are RftbenchErrors already
        raise LaunchError(str(exc)) from None


def existing_store(db: str | None):
    """The database opened to read, or None (and no file created) where there is none yet."""
    from rftbench.results.connect import database_url, sqlite_is_new, sqlite_path
    from rftbench.results.store import Store

    path = sqlite_path(database_url(db))
    if path is not None and sqlite_is_new(path):
        return None
    return Store.open(db, create=False, write=False)


def existing_statuses(db: str | None, run_ids: list[str]) -> dict[str, str]:
    """Run id -> state for the runs already in the database; {} if there is none."""
    store = existing_store(db)
    return {} if store is None else store.status_of(run_ids)


def worker_spec(runner, run_ids: list[str] | None, db: str | None) -> WorkerSpec:
    from rftbench.results.connect import database_url, sqlite_path

    url = database_url(db)
    if (path := sqlite_path(url)) is not None:  # workers may start elsewhere: an absolute path
        url = f"sqlite:///{path.resolve()}"
    return WorkerSpec(
        db=url,
        run_ids=run_ids,
        runs_dir=str(Path(runner.runs_dir).resolve()),
        runtime=runner.runtime,
        roots=runner.roots,
        weights=runner.weights,
        prune=runner.prune,
        lease_seconds=runner.lease_seconds,
        tune=runner.tuner.spec() if runner.tuner is not None else None,
        track=list(runner.track),
    )


def execute(
    runner,
    run_ids: list[str] | None,
    launch: LaunchOptions | None = None,
    db: str | None = None,
    slurm_defaults: SlurmOptions | None = None,
    say: Callable[[str], None] = print,
) -> Outcome:
    """Run with the executor `launch` names. Ctrl-C and a scheduler's SIGTERM both stop a worker's current
    run as interrupted, whatever it raises; the outcome's exit code says so (130)."""
    launch = launch or LaunchOptions()
    executor = EXECUTORS[launch.executor].from_launch(launch, slurm_defaults)
    return executor.launch(worker_spec(runner, run_ids, db), runner, say)
