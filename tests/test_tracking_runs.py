"""`--track` as users chain it: a smoke grid killed mid-epoch under TensorBoard and MLflow, then resumed
under them, leaves one event per epoch in each, equal to the database; `evaluate --track` adds its rows to
the same runs and no epoch twice; a sink that cannot write is one warning (it then sits out the process's
later runs), and the runs and the database are what they are without it."""

from __future__ import annotations

import os

import numpy as np
import pytest
from conftest import copy_db
from test_run_grid import CALLS_PER_EPOCH, cli, grid_args, kill_when_paused, pausing_cli, snapshot

from rftbench.results.store import Store

EPOCH_COLUMNS = ("eps", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "val_adv_loss", "val_adv_acc")


def tensorboard(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def mlflow_histories(uri: str) -> dict[str, dict[str, list]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return {
        r.data.tags["rftbench.run_id"]: {
            key: [(m.step, m.value) for m in client.get_metric_history(r.info.run_id, key)]
            for key in r.data.metrics
        }
        for r in runs
    }


def expected_epochs(store: Store, run_id: str) -> dict[str, list]:
    rows = store.epochs(run_id)
    return {
        f"epoch/{c}": [(r.epoch, getattr(r, c)) for r in rows if getattr(r, c) is not None]
        for c in EPOCH_COLUMNS
    }


@pytest.mark.slow
def test_a_killed_grid_resumed_under_tracking_has_one_event_per_epoch(reference, tmp_path):
    marker, uri = tmp_path / "paused", f"sqlite:///{tmp_path / 'mlflow.db'}"
    track = ["--track", f"tensorboard={tmp_path / 'tb'}", "--track", f"mlflow={uri}"]
    env = os.environ | {"PAUSE_AT_CALL": str(4 * CALLS_PER_EPOCH + 4), "PAUSE_MARKER": str(marker)}
    child = pausing_cli(env, "run-grid", "--grid", "smoke", *grid_args(tmp_path), *track)  # fix, epoch 1
    kill_when_paused(child, marker)
    resumed = cli("resume", *grid_args(tmp_path)[2:], *track)
    assert resumed.returncode == 0 and "warning" not in resumed.stderr, resumed.stdout + resumed.stderr
    db = tmp_path / "r.db"
    assert snapshot(db) == snapshot(reference)  # the mirrors changed nothing
    store, histories = Store.open(str(db), create=False), mlflow_histories(uri)
    assert histories.keys() == {r.id for r in store.runs()}
    for run in store.runs():
        want = expected_epochs(store, run.id)
        scalars = tensorboard(tmp_path / "tb" / run.id)
        for tag, pairs in want.items():  # one event per epoch, each the stored value (float32 in TB)
            assert [(s, v) for s, v in scalars[tag]] == [(s, float(np.float32(v))) for s, v in pairs], tag
            assert histories[run.id][tag] == pairs, tag
        (final,) = [e for e in store.evaluations(run.id)]
        eval_tags = [t for t in scalars if t.startswith("eval/last/") and t.endswith("/adv")]
        assert [scalars[t] for t in eval_tags] == [[(3, float(np.float32(final.adv)))]]
        assert any(t.startswith("adaptation/start_epoch/") for t in scalars)

    run_id = store.runs()[0].id
    before = tensorboard(tmp_path / "tb" / run_id)
    evaluated = cli("evaluate", run_id, "--protocol", "monotone", *grid_args(tmp_path)[2:], *track)
    assert evaluated.returncode == 0, evaluated.stdout + evaluated.stderr
    after = tensorboard(tmp_path / "tb" / run_id)
    added = {t for t in after.keys() - before.keys()}
    assert added and all(".monotone." in t for t in added)  # the new rows, nothing else
    assert {t: after[t] for t in before} == before  # no epoch, no earlier row twice
    monotone = [e for e in store.evaluations(run_id) if e.protocol == "monotone"]
    assert {k: v for k, v in mlflow_histories(uri)[run_id].items() if k in added} == {
        t: [(3, getattr(monotone[0], t.rsplit("/", 1)[1]))] for t in added
    }


def test_a_sink_that_cannot_write_is_one_warning_and_changes_nothing(reference, tmp_path):
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    result = cli("run-grid", "--grid", "smoke", *grid_args(tmp_path), "--track", f"tensorboard={blocked}")
    assert result.returncode == 0, result.stdout + result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: tensorboard:")]
    assert len(warnings) == 1 and warnings[0].endswith("the runs go on without it"), result.stderr
    assert snapshot(tmp_path / "r.db") == snapshot(reference)


def test_a_missing_library_or_an_unknown_sink_is_one_line_and_exit_2(tmp_path):
    import subprocess
    import sys

    blocked = "import sys; sys.modules['wandb'] = None; from rftbench.cli import app; app(sys.argv[1:])"
    for code, args, line in (
        (
            blocked,
            ["--track", "wandb"],
            "error: --track wandb needs the wandb package: pip install 'rftbench[wandb]'",
        ),
        ("from rftbench.cli import app; app()", ["--track", "neptune"], "unknown tracker 'neptune'"),
    ):
        result = subprocess.run([sys.executable, "-c", code, "run-grid", "--grid", "smoke",
                                 *grid_args(tmp_path), *args], capture_output=True, text=True)  # fmt: skip
        out = (result.stdout + result.stderr).strip()
        assert result.returncode == 2 and "\n" not in out and line in out, out
    assert not (tmp_path / "r.db").exists() and not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_two_local_workers_share_the_default_mlflow_store(reference, tmp_path):
    """Two worker processes open the default SQLite MLflow store at once: MLflow creates its tables on first
    use, and two creations at once broke the store (a lock beside it serialises them)."""
    workers = ["--executor", "local", "--processes", "2"]
    result = cli("run-grid", "--grid", "smoke", *grid_args(tmp_path), *workers, "--track", "mlflow",
                 "--track", "tensorboard")  # fmt: skip
    assert result.returncode == 0 and "warning" not in result.stderr, result.stdout + result.stderr
    store = Store.open(str(tmp_path / "r.db"), create=False)
    histories = mlflow_histories(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    assert histories.keys() == {r.id for r in store.runs()}
    for run in store.runs():
        want = expected_epochs(store, run.id)
        assert {tag: histories[run.id][tag] for tag in want} == want
        assert len(tensorboard(tmp_path / "runs" / "tensorboard" / run.id)["epoch/val_acc"]) == 3


@pytest.mark.slow
def test_mlflow_shares_the_postgresql_server_of_the_results(reference, postgres, tmp_path):
    """`--track mlflow=postgresql+psycopg://...` (and `export`): MLflow's tables in a database of the same
    server as the results; every epoch once, equal to the results database, however often exported."""
    uri = postgres.database().replace("postgresql://", "postgresql+psycopg://", 1)
    db = copy_db(reference, tmp_path / "r.db")
    for _ in range(2):
        result = cli("export", "--to", "mlflow", uri, "--db", str(db), "--runs-dir", str(tmp_path / "runs"))
        assert result.returncode == 0 and "exported 3 run(s) to mlflow" in result.stdout, result.stderr
    store, histories = Store.open(str(db), create=False), mlflow_histories(uri)
    assert histories.keys() == {r.id for r in store.runs()}
    for run in store.runs():
        want = expected_epochs(store, run.id)
        assert {tag: histories[run.id][tag] for tag in want} == want
