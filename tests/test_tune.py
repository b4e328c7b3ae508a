"""`rftbench tune` as users chain it: studies whose trials are runs, spread over local workers (SQLite and
PostgreSQL) and a SLURM array, a worker killed mid-trial, a rerun with a larger budget, then a grid that
takes the best values with `lr = "tuned"`; the rules of the tuned-value lookup; bad searches refused in one
line with nothing stored. Every study here is on the smoke task (random-init ResNet-20, generated data)."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import math
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
from conftest import EXPERIMENTS, copy_db
from typer.testing import CliRunner

from rftbench.cli import app
from rftbench.core.config import RunConfig
from rftbench.core.tuning import Knob, Search, SearchError, best_trial, study_key
from rftbench.experiments.grids import load_experiments
from rftbench.results.store import Store
from rftbench.results.studies import Studies, optuna_storage

RFTBENCH = [sys.executable, "-m", "rftbench.cli"]
SMOKE_STUDY = "18242ea452df7fe3"  # the smoke grid's study: a key that changes orphans every stored study
DEMO_STUDY = "7d7e5dfabf8722b4"
STATES = {"completed": "COMPLETE", "pruned": "PRUNED", "failed": "FAIL"}


def rftbench(*args: str, **kw) -> subprocess.CompletedProcess:
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    return subprocess.run([*RFTBENCH, *args], capture_output=True, text=True, env=env, timeout=600, **kw)


@pytest.fixture(scope="module")
def experiments(tmp_path_factory) -> Path:
    """The package's grids plus `tsmoke`: the smoke grid with lr and weight_decay = "tuned", run on the
    trials' seed (4, [grids.smoke.tune]), so that its fix run is the best trial's."""
    text = EXPERIMENTS.read_text()
    block = text[text.index("[grids.smoke]") :].split("\n\n")[0]
    tuned = block.replace("[grids.smoke]", "[grids.tsmoke]").replace("lr = 2e-3", 'lr = "tuned"')
    path = tmp_path_factory.mktemp("experiments") / "experiments.toml"
    extra = 'weight_decay = "tuned"\nseeds = [4]\n\n[grids.tsmoke.tune]\nseed = 4\n'
    path.write_text(f"{text}\n{tuned}\n{extra}")
    return path


def trials_of(db: str) -> tuple[list, list]:
    """The smoke study's trials as rftbench stores them, and as Optuna does."""
    store = Store.open(db, create=False)
    (study,) = Studies(store).all()
    ours = Studies(store).summaries([study.key])[study.key]
    storage = optuna.load_study(study_name=study.optuna_name, storage=optuna_storage(store))
    return ours, storage.get_trials(deepcopy=False)


def check_study(db: str, count: int) -> list:
    """`count` trials, each stored once (distinct numbers and runs, each run claimed once), all finished,
    and Optuna's record of each equal to its run's: state and value."""
    ours, theirs = trials_of(db)
    assert [t.number for t in ours] == list(range(count)) == [t.number for t in theirs]
    assert len({t.run_id for t in ours}) == count
    runs = {r.id: r for r in Store.open(db, create=False).runs()}
    assert all(runs[t.run_id].attempts >= 1 for t in ours)
    for mine, optunas in zip(ours, theirs, strict=True):
        assert mine.state in STATES and optunas.state.name == STATES[mine.state], (mine, optunas)
        assert optunas.params == mine.params
        if mine.state == "completed":
            assert optunas.value == mine.value and mine.epochs_done == 3
        config = RunConfig.from_json(runs[mine.run_id].config)
        assert (config.lr, config.weight_decay) == (mine.params["lr"], mine.params["weight_decay"])
    return ours


def kill_mid_trial(command: list[str], db: str, kill) -> tuple[Store, object, str]:
    """Start `command`; once a trial's run is running with an epoch stored, call `kill(process, run)`;
    return the store, that run and the command's output. (ASHA stops most of the smoke study's trials right
    after their first epoch: the window is the second and third epochs of those it lets past.)"""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=os.environ | {"OMP_NUM_THREADS": "1"})  # fmt: skip
    store, victim, deadline = None, None, time.monotonic() + 300
    while victim is None and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.1)
        try:
            store = store or Store.open(db, create=False)
            trials = Studies(store).run_ids([SMOKE_STUDY])
            holders = [r for r in store.runs(states=("running",)) if r.id in trials and store.epochs(r.id)]
        except Exception:  # the database or its tables not there yet
            continue
        if holders:
            victim = random.choice(holders)
            kill(process, victim)
    output = process.communicate(timeout=600)[0]
    assert victim is not None, output
    return store, victim, output


