"""The three mirrors behind `--track` (rftbench.execution.tracking, which names what they log and keeps their
failures from the run): TensorBoard event files, an MLflow tracking store, a W&B run. Each has `open`,
`scalars` (one step's values), `finals` (values at the run's last step), `close` and `abandon`, and
imports its library in `open`.

W&B runs offline (files under the runs folder; `wandb sync` uploads them) unless W&B is configured to go
online: WANDB_MODE set, or an API key in WANDB_API_KEY or in ~/.netrc (`wandb login`). A worker never
waits at W&B's login prompt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import netrc
import os
import re
import tempfile
import time
from pathlib import Path

from filelock import FileLock

from rftbench.core.files import atomic_write

EPOCH_PROBE = "epoch/train_loss"  # never None: its MLflow history says which epochs are there
MLFLOW_STATUS = {"completed": "FINISHED", "failed": "FAILED", "interrupted": "KILLED", "pruned": "KILLED"}


def metric_name(name: str) -> str:
    """A name every sink accepts: MLflow allows letters, digits, `_ . / -` and spaces."""
    return re.sub(r"[^\w./\- ]", "_", name)


def _flat(values: dict, prefix: str) -> dict[str, str]:
    out = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value if isinstance(value, str) else json.dumps(value, default=str)
    return out


def _markdown(value: dict) -> str:
    """JSON as a Markdown code block: TensorBoard's text plugin renders Markdown."""
    return "\n".join("    " + line for line in json.dumps(value, indent=2, default=str).splitlines())


class TensorBoardSink:
    def __init__(self, where: str) -> None:
        self.folder = Path(where)
        self.writer = None

    def open(self, run_id: str, config: dict, provenance: dict, tags: dict, replay: bool) -> None:
        from torch.utils.tensorboard import SummaryWriter

        log_dir = self.folder / run_id
        fresh = not any(log_dir.glob("events.out.tfevents.*"))
        self.seen = set() if replay or fresh else _tensorboard_steps(log_dir)
        self.writer = SummaryWriter(str(log_dir), purge_step=0 if replay else None)
        if replay or fresh:
            for name, value in (("config", config), ("provenance", provenance), ("tags", tags)):
                self.writer.add_text(name, _markdown(value), 0)

    def scalars(self, step: int, values: dict[str, float], when: float | None = None) -> None:
        for tag, value in values.items():
            if (tag, step) not in self.seen:
                self.writer.add_scalar(tag, value, step, walltime=when)
                self.seen.add((tag, step))
        self.writer.flush()  # once per epoch: live curves, and a killed run's epochs on disk

    finals = scalars

    def close(self, status: str) -> None:
        self.abandon()

    def abandon(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _tensorboard_steps(log_dir: Path) -> set[tuple[str, int]]:
    """The (tag, step) pairs a run's folder holds as TensorBoard shows them (purged events left out)."""
    from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator

    logging.getLogger("tensorboard").setLevel(logging.ERROR)  # "Detected out of order event.step": our purge
    events = EventAccumulator(str(log_dir), size_guidance={"tensors": 0}).Reload()
    return {(tag, e.step) for tag in events.Tags()["tensors"] for e in events.Tensors(tag)}


class MLflowSink:
    def __init__(self, where: str) -> None:
        self.uri = where
        self.client = None

    def open(self, run_id: str, config: dict, provenance: dict, tags: dict, replay: bool) -> None:
        from mlflow.entities import Param, RunTag
        from mlflow.tracking import MlflowClient
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_TAG_VAL_LENGTH

        for name in ("mlflow.store.db.utils", "alembic"):  # "Creating initial MLflow database tables..."
            logging.getLogger(name).setLevel(logging.WARNING)
        if (
            self.client is None
        ):  # MLflow creates (migrates) a store's tables on first use: one process at a time
            with FileLock(mlflow_lock(self.uri)):
                client = MlflowClient(self.uri)
                self.experiment = self._experiment(client)
            self.client = client
        query = f"tags.`rftbench.run_id` = '{run_id}'"
        found = self.client.search_runs([self.experiment], filter_string=query, max_results=1)
        run = found[0] if found else None
        if run is None:
            run = self.client.create_run(self.experiment, run_name=run_id, tags={"rftbench.run_id": run_id})
        self.id, params, self.latest = run.info.run_id, run.data.params, dict(run.data.metrics)
        if found and replay and run.info.status != "RUNNING":  # a resumed run trains again
            self.client.update_run(self.id, status="RUNNING")
        history = self.client.get_metric_history(self.id, EPOCH_PROBE) if found else []
        self.steps = {m.step for m in history}
        texts = {metric_name(k): v for k, v in _flat(config, "").items()}
        new = [Param(k, v[:MAX_PARAM_VAL_LENGTH]) for k, v in texts.items() if k not in params]
        labels = {**_flat(tags, ""), **_flat(provenance, "provenance.")}
        marks = [RunTag(metric_name(k), v[:MAX_TAG_VAL_LENGTH]) for k, v in labels.items()]
        for i in range(0, max(len(new), len(marks)), 100):  # MLflow's batch limit for params and tags
            self.client.log_batch(self.id, params=new[i : i + 100], tags=marks[i : i + 100])

    def _experiment(self, client) -> str:
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "rftbench")
        experiment = client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        artifacts = None  # a SQLite store's artifacts beside it, not in ./mlruns wherever the command ran
        if self.uri.startswith("sqlite:///"):
            artifacts = (
                Path(self.uri.removeprefix("sqlite:///")).resolve().parent.joinpath("mlartifacts").as_uri()
            )
        return client.create_experiment(name, artifact_location=artifacts)

    def _log(self, step: int, values: dict[str, float], when: float | None) -> None:
        from mlflow.entities import Metric

        stamp = int((when or time.time()) * 1000)
        metrics = [Metric(k, v, stamp, step) for k, v in values.items()]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(self.id, metrics=metrics[i : i + 1000])
        self.latest.update(values)

    def scalars(self, step: int, values: dict[str, float], when: float | None = None) -> None:
        if step not in self.steps:
            self._log(step, values, when)
            self.steps.add(step)

    def finals(self, step: int, values: dict[str, float]) -> None:
        self._log(step, {k: v for k, v in values.items() if self.latest.get(k) != v}, None)

    def close(self, status: str) -> None:
        self.client.set_tag(self.id, "status", status)
        if status in MLFLOW_STATUS:
            self.client.set_terminated(self.id, MLFLOW_STATUS[status])

    def abandon(self) -> None:
        pass  # nothing held open: every call above is a request of its own


