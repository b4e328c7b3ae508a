"""The runner through its real entry points: the smoke grid end to end into SQLite, a SIGKILL mid-epoch
then `rftbench resume` (equal to the uninterrupted run), SIGTERM, two processes on one database, re-runs,
`evaluate`, `status`, and bad input that must leave the database as it was."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from rftbench.cli import app
from rftbench.store import Store

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments.toml"
TIMING = {"id", "epoch_seconds", "images_per_second", "recorded_at"}
SMOKE_EPOCHS = 3

# Runs the CLI in a subprocess whose trainer blocks inside its Nth APGD call (mid-epoch) after writing a
# marker file, so the test can SIGKILL / SIGTERM it at a known point.
PAUSING_CLI = """
import os, sys, time
import rftbench.trainer as trainer
from rftbench.cli import app
calls, real = 0, trainer.apgd
def apgd(*args, **kwargs):
    global calls
    calls += 1
    if calls == int(os.environ["PAUSE_AT_CALL"]):
        open(os.environ["PAUSE_MARKER"], "w").write(str(os.getpid()))
        time.sleep(600)
    return real(*args, **kwargs)
trainer.apgd = apgd
app(sys.argv[1:], prog_name="rftbench")
"""
# smoke: 400 training images / batch 50 = 8 training APGD calls per epoch, + 1 validation call
CALLS_PER_EPOCH = 9


def pausing_cli(env: dict, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", PAUSING_CLI, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rftbench.cli", *args], capture_output=True, text=True, timeout=300
    )


def grid_args(tmp: Path, db: Path | None = None) -> list[str]:
    return [
        "--experiments",
        str(EXPERIMENTS),
        "--db",
        str(db or tmp / "r.db"),
        "--runs-dir",
        str(tmp / "runs"),
    ]


def snapshot(db: Path) -> dict:
    """Everything a run produced, minus wall-clock values: {run id: (status, epochs, evaluations)}."""
    store = Store.open(str(db), create=False)
    out = {}
    for run in store.runs():
        epochs = [{k: v for k, v in e.model_dump().items() if k not in TIMING} for e in store.epochs(run.id)]
        evals = [{k: v for k, v in e.model_dump().items() if k not in {"id", "created_at"}}
                 for e in store.evaluations(run.id)]  # fmt: skip
        starts = [(a.threshold, a.start_epoch) for a in store.adaptation(run.id)]
        out[run.id] = (run.status, epochs, evals, starts)
    return out


def db_digest(path: Path) -> str:
    """Every schema statement and row of the database (its WAL included), as SQL text."""
    with sqlite3.connect(path) as connection:
        return hashlib.sha256("\n".join(connection.iterdump()).encode()).hexdigest()


def copy_db(source: Path, target: Path) -> Path:
    """A consistent copy through SQLite's backup API (the WAL may hold what the main file does not yet)."""
    with sqlite3.connect(source) as src, sqlite3.connect(target) as dst:
        src.backup(dst)
    return target


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The smoke grid, uninterrupted, through `rftbench run-grid` (in process)."""
    tmp = tmp_path_factory.mktemp("reference")
    result = CliRunner().invoke(app, ["run-grid", "--grid", "smoke", *grid_args(tmp)])
    assert result.exit_code == 0, result.output
    assert "3 completed, 0 failed" in result.output
    return tmp / "r.db"


def test_smoke_grid_end_to_end(reference):
    store = Store.open(str(reference), create=False)
    runs = store.runs(grid="smoke")
    assert [r.setting for r in runs] == ["standard", "fix", "sched"]
    for run in runs:
        assert run.status == "completed" and run.attempts == 1 and run.error is None
        epochs = store.epochs(run.id)
        assert [e.epoch for e in epochs] == list(range(SMOKE_EPOCHS))
        assert all(0 <= e.val_acc <= 1 and e.val_adv_eps == "8/255" for e in epochs)
        (evaluation,) = store.evaluations(run.id)
        assert (evaluation.kind, evaluation.budget, evaluation.steps, evaluation.n) == (
            "final",
            "8/255",
            3,
            100,
        )
        assert evaluation.eps_grid == [f"{k}/255" for k in range(9)] and len(evaluation.accuracies) == 9
        assert evaluation.clean == evaluation.accuracies[0] and evaluation.adv == evaluation.accuracies[-1]
        assert evaluation.adv <= evaluation.eadv <= evaluation.clean
        (adaptation,) = store.adaptation(run.id)
        first = next((e.epoch for e in epochs if e.val_acc > 0.2), SMOKE_EPOCHS)
        assert (adaptation.threshold, adaptation.start_epoch) == (0.2, first)
        assert run.provenance["torch"] == torch.__version__ and run.provenance["device"] == "cpu"
    schedule = [[round(e.eps * 255, 6) for e in store.epochs(r.id)] for r in runs]
    assert schedule == [[0, 0, 0], [8, 8, 8], [0, 0, 8]]  # standard, fix, sched T1 = 1, T2 = 2


def test_rerun_reuses_completed_runs_and_status_reports(reference, tmp_path):
    db = tmp_path / "r.db"
    copy_db(reference, db)
    before = snapshot(db)
    result = CliRunner().invoke(app, ["run-grid", "--grid", "smoke", *grid_args(tmp_path, db)])
    assert result.exit_code == 0, result.output
    assert "3 runs (0 new), 3 already completed" in result.output
    assert snapshot(db) == before
    assert all(r.attempts == 1 for r in Store.open(str(db)).runs())
    status = CliRunner().invoke(app, ["status", "--db", str(db)])
    assert (
        status.exit_code == 0
        and "all runs: 0 pending, 0 running, 0 interrupted, 3 completed, 0 failed" in (status.output)
    )


@pytest.mark.slow
def test_kill_mid_epoch_then_resume_equals_the_uninterrupted_run(reference, tmp_path):
    marker = tmp_path / "paused"
    env = os.environ | {
        "PAUSE_AT_CALL": str(3 * CALLS_PER_EPOCH + CALLS_PER_EPOCH + 4),
        "PAUSE_MARKER": str(marker),
    }
    # the 4th training batch of epoch 1 of the second run (fix)
    child = pausing_cli(env, "run-grid", "--grid", "smoke", *grid_args(tmp_path))
    try:
        wait_for(marker, child)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        child.kill()
    db = tmp_path / "r.db"
    killed = Store.open(str(db), create=False)
    states = {r.setting: r for r in killed.runs()}
    assert states["standard"].status == "completed" and states["sched"].status == "pending"
    assert states["fix"].status == "running" and len(killed.epochs(states["fix"].id)) == 1  # epoch 0 only
    first_run = snapshot(db)[states["standard"].id]
    recorded = [e.recorded_at for e in killed.epochs(states["standard"].id)]

    resumed = cli("resume", "--db", str(db), "--runs-dir", str(tmp_path / "runs"))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "2 run(s) to continue (1 found interrupted now)" in resumed.stdout
    assert snapshot(db) == snapshot(
        reference
    )  # same epochs (no duplicates, none missing), evaluations, starts
    store = Store.open(str(db), create=False)
    attempts = {r.setting: r.attempts for r in store.runs()}
    assert attempts == {"standard": 1, "fix": 2, "sched": 1}
    assert snapshot(db)[states["standard"].id] == first_run  # the completed run was not executed again
    assert [e.recorded_at for e in store.epochs(states["standard"].id)] == recorded


@pytest.mark.slow
def test_sigterm_stops_cleanly_and_resume_finishes(reference, tmp_path):
    marker = tmp_path / "paused"
    env = os.environ | {"PAUSE_AT_CALL": str(CALLS_PER_EPOCH + 2), "PAUSE_MARKER": str(marker)}
    child = pausing_cli(env, "run-grid", "--grid", "smoke", *grid_args(tmp_path))
    try:
        wait_for(marker, child)
        child.send_signal(signal.SIGTERM)
        output, _ = child.communicate(timeout=60)
    finally:
        child.kill()
    assert child.returncode == 130, output
    assert "`rftbench resume` continues it" in output
    store = Store.open(str(tmp_path / "r.db"), create=False)
    (run,) = store.runs(states=("interrupted",))
    assert run.setting == "standard" and run.lease_owner is None and "stopped by the user" in run.error
    assert len(store.epochs(run.id)) == 1 and (tmp_path / "runs" / run.id / "last.pt").exists()
    assert not list((tmp_path / "runs").rglob("*.tmp"))
    resumed = cli("resume", "--db", str(tmp_path / "r.db"), "--runs-dir", str(tmp_path / "runs"))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert snapshot(tmp_path / "r.db") == snapshot(reference)


@pytest.mark.slow
def test_two_processes_share_one_database_and_run_each_job_once(reference, tmp_path):
    args = ["run-grid", "--grid", "smoke", "--prune-checkpoints", *grid_args(tmp_path)]
    procs = [subprocess.Popen([sys.executable, "-m", "rftbench.cli", *args], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]  # fmt: skip
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    store = Store.open(str(tmp_path / "r.db"), create=False)
    assert all(r.status == "completed" and r.attempts == 1 for r in store.runs())  # each run claimed once
    assert {r.pid for r in store.runs()} <= {p.pid for p in procs}
    for run in store.runs():  # pruned: the resumable checkpoint is gone, the final weights stay
        assert sorted(p.name for p in (tmp_path / "runs" / run.id).iterdir()) == ["final.pt"]
    assert snapshot(tmp_path / "r.db") == snapshot(reference)


def test_run_one_job_with_a_grids_values(reference, tmp_path):
    db = copy_db(reference, tmp_path / "r.db")
    fix = next(r for r in Store.open(str(db)).runs() if r.setting == "fix")
    same = [
        "run",
        "--backbone",
        "cifar_resnet20",
        "--dataset",
        "synthetic",
        "--eps",
        "8/255",
        "--grid",
        "smoke",
    ]
    result = CliRunner().invoke(app, [*same, "--setting", "fix", *grid_args(tmp_path, db)])
    assert result.exit_code == 0 and f"run {fix.id}" in result.output and "nothing to run" in result.output
    assert Store.open(str(db)).run(fix.id).attempts == 1
    linear = CliRunner().invoke(
        app, [*same, "--setting", "sched", "--t1", "0", "--t2", "2", *grid_args(tmp_path, db)]
    )
    assert linear.exit_code == 0, linear.output
    store = Store.open(str(db))
    (run,) = [r for r in store.runs() if r.setting == "linear"]
    assert (run.status, run.t1, run.t2, run.epochs) == ("completed", 0, 2, 3)  # the smoke grid's values
    assert [round(e.eps * 255, 6) for e in store.epochs(run.id)] == [0, 4, 8]
    assert run.id not in {r.id for r in store.runs(grid="smoke")}  # not one of the grid's jobs: not linked


def test_evaluate_adds_rows_without_retraining(reference, tmp_path):
    db = tmp_path / "r.db"
    copy_db(reference, db)
    store = Store.open(str(db), create=False)
    fix = next(r for r in store.runs() if r.setting == "fix")
    shutil.copytree(reference.parent / "runs" / fix.id, tmp_path / "runs" / fix.id)
    epochs = snapshot(db)[fix.id][1]
    result = CliRunner().invoke(
        app, ["evaluate", fix.id[:6], "--eps", "4/255", "--eps", "8/255", "--steps", "5", "--db", str(db),
              "--runs-dir", str(tmp_path / "runs")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = {(e.budget, e.steps, e.kind): e for e in store.evaluations(fix.id)}
    assert set(rows) == {("8/255", 3, "final"), ("4/255", 5, "extra"), ("8/255", 5, "extra")}
    assert rows["4/255", 5, "extra"].clean == rows["8/255", 3, "final"].clean  # the same final weights
    assert rows["8/255", 5, "extra"].adv <= rows["4/255", 5, "extra"].adv
    assert snapshot(db)[fix.id][1] == epochs
    missing = CliRunner().invoke(app, ["evaluate", "ffff", "--db", str(db)])
    assert missing.exit_code == 2 and "no run with id 'ffff'" in missing.output


def test_bad_input_leaves_the_database_untouched(reference, tmp_path):
    db = tmp_path / "r.db"
    copy_db(reference, db)
    digest = db_digest(db)
    broken = tmp_path / "broken.toml"
    broken.write_text(
        EXPERIMENTS.read_text().replace('eps = ["8/255"]\npretrained', 'eps = ["8/0"]\npretrained')
    )
    missing_root = tmp_path / "missing.toml"
    missing_root.write_text(
        '[grids.g]\nbackbones = ["cifar_resnet20"]\ndatasets = ["imagefolder"]\neps = ["8/255"]\n'
        f'[datasets.imagefolder]\nroot = "{tmp_path / "nowhere"}"\n'
    )
    no_weights = tmp_path / "weights.toml"
    no_weights.write_text(
        '[grids.g]\nbackbones = ["cifar_resnet20"]\ndatasets = ["synthetic"]\neps = ["8/255"]\n'
    )
    smoke = ["run-grid", "--grid", "smoke", "--experiments", str(EXPERIMENTS)]
    cases = [
        (["run-grid", "--grid", "smoke", "--experiments", str(broken)], "grids.smoke.eps[0]: cannot read"),
        (["run-grid", "--grid", "g", "--experiments", str(missing_root)], f"root {tmp_path / 'nowhere'} not"),
        (["run-grid", "--grid", "g", "--experiments", str(no_weights)], "--weights cifar_resnet20=FILE"),
        ([*smoke, "--weights", "Nope=x"], "--weights for unknown backbone(s) Nope"),
        ([*smoke, "--root", "synthetic"], "--root 'synthetic': write it as NAME=PATH"),
        ([*smoke, "--device", "nodevice"], "device 'nodevice' is not usable here"),
        (["run", "--backbone", "SWIN", "--dataset", "Cars", "--setting", "sched", "--t1", "37", "--t2", "12",
          "--experiments", str(EXPERIMENTS)], "T1 (37) > T2 (12)"),
    ]  # fmt: skip
    for args, message in cases:
        result = CliRunner().invoke(app, [*args, "--db", str(db), "--runs-dir", str(tmp_path / "runs")])
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output and result.output.strip().count("\n") == 0, (args, result.output)
        assert db_digest(db) == digest, args
    assert not (tmp_path / "runs").exists()
    no_db = CliRunner().invoke(app, ["resume", "--db", str(tmp_path / "none.db")])
    assert no_db.exit_code == 2 and "database" in no_db.output and not (tmp_path / "none.db").exists()


def test_truncated_or_foreign_checkpoint_fails_that_run_only_then_retry(reference, tmp_path):
    db = tmp_path / "r.db"
    copy_db(reference, db)
    store = Store.open(str(db), create=False)
    standard, fix, _ = store.runs(grid="smoke")
    reference_runs = reference.parent / "runs"
    with store.session() as session:  # two runs interrupted after epoch 0, their checkpoints damaged
        for run in (standard, fix):
            session.get(type(run), run.id).status = "interrupted"
        session.commit()
    (tmp_path / "runs" / standard.id).mkdir(parents=True)
    (tmp_path / "runs" / standard.id / "last.pt").write_bytes(
        (reference_runs / standard.id / "last.pt").read_bytes()[:999]
    )
    (tmp_path / "runs" / fix.id).mkdir(parents=True)
    shutil.copy(reference_runs / standard.id / "last.pt", tmp_path / "runs" / fix.id / "last.pt")
    before = snapshot(db)
    result = CliRunner().invoke(app, ["resume", "--db", str(db), "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 1, result.output
    store = Store.open(str(db), create=False)
    errors = {r.setting: r.error for r in store.runs(states=("failed",))}
    assert "cannot be read" in errors["standard"] and "delete it to rerun" in errors["standard"]
    assert f"holds run {standard.id}, not run {fix.id}" in errors["fix"]
    for run_id in (standard.id, fix.id):  # their stored epochs and evaluations are still there
        assert snapshot(db)[run_id][1:] == before[run_id][1:]
    (tmp_path / "runs" / standard.id / "last.pt").unlink()
    (tmp_path / "runs" / fix.id / "last.pt").unlink()
    retry = CliRunner().invoke(
        app, ["run-grid", "--grid", "smoke", "--retry-failed", *grid_args(tmp_path, db)]
    )
    assert retry.exit_code == 0 and "re-queued 2 failed run(s)" in retry.output, retry.output
    assert snapshot(db) == snapshot(reference)


def wait_for(marker: Path, child: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if child.poll() is not None:
            pytest.fail(f"the child exited before pausing:\n{child.stdout.read()}")
        if time.monotonic() > deadline:
            pytest.fail("the child never reached its pause point")
        time.sleep(0.05)
