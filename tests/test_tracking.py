"""The tracking sinks (issue 30) mirror the results database: the smoke grid's real database exported twice
to TensorBoard, MLflow (SQLite) and W&B (offline), read back with each library's own reader, equals the
database, one value per step; a resumed run and an evaluation-only session add no step twice; a sink whose
destination fails is one warning line while the others get everything; `--track` errors are one line, and
nothing imports a tracking library before its sink opens."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import copy_db

from rftbench.execution.tracking import (
    TRACKERS,
    Tracker,
    TrackingError,
    TrackSpec,
    destination,
    export,
    mirror_run,
    parse_track,
)
from rftbench.results.store import Store

# every stored column the sinks mirror, as the module docstring names them
COLUMNS = ("eps", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "val_adv_loss", "val_adv_acc",
           "val_eadv", "epoch_seconds", "images_per_second")  # fmt: skip
WANDB_BLOCK = 32768  # the .wandb file is a LevelDB-style log: 7-byte header, records in 32 KiB blocks


def quiet_environment(mp: pytest.MonkeyPatch, home: Path) -> None:
    """W&B offline, silent, its caches in `home`; no MLflow URI from the caller's shell; no telemetry."""
    for name in ("WANDB_SILENT", "MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK"):
        mp.setenv(name, "true")
    mp.setenv("WANDB_MODE", "offline")
    for name in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        mp.setenv(name, str(home))
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "WANDB_PROJECT"):
        mp.delenv(name, raising=False)


@pytest.fixture(scope="module")
def exported(reference, tmp_path_factory):
    """The smoke grid's database (3 runs) exported twice to each sink; the folder holds db and runs/."""
    tmp = tmp_path_factory.mktemp("tracking")
    store = Store.open(str(copy_db(reference, tmp / "r.db")), create=False, write=False)
    warnings = []
    with pytest.MonkeyPatch.context() as mp:
        quiet_environment(mp, tmp / "wandb-home")
        for spec in parse_track(["tensorboard", "mlflow", "wandb=smoke"]):
            for _ in range(2):
                assert export(store, spec, tmp / "runs", warn=warnings.append) == 3
    assert warnings == []
    return store, tmp


def expected(store: Store, run_id: str, epochs: bool = True, finals: bool = True) -> dict:
    """{(name, step): value} of everything the database holds for one run, under the documented names."""
    run = store.run(run_id)
    values = {}
    if epochs:
        for row in store.epochs(run_id):
            for column in COLUMNS:
                if getattr(row, column) is not None:
                    values[f"epoch/{column}", row.epoch] = getattr(row, column)
    if finals:
        for e in store.evaluations(run_id):
            assert (e.norm, e.random_start, e.seed) == ("Linf", False, 0)  # the names below assume it
            how = f"{e.attack}-{e.steps}.{e.protocol}.{e.precision}"
            prefix = f"eval/{e.weights}/{how}/{e.budget.replace('/', '_')}"
            for metric in ("clean", "adv", "eadv"):
                if getattr(e, metric) is not None:
                    values[f"{prefix}/{metric}", run.epochs] = getattr(e, metric)
        for a in store.adaptation(run_id):
            values[f"adaptation/start_epoch/{a.threshold:g}", run.epochs] = a.start_epoch
    return values


def tensorboard_scalars(log_dir: Path) -> dict:
    """What TensorBoard's EventAccumulator reads, every event kept; a (tag, step) seen twice fails."""
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={SCALARS: 0}).Reload()
    pairs = [((tag, e.step), e.value) for tag in events.Tags()["scalars"] for e in events.Scalars(tag)]
    assert len(pairs) == len(dict(pairs)), "a step logged twice"
    return dict(pairs)


def as_float32(values: dict) -> dict:
    return {key: float(np.float32(value)) for key, value in values.items()}


def mlflow_metrics(client, run_id: str) -> dict:
    keys = client.get_run(run_id).data.metrics
    pairs = [((key, m.step), m.value) for key in keys for m in client.get_metric_history(run_id, key)]
    assert len(pairs) == len(dict(pairs)), "a step logged twice"
    return dict(pairs)


def wandb_records(path: Path):
    """The protobuf records of one offline `.wandb` file (what `wandb sync` uploads)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    position, chunks = 7, b""
    while position + 7 <= len(data):
        room = WANDB_BLOCK - position % WANDB_BLOCK
        _, length, kind = struct.unpack("<IHB", data[position : position + 7]) if room >= 7 else (0, 0, 0)
        if length == 0 and kind == 0:  # the block's padding
            position += room
            continue
        chunks += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # full, or the last piece of a record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunks)
            chunks = b""
            yield record


def name(item) -> str:
    """A W&B item's key: "epoch/lr" is stored nested, as ["epoch", "lr"]."""
    return item.key or "/".join(item.nested_key)


