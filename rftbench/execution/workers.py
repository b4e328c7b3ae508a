"""What every executor shares: the worker's plain-value spec, its claim loop (`work`), and the one result
type every executor returns (`Outcome`, submitit's `Job` in spirit: the CLI prints it, never asks who ran).

    spec = WorkerSpec(db="sqlite:////abs/rftbench.db", run_ids=ids, runs_dir="/abs/runs")
    summary = work(spec, "local 1/2 cpu")   # one claim loop in this process
"""

from __future__ import annotations

import dataclasses
import json
import signal
from dataclasses import dataclass, field
from pathlib import Path

from rftbench.core.config import RuntimeOptions


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs, as plain values (it crosses processes and nodes as JSON or a pickle)."""

    db: str
    run_ids: list[str] | None  # None: every pending or interrupted run of the database
    runs_dir: str = "runs"
    runtime: RuntimeOptions = RuntimeOptions()
    roots: dict = field(default_factory=dict)
    weights: dict = field(default_factory=dict)
    prune: bool = False
    lease_seconds: float = 120.0
    tune: dict | None = None  # a Tuner's plain values (rftbench.execution.tuning): its studies and budgets
    track: list[str] = field(default_factory=list)  # tracking sinks, NAME=WHERE (absolute where a folder)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> WorkerSpec:
        data = json.loads(text)
        return cls(**(data | {"runtime": RuntimeOptions(**data["runtime"])}))


@dataclass
class Outcome:
    """How a launch ended, whichever executor ran it. `lines` (console markup) are printed after it;
    the runs of workers in other processes are not itemised (their logs and `rftbench status` show them)."""

    completed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # run id -> its error line
    interrupted: str | None = None
    exit_code: int = 0  # 0 all done, 1 some failed or left, 130 interrupted
    lines: list[str] = field(default_factory=list)


class LinePrinter:
    """A worker's progress as plain lines, prefixed by its label (several workers share one terminal)."""

    def __init__(self, label: str) -> None:
        self.label = label

    def say(self, text: str) -> None:
        print(f"[{self.label}] {text}", flush=True)

    def __enter__(self) -> LinePrinter:
        return self

    def __exit__(self, *exc) -> None: ...

    def start_run(self, run, config, index, total) -> None:
        self.say(f"run {run.id[:8]} {config.backbone}/{config.dataset} {config.label} {config.eps}")

    def epoch(self, run, config, metrics) -> None:
        self.say(
            f"run {run.id[:8]} epoch {metrics['epoch']}/{config.epochs - 1} val {metrics['val_acc']:.1%}"
        )

    def end_run(self, run, status, detail="") -> None:
        self.say(f"{status} {run.id[:8]} {detail}")


def runner_for(spec: WorkerSpec, label: str):
    """A worker process's own runner: it opens the database itself and waits for runs others hold."""
    from rftbench.execution.runner import Runner
    from rftbench.results.queue import Worker
    from rftbench.results.store import Store

    store = Store.open(spec.db, create=False)
    tuner = None
    if spec.tune is not None:
        from rftbench.execution.trials import Tuner

        tuner = Tuner(store, **spec.tune)
    return Runner(
        store=store,
        tuner=tuner,
        runtime=spec.runtime,
        runs_dir=Path(spec.runs_dir),
        roots=spec.roots,
        weights=spec.weights,
        lease_seconds=spec.lease_seconds,
        prune=spec.prune,
        track=tuple(spec.track),
        progress=LinePrinter(label),
        worker=Worker(label),
        wait_for_others=True,
    )


def stop_on_signals(runner, reason: str = "stopped by the user (Ctrl-C / SIGTERM)") -> dict:
    """Ctrl-C and SIGTERM stop the current run as `interrupted` (the runner's `stopping`); returns the
    previous handlers, to be put back."""

    def stop(signum, frame) -> None:
        if runner.stopping.is_set():
            return  # already on its way out
        runner.stop_reason = reason
        runner.stopping.set()
        raise KeyboardInterrupt

    return {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}


def run_until_done(runner, run_ids: list[str] | None, reason: str | None = None):
    """The runner's claim loop with Ctrl-C and SIGTERM turned into an interruption; its Summary."""
    previous = stop_on_signals(runner, *([reason] if reason else []))
    try:
        with runner.progress:
            return runner.run(run_ids)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def work(spec: WorkerSpec, label: str) -> dict:
    """One worker's claim loop, in this process, until no run is left; its summary as a dict."""
    return dataclasses.asdict(run_until_done(runner_for(spec, label), spec.run_ids))


def exit_code(summary: dict) -> int:
    return 130 if summary["interrupted"] or summary["stopped"] else 1 if summary["failed"] else 0
