"""Every CLI entry point answers bad input with one line and exit code 2, and leaves the database as it was:
one test per category (experiments files, flags, weights, data, databases, runs). Each case runs against a
copy of a finished smoke grid, whose digest must not change, and must record no run."""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
from pathlib import Path

import pytest
from conftest import EXPERIMENTS, RESNET20, require
from typer.testing import CliRunner

from rftbench.cli import app


def digest(path: Path) -> str:
    with sqlite3.connect(path) as connection:
        return hashlib.sha256("\n".join(connection.iterdump()).encode()).hexdigest()


@pytest.fixture
def db(reference, tmp_path) -> Path:
    with sqlite3.connect(reference) as source, sqlite3.connect(tmp_path / "r.db") as copy:
        source.backup(copy)
    return tmp_path / "r.db"


def check(cases: list[tuple[list[str], str]], db: Path, runs: Path) -> None:
    """Each case: one line holding `message`, exit 2, the database unchanged, no run folder made."""
    before = digest(db)
    for args, message in cases:
        result = CliRunner().invoke(app, args)
        output = result.output.strip()
        assert result.exit_code == 2, (args, output)
        assert output.startswith("error: ") and "\n" not in output, (args, output)
        assert message in output, (args, output)
        assert digest(db) == before, args
        print(f"{' '.join(a if len(a) < 40 else '…' + a[-30:] for a in args[:4])} … → {output}")  # pytest -s
    assert not runs.exists()