def wandb_sessions(folder: Path, run_id: str) -> list[Path]:
    """A run's offline sessions (W&B names their folders by the second, `-1` where one repeats), in order."""
    paths = folder.glob(f"wandb/offline-run-*-{run_id}*/run-{run_id}.wandb")
    return sorted(paths, key=lambda path: path.stat().st_mtime_ns)


def wandb_run(folder: Path, run_id: str, session: int = -1) -> tuple[dict, dict, dict]:
    """History {(key, step): value} of one offline session of a run (default: the last, what `wandb sync`
    leaves), its summary, its config. Offline, every training session or export holds the whole run."""
    history, summary, config = [], {}, {}
    for path in wandb_sessions(folder, run_id)[session:][:1]:
        for record in wandb_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "history":
                step = record.history.step.num
                items = record.history.item
                history += [
                    ((name(i), step), json.loads(i.value_json)) for i in items if not name(i).startswith("_")
                ]
            elif kind == "summary":
                summary.update({name(i): json.loads(i.value_json) for i in record.summary.update})
            elif kind == "run":
                config.update({name(i): json.loads(i.value_json) for i in record.run.config.update})
    assert len(history) == len(dict(history)), "a step logged twice"
    return dict(history), summary, config


def markdown_json(text: str) -> dict:
    return json.loads("\n".join(line.removeprefix("    ") for line in text.splitlines()))


@pytest.mark.slow
def test_tensorboard_holds_the_database_once(exported):
    from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator

    store, tmp = exported
    for run in store.runs():
        log_dir = tmp / "runs" / "tensorboard" / run.id
        assert tensorboard_scalars(log_dir) == as_float32(expected(store, run.id))
        texts = EventAccumulator(str(log_dir), size_guidance={"tensors": 0}).Reload()
        [config] = texts.Tensors("config/text_summary")  # one, though exported twice
        assert config.step == 0
        assert markdown_json(config.tensor_proto.string_val[0].decode()) == json.loads(run.config)


@pytest.mark.slow
def test_mlflow_holds_the_database_once(exported):
    from mlflow.tracking import MlflowClient

    store, tmp = exported
    client = MlflowClient(f"sqlite:///{tmp / 'runs' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("rftbench")
    mirrored = {r.data.tags["rftbench.run_id"]: r for r in client.search_runs([experiment.experiment_id])}
    assert sorted(mirrored) == sorted(run.id for run in store.runs())  # one MLflow run each, not two
    for run in store.runs():
        found = mirrored[run.id]
        assert mlflow_metrics(client, found.info.run_id) == expected(store, run.id)
        assert found.info.status == "FINISHED" and found.info.run_name == run.id
        config = json.loads(run.config)
        assert found.data.params == {k: v if isinstance(v, str) else json.dumps(v) for k, v in config.items()}
        tags = found.data.tags
        assert (tags["grid"], tags["setting"], tags["status"]) == ("smoke", run.setting, "completed")
        assert tags["provenance.torch"] == run.provenance["torch"]


@pytest.mark.slow
def test_wandb_offline_files_hold_the_database_once(exported):
    store, tmp = exported
    for run in store.runs():
        history, summary, config = wandb_run(tmp / "runs", run.id)
        assert history == expected(store, run.id, finals=False)
        finals = {name: value for (name, _), value in expected(store, run.id, epochs=False).items()}
        assert {k: summary[k] for k in finals} == finals
        assert config["provenance"] == run.provenance and config["setting"] == run.setting
        assert len(wandb_sessions(tmp / "runs", run.id)) == 2  # exported twice: two complete sessions
        assert wandb_run(tmp / "runs", run.id, session=0)[0] == history
    ledger = tmp / "runs" / "wandb" / "rftbench-steps" / "smoke"
    assert sorted(p.name for p in ledger.iterdir()) == sorted(run.id for run in store.runs())


@pytest.mark.slow
def test_a_resumed_run_and_an_evaluation_session_add_no_step_twice(exported, tmp_path, monkeypatch):
    """The runner's pattern: a session that stops after 2 epochs, a resumed one replaying them before the
    new epoch, then `evaluate` sending every evaluation again (replay=False)."""
    store, tmp = exported
    quiet_environment(monkeypatch, tmp_path / "wandb-home")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "resumed")  # the exported database's tables, a new run
    run = store.runs()[-1]
    rows = [row.model_dump() for row in store.epochs(run.id)]
    specs = [TrackSpec("tensorboard"), TrackSpec("mlflow", str(tmp / "runs")), TrackSpec("wandb", "resumed")]
    warnings = []
    tracker = Tracker(specs, tmp_path, warn=warnings.append)
    config, tags = json.loads(run.config), {"grid": "smoke", "status": "running"}
    tracker.start(run.id, config, run.provenance, tags, replay=True)
    for row in rows[:2] + rows[:2]:  # the same epoch twice in one session too
        tracker.epoch(row)
    tracker.end("interrupted")
    tracker.start(run.id, config, run.provenance, tags, replay=True)
    for row in rows:
        tracker.epoch(row)
    tracker.evaluations(store.evaluations(run.id))
    tracker.adaptation(store.adaptation(run.id))
    tracker.end("completed")
    tracker.start(run.id, config, run.provenance, tags, replay=False)
    tracker.evaluations(store.evaluations(run.id))
    tracker.end("completed")
    assert warnings == []
    assert tensorboard_scalars(tmp_path / "tensorboard" / run.id) == as_float32(expected(store, run.id))
    from mlflow.tracking import MlflowClient

    client = MlflowClient(destination(specs[1], tmp_path))
    [found] = client.search_runs([client.get_experiment_by_name("resumed").experiment_id])
    assert mlflow_metrics(client, found.info.run_id) == expected(store, run.id)
    first, resumed, evaluated = (wandb_run(tmp_path, run.id, session=k) for k in range(3))
    epochs = expected(store, run.id, finals=False)
    assert first[0] == {k: v for k, v in epochs.items() if k[1] < 2} and resumed[0] == epochs
    evals = {
        name: v for (name, _), v in expected(store, run.id, epochs=False).items() if name.startswith("eval/")
    }
    assert evaluated[0] == {} and {k: evaluated[1][k] for k in evals} == evals  # in its summary


