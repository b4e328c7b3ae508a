"""What `rftbench tune` leaves for the reading commands: `report --table tuning` (terminal, CSV), `plot
tuning` and `status`, on one real database of the smoke grid's study (6 trials of the random-init
ResNet-20 on generated data, ASHA pruning), each number checked against the database itself."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import pytest
from conftest import EXPERIMENTS
from typer.testing import CliRunner

from rftbench.cli import app
from rftbench.execution.tuning import study_line
from rftbench.reports.results import Results
from rftbench.reports.tables.tuning import knob_text
from rftbench.results.store import Store
from rftbench.results.studies import Studies

pytestmark = pytest.mark.xdist_group("tuning_reports")  # one worker builds the database once

runner = CliRunner()
WIDE = {"COLUMNS": "300"}  # the terminal table and the status lines on one line each


def rftbench(*args: str, db: Path):
    return runner.invoke(app, [*args, "--db", str(db)], env=WIDE)


def one_line(result) -> str:
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


@pytest.fixture(scope="module")
def tuned(tmp_path_factory) -> Path:
    """The smoke grid tuned with 6 trials, in process (one database for the whole module)."""
    tmp = tmp_path_factory.mktemp("tuned")
    args = ["--grid", "smoke", "--trials", "6", "--device", "cpu", "--experiments", str(EXPERIMENTS)]
    result = runner.invoke(app, ["tune", *args, "--db", str(tmp / "r.db"), "--runs-dir", str(tmp / "runs")])
    assert result.exit_code == 0, result.output
    return tmp / "r.db"


def stored(db: Path) -> tuple:
    """The one study, its trials and its best trial, as rftbench.results.studies reads them."""
    store = Store.open(str(db), create=False, write=False)
    (study,) = Studies(store).all()
    return (
        study,
        Studies(store).summaries([study.key])[study.key],
        Studies(store).best([study.key])[study.key],
    )


def test_the_table_shows_what_the_database_holds(tuned):
    study, trials, best = stored(tuned)
    assert len(trials) == 6 and best is not None
    result = rftbench("report", "--table", "tuning", "--format", "csv", db=tuned)
    assert result.exit_code == 0, result.output
    (row,) = pd.read_csv(io.StringIO(result.output)).to_dict("records")
    states = [t.state for t in trials]
    assert (row["backbone"], row["dataset"], row["eps"], row["setting"], row["grid"]) == (
        study.backbone, study.dataset, study.eps, study.setting, study.grid
    )  # fmt: skip
    assert row["study"] == study.key and row["trials"] == 6
    for state in ("completed", "pruned", "failed"):
        assert row[state] == states.count(state)
    assert row["others"] == 6 - row["completed"] - row["pruned"] - row["failed"]
    assert row["pruned"] >= 1  # ASHA stopped some: the smoke task's bad draws stay at chance
    assert row["best_trial"] == best[0] and row["metric"] == "val_acc"
    assert row["value"] == round(100 * best[1], 2)  # percent, two decimals
    assert {knob: row[knob] for knob in best[2]} == best[2]  # the knobs in full

    shown = rftbench("report", "--table", "tuning", db=tuned)  # the terminal's table: the same numbers
    assert shown.exit_code == 0, shown.output
    line = next(line for line in shown.output.splitlines() if study.key[:8] in line)
    knobs = [knob_text(pd.Series([value])).iloc[0] for value in best[2].values()]
    assert line.split() == [
        study.backbone, study.dataset, study.eps, study.setting, *knobs,
        *(str(row[c]) for c in ("trials", "completed", "pruned", "failed", "others")),
        f"{100 * best[1]:.2f}", study.key[:8],
    ]  # fmt: skip
    assert "test accuracies" not in shown.output  # validation accuracies: no test protocol to name


def test_the_frame_has_every_trial_and_marks_the_best(tuned):
    study, trials, best = stored(tuned)
    frame = Results.from_store(Store.open(str(tuned), create=False, write=False)).tuning
    assert list(frame.number) == [t.number for t in trials] and list(frame.state) == [t.state for t in trials]
    assert list(frame.value) == [100 * t.value for t in trials]  # every trial trained at least one epoch
    (chosen,) = frame[frame.best].itertuples()
    assert chosen.number == best[0] and {k: getattr(chosen, f"param_{k}") for k in best[2]} == best[2]


def test_knobs_show_three_significant_digits_in_one_style_per_column():
    assert list(knob_text(pd.Series([3.2e-4, 0.0157, float("nan")]))) == ["3.20e-04", "1.57e-02", ""]
    assert list(knob_text(pd.Series([2.0, 0.5]))) == ["2", "0.5"]


def test_unknown_grids_empty_databases_and_the_paper_are_refused_in_one_line(tuned, tmp_path):
    line = one_line(rftbench("report", "--table", "tuning", "--grid", "nope", db=tuned))
    assert "no hyperparameter study of grid 'nope'" in line and "`rftbench tune --grid nope`" in line
    assert "smoke" in line  # what it does hold
    Store.open(str(tmp_path / "empty.db"))
    for command in (["report", "--table", "tuning"], ["plot", "tuning", "--out", str(tmp_path / "t.png")]):
        line = one_line(rftbench(*command, db=tmp_path / "empty.db"))
        assert "no hyperparameter study in this database" in line and "rftbench tune --grid NAME" in line
    line = one_line(runner.invoke(app, ["report", "--table", "tuning", "--results", "paper"]))
    assert "the paper published no tuned values" in line and "PROTOCOL.md" in line
    assert rftbench("report", "--table", "tuning", "--grid", "smoke", db=tuned).exit_code == 0  # tuned only


def test_the_plot_is_a_png(tuned, tmp_path):
    out = tmp_path / "figures" / "tuning.png"
    result = rftbench("plot", "tuning", "--out", str(out), "--grid", "smoke", "--eps", "8/255", db=tuned)
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    line = one_line(rftbench("plot", "tuning", "--out", str(out), "--backbone", "ViT", db=tuned))
    assert "no trial of --backbone ViT has a validation accuracy" in line


def test_status_shows_each_study_and_the_pruned_runs(tuned):
    study, trials, _ = stored(tuned)
    result = rftbench("status", db=tuned)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    heading = next(i for i, line in enumerate(lines) if line.startswith("studies"))
    assert lines[heading + 1] == f"  {study_line(study, trials)}"
    header = next(line for line in lines if line.split()[:2] == ["grid", "runs"])
    assert header.split()[-2:] == ["pruned", "from"]  # STATES' new state has its column
    assert f"{sum(t.state == 'pruned' for t in trials)} pruned" in result.output
    assert rftbench("status", "--grid", "smoke", db=tuned).exit_code == 0  # a grid that was only tuned
