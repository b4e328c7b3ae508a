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


def test_a_ramp_ending_at_the_last_epoch_gets_the_same_note_everywhere(tmp_path):
    """0-based epochs: with T2 = epochs ε(t) never reaches ε_g. Valid (the paper's Table 7 uses T2 = 50 of
    50), so every entry point says the same thing about it; T2 > epochs is an error in the same words."""
    note = "sched T2 = 4 with 4 epochs: epochs are 0-based, so the last is 3 and ε(t) never reaches ε_g"
    shown = runner.invoke(app, ["schedule", "sched", "--t1", "1", "--t2", "4", "--epochs", "4"])
    assert shown.exit_code == 0 and note in shown.output and "at 0.667·ε_g in epoch 3" in shown.output
    grid = tmp_path / "g.toml"
    grid.write_text('[grids.g]\nbackbones = ["SWIN"]\ndatasets = ["Cars"]\neps = ["4/255"]\nepochs = 4\n'
                    'settings = [{ setting = "sched", t1 = 1, t2 = 4 }]\n')  # fmt: skip
    dry = runner.invoke(app, ["run-grid", "--grid", "g", "--experiments", str(grid), "--dry-run",
                              "--db", str(tmp_path / "r.db")])  # fmt: skip
    assert dry.exit_code == 0 and note in dry.output
    beyond = runner.invoke(app, ["schedule", "sched", "--t1", "1", "--t2", "5", "--epochs", "4"])
    assert (
        beyond.exit_code == 2 and "T2 (5) > epochs (4): epochs are 0-based, so the last is 3" in beyond.output
    )
    within = runner.invoke(app, ["schedule", "sched", "--t1", "1", "--t2", "3", "--epochs", "4"])
    assert within.exit_code == 0 and "note:" not in within.output