# ---- the rules, without training -------------------------------------------------------------------------


def test_the_smoke_study_key_is_pinned_and_ignores_seed_budget_and_tuned_values():
    """A study is one configuration: its key survives releases (stored studies stay found), and the seed,
    the budget and the knobs' own values do not change it; a range does."""
    (plan,) = load_experiments(EXPERIMENTS).studies("smoke")
    assert plan.key == SMOKE_STUDY
    config, search = plan.job.config, plan.search
    assert study_key(RunConfig.from_dict(config.to_dict() | {"seed": 3, "lr": 0.05}), search) == SMOKE_STUDY
    assert study_key(config, dataclasses.replace(search, trials=2, minutes=5.0)) == SMOKE_STUDY
    narrower = dataclasses.replace(search, space=(Knob("lr", 1e-4, 1e-2), Knob("weight_decay", 1e-5, 1e-1)))
    assert study_key(config, narrower) != SMOKE_STUDY


def test_the_best_trial_is_the_completed_one_of_highest_accuracy_and_lowest_number_among_equals():
    rows = [(0, "completed", 0.4, {"lr": 1}), (1, "pruned", 0.9, {"lr": 2}),
            (2, "completed", 0.5, {"lr": 3}), (3, "completed", 0.5, {"lr": 4}),
            (4, "running", 0.8, {"lr": 5}), (5, "failed", None, {})]  # fmt: skip
    assert best_trial(rows) == (2, 0.5, {"lr": 3})
    assert best_trial([row for row in rows if row[1] != "completed"]) is None


@pytest.mark.parametrize(
    "search, message",
    [
        (dict(space=()), "the search space is empty"),
        (dict(space=(Knob("lr", 1e-5, 1e-1),) * 2), "a knob is named twice"),
        (dict(trials=0), "a budget of 0 trials runs nothing"),
        (dict(trials=None, minutes=None), "a search needs a budget"),
        (dict(minutes=0.0), "a budget of 0 minutes runs nothing"),
    ],
)
def test_a_search_that_cannot_run_says_why(search, message):
    with pytest.raises(SearchError, match=message):
        Search(**search)


def digest(path: Path) -> str:
    with sqlite3.connect(path) as connection:
        return hashlib.sha256("\n".join(connection.iterdump()).encode()).hexdigest()


def test_bad_searches_are_one_line_exit_2_and_store_nothing(experiments, reference, tmp_path):
    """Bad [tune] tables and flags against a finished smoke grid's database: one line, exit 2, the database
    as it was (no study, no Optuna table), no run folder."""
    db = copy_db(reference, tmp_path / "r.db")  # (its WAL too: the reference's connections are open)
    before, text = digest(db), experiments.read_text()
    tables = {
        "[tune]\nspace = {}\n": "the search space is empty",
        "[tune.space.lr]\nlow = 0.1\nhigh = 1e-5\n": "lr: low (0.1) must be below high (1e-05)",
        "[tune.space.momentum]\nlow = 0.1\nhigh = 0.9\n": "unknown knob 'momentum'",
        "[tune]\ntrials = 0\n": "a budget of 0 trials runs nothing",
        "[tune.space.lr]\nlow = 0.0\nhigh = 0.1\n": "a log range needs low > 0",
        '[tune]\nsampler = "grid"\n': "'grid' unknown; choose one of random, tpe",
        "[grids.tsmoke.tune.space.lr]\nlow = 1e-4\nhigh = 1e-2\n": 'weight_decay = "tuned", but the grid',
    }
    cases = [([], name, body, message) for name, (body, message) in enumerate(tables.items())]
    cases += [(["--trials", "0"], "flag", "", "--trials/--minutes: a budget of 0 trials runs nothing"),
              (["--minutes", "-1"], "flag", "", "a budget of -1 minutes runs nothing"),
              (["--backbone", "ViT"], "flag", "", "no configuration matching these filters")]  # fmt: skip
    for flags, name, body, message in cases:
        path = tmp_path / f"e{name}.toml"
        path.write_text(text + "\n" + body)
        args = ["tune", "--grid", "smoke", "--experiments", str(path), "--db", str(db), *flags]
        result = CliRunner().invoke(app, [*args, "--runs-dir", str(tmp_path / "runs")])
        output = result.output.strip()
        assert result.exit_code == 2 and output.startswith("error: ") and "\n" not in output, (body, output)
        assert message in output, (body, output)
        assert digest(db) == before, body
    assert not (tmp_path / "runs").exists()


