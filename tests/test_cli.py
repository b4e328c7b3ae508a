"""The console script, driven through Typer's CliRunner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rftbench.cli import app
from rftbench.results.store import Store

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


def test_schedule_prints_and_plots_piecewise_and_adaptive_schedules(tmp_path):
    shown = runner.invoke(app, ["schedule", "piecewise", "--points", "0:0,2:0.5,6:1", "--eps", "8/255",
                                "--epochs", "8", "--plot", str(tmp_path / "p.png")])  # fmt: skip
    assert shown.exit_code == 0, shown.output
    rows = [line for line in shown.output.splitlines() if line.startswith("│")]
    alphas = [float(r.split("│")[2]) for r in rows]  # 0 → 0.5 over epochs 0-2, 0.5 → 1 over 2-6
    assert alphas == [0, 0.25, 0.5, 0.625, 0.75, 0.875, 1, 1] and "piecewise 0:0,2:0.5,6:1" in shown.output
    assert (tmp_path / "p.png").stat().st_size > 5_000
    hinge = runner.invoke(app, ["schedule", "piecewise", "--points", "2:0,6:1", "--epochs", "8"])
    assert hinge.exit_code == 0 and "sched: ε_g = 4/255, 8 epochs" in hinge.output  # its canonical form
    history = "0.5,0.52,0.40,0.45,0.46,0.47,0.48"  # test_schedules: α = 0, 0, 0.5, 0.75, 1, …
    adaptive = runner.invoke(app, ["schedule", "adaptive", "--epochs", "8", "--val-acc", history])
    assert [float(r.split("│")[2]) for r in adaptive.output.splitlines() if r.startswith("│")] == [
        0, 0, 0.5, 0.75, 1, 1, 1, 1
    ]  # fmt: skip
    for args, message in (
        (["adaptive", "--epochs", "8"], "give the 7 accuracies of epochs 0-6 with --val-acc (got 0)"),
        (["piecewise", "--points", "0-0,5-1"], "write EPOCH:FRACTION pairs, e.g. 0:0,5:0.5,30:1"),
        (["piecewise", "--points", "0:0,5:2"], "fractions of ε_g in [0, 1]"),
        (["sched", "--t1", "1", "--t2", "3", "--points", "0:1"], "points are for the piecewise schedule"),
    ):
        bad = runner.invoke(app, ["schedule", *args])
        assert bad.exit_code == 2 and message in bad.output and "Traceback" not in bad.output, args


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


HEAVY = ("torch", "timm", "open_clip", "torchvision", "tensorboard", "mlflow", "wandb")
IMPORTS = """
import sys
from rftbench.cli import app
try:
    app(sys.argv[1:], prog_name="rftbench")
except SystemExit as exc:
    assert not exc.code, exc.code
