"""Mirrors of the results database in TensorBoard, MLflow and Weights & Biases (`--track`, `rftbench export`).

    tracker = Tracker(parse_track(["tensorboard", "mlflow=sqlite:///mlruns.db"]), Path("runs"))
    tracker.start(run_id, config, provenance, tags, replay=True); tracker.epoch(row); tracker.end("completed")
    export(store, TrackSpec("wandb", "my-project"), Path("runs"))      # every run of a database, again

The database is the truth: a sink only mirrors what it holds, never decides anything, and its failure never
fails a run. The first exception of a sink is one warning line through `warn`; that sink then sits out the
rest of the run. Each library is imported when its sink opens, so `--help` and `report` never load them.

Every sink gets the same names (MLflow's allowed characters; a run is named by its run id):
- `epoch/<column>` at step = the 0-based epoch: every numeric column of the stored epoch row (`eps`, `lr`,
  `train_loss`, `train_acc`, `val_loss`, `val_acc`, `val_adv_loss`, `val_adv_acc`, `val_eadv`,
  `epoch_seconds`, `images_per_second`); a None is left out.
- `eval/<weights>/<attack>-<steps>.<protocol>.<precision>[.L2][.rs<seed>|.seed<seed>]/<budget>/<metric>`
  at step = the run's epochs: one evaluation row, its budget with "/" as "_" (`4_255`), metric `clean`,
  `adv` or `eadv` (None: left out). E.g. `eval/last/apgd-ce-10.paper.fp32/4_255/adv`.
- `adaptation/start_epoch/<threshold>` at the same step, e.g. `adaptation/start_epoch/0.05`.
TensorBoard: scalars, the config, provenance and tags as text at step 0; one folder per run. MLflow: the
metrics; one param per config field; the tags, `rftbench.run_id` and `provenance.<key>` as tags. W&B:
epochs as history; evaluations and adaptation in the run's summary; config with `provenance` inside.

No step arrives twice at a destination, however often a run is resumed or exported: TensorBoard's
`purge_step=0` makes readers drop an earlier session's events when the caller replays everything
(`replay=True`: every epoch from 0, its evaluations and adaptation); an evaluation-only session
(`replay=False`) skips the (tag, step) pairs the run's folder already holds. MLflow continues the run tagged
`rftbench.run_id`, skipping epochs in its history and values it already holds. W&B (which refuses a step
below its last) resumes the run of that id and keeps the last epoch it mirrored in a ledger file.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime
from numbers import Real
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rftbench.errors import RftbenchError
from rftbench.execution import sinks
from rftbench.execution.sinks import metric_name

if TYPE_CHECKING:
    from rftbench.results.schema import Run
    from rftbench.results.store import Store

TRACKERS = ("tensorboard", "mlflow", "wandb")  # each also the name of its package and module
NOT_METRICS = {"id", "epoch"}  # numeric columns of an epoch row that are no measurement
Warn = Callable[[str], None]


class TrackingError(RftbenchError, ValueError):
    """A --track or export destination that cannot be used, in one line."""


@dataclass(frozen=True)
class TrackSpec:
    name: str  # one of TRACKERS
    where: str | None = None  # TB: a folder; MLflow: a tracking URI or a folder; W&B: the project


def parse_track(values: Sequence[str]) -> tuple[TrackSpec, ...]:
    """`NAME[=WHERE]` values as specs, in order, each once; an unknown name or a missing library is one
    line (the library is looked for, never imported)."""
    specs = []
    for value in values:
        name, _, where = value.partition("=")
        name = name.strip().lower()
        if name not in TRACKERS:
            choices = ", ".join(TRACKERS)
            raise TrackingError(f"--track {value}: unknown tracker {name!r}; choose {choices} (NAME[=WHERE])")
        if importlib.util.find_spec(name) is None:
            raise TrackingError(f"--track {name} needs the {name} package: pip install 'rftbench[{name}]'")
        specs.append(TrackSpec(name, where.strip() or None))
    return tuple(dict.fromkeys(specs))


def is_uri(where: str) -> bool:
    """An MLflow tracking URI (`sqlite:///x.db`, `http://host:5000`, `databricks`, `file:/abs`), not a
    folder for `sqlite:///FOLDER/mlflow.db`."""
    return where == "databricks" or re.match(r"[A-Za-z][A-Za-z0-9+.-]*:", where) is not None


def destination(spec: TrackSpec, runs_dir: Path) -> str:
    """Where a spec mirrors to: TensorBoard's folder, MLflow's tracking URI, W&B's project."""
    if spec.name == "tensorboard":
        return str(Path(spec.where) if spec.where else Path(runs_dir) / "tensorboard")
    if spec.name == "mlflow":
        if spec.where and is_uri(spec.where):
            return spec.where
        if spec.where is None and os.environ.get("MLFLOW_TRACKING_URI"):
            return os.environ["MLFLOW_TRACKING_URI"]
        return f"sqlite:///{(Path(spec.where or runs_dir)).resolve() / 'mlflow.db'}"
    return spec.where or "rftbench"


def stderr_warn(line: str) -> None:
    print(line, file=sys.stderr)


def evaluation_scalars(row: Any) -> dict[str, float]:
    """One evaluation row's numbers under their names (module docstring)."""
    how = f"{row.attack}-{row.steps}.{row.protocol}.{row.precision}"
    how += ".L2" if getattr(row, "norm", "Linf") != "Linf" else ""
    seed = getattr(row, "seed", 0)
    how += f".rs{seed}" if getattr(row, "random_start", False) else f".seed{seed}" if seed else ""
    prefix = f"eval/{getattr(row, 'weights', 'last')}/{how}/{str(row.budget).replace('/', '_')}"
    values = {"clean": row.clean, "adv": row.adv, "eadv": row.eadv}
    return {metric_name(f"{prefix}/{k}"): float(v) for k, v in values.items() if v is not None}