@pytest.mark.slow
def test_a_failing_sink_is_one_warning_and_the_others_get_everything(exported, tmp_path, monkeypatch):
    store, _ = exported
    quiet_environment(monkeypatch, tmp_path / "wandb-home")
    (tmp_path / "a-file").write_text("not a folder")
    specs = parse_track(
        [f"tensorboard={tmp_path / 'a-file'}", f"mlflow=sqlite:///{tmp_path / 'a-file' / 'mlflow.db'}",
         f"tensorboard={tmp_path / 'good'}", "wandb=failing"]
    )  # fmt: skip
    lines = []
    run = store.runs()[0]
    mirror_run(Tracker(specs, tmp_path, warn=lines.append), store, run.id)
    assert len(lines) == 2, lines
    assert lines[0].startswith("warning: tensorboard: ") and lines[1].startswith("warning: mlflow: ")
    assert all(line.endswith("; the runs go on without it") and "\n" not in line for line in lines)
    assert tensorboard_scalars(tmp_path / "good" / run.id) == as_float32(expected(store, run.id))
    assert wandb_run(tmp_path, run.id)[0] == expected(store, run.id, finals=False)
    with pytest.raises(TrackingError, match=r"^export to mlflow stopped after 0 of 3 runs: mlflow: "):
        export(store, specs[1], tmp_path, warn=lines.append)
    assert len(lines) == 3


def test_track_values_and_their_errors(monkeypatch, tmp_path):
    assert parse_track(["tensorboard", "mlflow=runs/ml", "tensorboard", "wandb=proj"]) == (
        TrackSpec("tensorboard"), TrackSpec("mlflow", "runs/ml"), TrackSpec("wandb", "proj")
    )  # fmt: skip
    with pytest.raises(TrackingError) as error:
        parse_track(["tensorbored"])
    assert "\n" not in str(error.value) and all(name in str(error.value) for name in TRACKERS)
    monkeypatch.setitem(sys.modules, "wandb", None)  # Python's own way to make a package unimportable
    with pytest.raises(
        TrackingError, match=r"^--track wandb needs the wandb package: pip install 'rftbench\[wandb\]'$"
    ):
        parse_track(["tensorboard", "wandb"])
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert destination(TrackSpec("mlflow"), tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert destination(TrackSpec("mlflow", "http://host:5000"), tmp_path) == "http://host:5000"
    assert destination(TrackSpec("tensorboard"), tmp_path) == str(tmp_path / "tensorboard")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://elsewhere")
    assert destination(TrackSpec("mlflow"), tmp_path) == "http://elsewhere"


def test_no_tracking_library_loads_before_a_sink_opens(tmp_path):
    script = (
        "import sys; from pathlib import Path; from rftbench.execution import tracking as t\n"
        "tracker = t.Tracker(t.parse_track(['tensorboard', 'mlflow', 'wandb']), Path('.'))\n"
        "tracker.epoch({'epoch': 0, 'lr': 0.1}); tracker.end('completed')\n"
        "print(sorted(m for m in ('tensorboard', 'mlflow', 'wandb', 'torch') if m in sys.modules))"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
