"""The runner through its real entry points: the smoke grid end to end into SQLite, a SIGKILL mid-epoch
then `rftbench resume` (equal to the uninterrupted run), SIGTERM and Ctrl-C with loader workers, two
processes on one database, re-runs, `evaluate` then `report`, a database and checkpoints left by release 0.1,
`status`, and bad input that must leave the database as it was."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from conftest import copy_db
from typer.testing import CliRunner

from rftbench.cli import app
from rftbench.results.store import Store

EXPERIMENTS = Path(__file__).resolve().parents[1] / "rftbench" / "experiments.toml"
V1 = Path(__file__).parent / "fixtures" / "v1_smoke"
TIMING = {"id", "epoch_seconds", "images_per_second", "recorded_at"}
NUMBERS = {"clean", "adv", "eadv", "accuracies", "attacks_run", "seconds"}  # what an evaluation measured
SMOKE_EPOCHS = 3

# Runs the CLI in a subprocess whose trainer blocks inside its Nth APGD call (mid-epoch) after writing a
# marker file, so the test can SIGKILL / SIGTERM it at a known point.
PAUSING_CLI = """
import os, sys, time
import rftbench.attacks.objectives as objectives
from rftbench.cli import app
calls, real = 0, objectives.apgd
def apgd(*args, **kwargs):
    global calls
    calls += 1
    if calls == int(os.environ["PAUSE_AT_CALL"]):
        open(os.environ["PAUSE_MARKER"], "w").write(str(os.getpid()))
        time.sleep(600)
    return real(*args, **kwargs)