# ---- a study on one process, then the grid that takes its values ---------------------------------------


@pytest.fixture(scope="module")
def tuned(experiments, tmp_path_factory) -> Path:
    """The smoke study with 4 trials, in this process's executor (inline)."""
    folder = tmp_path_factory.mktemp("tuned")
    args = [
        "--experiments",
        str(experiments),
        "--db",
        str(folder / "t.db"),
        "--runs-dir",
        str(folder / "runs"),
    ]
    done = rftbench("tune", "--grid", "smoke", "--trials", "4", "--device", "cpu", *args)
    assert done.returncode == 0, done.stdout + done.stderr
    return folder / "t.db"


def copy(db: Path, tmp_path: Path) -> Path:
    copy_db(db, tmp_path / db.name)
    shutil.copytree(db.parent / "runs", tmp_path / "runs")
    return tmp_path / db.name


@pytest.mark.xdist_group("tuned")  # one worker tunes the module's study once
def test_a_tuned_grid_takes_the_best_values_and_sched_and_standard_reuse_fixs(experiments, tuned, tmp_path):
    """`run-grid` on a grid with lr and weight_decay = "tuned": every run of the cell (standard, fix, sched)
    trains with the best trial's values; fix's run is that trial's run, completed already, so only standard
    and sched train. Without a grid, reports leave the trials out."""
    db = copy(tuned, tmp_path)
    ours = check_study(str(db), 4)
    number, value, params = best_trial([(t.number, t.state, t.value, t.params) for t in ours])
    args = ["--experiments", str(experiments), "--db", str(db), "--runs-dir", str(tmp_path / "runs")]
    done = rftbench("run-grid", "--grid", "tsmoke", *args)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 runs (2 new), 1 already completed" in done.stdout
    runs = Store.open(str(db), create=False).runs(grid="tsmoke")
    configs = {run.setting: RunConfig.from_json(run.config) for run in runs}
    assert set(configs) == {"standard", "fix", "sched"}
    assert all((c.lr, c.weight_decay) == (params["lr"], params["weight_decay"]) for c in configs.values())
    assert configs["fix"].run_id == ours[number].run_id and all(r.status == "completed" for r in runs)
    report = rftbench("report", "--table", "main", "--format", "csv", "--db", str(db))
    assert report.returncode == 0, report.stderr
    table = pd.read_csv(io.StringIO(report.stdout))
    assert table.setting.value_counts().to_dict() == {"standard": 3, "fix": 3, "sched": 3}  # not 4 trials'


@pytest.mark.xdist_group("tuned")  # one worker tunes the module's study once
def test_a_missing_tuning_is_named_with_the_command_that_makes_it(experiments, tuned, tmp_path):
    """A grid whose [tune] differs from the stored study's (here its pruner) is another study: never tuned.
    A study recorded without a completed trial says so. Both: one line, exit 2, nothing changed."""
    db = copy(tuned, tmp_path)
    narrow = tmp_path / "narrow.toml"
    table = "[grids.tsmoke.tune]\nseed = 4\n"
    narrow.write_text(experiments.read_text().replace(table, table + "reduction_factor = 2\n"))
    before = digest(db)
    result = CliRunner().invoke(
        app, ["run-grid", "--grid", "tsmoke", "--experiments", str(narrow), "--db", str(db)]
    )
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert "was never tuned: run `rftbench tune --grid tsmoke --backbone cifar_resnet20" in result.output
    assert digest(db) == before

    from rftbench.execution.tuning import record_studies

    store = Store.open(str(db))
    record_studies(store, load_experiments(narrow).studies("tsmoke"))
    before = digest(db)
    result = CliRunner().invoke(
        app, ["run-grid", "--grid", "tsmoke", "--experiments", str(narrow), "--db", str(db)]
    )
    assert result.exit_code == 2 and "has no completed trial yet" in result.output, result.output
    assert digest(db) == before

    (plan,) = load_experiments(narrow).studies("tsmoke")  # a trial asked, not ended: its best is not final
    trial = dataclasses.replace(plan.job, config=dataclasses.replace(plan.job.config, lr=0.01))
    Studies(store).add_trial(plan.key, 0, trial, {"lr": 0.01, "weight_decay": 0.05})
    before = digest(db)
    result = CliRunner().invoke(
        app, ["run-grid", "--grid", "tsmoke", "--experiments", str(narrow), "--db", str(db)]
    )
    assert result.exit_code == 2 and "has 1 unfinished trial(s)" in result.output, result.output
    assert digest(db) == before