def toml(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text(body)
    return str(path)


SMOKE = ["run-grid", "--grid", "smoke", "--experiments", str(EXPERIMENTS)]
GRID = '[grids.g]\nbackbones = ["cifar_resnet20"]\ndatasets = ["{dataset}"]\neps = ["8/255"]\nepochs = 1\n'


def test_experiments_files(db, tmp_path):
    grid = GRID.format(dataset="synthetic") + "pretrained = false\n"
    cases = {
        "directory": (str(tmp_path), "is a directory, not a file"),
        "no grids": (toml(tmp_path, "a.toml", "[defaults]\nepochs = 2\n"), "no [grids.NAME] table"),
        "threshold": (
            toml(tmp_path, "b.toml", grid + "adaptation_threshold = 2.0\n"),
            "adaptation_threshold: 2 is not a validation accuracy in [0, 1)",
        ),
        "lr": (toml(tmp_path, "c.toml", grid + "lr = -1e-3\n"), "lr must be a positive number, got -0.001"),
        "nan": (
            toml(tmp_path, "d.toml", grid + "warmup_epochs = nan\n"),
            "warmup_epochs must be a number >= 0",
        ),
        "protocol": (
            toml(tmp_path, "e.toml", grid + 'eval_protocol = "union"\n'),
            "eval_protocol: 'union' unknown; choose one of paper, monotone",
        ),
        "T2": (
            toml(
                tmp_path,
                "f.toml",
                GRID.format(dataset="synthetic") + 'settings = [{setting = "sched", t1 = 0.5, t2 = 3}]\n',
            ),
            "T2 (3) > epochs (1): epochs are 0-based, so the last is 0",
        ),
    }
    runs = tmp_path / "runs"
    common = ["--db", str(db), "--runs-dir", str(runs)]
    check(
        [
            (["run-grid", "--grid", "g", "--experiments", path, *common], line)
            for path, line in cases.values()
        ],
        db,
        runs,
    )


def test_flags(db, tmp_path):
    runs = tmp_path / "runs"
    smoke = [*SMOKE, "--runs-dir", str(runs), "--db", str(db)]
    cases = [
        ([*smoke, "--eps", "8/0"], "--eps: cannot read budget '8/0'"),
        ([*smoke, "--device", "meta"], "device 'meta' is not usable here"),
        (
            [*smoke, "--workers", "-1"],
            "run-grid: Invalid value for '--workers': Input should be greater than or equal to 0",
        ),
        ([*smoke, "--backbone", "Swin"], "--backbone Swin: unknown; valid ones are ViT, SWIN"),
        (
            ["evaluate", "--db", str(db), "x", "--steps", "0"],
            "Invalid value for '--steps': Input should be greater than or equal to 1",
        ),
        (
            ["evaluate", "--db", str(db), "x", "--protocol", "union"],
            "Invalid value for '--protocol': 'union' is not one of 'paper', 'monotone', 'budget'",
        ),
        (
            ["report", "--db", str(db), "--threshold", "2"],
            "--threshold 2: an adaptation threshold is a validation",
        ),
        (["report", "--db", str(db), "--out", str(tmp_path)], f"--out {tmp_path} is a directory"),
        (
            ["report", "--db", str(db), "--format", "xls"],
            "Invalid value for '--format': 'xls' is not one of 'md', 'csv', 'latex'",
        ),
        (
            ["plot", "schedule", "--t1", "40", "--t2", "10", "--out", str(tmp_path / "s.png")],
            "T1 (40) > T2 (10)",
        ),
        (["schedule", "sched", "--t1", "1", "--t2", "nan"], "t2 must be a finite number, got nan"),
        (["rftbench-no-such-command"], "No such command 'rftbench-no-such-command'"),
    ]
    check(cases, db, runs)


def test_executor_flags(db, tmp_path):
    runs = tmp_path / "runs"
    smoke = [*SMOKE, "--runs-dir", str(runs), "--db", str(db)]
    cases = [
        (
            [*smoke, "--executor", "ray"],
            "Invalid value for '--executor': 'ray' is not one of 'inline', 'local', 'slurm'",
        ),
        (
            [*smoke, "--executor", "local"],
            "--executor local needs --gpus LIST (one worker per GPU) or --processes",
        ),
        (
            [*smoke, "--executor", "local", "--gpus", "0,x"],
            "--gpus 0,x: write GPU indices separated by commas",
        ),
        ([*smoke, "--processes", "2"], "--gpus and --processes choose local workers: add --executor local"),
        (
            [*smoke, "--slurm-partition", "gpu"],
            "--slurm-* and --wait configure SLURM jobs: add --executor slurm",
        ),
        ([*smoke, "--wait"], "--slurm-* and --wait configure SLURM jobs: add --executor slurm"),
        (
            ["resume", "--db", str(db), "--executor", "slurm", "--slurm-time", "0"],
            "Invalid value for '--slurm-time': Input should be greater than or equal to 1",
        ),
    ]
    check(cases, db, runs)


def test_weights_files_that_do_not_load_or_do_not_fit(db, tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(os.urandom(2048))
    empty = tmp_path / "empty.pt"
    empty.touch()
    resnet20 = require(RESNET20)
    grid = toml(tmp_path, "w.toml", GRID.format(dataset="synthetic"))  # pretrained: its weights are needed
    runs = tmp_path / "runs"
    run_grid = ["run-grid", "--grid", "g", "--experiments", grid, "--db", str(db), "--runs-dir", str(runs)]
    cases = [
        (
            ["backbones", "--weights", f"cifar_resnet20={garbage}"],
            f"{garbage} does not load into cifar_resnet20",
        ),
        (["backbones", "--weights", f"cifar_resnet20={empty}"], f"{empty} does not load into cifar_resnet20"),
        (
            ["backbones", "--weights", f"tf_efficientnet_lite0={resnet20}"],
            f"{resnet20} does not load into tf_efficientnet_lite0",
        ),
        (["backbones", "--weights", f"cifar_resnet20={tmp_path}"], f"{tmp_path} is a directory, not a file"),
        (
            [*run_grid, "--weights", f"cifar_resnet20={garbage}"],
            f"{garbage} does not load into cifar_resnet20",
        ),
        ([*run_grid, "--weights", f"cifar_resnet20={tmp_path / 'none.th'}"], "none.th not found"),
    ]
    check(cases, db, runs)
    good = CliRunner().invoke(app, ["backbones", "--weights", f"cifar_resnet20={resnet20}"])
    assert good.exit_code == 0 and "error" not in good.output  # and a good file passes


def test_data_that_is_missing_empty_or_undecodable(db, tmp_path):
    empty, no_images, broken = tmp_path / "empty", tmp_path / "no_images", tmp_path / "broken"
    empty.mkdir()
    for name in "ab":
        (no_images / name).mkdir(parents=True)
        (broken / name).mkdir(parents=True)
        for i in range(10):
            # no image format's signature: random bytes now and then start with one (PIL then raises
            # OSError from that format's decoder instead of UnidentifiedImageError)
            (broken / name / f"{i}.jpg").write_bytes(f"not an image {name}{i} ".encode() * 20)
    a_file = tmp_path / "root.txt"
    a_file.write_text("not a folder")
    not_json = tmp_path / "split.json"
    not_json.write_text("{oops")
    grid = toml(tmp_path, "d.toml", GRID.format(dataset="imagefolder") + "pretrained = false\n")
    runs = tmp_path / "runs"
    run_grid = ["run-grid", "--grid", "g", "--experiments", grid, "--db", str(db), "--runs-dir", str(runs)]
    with_split = toml(
        tmp_path,
        "s.toml",
        GRID.format(dataset="imagefolder") + "pretrained = false\n"
        f'[datasets.imagefolder]\nroot = "{tmp_path}"\nsplit_file = "{not_json}"\n',
    )
    missing_split = with_split.replace("s.toml", "m.toml")
    Path(missing_split).write_text(
        Path(with_split).read_text().replace(str(not_json), str(tmp_path / "none.json"))
    )
    cases = [
        ([*run_grid, "--root", f"imagefolder={empty}"], "no images in its train split"),
        ([*run_grid, "--root", f"imagefolder={no_images}"], "no images in its train split"),
        (
            [*run_grid, "--root", f"imagefolder={broken}"],
            "cannot be decoded (UnidentifiedImageError); replace or",
        ),
        ([*run_grid, "--root", f"imagefolder={a_file}"], f"data root {a_file} is a file, not a folder"),
        ([*run_grid, "--root", f"imagefolder={tmp_path / 'none'}"], "data root"),
        (
            [
                "run-grid",
                "--grid",
                "g",
                "--experiments",
                with_split,
                "--db",
                str(db),
                "--runs-dir",
                str(runs),
            ],
            f"split file {not_json} is not",
        ),
        (
            [
                "run-grid",
                "--grid",
                "g",
                "--experiments",
                missing_split,
                "--db",
                str(db),
                "--runs-dir",
                str(runs),
            ],
            "none.json: No such file or directory",
        ),
    ]
    check(cases, db, runs)


def test_databases_that_cannot_be_used(db, tmp_path, read_only):
    corrupt, empty, foreign, newer = (tmp_path / f"{n}.db" for n in ("corrupt", "empty", "foreign", "newer"))
    corrupt.write_bytes(os.urandom(8192))
    empty.touch()
    with sqlite3.connect(foreign) as connection:
        connection.execute("create table notes (x)")
    shutil.copy(db, newer)
    with sqlite3.connect(newer) as connection:
        connection.execute("update schema_version set version = 99")
    locked = read_only(Path(shutil.copy(db, tmp_path / "locked.db")))
    runs = tmp_path / "runs"
    smoke = [*SMOKE, "--runs-dir", str(runs), "--db"]
    cases = [
        (["status", "--db", "foo://x/y"], "unknown dialect 'foo'"),
        (
            ["report", "--db", "mysql://u@127.0.0.1/db"],
            "needs the Python driver 'MySQLdb', which is not installed",
        ),
        (
            [*smoke, "postgresql://u@127.0.0.1:1/db"],
            "cannot open database postgresql+psycopg://u@127.0.0.1:1/db",
        ),
        (["status", "--db", str(corrupt)], "file is not a database"),
        # a 0-byte file (`touch`, a job prologue) is a database not yet written: read, it is not there
        (["report", "--db", str(empty)], "not found; run `rftbench run-grid` first or pass --db"),
        (["status", "--db", str(foreign)], "holds tables but none of rftbench's"),
        (
            ["status", "--db", str(newer)],
            "has schema version 99, this rftbench reads up to 6: upgrade rftbench",
        ),
        ([*smoke, str(locked)], "is read-only (file not writable)"),
        (
            ["resume", "--db", str(tmp_path / "none.db")],
            "not found; run `rftbench run-grid` first or pass --db",
        ),
    ]
    before = {p: p.read_bytes() for p in (corrupt, empty, foreign, newer, locked)}
    check(cases, db, runs)
    assert {p: p.read_bytes() for p in before} == before and not (tmp_path / "none.db").exists()
    for command in (["status"], ["report", "--table", "main"]):  # reading a read-only database works
        result = CliRunner().invoke(app, [*command, "--db", str(locked)])
        assert result.exit_code == 0 and "error" not in result.output, result.output
    assert locked.read_bytes() == before[locked]


def test_runs_grids_and_evaluations_that_do_not_exist_or_are_not_finished(db, tmp_path):
    from rftbench.results.store import Store

    store = Store.open(str(db))
    fix = next(r for r in store.runs() if r.setting == "fix")
    with store.session() as session:
        session.get(type(fix), fix.id).status = "interrupted"
        session.commit()
    runs = tmp_path / "runs"
    at = ["--db", str(db), "--runs-dir", str(runs)]
    cases = [
        (
            ["evaluate", fix.id[:8], *at],
            f"run {fix.id} is interrupted, not completed: finish it with `rftbench resume`",
        ),
        (["evaluate", "", *at], "3 runs with id ''"),
        (["evaluate", *at], "name one run (RUN_ID) or one grid (--grid NAME)"),
        (["evaluate", "--grid", "nosuch", *at], "no grid 'nosuch' in this database"),
        (["report", "--grid", "nosuch", "--db", str(db)], "no grid 'nosuch' in this database; it has smoke"),
        (["status", "--grid", "nosuch", "--db", str(db)], "no grid 'nosuch' in this database"),
        (
            ["report", "--table", "evaluations", "--run", "zzzz", "--db", str(db)],
            "no evaluated run with id 'zzzz'",
        ),
    ]
    check(cases, db, runs)


def test_runs_whose_config_a_newer_release_wrote(db, tmp_path):
    """A stored config with a key this release does not know: refused in one line, never read otherwise."""
    with sqlite3.connect(db) as connection:
        connection.execute("""update run set config = json_insert(config, '$.future_knob', 1)""")
        connection.execute("""update run set status = 'interrupted' where setting = 'fix'""")
        standard = connection.execute("select id from run where setting = 'standard'").fetchone()[0]
    runs = tmp_path / "runs"
    at = ["--db", str(db), "--runs-dir", str(runs)]
    unknown = "run config has unknown keys future_knob: a newer rftbench wrote it"
    check(
        [(["resume", *at], unknown), (["evaluate", standard[:8], "--eps", "4/255", *at], unknown)], db, runs
    )
    shown = CliRunner().invoke(app, ["report", "--db", str(db)])  # reports name them instead
    assert shown.exit_code == 2 and "error: no results at ε_g" in shown.output


def test_an_earlier_releases_database_is_left_as_it_was_by_bad_input_and_by_readers(tmp_path):
    """Bad input, a dry run, reports and status against a release-0.1 database: the file stays byte for
    byte (no upgrade, no copy beside it) until a command that writes opens it."""
    shutil.copytree(Path(__file__).parent / "fixtures" / "v1_smoke", tmp_path / "v1")
    db, runs = tmp_path / "v1" / "v1.db", tmp_path / "v1" / "runs"
    before, files = db.read_bytes(), sorted(p.name for p in db.parent.iterdir())
    grid = toml(tmp_path, "d.toml", GRID.format(dataset="imagefolder") + "pretrained = false\n")
    at = ["--db", str(db), "--runs-dir", str(runs)]
    check([(["run-grid", "--grid", "g", "--experiments", grid, "--root", f"imagefolder={tmp_path}", *at],
            "no images in its train split")], db, tmp_path / "none")  # fmt: skip
    dry_run = ["run-grid", "--grid", "smoke", "--experiments", str(EXPERIMENTS), "--dry-run"]
    for command in (dry_run, ["status"], ["report", "--table", "evaluations"]):
        result = CliRunner().invoke(app, [*command, "--db", str(db)])
        assert result.exit_code == 0 and "error" not in result.output, (command, result.output)
    assert db.read_bytes() == before and sorted(p.name for p in db.parent.iterdir()) == files
