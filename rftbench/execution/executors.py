"""Who runs the workers: one interface, three executors, picked by name from `EXECUTORS` (submitit's
pattern: the runner never knows who launched it, and the command never asks which executor ran). Every
worker is the same claim loop (`workers.work`): it claims the first free run of its list, trains it, and
goes on until nothing is left, waiting for runs that other workers hold (a dead worker's runs are taken
over once its lease expires).

    executor = EXECUTORS["local"].from_launch(LaunchOptions(executor="local", gpus="0,1,2,3"))
    outcome = executor.launch(spec, runner, say=print)   # an Outcome, whichever executor it was

`python -m rftbench.execution.executors SPEC_JSON LABEL` is one local worker (LocalExecutor starts them).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from rftbench.core.config import RuntimeOptions, SlurmOptions
from rftbench.execution.options import LaunchOptions
from rftbench.execution.slurm import SlurmExecutor
from rftbench.execution.workers import Outcome, WorkerSpec, exit_code, run_until_done, work


@dataclass
class InlineExecutor:
    """The claim loop in this process, on the caller's runner (its store and live display: one runner, one
    database connection); it returns as soon as nothing is left to claim."""

    @classmethod
    def from_launch(cls, launch: LaunchOptions, slurm_defaults: SlurmOptions | None = None) -> InlineExecutor:
        return cls()

    def launch(self, spec: WorkerSpec, runner, say: Callable[[str], None]) -> Outcome:
        summary = run_until_done(runner, spec.run_ids)
        stopped = (
            f", stopped during {summary.interrupted}: `rftbench resume` continues it"
            if summary.interrupted
            else ""
        )
        pruned = f", {len(summary.pruned)} pruned" if summary.pruned else ""
        lines = [f"{len(summary.completed)} completed, {len(summary.failed)} failed{pruned}{stopped}"]
        lines += [f"[red]failed[/] {run_id}: {line}" for run_id, line in summary.failed.items()]
        code = exit_code(dataclasses.asdict(summary))
        return Outcome(summary.completed, summary.failed, summary.interrupted, code, lines)


@dataclass
class LocalExecutor:
    """One worker process per GPU (`gpus`: CUDA_VISIBLE_DEVICES=<that GPU>, device cuda), or `processes`
    CPU workers sharing the cores (each gets cores // processes threads). Blocks until every worker ends;
    Ctrl-C reaches every worker (one process group), SIGTERM is passed on."""

    gpus: list[str] = field(default_factory=list)
    processes: int = 0

    @classmethod
    def from_launch(cls, launch: LaunchOptions, slurm_defaults: SlurmOptions | None = None) -> LocalExecutor:
        gpus = [g.strip() for g in launch.gpus.split(",")] if launch.gpus else []
        return cls(gpus=gpus, processes=launch.processes or 0)

    def commands(self, spec: WorkerSpec) -> list[tuple[str, dict, RuntimeOptions]]:
        """(label, environment, runtime options) of each worker."""
        env = dict(os.environ)
        if self.gpus:
            runtime = dataclasses.replace(spec.runtime, device="cuda")
            return [
                (f"local {i + 1}/{len(self.gpus)} gpu {gpu}", env | {"CUDA_VISIBLE_DEVICES": gpu}, runtime)
                for i, gpu in enumerate(self.gpus)
            ]
        threads = str(max(1, (os.cpu_count() or 1) // self.processes))
        cpu = env | {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        return [(f"local {i + 1}/{self.processes} cpu", cpu, spec.runtime) for i in range(self.processes)]

    def start(self, spec: WorkerSpec) -> int:
        """Start the workers and wait for all of them; the worst exit code (`codes`: each one's)."""
        children = []
        for label, env, runtime in self.commands(spec):
            mine = dataclasses.replace(spec, runtime=runtime).to_json()
            command = [sys.executable, "-m", "rftbench.execution.executors", mine, label]
            children.append(subprocess.Popen(command, env=env))

        def forward(signum, frame) -> None:
            for child in children:
                if child.poll() is None:
                    child.send_signal(signum)

        previous = signal.signal(signal.SIGTERM, forward)
        try:  # poll them all, so that a worker killed by a signal is reaped (no zombie) at once
            while True:
                try:
                    if all(child.poll() is not None for child in children):
                        break
                    time.sleep(0.5)
                except KeyboardInterrupt:  # the workers got it too: wait for them to stop their runs
                    continue
        finally:
            signal.signal(signal.SIGTERM, previous)
        codes = self.codes = [child.returncode for child in children]
        return 130 if 130 in codes else max(codes, default=0)

    def launch(self, spec: WorkerSpec, runner, say: Callable[[str], None]) -> Outcome:
        code = self.start(spec)
        queue = runner.queue
        scope = runner.scope(spec.run_ids)
        left = queue.claimable(scope) + [r.id for r in queue.held_by_others(scope)]
        lines = []
        killed = [f"{i + 1} ({-c})" for i, c in enumerate(self.codes) if c < 0]
        if killed:  # its runs were continued by the others, or wait for `resume`
            lines.append(f"[yellow]note:[/] worker(s) {', '.join(killed)} died of a signal")
        if left and code != 130:
            lines.append(f"{len(left)} run(s) unfinished: `rftbench resume` continues them")
            code = code or 1
        lines.append(
            f"local workers ended: {'all done' if code == 0 else f'exit {code}'} (`rftbench status`)"
        )
        return Outcome(exit_code=code, lines=lines)


EXECUTORS = {"inline": InlineExecutor, "local": LocalExecutor, "slurm": SlurmExecutor}


def main() -> None:
    """`python -m rftbench.execution.executors SPEC_JSON LABEL`: one local worker (LocalExecutor runs it)."""
    spec, label = WorkerSpec.from_json(sys.argv[1]), sys.argv[2]
    started = time.monotonic()
    summary = work(spec, label)
    print(
        f"[{label}] done in {time.monotonic() - started:.0f} s: {len(summary['completed'])} completed, "
        f"{len(summary['failed'])} failed, {len(summary['pruned'])} pruned, {len(summary['lost'])} lost",
        flush=True,
    )
    sys.exit(exit_code(summary))


if __name__ == "__main__":
    main()
