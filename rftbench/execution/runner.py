"""Runs stored jobs one after another: claim, build, train, record. `run-grid`, `run` and `resume` all
come here (STYLE.md 6: a thin CLI over a swappable runner; the runner never knows who called it).

    runner = Runner(store, RuntimeOptions(device="cuda"), runs_dir="runs")
    summary = runner.run(run_ids)   # None: every pending or interrupted run in the database

Each run holds a lease in the store, renewed by a heartbeat thread, so several runners can share one
database. Per epoch the trainer's callback upserts the metrics row, then the trainer writes the
checkpoint (CONVENTIONS.md write order); a crash marks the run failed with one line and the next run
starts; Ctrl-C (or SIGTERM) marks it interrupted, to be continued by `rftbench resume`: once a stop is
requested (`Runner.stopping`), whatever the run raises on its way out (a loader worker that died of the
same signal, say) is an interruption, never a failure.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import threading
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rftbench.core.config import RunConfig, RuntimeOptions
from rftbench.core.metrics import EvalProtocol
from rftbench.data.build import build_dataset
from rftbench.data.checks import check_data
from rftbench.data.loading import ImageTensorDataset, make_loader, train_transform
from rftbench.data.registry import data_root
from rftbench.data.splits import stratified_subsample
from rftbench.engine.evaluation import evaluation_key
from rftbench.engine.trainer import train
from rftbench.execution.provenance import provenance
from rftbench.execution.tracking import Tracker, TrackingError, parse_track, run_tags
from rftbench.models.build import build_backbone, check_weights
from rftbench.models.finetune import add_lora, trainable_count
from rftbench.models.registry import get_backbone_spec
from rftbench.results.batches import EvalLog
from rftbench.results.queue import Heartbeat, JobQueue, LeaseLost, Worker
from rftbench.results.schema import Run
from rftbench.results.store import Store

LEASE_SECONDS = 120.0


class Pruned(Exception):
    """Raised from the epoch callback when the run's study prunes it (rftbench.execution.tuning)."""


def resolve_paths(config: RunConfig, stored: dict, roots: dict, weights: dict) -> dict:
    """Where this run's data and weights are: a flag, else the environment variable, else the
    experiments file's path stored with the run, else (None) the registry's default."""
    weights_env = get_backbone_spec(config.backbone).env_var
    return {
        "data_root": data_root(config.dataset, roots.get(config.dataset), stored.get("data_root")),
        "split_file": stored.get("split_file"),
        "weights": weights.get(config.backbone)
        or (None if os.environ.get(weights_env) else stored.get("weights")),
    }


def preflight(jobs: list[tuple[RunConfig, dict]]) -> None:
    """Before any training: every dataset root readable and every pretrained backbone's weights local (or
    fetched now). Raises DataNotFound / WeightsUnavailable with one line naming the fix."""
    for dataset, root, split_file, splits in dict.fromkeys(
        (c.dataset, p["data_root"], p["split_file"], c.splits) for c, p in jobs
    ):
        check_data(dataset, root, split_file, splits)
    for backbone, file in dict.fromkeys((c.backbone, p["weights"]) for c, p in jobs if c.pretrained):
        check_weights([backbone], {backbone: file} if file else None)


def build_data(config: RunConfig, paths: dict, split: str, transform) -> ImageTensorDataset:
    data = build_dataset(
        config.dataset,
        paths["data_root"],
        split,
        transform=transform,
        resolution=config.resolution,
        split_file=paths["split_file"],
        seed=config.split_seed,
        splits=config.splits,
    )
    subset = {"train": config.train_subset, "val": config.val_subset, "test": config.test_subset}.get(
        split, 0
    )
    if subset:
        index = torch.tensor(stratified_subsample(data.labels.tolist(), subset, config.split_seed))
        data = ImageTensorDataset(data.images[index], data.labels[index], transform, data.classes)
    return data


def build_model(config: RunConfig, paths: dict, num_classes: int, pretrained: bool = True) -> torch.nn.Module:
    """The run's model: its backbone, a fresh head and (finetune = "lora") its adapters, from its seed."""
    torch.manual_seed(config.seed)  # the new head's (and LoRA's A) init is part of the run
    weights, pretrained = paths["weights"], pretrained and config.pretrained
    model = build_backbone(config.backbone, num_classes, weights=weights, pretrained=pretrained,
                           size=config.resolution)  # fmt: skip
    return add_lora(model, config)


def one_line(exc: BaseException) -> str:
    """The error line stored with a failed run: long enough for a deep path and the fix that follows it."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:1000]


class Progress:
    """What a runner reports; the CLI's rich display implements it, tests may record it."""

    def start_run(self, run: Run, config: RunConfig, index: int, total: int) -> None: ...
    def epoch(self, run: Run, config: RunConfig, metrics: dict) -> None: ...
    def end_run(self, run: Run, status: str, detail: str = "") -> None: ...