objectives.apgd = apgd  # the training attack of every objective
app(sys.argv[1:], prog_name="rftbench")
"""
# smoke: 400 training images / batch 50 = 8 training APGD calls per epoch, + 1 validation call
CALLS_PER_EPOCH = 9


def pausing_cli(env: dict, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", PAUSING_CLI, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip


def kill_when_paused(child: subprocess.Popen, marker: Path) -> None:
    """SIGKILL a `pausing_cli` child once it reached its pause point (and in any case, on the way out)."""
    try:
        wait_for(marker, child)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        child.kill()


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
        evals = [{k: v for k, v in e.model_dump().items() if k not in {"id", "created_at", "seconds"}}
                 for e in store.evaluations(run.id)]  # fmt: skip
        starts = [(a.threshold, a.start_epoch) for a in store.adaptation(run.id)]
        out[run.id] = (run.status, epochs, evals, starts)
    return out


def db_digest(path: Path) -> str:
    """Every schema statement and row of the database (its WAL included), as SQL text."""
    with sqlite3.connect(path) as connection:
        return hashlib.sha256("\n".join(connection.iterdump()).encode()).hexdigest()


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
        # how it was measured is on record: the paper protocol, in fp32, from the clean image
        protocol = (evaluation.protocol, evaluation.precision, evaluation.norm, evaluation.restarts)
        assert protocol == ("paper", "fp32", "Linf", 1) and not evaluation.random_start
        assert evaluation.attacks_run > 0 and evaluation.seconds > 0
        assert all(e.val_adv_subset == "stratified" for e in epochs)
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
    kill_when_paused(child, marker)
    db = tmp_path / "r.db"
    killed = Store.open(str(db), create=False)
    states = {r.setting: r for r in killed.runs()}
    assert states["standard"].status == "completed" and states["sched"].status == "pending"
    assert states["fix"].status == "running" and len(killed.epochs(states["fix"].id)) == 1  # epoch 0 only
    count = {r.id: r.provenance.get("trainable_params") for r in Store.open(str(reference)).runs()}
    assert states["fix"].provenance["trainable_params"] == count[states["fix"].id] > 0  # stored at its start
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


def test_evaluate_with_autoattack_and_under_l2(reference, tmp_path):
    """The CLI's other attacks and norm, through the store: AutoAttack at a budget APGD-CE alone breaks (so
    that Square, 5,000 queries per survivor, has none to query on CPU), ℓ2 on its own grid, and their
    bad flags: one line each, nothing stored."""
    db = copy_db(reference, tmp_path / "r.db")
    store = Store.open(str(db), create=False)
    fix = next(r for r in store.runs() if r.setting == "fix")
    at = ["--db", str(db), "--runs-dir", str(reference.parent / "runs")]
    aa = [
        "evaluate",
        fix.id,
        "--attack",
        "autoattack",
        "--eps",
        "64/255",
        "--protocol",
        "budget",
        "--steps",
        "5",
    ]
    result = CliRunner().invoke(app, [*aa, *at])
    assert result.exit_code == 0, result.output
    assert "AutoAttack standard ℓ∞" in result.output and "square" in result.output
    l2 = CliRunner().invoke(app, ["evaluate", fix.id, "--norm", "L2", "--eps", "0.5", "--steps", "2", *at])
    assert l2.exit_code == 0, l2.output
    rows = {(e.attack, e.norm): e for e in store.evaluations(fix.id) if e.kind == "extra"}
    auto, ell2 = rows["autoattack-standard", "Linf"], rows["apgd-ce", "L2"]
    assert auto.implementation.startswith("torchattacks ") and auto.eadv is None and auto.adv == 0
    assert auto.eps_grid == ["0/255", "64/255"] and auto.details["per_attack"]["apgd-ce"] == 0
    assert ell2.implementation.startswith("rftbench ") and ell2.budget == "0.5" and len(ell2.eps_grid) == 9
    again = CliRunner().invoke(app, [*aa, *at])
    assert again.exit_code == 0 and "nothing measured" in again.output and "square" in again.output
    digest = db_digest(db)
    for args, message in [
        (
            ["--attack", "fgsm"],
            "Invalid value for '--attack': 'fgsm' is not one of 'apgd', 'autoattack'",
        ),
        (
            ["--attack", "autoattack", "--version", "rand"],
            "Invalid value for '--version': 'rand' is not one of 'standard', 'plus'",
        ),
        (["--norm", "L1"], "norm 'L1' unknown"),
        (["--norm", "L2"], "was trained under Linf: pass --eps for an L2 evaluation"),
        (["--norm", "L2", "--eps", "2/255"], "write it as a number"),
        (["--attack", "autoattack", "--random-start"], "AutoAttack takes no --random-start"),
    ]:
        bad = CliRunner().invoke(app, ["evaluate", fix.id, *args, *at])
        assert bad.exit_code == 2 and message in bad.output and bad.output.count("\n") == 1, (
            args,
            bad.output,
        )
    assert db_digest(db) == digest


def test_an_l2_grid_trains_validates_and_evaluates_under_l2(tmp_path):
    """`norm = "L2"` in a grid: budgets as numbers, ℓ2 APGD in training, validation and the final evaluation
    (on the explicit grid ε_g·k/8), a new run id (ℓ∞ runs keep theirs), and the reports read it."""
    experiments = tmp_path / "experiments.toml"
    experiments.write_text(
        EXPERIMENTS.read_text() + '\n[grids.l2]\nbackbones = ["cifar_resnet20"]\ndatasets = ["synthetic"]\n'
        'settings = [{ setting = "sched", t1 = 0, t2 = 2 }]\neps = ["0.5"]\nnorm = "L2"\npretrained = false\n'
        "epochs = 3\nresolution = 16\n"
        "batch_size = 50\nlr = 2e-3\nwarmup_epochs = 0\ntrain_attack_steps = 2\neval_attack_steps = 3\n"
        "val_adv_samples = 50\nadaptation_threshold = 0.2\n"
    )
    db = tmp_path / "l2.db"
    args = ["--experiments", str(experiments), "--db", str(db), "--runs-dir", str(tmp_path / "runs")]
    result = CliRunner().invoke(app, ["run-grid", "--grid", "l2", *args])
    assert result.exit_code == 0 and "1 completed" in result.output, result.output
    store = Store.open(str(db), create=False)
    (run,) = store.runs()
    assert (run.eps, run.eps_value) == ("0.5", 0.5) and json.loads(run.config)["norm"] == "L2"
    assert [e.val_adv_eps for e in store.epochs(run.id)] == ["0.5"] * 3
    assert [round(e.eps, 6) for e in store.epochs(run.id)] == [0, 0.25, 0.5]  # a linear ramp, in ℓ2 units
    (final,) = store.evaluations(run.id)
    assert (final.norm, final.budget, len(final.eps_grid), final.eps_grid[1]) == ("L2", "0.5", 9, "0.0625")
    assert final.accuracies[0] >= final.adv and final.implementation.startswith("rftbench")
    report = CliRunner().invoke(app, ["report", "--table", "main", "--db", str(db)])
    assert report.exit_code == 0 and "ε_g = 0.5" in report.output and "APGD-CE ℓ2" in report.output, (
        report.output
    )
    again = CliRunner().invoke(app, ["evaluate", run.id, *args[2:]])  # the run's own norm and budget
    assert again.exit_code == 0 and "nothing measured" in again.output, again.output


# Runs `rftbench evaluate` in a subprocess that stops for good right after storing batch N.
PAUSING_EVALUATION = """
import os, sys, time
import rftbench.results.batches as store
from rftbench.cli import app
real = store.EvalLog.save
def save(self, index, payload):
    real(self, index, payload)
    if index == int(os.environ["PAUSE_AFTER_BATCH"]):
        open(os.environ["PAUSE_MARKER"], "w").write(str(os.getpid()))
        time.sleep(600)
