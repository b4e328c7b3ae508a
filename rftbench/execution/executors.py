"""Who runs the workers: one interface, three executors (submitit's pattern: the runner never knows who
launched it). Every worker is the same claim loop (`work`): it opens the database, claims the first free
run of its list, trains it, and goes on until nothing is left, waiting for runs that other workers hold
(a dead worker's runs are taken over once its lease expires).

    spec = WorkerSpec(db="postgresql://host/db", run_ids=ids, runs_dir="runs", runtime=RuntimeOptions("cuda"))
    InlineExecutor().launch(spec)                     # this process: today's `run-grid`
    LocalExecutor(gpus=[0, 1, 2, 3]).launch(spec)      # one process per GPU, pinned by CUDA_VISIBLE_DEVICES
    LocalExecutor(processes=4).launch(spec)            # four CPU processes
    SlurmExecutor(folder, SlurmOptions(partition="gpu")).launch(spec)   # a submitit job array

Claim-loop workers rather than one SLURM task per run: a grid's 120 runs become as many array tasks as
GPUs wanted (each pays its queue wait and start-up once), runs start in the grid's order whatever order
the scheduler starts tasks in, and a task lost for any reason loses no run (its lease expires and another
worker continues it from its checkpoint). A preempted or timed-out SLURM task is requeued by submitit
(`Checkpointable`): its run is `interrupted` on the way out and continued when the task (or another)
restarts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from rftbench.core.config import RuntimeOptions, SlurmOptions


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

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> WorkerSpec:
        data = json.loads(text)
        return cls(**(data | {"runtime": RuntimeOptions(**data["runtime"])}))


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
        self.say(f"run {run.id[:8]} {config.backbone}/{config.dataset} {config.setting} {config.eps}")

    def epoch(self, run, config, metrics) -> None:
        self.say(
            f"run {run.id[:8]} epoch {metrics['epoch']}/{config.epochs - 1} val {metrics['val_acc']:.1%}"
        )

    def end_run(self, run, status, detail="") -> None:
        self.say(f"{status} {run.id[:8]} {detail}")


def runner_for(spec: WorkerSpec, label: str, progress=None, *, wait_for_others: bool = True):
    from rftbench.execution.runner import Runner
    from rftbench.results.queue import Worker
    from rftbench.results.store import Store

    return Runner(
        store=Store.open(spec.db, create=False),
        runtime=spec.runtime,
        runs_dir=Path(spec.runs_dir),
        roots=spec.roots,
        weights=spec.weights,
        lease_seconds=spec.lease_seconds,
        prune=spec.prune,
        progress=progress if progress is not None else LinePrinter(label),
        worker=Worker(label),
        wait_for_others=wait_for_others,
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


def work(spec: WorkerSpec, label: str) -> dict:
    """One worker's claim loop, in this process, until no run is left; its summary as a dict."""
    runner = runner_for(spec, label)
    previous = stop_on_signals(runner)
    try:
        summary = runner.run(spec.run_ids)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return dataclasses.asdict(summary)


def exit_code(summary: dict) -> int:
    return 130 if summary["interrupted"] or summary["stopped"] else 1 if summary["failed"] else 0


# -- the executors --------------------------------------------------------------------------------------


@dataclass
class InlineExecutor:
    """Today's loop in this process (the CLI passes its live display as `progress`)."""

    progress: object = None

    def launch(self, spec: WorkerSpec) -> int:
        runner = runner_for(spec, "inline", self.progress, wait_for_others=False)
        previous = stop_on_signals(runner)
        try:
            with runner.progress:
                summary = dataclasses.asdict(runner.run(spec.run_ids))
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        self.summary = summary
        return exit_code(summary)


@dataclass
class LocalExecutor:
    """One worker process per GPU (`gpus`: CUDA_VISIBLE_DEVICES=<that GPU>, device cuda), or `processes`
    CPU workers sharing the cores (each gets cores // processes threads). Blocks until every worker ends;
    Ctrl-C reaches every worker (one process group), SIGTERM is passed on."""

    gpus: list[str] = field(default_factory=list)
    processes: int = 0

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

    def launch(self, spec: WorkerSpec) -> int:
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