def _number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _sink(spec: TrackSpec, runs_dir: Path) -> sinks.TensorBoardSink | sinks.MLflowSink | sinks.WandBSink:
    where = destination(spec, runs_dir)
    if spec.name == "tensorboard":
        return sinks.TensorBoardSink(where)
    return sinks.MLflowSink(where) if spec.name == "mlflow" else sinks.WandBSink(where, runs_dir)


class Tracker:
    """One sink per spec, each mirroring the run between `start` and `end`; a sink that raises is one line
    through `warn`, then sits out every later run of this tracker too (`failures` holds those lines'
    reasons): a server that is down would otherwise stall each run on its retries; `rftbench export`
    mirrors the runs it missed."""

    def __init__(self, specs: Iterable[TrackSpec], runs_dir: Path, warn: Warn = stderr_warn) -> None:
        self.specs = tuple(specs)
        self.warn = warn
        self._sinks = [_sink(spec, Path(runs_dir)) for spec in self.specs]
        self._alive = [False] * len(self._sinks)
        self._failed = [False] * len(self._sinks)
        self._final_step = 0
        self.failures: list[str] = []

    def _each(self, method: str, *args: Any) -> None:
        for i, sink in enumerate(self._sinks):
            if not self._alive[i]:
                continue
            try:
                getattr(sink, method)(*args)
            except Exception as exc:  # a mirror's failure is never the run's
                self._alive[i], self._failed[i] = False, True
                lines = str(exc).strip().splitlines()
                reason = f"{type(exc).__name__}: {lines[0][:300]}" if lines else type(exc).__name__
                self.failures.append(f"{self.specs[i].name}: {reason}")
                self.warn(f"warning: {self.specs[i].name}: {reason}; the runs go on without it")
                with suppress(Exception):
                    sink.abandon()

    def start(self, run_id: str, config: dict, provenance: dict, tags: dict[str, str], replay: bool) -> None:
        """Open (or continue) each sink's run named `run_id`. `replay`: every epoch follows from epoch 0
        (a training session or an export); else only evaluations (`rftbench evaluate`)."""
        for sink, alive in zip(self._sinks, self._alive):  # a run its caller never ended
            if alive:
                with suppress(Exception):
                    sink.abandon()
        self._alive = [not failed for failed in self._failed]
        self._final_step = int(config.get("epochs", 0) or 0)
        self._each("open", run_id, dict(config), dict(provenance), dict(tags), replay)

    def epoch(self, row: dict) -> None:
        """One stored per-epoch row (EpochMetric's columns): its numbers at step = its epoch."""
        step = int(row["epoch"])
        self._final_step = max(self._final_step, step + 1)
        values = {
            metric_name(f"epoch/{k}"): float(v) for k, v in row.items() if k not in NOT_METRICS and _number(v)
        }
        when = row.get("recorded_at")  # an exported epoch keeps the time it was measured
        self._each("scalars", step, values, when.timestamp() if isinstance(when, datetime) else None)

    def evaluations(self, rows: Iterable[Any]) -> None:
        """Evaluation rows (`results.schema.Evaluation`'s attributes) at step = the run's epochs."""
        self._finals({k: v for row in rows for k, v in evaluation_scalars(row).items()})

    def adaptation(self, rows: Iterable[Any]) -> None:
        """Adaptation rows (`results.schema.Adaptation`'s attributes) at the same step."""
        self._finals(
            {metric_name(f"adaptation/start_epoch/{r.threshold:g}"): float(r.start_epoch) for r in rows}
        )

    def _finals(self, values: dict[str, float]) -> None:
        if values:
            self._each("finals", self._final_step, values)

    def end(self, status: str) -> None:
        """Flush and close each sink's run; MLflow and W&B record `status` (the run's stored state)."""
        self._each("close", status)
        self._alive = [False] * len(self._sinks)


def run_tags(run: Run, grids: Sequence[str]) -> dict[str, str]:
    """The tags every sink gets for a stored run."""
    return {"grid": ",".join(grids), "setting": run.setting, "backbone": run.backbone,
            "dataset": run.dataset, "eps": run.eps, "status": run.status}  # fmt: skip


def mirror_run(tracker: Tracker, store: Store, run_id: str) -> None:
    """Send everything the database holds for one run through `tracker`, from epoch 0 (replay)."""
    run = store.run(run_id)
    if run is None:
        raise TrackingError(f"no run {run_id!r} in this database; `rftbench status` lists them")
    tags = run_tags(run, store.grids_of(run_id))
    tracker.start(run_id, json.loads(run.config), dict(run.provenance or {}), tags, replay=True)
    for row in store.epochs(run_id):
        tracker.epoch(row.model_dump())
    tracker.evaluations(store.evaluations(run_id))
    tracker.adaptation(store.adaptation(run_id))
    tracker.end(run.status)


def export(
    store: Store, spec: TrackSpec, runs_dir: Path, warn: Warn = stderr_warn, grid: str | None = None
) -> int:
    """Mirror every run (of `grid`, or all) with at least one epoch to one destination; the number of runs
    mirrored. Again adds no step twice. A destination that fails is its warning through `warn`, then a
    TrackingError: the runs after it would only fail the same way."""
    tracker = Tracker([spec], runs_dir, warn)
    runs = [run.id for run in store.runs(grid=grid) if store.epochs(run.id)]
    for done, run_id in enumerate(runs):
        mirror_run(tracker, store, run_id)
        if tracker.failures:
            raise TrackingError(
                f"export to {spec.name} stopped after {done} of {len(runs)} runs: {tracker.failures[0]}"
            )
    return len(runs)