@dataclass
class Summary:
    completed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # run id -> its error line
    interrupted: str | None = None  # the run Ctrl-C stopped
    stopped: str | None = None  # why a signal stopped this worker (with or without a run in hand)
    lost: list[str] = field(default_factory=list)
    pruned: list[str] = field(default_factory=list)  # trials their study stopped


@dataclass
class Runner:
    store: Store | None  # set before `run`; None while flags and preflight are checked
    runtime: RuntimeOptions = RuntimeOptions()
    runs_dir: Path = Path("runs")
    roots: dict = field(default_factory=dict)  # dataset -> root, from flags
    weights: dict = field(default_factory=dict)  # backbone -> file, from flags
    lease_seconds: float = LEASE_SECONDS
    prune: bool = False  # delete a finished run's last.pt (final.pt, the final weights, stays)
    # Sinks that mirror each run as the database records it (NAME or NAME=WHERE; execution.tracking): they
    # never decide anything, and a sink's failure is one warning, never the run's
    track: tuple[str, ...] = ()
    progress: Progress = field(default_factory=Progress)
    stopping: threading.Event = field(default_factory=threading.Event)  # set by whoever stops us (Ctrl-C)
    stop_reason: str = "stopped by the user (Ctrl-C / SIGTERM)"  # stored with the interrupted run
    worker: Worker = field(default_factory=Worker)  # who claims: `status` shows its label
    # Wait, once nothing is left to claim, for runs other workers hold, and take over those whose worker
    # died (its lease expires): what an executor's workers do; `run-grid` alone returns at once.
    wait_for_others: bool = False
    # A study's trials (rftbench.execution.tuning.Tuner): asked when nothing is left to claim, pruned
    # after an epoch, told to Optuna when they end. None: plain runs.
    tuner: object = None

    @functools.cached_property
    def tracker(self) -> Tracker:
        """This runner's --track sinks, one for all its runs (a sink that fails sits the rest out); a worker
        without a sink's library goes on without it, with one warning line."""
        try:
            return Tracker(parse_track(self.track), self.runs_dir)
        except TrackingError as exc:
            print(f"warning: {exc}; the runs go on without it", file=sys.stderr)
            return Tracker((), self.runs_dir)

    @property
    def queue(self) -> JobQueue:
        return JobQueue(self.store)

    def loader(self, data, config: RunConfig, shuffle: bool):
        return make_loader(
            data,
            config.batch_size,
            shuffle=shuffle,
            num_workers=self.runtime.num_workers,
            device=self.runtime.device,
        )

    def paths(self, run: Run) -> dict:
        return resolve_paths(RunConfig.from_json(run.config), run.paths or {}, self.roots, self.weights)

    def preflight(self, items: list[tuple[RunConfig, dict]]) -> None:
        """`preflight` for (config, stored paths) pairs, with this runner's flags applied."""
        preflight(
            [(config, resolve_paths(config, stored, self.roots, self.weights)) for config, stored in items]
        )

    def scope(self, run_ids: list[str] | None) -> list[str] | None:
        """The runs this runner may claim: `run_ids`, or the trials of the studies its tuner asks for."""
        return self.tuner.run_ids() if self.tuner is not None and self.tuner.asks else run_ids

    def work_left(self, run_ids: list[str] | None) -> int:
        """Runs to claim now, and trials the tuner may still ask."""
        asks = self.tuner.trials_left() if self.tuner is not None else 0
        return len(self.queue.claimable(self.scope(run_ids))) + asks

    def run(self, run_ids: list[str] | None = None) -> Summary:
        """Claim and execute runs (of `run_ids`, in order; None: all) until none is left to claim; with a
        tuner, ask it for a new trial whenever none is."""
        summary, done, queue = Summary(), 0, self.queue
        try:
            while not self.stopping.is_set():
                queue.reap()
                candidates = queue.claimable(self.scope(run_ids))
                if not candidates and self.tuner is not None and (asked := self.tuner.ask()) is not None:
                    candidates = [asked]
                if not candidates:
                    if not (self.wait_for_others and queue.held_by_others(self.scope(run_ids))):
                        break
                    self.stopping.wait(min(5.0, self.lease_seconds / 4))  # their lease expires, or they end
                    continue
                run = queue.claim(self.worker, candidates, self.lease_seconds)
                if run is None:  # another worker took them first; look again
                    continue
                status = self.execute(run, done, len(candidates) + done, summary)
                done += status != "lost"
                if summary.interrupted:
                    break
        except KeyboardInterrupt:  # a stop signal between two runs: none to release
            if not self.stopping.is_set():
                raise
        if self.stopping.is_set():
            summary.stopped = self.stop_reason
        return summary

    def execute(self, run: Run, index: int, total: int, summary: Summary) -> str:
        """Run one claimed run (`run_claimed`), then end its --track sinks' runs with how it ended."""
        status = "interrupted"  # what a stop on its way out leaves
        try:
            status = self.run_claimed(run, index, total, summary)
            return status
        finally:
            self.tracker.end(status)

    def run_claimed(self, run: Run, index: int, total: int, summary: Summary) -> str:
        config = RunConfig.from_json(run.config)
        self.progress.start_run(run, config, index, total)
        queue = self.queue
        heartbeat = Heartbeat(queue, run.id, self.worker, self.lease_seconds)
        heartbeat.start()
        run_dir = self.runs_dir / run.id
        tracker = self.tracker

        def record(metrics: dict) -> None:
            if heartbeat.lost:
                raise LeaseLost(f"run {run.id} was taken over by another worker (its lease had expired)")
            queue.record_epoch(run.id, self.worker, metrics)  # owner-checked: else LeaseLost
            tracker.epoch(metrics)  # what the database now holds (a resumed run replays its history first)
            self.progress.epoch(run, config, metrics)
            if self.tuner is not None and self.tuner.should_prune(run.id, config, metrics):
                raise Pruned(f"pruned after epoch {metrics['epoch']} (val {metrics['val_acc']:.2%})")

        try:
            info = provenance(self.runtime)
            self.store.set_provenance(run.id, info)
            paths = self.paths(run)
            # uint8 batches travel to the device, which converts them (and augments them, for "device")
            augment = train_transform() if config.augmentation == "loader" else None
            train_set = build_data(config, paths, "train", augment)
            val_set, test_set = (build_data(config, paths, s, None) for s in ("val", "test"))
            model = build_model(config, paths, len(train_set.classes))
            info["trainable_params"] = trainable_count(model, config)
            self.store.set_provenance(run.id, info)  # a running or failed run's count shows too
            train_loader, val_loader, test_loader = (
                self.loader(data, config, shuffle=data is train_set)
                for data in (train_set, val_set, test_set)
            )
            protocol = final_protocol(run, config)
            if self.track:  # a run continued under a sink continues the sink's run, from epoch 0's replay
                tags = run_tags(run, self.store.grids_of(run.id))
                tracker.start(run.id, json.loads(run.config), info, tags, replay=True)

            def final_log(trained: torch.nn.Module) -> EvalLog:  # its final evaluation resumes per batch
                return EvalLog(self.store, run.id, evaluation_key(protocol, config.eval_budgets, trained))

            result = train(
                config,
                model,
                train_loader,
                val_loader,
                test_loader,
                callback=record,
                run_dir=run_dir,
                runtime=self.runtime,
                evaluation=protocol,
                evaluation_log=final_log,
            )
            if "compile" in result:  # graphs and compile seconds: how it ran, not what it measured
                info = info | {"compile": result.pop("compile")}
            queue.complete(run.id, self.worker, result, provenance=info)  # owner-checked: else LeaseLost
            if self.track:
                tracker.evaluations(self.store.evaluations(run.id))
                tracker.adaptation(self.store.adaptation(run.id))
            self.told(run.id)
            if self.prune:
                (run_dir / "last.pt").unlink(missing_ok=True)
            summary.completed.append(run.id)
            self.progress.end_run(run, "completed", f"clean {result['clean']:.2%}")
            return "completed"
        except Pruned as exc:  # its study stopped it: neither a failure nor a run to continue
            if not queue.release(run.id, self.worker, "pruned", error=str(exc)):
                summary.lost.append(run.id)  # another worker took it over meanwhile: its call now
                return "lost"
            self.told(run.id)
            if self.prune:
                (run_dir / "last.pt").unlink(missing_ok=True)
            summary.pruned.append(run.id)
            self.progress.end_run(run, "pruned", str(exc))
            return "pruned"
        except LeaseLost as exc:
            summary.lost.append(run.id)
            self.progress.end_run(run, "lost", str(exc))
            return "lost"
        except BaseException as exc:
            if isinstance(exc, Exception) and not self.stopping.is_set():
                return self.fail(run, exc, run_dir, summary)
            # Ctrl-C, SIGTERM, a scheduler's preemption (submitit exits through SystemExit): continue later
            queue.release(run.id, self.worker, "interrupted", error=self.stop_reason)
            summary.interrupted = run.id
            self.progress.end_run(run, "interrupted")
            if not isinstance(exc, KeyboardInterrupt | Exception):
                raise
            return "interrupted"
        finally:
            heartbeat.stop.set()

    def told(self, run_id: str) -> None:
        """Tell the tuner a run ended (if it is a trial, Optuna learns how)."""
        if self.tuner is not None:
            self.tuner.finished(run_id)

    def fail(self, run: Run, exc: Exception, run_dir: Path, summary: Summary) -> str:
        """One job's crash must not stop the grid: the run is failed with one line, the traceback kept."""
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "error.log").write_text(traceback.format_exc())
        line = one_line(exc)
        self.queue.release(run.id, self.worker, "failed", error=line)
        self.told(run.id)
        summary.failed[run.id] = line
        self.progress.end_run(run, "failed", line)
        return "failed"


def final_protocol(run: Run, config: RunConfig) -> EvalProtocol:
    """How a run's final evaluation is measured: its grid's protocol and precision, its own attack steps."""
    return EvalProtocol(
        protocol=run.eval_protocol,
        precision=run.eval_precision,
        steps=config.eval_attack_steps,
        norm=config.norm,
    )