@dataclass
class SlurmExecutor:
    """A submitit job array of `options.jobs` claim-loop workers (the CLI's default: as many as runs to do,
    at most `array_parallelism`), each with `gpus_per_task` GPUs; `launch` with `wait` blocks until they
    end (`submit`, then `collect`)."""

    folder: Path
    options: SlurmOptions = SlurmOptions()
    wait: bool = False

    def executor(self):
        import submitit

        o = self.options
        executor = submitit.AutoExecutor(
            folder=self.folder / "%j", cluster="slurm", slurm_max_num_timeout=o.max_requeues
        )
        parameters = dict(
            name="rftbench",
            timeout_min=o.time_min,
            mem_gb=o.mem_gb,
            slurm_partition=o.partition,
            slurm_account=o.account,
            slurm_qos=o.qos,
            slurm_gpus_per_task=o.gpus_per_task or None,
            slurm_cpus_per_task=o.cpus_per_task,
            slurm_array_parallelism=o.array_parallelism,
            slurm_additional_parameters=dict(o.additional),
            slurm_ntasks_per_node=1,
        )
        executor.update_parameters(**{k: v for k, v in parameters.items() if v is not None})
        return executor  # what is None is left out: the partition's default

    def submit(self, spec: WorkerSpec) -> list:
        """Submit the array (`options.jobs` tasks, one if unset); its submitit jobs."""
        device = "cuda" if self.options.gpus_per_task else spec.runtime.device
        spec = dataclasses.replace(spec, runtime=dataclasses.replace(spec.runtime, device=device))
        executor, tasks = self.executor(), list(range(self.options.jobs or 1))
        with contextlib.redirect_stderr(io.StringIO()):  # submitit prints sbatch's refusal, then raises it
            self.jobs = executor.map_array(SlurmWorker(spec), tasks)
        return self.jobs

    def collect(self) -> int:
        """Wait for every job (a requeued one included) to end; the worst exit code. `failures` names the
        jobs that ended without a summary (killed, out of memory, an error before the claim loop)."""
        self.summaries, self.failures = [], []
        for job in self.jobs:
            try:
                self.summaries.append(job.result())
            except Exception as exc:  # submitit's FailedJobError / UncompletedJobError
                lines = str(exc).strip().splitlines() or [type(exc).__name__]
                self.failures.append(f"job {job.job_id}: {lines[-1]} (log: {job.paths.stderr})")
        codes = [exit_code(s) for s in self.summaries] + [1] * len(self.failures)
        return 130 if 130 in codes else max(codes, default=0)

    def launch(self, spec: WorkerSpec) -> int:
        self.submit(spec)
        return self.collect() if self.wait else 0


class SlurmWorker:
    """A SLURM array task's claim loop. Two ways a task is stopped, both leaving its run `interrupted` (never
    failed) and continued from its last epoch checkpoint by whichever worker claims it next:

    - SLURM's warning before the time limit, or a preemption, sends USR2: submitit calls `checkpoint`
      (which sets the runner's `stopping`), requeues the task and exits through SystemExit;
    - a plain SIGTERM (`scontrol requeue`, `scancel`, a preemption without warning): the task exits through
      SystemExit too, leaving no result behind, so a launcher waiting on it (`--wait`) waits for the
      requeued task, or reports a cancelled one."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec, self.runner = spec, None

    def __getstate__(self) -> dict:
        return {"spec": self.spec, "runner": None}

    def __call__(self, index: int) -> dict:
        import submitit

        env = submitit.JobEnvironment()
        self.runner = runner_for(self.spec, f"slurm {env.job_id} on {env.hostname}")
        previous = stop_on_signals(self.runner, "stopped by SLURM (scancel, requeue, or preemption)")
        try:
            summary = self.runner.run(self.spec.run_ids)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if summary.stopped:  # no result: the launcher waits for the requeued task (or sees it cancelled)
            raise SystemExit(f"[{self.runner.worker.label}] {summary.stopped}")
        return dataclasses.asdict(summary)

    def checkpoint(self, index: int):
        import submitit

        if self.runner is not None:
            self.runner.stop_reason = "SLURM preempted the job or its time ran out: requeued"
            self.runner.stopping.set()
        return submitit.helpers.DelayedSubmission(SlurmWorker(self.spec), index)


def main() -> None:
    """`python -m rftbench.execution.executors SPEC_JSON LABEL`: one local worker (LocalExecutor runs it)."""
    spec, label = WorkerSpec.from_json(sys.argv[1]), sys.argv[2]
    started = time.monotonic()
    summary = work(spec, label)
    print(
        f"[{label}] done in {time.monotonic() - started:.0f} s: {len(summary['completed'])} completed, "
        f"{len(summary['failed'])} failed, {len(summary['lost'])} lost",
        flush=True,
    )
    sys.exit(exit_code(summary))


if __name__ == "__main__":
    main()