@pytest.mark.xdist_group("tuned")
def test_filters_narrow_a_partly_tuned_grid_and_every_searched_knob_must_be_tuned(
    experiments, tuned, tmp_path
):
    """A grid at two budgets, tuned at one: `run-grid --eps` on the tuned one runs; without the filter the
    other cell is named. A grid that fixes a knob its search draws is refused: its tuned lr won beside a
    drawn weight decay."""
    db = copy(tuned, tmp_path)
    text = experiments.read_text()
    two, at = tmp_path / "two.toml", text.index("[grids.tsmoke]")
    two.write_text(text[:at] + text[at:].replace('eps = ["8/255"]', 'eps = ["8/255", "4/255"]', 1))
    args = ["--experiments", str(two), "--db", str(db)]
    narrowed = CliRunner().invoke(app, ["run-grid", "--grid", "tsmoke", "--eps", "8/255", "--dry-run", *args])
    assert narrowed.exit_code == 0 and "2 jobs: 1 completed, 1 to run" in narrowed.output, narrowed.output
    whole = CliRunner().invoke(app, ["run-grid", "--grid", "tsmoke", "--dry-run", *args])
    assert whole.exit_code == 2 and "at 4/255 takes lr and weight_decay" in whole.output, whole.output
    half = tmp_path / "half.toml"
    half.write_text(text.replace('weight_decay = "tuned"\nseeds = [4]', "weight_decay = 0.01\nseeds = [4]"))
    refused = CliRunner().invoke(
        app, ["run-grid", "--grid", "tsmoke", "--experiments", str(half), "--db", str(db)]
    )
    assert refused.exit_code == 2 and "also searches weight_decay, which the grid fixes" in refused.output


@pytest.mark.xdist_group("tuned")  # one worker tunes the module's study once
def test_a_rerun_of_tune_adds_trials_and_keeps_finished_ones(experiments, tuned, tmp_path):
    """`tune --trials 6` after 4: trials 4 and 5 are new, 0-3 keep their runs, params, states, epochs and
    evaluations; the same budget again runs nothing and changes nothing."""
    db = copy(tuned, tmp_path)
    store = Store.open(str(db), create=False)
    first = check_study(str(db), 4)
    rows = {t.run_id: (store.epochs(t.run_id), store.evaluations(t.run_id)) for t in first}
    args = ["--experiments", str(experiments), "--db", str(db), "--runs-dir", str(tmp_path / "runs")]
    done = rftbench("tune", "--grid", "smoke", "--trials", "6", *args)
    assert done.returncode == 0, done.stdout + done.stderr
    after = check_study(str(db), 6)
    assert after[:4] == first
    for t in first:
        epochs, evaluations = rows[t.run_id]
        assert [e.model_dump() for e in store.epochs(t.run_id)] == [e.model_dump() for e in epochs]
        assert [e.model_dump() for e in store.evaluations(t.run_id)] == [e.model_dump() for e in evaluations]
    before = digest(db)
    again = rftbench("tune", "--grid", "smoke", "--trials", "6", *args)
    assert again.returncode == 0 and "6 of 6 trial(s)" in again.stdout, again.stdout + again.stderr
    assert digest(db) == before


