"""The SLURM executor: a submitit job array of claim-loop workers (rftbench.execution.executors).

    executor = SlurmExecutor(Path("runs/slurm"), SlurmOptions(partition="gpu", jobs=4), wait=True)
    outcome = executor.launch(spec, runner, say)

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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rftbench.core.config import SlurmOptions
from rftbench.execution.options import LaunchError, LaunchOptions
from rftbench.execution.workers import Outcome, WorkerSpec, exit_code, run_until_done, runner_for

SQLITE_NOTE = (
    "[yellow]note:[/] a SQLite file is safe for SLURM workers on one node with local disk only; "
    "across nodes or on a network filesystem use postgresql://… (README: Scale out)"
)


@dataclass
class SlurmExecutor:
    """A submitit job array of `options.jobs` claim-loop workers (default: as many as runs to do, at most
    `array_parallelism`), each with `gpus_per_task` GPUs; with `wait`, `launch` blocks until they end."""

    folder: Path | None = None  # submitit's logs and pickles; None: RUNS_DIR/slurm
    options: SlurmOptions = SlurmOptions()
    wait: bool = False

    @classmethod
    def from_launch(cls, launch: LaunchOptions, slurm_defaults: SlurmOptions | None = None) -> SlurmExecutor:
        options = (slurm_defaults or SlurmOptions()).model_copy(update=launch.slurm)
        return cls(launch.slurm_folder, options, wait=launch.wait)

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

    def launch(self, spec: WorkerSpec, runner, say: Callable[[str], None]) -> Outcome:
        from rftbench.results.connect import sqlite_path

        if sqlite_path(spec.db) is not None:
            say(SQLITE_NOTE)
        todo = runner.work_left(spec.run_ids)
        if todo == 0:
            return Outcome(lines=["no run left to claim: nothing submitted (`rftbench status`)"])
        jobs = self.options.jobs or min(todo, self.options.array_parallelism)
        self.options = self.options.model_copy(update={"jobs": jobs})
        self.folder = (self.folder or Path(spec.runs_dir) / "slurm").resolve()
        try:
            submitted = self.submit(spec)
        except Exception as exc:  # no sbatch, a refused submission: one line
            said = "; ".join(line.removeprefix("sbatch: error: ") for line in str(exc).strip().splitlines())
            raise LaunchError(
                f"SLURM submission failed ({said or type(exc).__name__}); check the --slurm-* flags"
            ) from None
        ids = sorted({job.job_id.split("_")[0] for job in submitted})
        say(f"submitted {len(submitted)} SLURM worker(s) as job {', '.join(ids)}; logs in {self.folder}")
        if not self.wait:
            return Outcome(lines=["`rftbench status` shows which job holds each run; `squeue` the jobs"])
        say("waiting for the jobs (Ctrl-C stops waiting, not the jobs)")
        try:
            code = self.collect()
        except KeyboardInterrupt:
            stopped = f"stopped waiting; the jobs go on: `squeue -j {','.join(ids)}`, `rftbench status`"
            return Outcome(exit_code=130, lines=[stopped])
        lines = [f"[red]failed:[/] {failure}" for failure in self.failures]
        lines.append(f"SLURM workers ended: {'all done' if code == 0 else f'exit {code}'}")
        completed = [run_id for s in self.summaries for run_id in s["completed"]]
        failed = {k: v for s in self.summaries for k, v in s["failed"].items()}
        return Outcome(completed, failed, None, code, lines)


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
        reason = "stopped by SLURM (scancel, requeue, or preemption)"
        summary = run_until_done(self.runner, self.spec.run_ids, reason)
        if summary.stopped:  # no result: the launcher waits for the requeued task (or sees it cancelled)
            raise SystemExit(f"[{self.runner.worker.label}] {summary.stopped}")
        return dataclasses.asdict(summary)

    def checkpoint(self, index: int):
        import submitit

        if self.runner is not None:
            self.runner.stop_reason = "SLURM preempted the job or its time ran out: requeued"
            self.runner.stopping.set()
        return submitit.helpers.DelayedSubmission(SlurmWorker(self.spec), index)