store.EvalLog.save = save
app(sys.argv[1:], prog_name="rftbench")
"""


def test_a_killed_evaluation_continues_where_it_stopped(reference, tmp_path):
    """SIGKILL after the first of two test batches is stored: no evaluation row, one batch row; the same
    command again measures only the second batch and stores what an uninterrupted evaluation stores."""
    store = Store.open(str(reference), create=False, write=False)
    fix = next(r for r in store.runs() if r.setting == "fix")
    runs = reference.parent / "runs"
    args = ["evaluate", fix.id, "--eps", "4/255", "--steps", "4", "--random-start", "--seed", "7"]
    whole, killed = copy_db(reference, tmp_path / "whole.db"), copy_db(reference, tmp_path / "killed.db")
    result = CliRunner().invoke(app, [*args, "--db", str(whole), "--runs-dir", str(runs)])
    assert result.exit_code == 0, result.output
    marker = tmp_path / "paused"
    env = os.environ | {"PAUSE_AFTER_BATCH": "0", "PAUSE_MARKER": str(marker)}
    command = [sys.executable, "-c", PAUSING_EVALUATION, *args, "--db", str(killed), "--runs-dir", str(runs)]
    child = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(marker, child)
    child.kill()
    child.wait()

    def batches(db: Path) -> list[tuple]:
        """This evaluation's batch rows (the final evaluations' are there since training)."""
        query = (
            "select batch, id, created_at, result from eval_batch where key not in "
            "(select batches from evaluation where kind = 'final') order by batch"
        )
        with sqlite3.connect(db) as connection:
            return connection.execute(query).fetchall()

    extra = "select count(*) from evaluation where kind = 'extra'"
    with sqlite3.connect(killed) as connection:
        assert connection.execute(extra).fetchone() == (0,)
    first = batches(killed)
    assert [b[0] for b in first] == [0]
    result = CliRunner().invoke(app, [*args, "--db", str(killed), "--runs-dir", str(runs)])
    assert result.exit_code == 0 and "stored 1 new evaluation row" in result.output, result.output
    after = batches(killed)
    assert [b[0] for b in after] == [0, 1] and after[0] == first[0]  # batch 0 read back, not measured again
    assert [json.loads(b[3]) for b in after] == [json.loads(b[3]) for b in batches(whole)]

    def measured(db: Path) -> list:
        rows = Store.open(str(db), create=False, write=False).evaluations(fix.id)
        return [
            (e.budget, e.clean, e.adv, e.eadv, e.accuracies, e.attacks_run, e.batches)
            for e in rows
            if e.kind == "extra"
        ]

    assert measured(killed) == measured(whole) and len(measured(whole)) == 1


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


def report(db: Path, table: str = "main", *extra: str) -> str:
    result = CliRunner().invoke(app, ["report", "--table", table, "--format", "csv", "--db", str(db), *extra])
    assert result.exit_code == 0, result.output
    return result.output


def evaluate(db: Path, runs: Path, *args: str):
    return CliRunner().invoke(app, ["evaluate", *args, "--db", str(db), "--runs-dir", str(runs)])


def test_evaluate_then_report_leaves_every_table_as_it_was(reference, tmp_path):
    db, runs = copy_db(reference, tmp_path / "r.db"), tmp_path / "runs"
    shutil.copytree(reference.parent / "runs", runs)
    tables = ("main", "averages", "ttest", "delay")
    before, rows = {t: report(db, t) for t in tables}, snapshot(db)
    fix = next(r for r in Store.open(str(db)).runs() if r.setting == "fix")
    again = evaluate(db, runs, fix.id[:8])  # no flags: the run's own protocol, already stored as its final
    assert again.exit_code == 0 and "already stored under this protocol: nothing measured" in again.output
    assert snapshot(db) == rows and {t: report(db, t) for t in tables} == before
    monotone = evaluate(db, runs, "--grid", "smoke", "--protocol", "monotone")
    assert monotone.exit_code == 0 and monotone.output.count("stored 1 new evaluation row(s)") == 3
    assert {t: report(db, t) for t in tables} == before  # the paper protocol is still what tables show
    store = Store.open(str(db))
    for run in store.runs():
        kinds = {(e.kind, e.protocol) for e in store.evaluations(run.id)}
        assert kinds == {("final", "paper"), ("extra", "monotone")}
    chosen = report(db, "main", "--protocol", "monotone").splitlines()
    adv = {line.split(",")[2]: float(line.split(",")[5]) for line in chosen if ",adv," in line}
    paper = {
        line.split(",")[2]: float(line.split(",")[5])
        for line in before["main"].splitlines()
        if ",adv," in line
    }
    assert adv.keys() == paper.keys() and all(adv[k] <= paper[k] for k in adv)  # a union of attacks
    out = tmp_path / "main.md"
    CliRunner().invoke(app, ["report", "--db", str(db), "--out", str(out)])
    assert "test accuracies: APGD-CE ℓ∞ (3 steps), paper protocol (one attack per ε), clean start, fp32" in (
        out.read_text()
    )
    listed = report(db, "evaluations")
    assert listed.count(",monotone,") == 3 * 3 and listed.count(",paper,") == 3 * 3  # 3 metrics per row
    mixed = CliRunner().invoke(
        app, ["report", "--db", str(db), "--protocol", "monotone", "--compare", "paper"]
    )
    assert mixed.exit_code == 2 and "lines up against the paper protocol" in mixed.output


def test_a_database_and_checkpoints_of_release_0_1_resume_complete_and_report(reference, tmp_path):
    """tests/fixtures/v1_smoke was written by release 0.1 (see its script): standard completed (and its final
    row relabelled by that release's `evaluate`), fix interrupted in epoch 1, sched pending."""
    shutil.copytree(V1, tmp_path / "v1")
    db, runs = tmp_path / "v1" / "v1.db", tmp_path / "v1" / "runs"
    resumed = CliRunner().invoke(app, ["resume", "--db", str(db), "--runs-dir", str(runs)])
    assert resumed.exit_code == 0, resumed.output
    assert "2 run(s) to continue" in resumed.output and "2 completed, 0 failed" in resumed.output
    old, new = snapshot(db), snapshot(reference)
    standard, fix, sched = (r.id for r in Store.open(str(reference)).runs(grid="smoke"))
    assert old.keys() == new.keys()  # the same run ids: nothing re-expanded, nothing duplicated
    assert old[sched] == new[sched]  # all of it under this release: as an uninterrupted run of it
    status, epochs, evaluations, starts = old[fix]  # epoch 0 under release 0.1, the rest under this one
    v1_validation = {"val_adv_loss", "val_adv_acc", "val_adv_subset"}  # 0.1 attacked the first 50 images
    strip = lambda row: {k: v for k, v in row.items() if k not in v1_validation}  # noqa: E731
    assert epochs[0]["val_adv_subset"] == "prefix" and [e["epoch"] for e in epochs] == [0, 1, 2]
    assert all(e["val_adv_subset"] == "stratified" for e in epochs[1:])  # continued under this release
    # Epoch 0 was trained where the fixture was written. CPU float sums depend on the vector instructions
    # torch and oneDNN pick (an AVX-512/AMX machine sums otherwise than an AVX2 one), so only a machine that
    # reproduces that epoch bit for bit can ask the continuation to equal this machine's uninterrupted run.
    reproduces = strip(epochs[0]) == strip(new[fix][1][0])
    if reproduces:
        assert (status, evaluations, starts) == new[fix][0:1] + new[fix][2:]
        assert epochs[1:] == new[fix][1][1:]
    else:
        protocol = lambda rows: [{k: v for k, v in r.items() if k not in NUMBERS} for r in rows]  # noqa: E731
        assert status == "completed" and protocol(evaluations) == protocol(new[fix][2])
        warnings.warn(
            "this CPU does not reproduce the fixture's release-0.1 epoch 0 bit for bit: the resumed run's "
            "numbers were not compared with the uninterrupted run's",
            stacklevel=1,
        )
    again = CliRunner().invoke(app, ["run-grid", "--grid", "smoke", *grid_args(tmp_path, db)])
    assert again.exit_code == 0 and "nothing to run" in again.output
    assert "1 completed run(s) have no paper fp32 evaluation (scored by an earlier release" in again.output
    # the standard run kept its 0.1 evaluations; the tables say it has none under the paper protocol yet
    out = tmp_path / "main.md"
    CliRunner().invoke(app, ["report", "--db", str(db), "--out", str(out)])
    missing = (
        "1 completed run(s) have no paper fp32 evaluation (they have: monotone APGD-3 fp32, monotone APGD-5"
    )
    assert missing in out.read_text()
    added = evaluate(db, runs, "--grid", "smoke")
    assert added.exit_code == 0 and added.output.count("stored 1 new evaluation row(s)") == 1, added.output
    (paper,) = [e for e in snapshot(db)[standard][2] if e["protocol"] == "paper"]
    (theirs,) = new[standard][2]
    if reproduces:
        assert {**paper, "kind": "final"} == theirs  # its 0.1 final weights score what today's training does
        assert report(db) == report(reference)
    else:  # the same rows, measured the same way
        header = next(csv.reader(report(db).splitlines()))
        value = header.index("value")
        cells = lambda text: [r[:value] + r[value + 1 :] for r in csv.reader(text.splitlines())]  # noqa: E731
        assert protocol([{**paper, "kind": "final"}]) == protocol([theirs])
        assert cells(report(db)) == cells(report(reference))


def test_run_retries_a_failed_job_by_name(reference, tmp_path):
    db, runs = copy_db(reference, tmp_path / "r.db"), tmp_path / "runs"
    store = Store.open(str(db))
    fix = next(r for r in store.runs() if r.setting == "fix")
    with store.session() as session:  # interrupted after epoch 0, and its checkpoint damaged
        session.get(type(fix), fix.id).status = "interrupted"
        session.commit()
    (runs / fix.id).mkdir(parents=True)
    (runs / fix.id / "last.pt").write_bytes(b"not a checkpoint")
    failed = CliRunner().invoke(app, ["resume", "--db", str(db), "--runs-dir", str(runs)])
    assert failed.exit_code == 1 and Store.open(str(db)).run(fix.id).status == "failed"
    (runs / fix.id / "last.pt").unlink()
    job = ["--backbone", "cifar_resnet20", "--dataset", "synthetic", "--setting", "fix", "--eps", "8/255"]
    args = ["run", *job, "--grid", "smoke", *grid_args(tmp_path, db)]
    retried = CliRunner().invoke(app, args)
    assert retried.exit_code == 0, retried.output
    assert "retrying it (it failed with: CheckpointError: checkpoint" in retried.output
    assert snapshot(db) == snapshot(reference)
    assert Store.open(str(db)).run(fix.id).attempts == 3  # its first run, the failed resume, the retry


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_signal_to_the_process_group_with_loader_workers_interrupts(reference, tmp_path, sig):
    """Ctrl-C in a terminal, or SIGTERM from a scheduler, reaches every process of the group: the loader
    workers as well as the main process. The run must end `interrupted`, never `failed`."""
    marker = tmp_path / "paused"
    env = os.environ | {"PAUSE_AT_CALL": str(CALLS_PER_EPOCH + 3), "PAUSE_MARKER": str(marker)}
    args = [
        sys.executable,
        "-c",
        PAUSING_CLI,
        "run-grid",
        "--grid",
        "smoke",
        "--workers",
        "2",
        *grid_args(tmp_path),
    ]
    child = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)  # fmt: skip
    try:
        wait_for(marker, child)
        os.killpg(child.pid, sig)
        output, _ = child.communicate(timeout=120)
    finally:
        child.kill()
    assert child.returncode == 130, output
    assert "Traceback" not in output and "`rftbench resume` continues it" in output
    store = Store.open(str(tmp_path / "r.db"), create=False)
    assert not store.runs(states=("failed",))
    (run,) = store.runs(states=("interrupted",))
    assert run.setting == "standard" and "stopped by the user" in run.error
    kept = [e.recorded_at for e in store.epochs(run.id)]
    resumed = cli(
        "resume", "--workers", "2", "--db", str(tmp_path / "r.db"), "--runs-dir", str(tmp_path / "runs")
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    # (not compared with `reference`: loader workers draw the augmentation from their own seeds, so a run's
    # numbers depend on --workers, which is not part of its id; README, "Resuming")
    store = Store.open(str(tmp_path / "r.db"), create=False)
    assert [r.status for r in store.runs()] == ["completed"] * 3
    assert [len(store.epochs(r.id)) for r in store.runs()] == [SMOKE_EPOCHS] * 3
    assert [e.recorded_at for e in store.epochs(run.id)][: len(kept)] == kept


def wait_for(marker: Path, child: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if child.poll() is not None:
            pytest.fail(f"the child exited before pausing:\n{child.stdout.read()}")
        if time.monotonic() > deadline:
            pytest.fail("the child never reached its pause point")
        time.sleep(0.05)


def test_an_inline_run_builds_one_runner_and_opens_the_database_once(tmp_path, monkeypatch):
    """The inline executor runs on the command's own runner: one Runner, one Store.open for the launch."""
    from rftbench.execution import runner as runner_module
    from rftbench.execution.runner import Runner, Summary

    built, opened = [], []
    init, open_ = Runner.__init__, Store.open.__func__

    def counting_init(self, *args, **kwargs):
        built.append(self)
        init(self, *args, **kwargs)

    def counting_open(cls, *args, **kwargs):
        opened.append(args)
        return open_(cls, *args, **kwargs)

    monkeypatch.setattr(Runner, "__init__", counting_init)
    monkeypatch.setattr(Store, "open", classmethod(counting_open))
    monkeypatch.setattr(runner_module.Runner, "run", lambda self, run_ids=None: Summary(completed=run_ids))
    result = CliRunner().invoke(app, ["run-grid", "--grid", "smoke", "--device", "cpu", *grid_args(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "3 completed, 0 failed" in result.output
    assert len(built) == 1 and len(opened) == 1, (len(built), opened)