@pytest.mark.xdist_group("tuned")  # one worker tunes the module's study once
def test_a_settings_entry_that_trains_differently_is_tuned_in_a_study_of_its_own(
    experiments, tuned, tmp_path
):
    """A settings entry with its own objective trains something else, so it has its own study, whose trials
    train that objective, and its fix and sched take that study's values; an entry that only keeps other
    weights (ema) trains alike and shares the plain study. Before, every entry of a cell took the plain
    (AT) study's values, silently."""
    db = copy(tuned, tmp_path)
    entries = (
        '{ setting = "fix" }, { setting = "sched", t1 = 1, t2 = 2 }, '
        '{ setting = "fix", objective = "trades" }, '
        '{ setting = "sched", t1 = 1, t2 = 2, objective = "trades" }, '
        '{ setting = "fix", weights_policy = "ema" }'
    )
    text = experiments.read_text()
    block = text[text.index("[grids.tsmoke]") :].replace("[grids.tsmoke", "[grids.vsmoke")
    block = block.replace(block[block.index("settings = ") : block.index("\n", block.index("settings = "))],
                          f"settings = [{entries}]")  # fmt: skip
    path = tmp_path / "variants.toml"
    path.write_text(f"{text}\n{block}")
    plain, trades = load_experiments(path).studies("vsmoke")
    assert plain.key == load_experiments(experiments).studies("tsmoke")[0].key  # the stored study, kept
    assert (plain.job.config.objective, trades.job.config.objective) == ("at", "trades")
    assert trades.job.config.setting == "fix" and trades.key != plain.key

    args = ["--experiments", str(path), "--db", str(db), "--runs-dir", str(tmp_path / "runs")]
    done = rftbench("tune", "--grid", "vsmoke", "--trials", "3", "--device", "cpu", *args)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"fix+trades [{trades.key[:8]}]: 3 of 3 trial(s)" in done.stdout, done.stdout
    store = Store.open(str(db), create=False)
    summaries = Studies(store).summaries()
    assert len(summaries[plain.key]) == 4 and len(summaries[trades.key]) == 3  # plain: no new trial
    runs = {run.id: RunConfig.from_json(run.config) for run in store.runs()}
    assert all(runs[t.run_id].objective == "trades" for t in summaries[trades.key])

    from rftbench.execution.grid import tuned_values

    spec = load_experiments(path)
    spec.tuned = tuned_values(str(db))
    best = {key: spec.tuned[key][0] for key in (plain.key, trades.key)}
    assert best[plain.key] != best[trades.key]
    for job in spec.jobs("vsmoke"):
        c = job.config
        key = trades.key if c.objective == "trades" else plain.key
        assert (c.lr, c.weight_decay) == (best[key]["lr"], best[key]["weight_decay"]), c.label


# ---- workers: two local processes on each backend, one of them killed; a SLURM array ------------------


@pytest.mark.slow
def test_two_local_workers_tune_with_a_real_pruner_on_each_backend(experiments, db_url, tmp_path):
    """7 trials over `--executor local --processes 2`: each stored once and claimed once, at least one
    pruned (ASHA after the first epoch), Optuna's record equal to the runs'; then the tuned grid's runs
    take the best values."""
    args = ["--experiments", str(experiments), "--db", db_url, "--runs-dir", str(tmp_path / "runs")]
    done = rftbench(
        "tune", "--grid", "smoke", "--trials", "7", "--executor", "local", "--processes", "2", *args
    )
    assert done.returncode == 0, done.stdout + done.stderr
    ours = check_study(db_url, 7)
    runs = {r.id: r for r in Store.open(db_url, create=False).runs()}
    assert all(runs[t.run_id].attempts == 1 for t in ours) and len({runs[t.run_id].worker for t in ours}) == 2
    assert any(t.state == "pruned" for t in ours) and any(t.state == "completed" for t in ours)
    assert all(runs[t.run_id].error.startswith("pruned after epoch 0") for t in ours if t.state == "pruned")
    plan = rftbench("run-grid", "--grid", "tsmoke", "--dry-run", *args)
    assert plan.returncode == 0, plan.stdout + plan.stderr
    best = best_trial([(t.number, t.state, t.value, t.params) for t in ours])
    assert ours[best[0]].run_id[:6] in plan.stdout and "1 completed, 2 to run" in plan.stdout


@pytest.mark.slow
def test_a_worker_killed_mid_trial_loses_no_trial_and_counts_none_twice(experiments, tmp_path):
    """SIGKILL one of two workers while it holds a trial with an epoch stored: the other takes the run over
    and continues it from its checkpoint under the same trial number; the study ends with its 6 trials,
    none twice, Optuna's record equal to the runs'."""
    db = str(tmp_path / "k.db")
    args = ["--experiments", str(experiments), "--db", db, "--runs-dir", str(tmp_path / "runs")]
    command = [
        *RFTBENCH,
        "tune",
        "--grid",
        "smoke",
        "--trials",
        "6",
        "--executor",
        "local",
        "--processes",
        "2",
    ]
    store, victim, output = kill_mid_trial(
        [*command, *args], db, lambda process, run: os.kill(run.pid, signal.SIGKILL)
    )
    assert "died of a signal" in output and "local workers ended: all done" in output, output
    ours = check_study(db, 6)
    assert store.find_run(victim.id).attempts == 2, output
    assert victim.id in {t.run_id for t in ours}