print("HEAVY", *sorted(m for m in {heavy!r} if m in sys.modules))
"""


def test_commands_that_list_report_or_schedule_import_no_torch(reference, tmp_path):
    """STYLE.md 16: `--help`, `status`, `report`, `schedule`, `datasets` and `backbones` without --weights
    start without torch, timm or open_clip (each in a fresh interpreter)."""
    db = str(reference)
    commands = [
        ["--help"], ["status", "--db", db], ["report", "--db", db],
        ["report", "--table", "delay", "--db", db], ["report", "--results", "paper"],
        ["schedule", "sched", "--t1", "12", "--t2", "37"], ["datasets"], ["backbones"],
        ["run-grid", "--grid", "paper", "--dry-run", "--db", db], ["data", "--help"], ["init", str(tmp_path)],
    ]  # fmt: skip
    for args in commands:
        script = IMPORTS.format(heavy=HEAVY)
        result = subprocess.run(
            [sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, (args, result.stderr[-2000:])
        assert result.stdout.splitlines()[-1] == "HEAVY", (args, result.stdout.splitlines()[-1])


def complete(*words: str, env: dict | None = None) -> list[str]:
    """What the shell completion (`rftbench --install-completion`) offers after `rftbench WORDS`."""
    script = Path(sys.executable).with_name("rftbench")
    line = " ".join(["rftbench", *words])
    env = {**os.environ, **(env or {}), "_RFTBENCH_COMPLETE": "complete_bash", "COMP_WORDS": line,
           "COMP_CWORD": str(len(words))}  # fmt: skip
    result = subprocess.run([str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_shell_completion_offers_names_from_the_registries_the_grids_and_the_database(reference):
    db = str(reference)
    assert complete("run-grid", "--backbone", "Cl") == ["ClipViT", "ClipCNX"]
    assert complete("run", "--dataset", "C") == ["Cars", "Caltech", "Cub"]
    assert complete("run-grid", "--setting", "s") == ["standard", "sched"]
    assert complete("run-grid", "--grid", "s") == ["sweep", "smoke", "smoke_tuned"]  # the bundled file's
    assert complete("report", "--table", "a") == ["averages", "ablation", "autoattack"]
    assert complete("plot", "r") == ["robustness"]
    assert complete("data", "fetch", "C") == ["Cars", "Caltech", "Cub"]
    stored = sorted(r.id for r in Store.open(db).runs())
    assert sorted(complete("evaluate", "--db", db, "")) == stored
    assert sorted(complete("report", "--db", db, "--run", stored[0][:3])) == [
        i for i in stored if i[:3] == stored[0][:3]
    ]
    assert complete("evaluate", "--db", db + ".missing", "") == []  # no database: nothing, and no error


def test_a_zero_byte_database_is_a_new_one_to_run_grid(tmp_path):
    """`touch rftbench.db` (a job prologue) then run-grid: the plan reads it as empty, not as missing."""
    empty = tmp_path / "r.db"
    empty.touch()
    dry = runner.invoke(app, ["run-grid", "--grid", "smoke", "--dry-run", "--db", str(empty)])
    assert dry.exit_code == 0 and "3 jobs: 0 completed, 3 to run" in dry.output, dry.output
    assert empty.stat().st_size == 0  # a dry run writes nothing


def test_init_writes_a_copy_of_the_bundled_grids_that_commands_there_read(tmp_path, monkeypatch):
    from rftbench.experiments.files import BUNDLED

    made = runner.invoke(app, ["init", str(tmp_path / "study")])
    assert made.exit_code == 0, made.output
    copy = tmp_path / "study" / "experiments.toml"
    assert copy.read_text().endswith(BUNDLED.read_text()) and copy.read_text().startswith("# Written by")
    assert "paper, sweep, ablation, baselines, adaptive, smoke, smoke_tuned, demo, demo_tuned" in made.output
    schema = json.loads((tmp_path / "study" / "experiments.schema.json").read_text())
    assert "#:schema ./experiments.schema.json" in copy.read_text().split("\n[")[0]  # editors find it
    assert schema["additionalProperties"] is False and "grids" in schema["properties"]
    again = runner.invoke(app, ["init", str(tmp_path / "study")])
    assert again.exit_code == 2 and "exists: edit it, or add --force" in again.output
    copy.write_text(
        copy.read_text().replace('eps = ["8/255"]\npretrained = false', 'eps = ["4/255"]\npretrained = false')
    )
    monkeypatch.chdir(tmp_path / "study")
    dry = runner.invoke(
        app, ["run-grid", "--grid", "smoke", "--dry-run", "--db", "r.db"], env={"COLUMNS": "200"}
    )
    assert dry.exit_code == 0 and f"experiments: {copy.resolve()}" in dry.output and "4/255" in dry.output
    monkeypatch.chdir(tmp_path)
    bundled = runner.invoke(
        app, ["run-grid", "--grid", "smoke", "--dry-run", "--db", "r.db"], env={"COLUMNS": "200"}
    )
    assert bundled.exit_code == 0 and "(bundled with rftbench" in bundled.output and "8/255" in bundled.output
    shown = runner.invoke(app, ["status", "--db", str(tmp_path / "none.db")])
    assert shown.exit_code == 2  # no database: one line (status never creates one)
    forced = runner.invoke(app, ["init", str(tmp_path / "study"), "--force"])
    assert (
        forced.exit_code == 0 and "4/255" not in copy.read_text().split("[grids.smoke]")[1].split("[grids")[0]
    )


def test_the_package_documents_its_api():
    """`help(rftbench)` names every public name, each importable from the package itself."""
    import pydoc

    import rftbench

    text = pydoc.render_doc(rftbench, renderer=pydoc.plaintext)
    for name in rftbench.__all__:
        assert getattr(rftbench, name) is not None and f"`{name}`" in rftbench.__doc__, name
    assert "build_backbone" in text and "fetch_dataset" in text and "class RunConfig" in text
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        rftbench.nothing  # noqa: B018


def test_any_rftbench_error_is_one_line_wherever_it_is_raised(monkeypatch):
    """The CLI knows one error type (STYLE.md 18): a subclass from a module it never named is still one
    line on stderr and exit code 2, not a traceback."""
    from rftbench.errors import RftbenchError

    class FreshError(RftbenchError):
        pass

    FreshError.__module__ = "rftbench.somewhere_new"

    def refuse(*args, **kwargs):
        raise FreshError("the fresh problem: fix it like this\nand a second line nobody needs")

    monkeypatch.setattr("rftbench.execution.status.status_view", refuse)
    result = runner.invoke(app, ["status"])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == "error: the fresh problem: fix it like this"


def test_help_shows_each_command_s_short_help_whole():
    """Docstrings' hard line breaks flow: each command's first paragraph is one line of `rftbench --help`
    on a wide terminal, and [brackets] in it stay text."""
    shown = runner.invoke(app, ["--help"], env={"COLUMNS": "400"})
    assert shown.exit_code == 0, shown.output
    lines = shown.output.splitlines()
    for command in app.registered_commands:
        first = " ".join(command.callback.__doc__.split("\n\n")[0].split()).replace("`", "")
        assert any(first in line for line in lines), (command.callback.__name__, first)
    assert not any(line.rstrip(" │").endswith("the paper's") for line in lines)
    one = runner.invoke(app, ["run", "--help"], env={"COLUMNS": "200"})
    assert "(or the file's [defaults]); a finished identical run is reused" in one.output


def test_python_m_rftbench_cli_runs_the_app():
    result = subprocess.run(
        [sys.executable, "-m", "rftbench.cli", "version"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and result.stdout.startswith("rftbench "), result.stderr