class WandBSink:
    def __init__(self, where: str, runs_dir: Path) -> None:
        self.project, self.folder = where, Path(runs_dir)
        self.run = None

    def open(self, run_id: str, config: dict, provenance: dict, tags: dict, replay: bool) -> None:
        import wandb

        # Offline, every session is an offline-run folder of its own, which `wandb sync` uploads as the run
        # (not merged with the earlier ones): each gets the whole replay. Online, W&B refuses a step below
        # the run's last: the ledger (per project) skips what the run already holds.
        mode = wandb_mode()
        online = mode == "online"
        self.ledger = self.folder / "wandb" / "rftbench-steps" / self.project / run_id
        self.last = int(self.ledger.read_text()) if online and self.ledger.is_file() else -1
        self.folder.mkdir(parents=True, exist_ok=True)
        self.tags = tags
        settings = wandb.Settings(console="off", x_disable_stats=True, silent=True)  # a quiet mirror
        self.run = wandb.init(
            project=self.project, dir=str(self.folder), id=run_id, name=run_id, resume="allow",
            config={**config, "provenance": provenance}, tags=self._tags(tags), settings=settings,
            mode=mode,
        )  # fmt: skip

    @staticmethod
    def _tags(tags: dict) -> list[str]:
        return [f"{k}={v}"[:64] for k, v in tags.items() if v not in (None, "")]  # W&B: 64 characters

    def scalars(self, step: int, values: dict[str, float], when: float | None = None) -> None:
        if step > self.last:
            self.run.log(values, step=step)
            self.last = step
            atomic_write(self.ledger, str(step).encode())

    def finals(self, step: int, values: dict[str, float]) -> None:
        self.run.summary.update(values)

    def close(self, status: str) -> None:
        self.run.tags = tuple(self._tags({**self.tags, "status": status}))
        run, self.run = self.run, None  # finished: nothing for `abandon` to finish
        run.finish(exit_code=1 if status == "failed" else 0)

    def abandon(self) -> None:
        if self.run is not None:
            self.run.finish(exit_code=1)


def wandb_mode() -> str:
    """W&B's mode: WANDB_MODE where set, else online with an API key (WANDB_API_KEY, or ~/.netrc, which
    `wandb login` writes), else offline."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    try:
        key = os.environ.get("WANDB_API_KEY") or any("wandb" in host for host in netrc.netrc().hosts)
    except (OSError, netrc.NetrcParseError):
        key = False
    return "online" if key else "offline"


def mlflow_lock(uri: str) -> str:
    """The lock that serialises creating an MLflow store and its experiment: beside a SQLite store (workers
    on any node that sees it), else in this machine's temporary folder (its workers)."""
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return f"{path}.lock"
    digest = hashlib.sha256(uri.encode()).hexdigest()[:16]
    return str(Path(tempfile.gettempdir()) / f"rftbench-mlflow-{digest}.lock")