@pytest.mark.slow
@pytest.mark.xdist_group("slurm")  # one SLURM cluster per machine
def test_a_slurm_array_tunes_into_postgres(experiments, tmp_path, postgres, slurm):
    """`tune --executor slurm --wait`: two array tasks of the real one-node cluster ask, train and prune
    the study's 5 trials in PostgreSQL; each stored and claimed once."""
    db = postgres.database()
    args = ["--experiments", str(experiments), "--db", db, "--runs-dir", str(tmp_path / "runs")]
    slurm_flags = ["--executor", "slurm", "--slurm-cpus", "1", "--slurm-gpus", "0", "--slurm-jobs", "2"]
    done = rftbench("tune", "--grid", "smoke", "--trials", "5", *slurm_flags, "--wait", *args)
    assert done.returncode == 0 and "SLURM workers ended: all done" in done.stdout, done.stdout + done.stderr
    ours = check_study(db, 5)
    runs = {r.id: r for r in Store.open(db, create=False).runs()}
    assert all(runs[t.run_id].attempts == 1 and runs[t.run_id].worker.startswith("slurm ") for t in ours)
    assert "5 of 5 trial(s)" in done.stdout


@pytest.mark.slow
def test_a_killed_tune_is_continued_by_resume_then_by_tune(experiments, tmp_path):
    """SIGKILL the whole `tune` (one inline process) while a trial has an epoch stored; `rftbench resume`
    continues that trial's run from its checkpoint (reporting to its trial and pruning as tune would) and
    asks no new one; `tune` again finishes the budget. 5 trials, none twice, Optuna's record the runs'."""
    db = str(tmp_path / "k.db")
    args = ["--experiments", str(experiments), "--db", db, "--runs-dir", str(tmp_path / "runs")]
    command = [*RFTBENCH, "tune", "--grid", "smoke", "--trials", "5", *args]
    store, victim, _ = kill_mid_trial(command, db, lambda process, run: process.kill())
    asked = len(Studies(store).run_ids([SMOKE_STUDY]))
    resumed = rftbench("resume", "--db", db, "--runs-dir", str(tmp_path / "runs"))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert store.find_run(victim.id).status in ("completed", "pruned") and victim.id[:8] in resumed.stdout
    assert len(Studies(store).run_ids([SMOKE_STUDY])) == asked  # resume asks no trial
    ours, theirs = trials_of(db)
    assert {t.state for t in ours} <= set(STATES) and len(theirs) == asked
    assert [t.state.name for t in theirs] == [STATES[t.state] for t in ours]
    done = rftbench("tune", "--grid", "smoke", "--trials", "5", *args)
    assert done.returncode == 0, done.stdout + done.stderr
    check_study(db, 5)
    assert store.find_run(victim.id).attempts == 2


def test_trial_draws_spread_over_the_range_and_do_not_depend_on_who_asks():
    """Trial k's sampler is seeded from (study key, k) through a hash: consecutive integer seeds would start
    NumPy's generator alike (first draws 0.55, 0.42, 0.44, 0.55 for seeds 0-3), so the first trials of a
    study would crowd one decade. 16 draws of the paper's lr range reach every one of its four decades,
    the same (study, k) draws the same values again, and another study other values."""
    from rftbench.execution.trials import sampler

    def draws(study: str) -> list[float]:
        out = []
        for k in range(16):
            one = optuna.create_study(sampler=sampler(Search(), k, study), direction="maximize")
            out.append(one.ask().suggest_float("lr", 1e-5, 1e-1, log=True))
        return out

    for study in (SMOKE_STUDY, DEMO_STUDY):
        lrs = draws(study)
        assert {int(-math.floor(math.log10(lr))) for lr in lrs} == {2, 3, 4, 5}, lrs
        assert draws(study) == lrs
    assert draws(SMOKE_STUDY) != draws(DEMO_STUDY)  # two studies of one configuration draw other runs


def test_each_pruner_is_optunas_with_the_searchs_numbers():
    from rftbench.execution.trials import pruner

    asha = pruner(Search(min_epochs=2, reduction_factor=4), epochs=50)
    assert isinstance(asha, optuna.pruners.SuccessiveHalvingPruner)
    assert (asha._min_resource, asha._reduction_factor, asha._min_early_stopping_rate) == (2, 4, 0)
    hyperband = pruner(Search(pruner="hyperband", min_epochs=1, reduction_factor=3), epochs=27)
    assert isinstance(hyperband, optuna.pruners.HyperbandPruner)
    assert (hyperband._min_resource, hyperband._max_resource, hyperband._reduction_factor) == (1, 27, 3)
    assert isinstance(pruner(Search(pruner="none"), epochs=5), optuna.pruners.NopPruner)
