"""The console script, driven through Typer's CliRunner."""

from __future__ import annotations

from typer.testing import CliRunner

from rftbench.cli import app

runner = CliRunner()


def test_schedule_prints_the_paper_hinge():
    result = runner.invoke(app, ["schedule", "sched", "--eps", "4/255", "--t1", "12", "--t2", "37"])
    assert result.exit_code == 0, result.output
    rows = [line for line in result.output.splitlines() if line.startswith("│")]
    assert len(rows) == 50
    cells = {int(r.split("│")[1]): float(r.split("│")[3]) for r in rows}  # epoch -> ε(t)·255
    assert cells[11] == 0.0 and cells[13] == 0.16 and cells[37] == 4.0 and cells[49] == 4.0


def test_canonical_form_is_shown():
    result = runner.invoke(
        app, ["schedule", "sched", "--eps", "8/255", "--t1", "0", "--t2", "0", "--epochs", "3"]
    )
    assert result.exit_code == 0 and "fix: ε_g = 8/255, 3 epochs" in result.output


def test_bad_schedule_parameters_exit_non_zero_with_one_line():
    result = runner.invoke(app, ["schedule", "sched", "--t1", "40", "--t2", "37"])
    assert result.exit_code == 2
    assert "T1 (40) > T2 (37)" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["schedule", "cosine"])
    assert result.exit_code == 2 and "valid ones are standard, fix, sched" in result.output


def test_version():
    result = runner.invoke(app, ["version"])
    assert result.exit_code == 0 and result.output.startswith("rftbench ")
