"""experiments.toml: the named grids' sizes, their overlaps, overrides, paths, and one clear line for each
kind of bad input, through the loader and through `rftbench run-grid --dry-run`."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rftbench.cli import app
from rftbench.experiments.grids import GridError, load_experiments
from rftbench.experiments.schema import ExperimentsFile, experiments_schema

EXPERIMENTS = Path(__file__).resolve().parents[1] / "rftbench" / "experiments.toml"


@pytest.fixture(scope="module")
def experiments():
    return load_experiments(EXPERIMENTS)


def ids(experiments, grid, **filters) -> set[str]:
    return {job.run_id for job in experiments.jobs(grid, **filters)}


def test_grid_sizes_and_shared_runs(experiments):
    assert len(ids(experiments, "paper")) == 120
    assert len(ids(experiments, "sweep")) == 100
    assert len(ids(experiments, "paper") & ids(experiments, "sweep")) == 20  # fix at 4 and 8/255
    assert len(ids(experiments, "ablation")) == 30  # 15 T1/T2 pairs × 2 budgets
    assert len(ids(experiments, "paper") & ids(experiments, "ablation")) == 4  # fix and sched 12/37
    assert len(ids(experiments, "baselines")) == 78  # 36 + 54 less the 12 SWIN runs both blocks hold
    assert len(ids(experiments, "smoke")) == 3
    assert len(ids(experiments, "adaptive")) == 144  # 2 × 3 pairs × 4 settings × 2 budgets × 3 seeds
    assert len(ids(experiments, "adaptive") & ids(experiments, "baselines")) == 36  # fix, sched, auto, seed 0
    assert len(ids(experiments, "demo")) == 9  # 3 settings × 3 seeds


def test_paper_grid_configs(experiments):
    jobs = experiments.jobs("paper")
    assert {(j.config.setting, j.config.t1, j.config.t2) for j in jobs} == {
        ("fix", None, None),
        ("sched", 12, 37),
    }
    assert {j.config.eps for j in jobs} == {"4/255", "8/255"}
    assert all(j.config.epochs == 50 and j.config.eval_budgets == (j.config.eps,) for j in jobs)
    assert [j.position for j in jobs] == list(range(120))


def test_sweep_standard_runs_are_scored_at_the_paper_budgets(experiments):
    standard = [j.config for j in experiments.jobs("sweep", eps=["0/255"])]
    assert len(standard) == 10
    assert all(c.setting == "standard" and c.eval_budgets == ("4/255", "8/255") for c in standard)


def test_ablation_canonical_settings(experiments):
    settings = [
        (j.config.setting, j.config.t1, j.config.t2) for j in experiments.jobs("ablation", eps=["4/255"])
    ]
    assert settings[:4] == [("fix", None, None), ("linear", 0, 12), ("linear", 0, 30), ("linear", 0, 50)]
    assert ("sched", 12, 12) in settings and len(settings) == 15


def test_filters_narrow(experiments):
    assert len(ids(experiments, "paper", backbones=["SWIN"])) == 20
    assert len(ids(experiments, "paper", backbones=["SWIN"], datasets=["Cars"], eps=["4/255"])) == 2
    assert len(ids(experiments, "paper", settings=["sched"])) == 60
    assert len(ids(experiments, "sweep", eps=["0"])) == 10  # any spelling of a budget
    assert ids(experiments, "paper", backbones=["SWIN"], settings=["fix"]) <= ids(experiments, "sweep")


def test_piecewise_settings_in_a_grid(tmp_path):
    points = 'settings = [{ setting = "piecewise", points = [[0, 0], [5, 0.5], [30, 1]] },\n'
    hinge = '{ setting = "piecewise", points = [[12, 0], [37, 1]] }, { setting = "sched", t1 = 12, t2 = 37 }]'
    jobs = load_experiments(write(tmp_path, E + points + hinge)).jobs("g")
    # the hinge written as points is the hinge: one run, listed once
    assert [(j.config.setting, j.config.points, j.config.t1) for j in jobs] == [
        ("piecewise", ((0.0, 0.0), (5.0, 0.5), (30.0, 1.0)), None), ("sched", (), 12.0)
    ]  # fmt: skip


def test_the_bundled_file_validates_and_the_editor_schema_forbids_unknown_keys():
    ExperimentsFile.model_validate(tomllib.loads(EXPERIMENTS.read_text()))
    schema = experiments_schema()
    assert set(schema["properties"]) == {
        "defaults",
        "overrides",
        "backbones",
        "datasets",
        "grids",
        "tune",
        "slurm",
    }
    tables = [schema, *schema["$defs"].values()]
    assert {"Defaults", "GridBlock", "Setting", "RunFields", "SlurmOptions"} <= set(schema["$defs"])
    assert all(table["additionalProperties"] is False for table in tables if "properties" in table)
    grid = schema["$defs"]["GridBlock"]["properties"]
    assert "SWIN" in grid["backbones"]["items"]["enum"] and "Cars" in grid["datasets"]["items"]["enum"]
    assert schema["$defs"]["Setting"]["properties"]["setting"]["enum"][:3] == ["standard", "fix", "sched"]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "experiments.toml"
    path.write_text(text)
    return path


GOOD = """
[defaults]
epochs = 10
lr = 1e-4
adaptation_threshold = 0.05

[overrides.SWIN]
lr = 5e-5
[overrides."SWIN/Cars"]
batch_size = 16
weight_decay = 0.1

[datasets.Cars]
root = "data/cars"
[backbones.SWIN]
weights = "../w/swin.safetensors"

[grids.g]
backbones = ["SWIN", "ViT"]
datasets = ["Cars", "Cub"]
settings = [{ setting = "fix" }]
eps = ["4/255"]
seeds = [0, 1]
lr = 2e-4
[grids.g.overrides.Cub]
epochs = 5
"""


def test_overrides_most_specific_wins_and_paths_are_relative_to_the_file(tmp_path):
    experiments = load_experiments(write(tmp_path, GOOD))
    configs = {(j.config.backbone, j.config.dataset, j.config.seed): j for j in experiments.jobs("g")}
    assert len(configs) == 8
    swin_cars = configs["SWIN", "Cars", 0]
    assert (swin_cars.config.lr, swin_cars.config.batch_size, swin_cars.config.weight_decay) == (
        5e-5,
        16,
        0.1,
    )
    assert swin_cars.config.epochs == 10
    assert configs["ViT", "Cars", 1].config.lr == 2e-4  # the grid's value over [defaults]
    assert configs["ViT", "Cub", 0].config.epochs == 5  # the grid's override of a dataset
    assert swin_cars.paths == {
        "data_root": str(tmp_path / "data/cars"),
        "weights": str(tmp_path.parent / "w/swin.safetensors"),
    }
    assert configs["ViT", "Cub", 0].paths == {}
    # paths and grid names are not part of a run's identity
    assert (
        swin_cars.run_id
        == load_experiments(write(tmp_path, GOOD.replace("data/cars", "elsewhere"))).jobs("g")[0].run_id
    )


G = '[grids.g]\nbackbones = ["SWIN"]\ndatasets = ["Cars"]\n'
E = G + 'eps = ["4/255"]\n'
BAD = [
    ("[grids.g\nbackbones = 1", r"not valid TOML .*line 1"),
    (E + "epoch = 3", r"grids\.g: unknown key\(s\) epoch; valid keys: .*epochs"),
    ('[defaults]\nlr = "fast"\n' + E, r"defaults\.lr: expected float, got str 'fast'"),
    (E + "epochs = 2.5", r"grids\.g\.epochs: expected int, got float 2\.5"),
    (E.replace("SWIN", "Swin"), r"grids\.g\.backbones: unknown backbone 'Swin'; valid ones: ViT, SWIN"),
    (E.replace("Cars", "cars"), r"grids\.g\.datasets: unknown dataset 'cars'; valid ones: Aircraft"),
    (
        E + 'settings = [{ setting = "cosine" }]',
        r"settings\[0\]\.setting: unknown schedule 'cosine'; valid ones",
    ),
    (E + 'settings = [{ setting = "sched", t1 = 37, t2 = 12 }]', r"settings\[0\]: T1 \(37\) > T2 \(12\)"),
    (G + 'eps = ["4/255", "300/255"]', r"grids\.g\.eps\[1\]: budget '300/255' is outside \[0, 1\]"),
    (G + 'eps = ["-1/255"]', r"grids\.g\.eps\[0\]: budget '-1/255' is outside \[0, 1\]"),
    (E + 'settings = [{ setting = "sched", t1 = 12, t2 = 60 }]', r"T2 \(60\) > epochs \(50\)"),
    ("[overrides.Nope]\nlr = 1.0\n" + E, r"overrides\.Nope: 'Nope' is neither a backbone nor a dataset"),
    (
        '[datasets.Cars]\npath = "x"\n' + E,
        r"datasets\.Cars: unknown key\(s\) path; valid keys: root, split_file",
    ),
    (
        E + 'settings = [{ setting = "piecewise", points = [[0, 0], [5, 2]] }]',
        r"grids\.g\.settings\[0\]\.points: piecewise point \[5, 2\]: .*fractions of ε_g in \[0, 1\]",
    ),
    (
        E + 'settings = [{ setting = "piecewise", points = "0:0,5:1" }]',
        r"settings\[0\]\.points: piecewise points must",
    ),
    (
        E + 'settings = [{ setting = "piecewise", points = [[0, 0], [5, 0.5], [60, 1]] }]',
        r"point at epoch 60 > epochs",
    ),
    (G, r"grids\.g: missing `eps`"),
    ("[defaults]\nepochs = 3", r"no \[grids\.NAME\] table"),
    ("grids = { g = 3 }", r"grids\.g: expected a table, got int"),
]


@pytest.mark.parametrize("text, message", BAD, ids=[m.split(":")[0][:30] for _, m in BAD])
def test_bad_input_is_one_line_naming_file_key_and_problem(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(GridError) as info:
        load_experiments(path)
    assert "\n" not in str(info.value)
    assert str(info.value).startswith(f"{path}: ")
    assert re.search(message, str(info.value)), str(info.value)


def test_dry_run_lists_the_paper_grid_without_touching_a_database(tmp_path):
    db = tmp_path / "r.db"
    result = CliRunner().invoke(
        app, ["run-grid", "--grid", "paper", "--dry-run", "--experiments", str(EXPERIMENTS), "--db", str(db)]
    )
    assert result.exit_code == 0, result.output
    assert "120 jobs: 0 completed, 120 to run" in result.output
    # Aircraft 3,334 + Caltech 14,649 + Cars 6,922 + Cub 5,394 + Dogs 10,800 = 41,099 training images,
    # × 6 backbones × 4 runs × 50 epochs × (7 + 1) passes
    assert f"work: {41099 * 6 * 4 * 50 * 8:.3g} training forward-backward passes" in result.output
    assert not db.exists()


def test_dry_run_filters(tmp_path):
    result = CliRunner().invoke(
        app,
        ["run-grid", "--grid", "sweep", "--dry-run", "--backbone", "SWIN", "--dataset", "Cub",
         "--experiments", str(EXPERIMENTS), "--db", str(tmp_path / "r.db")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "10 jobs: 0 completed, 10 to run" in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--grid", "nope"], "no grid 'nope'; the file defines paper, sweep"),
        (["--backbone", "Swin"], "--backbone Swin: unknown; valid ones are ViT, SWIN"),
        (["--eps", "4/0"], "--eps: cannot read budget '4/0'"),
        (["--dataset", "Cars", "--eps", "3/255"], "grid 'paper' has no job matching these filters"),
    ],
)
def test_bad_flags_fail_with_one_line(tmp_path, args, message):
    result = CliRunner().invoke(app, ["run-grid", "--dry-run", "--experiments", str(EXPERIMENTS), *args])
    assert result.exit_code == 2
    assert message in result.output and result.output.count("\n") == 1, result.output


def test_how_final_evaluations_are_measured_is_a_grid_setting_outside_the_run_id(tmp_path):
    path = tmp_path / "e.toml"
    path.write_text(
        '[defaults]\neval_precision = "bf16"\n'
        '[grids.a]\nbackbones = ["SWIN"]\ndatasets = ["Cars"]\neps = ["4/255"]\n'
        '[grids.b]\nbackbones = ["SWIN"]\ndatasets = ["Cars"]\neps = ["4/255"]\neval_protocol = "monotone"\n'
    )
    experiments = load_experiments(path)
    (a,), (b,) = experiments.jobs("a"), experiments.jobs("b")
    assert (a.eval_protocol, a.eval_precision) == ("paper", "bf16")
    assert (b.eval_protocol, b.eval_precision) == ("monotone", "bf16")
    assert a.run_id == b.run_id  # one training, scored two ways: one run with two evaluation rows
    only = {"backbones": ["SWIN"], "datasets": ["Cars"], "eps": ["4/255"], "settings": ["fix"]}
    (paper,) = load_experiments(EXPERIMENTS).jobs("paper", **only)
    assert (paper.eval_protocol, paper.eval_precision) == ("paper", "fp32")  # the defaults


def test_splits_auto_takes_the_papers_lists_where_they_are_and_says_so(tmp_path, monkeypatch):
    """`splits = "auto"` (the default): "paper" for Caltech/Cub/Dogs whose root holds paper_splits/, else
    "rules", whose runs keep the ids they had before the field existed; an explicit choice is kept."""
    monkeypatch.delenv("RFTBENCH_DATA_CALTECH", raising=False)
    one_per_dataset = dict(backbones=["ViT"], settings=["fix"], eps=["4/255"])
    before = {
        job.config.dataset: job.run_id
        for job in load_experiments(EXPERIMENTS).jobs("paper", **one_per_dataset)
    }
    caltech, cub = tmp_path / "caltech", tmp_path / "cub"
    for split in ("train", "val", "test"):
        (caltech / "paper_splits").mkdir(parents=True, exist_ok=True)
        (caltech / "paper_splits" / f"{split}.json").write_text("{}")
    spec = load_experiments(EXPERIMENTS, roots={"Caltech": str(caltech), "Cub": str(cub)})
    jobs = spec.jobs("paper", **one_per_dataset)
    splits = {job.config.dataset: job.config.splits for job in jobs}
    assert splits == {
        "Aircraft": "rules",
        "Caltech": "paper",
        "Cars": "rules",
        "Cub": "rules",
        "Dogs": "rules",
    }
    assert {j.config.dataset: j.run_id for j in jobs if j.config.dataset != "Caltech"} == {
        d: i for d, i in before.items() if d != "Caltech"
    }  # "rules" is the default: not hashed, the ids of every earlier release
    assert next(j for j in jobs if j.config.dataset == "Caltech").run_id != before["Caltech"]
    notes = spec.split_notes(jobs)
    assert notes[0] == f"Caltech: the paper's split lists from {caltech / 'paper_splits'}"
    assert any(n.startswith(f"Cub: the paper's split lists are not in {cub / 'paper_splits'}") for n in notes)
    assert len(notes) == 3  # Caltech, Cub, Dogs; Aircraft and Cars have no such lists
    chosen = write(
        tmp_path,
        '[grids.g]\nbackbones = ["ViT"]\ndatasets = ["Caltech", "Cars"]\neps = ["4/255"]\nsplits = "rules"\n',
    )
    kept = load_experiments(chosen, roots={"Caltech": str(caltech)}).jobs("g")
    assert {j.config.splits for j in kept} == {"rules"}
    bad = write(
        tmp_path, '[grids.g]\nbackbones = ["ViT"]\ndatasets = ["Cub"]\neps = ["4/255"]\nsplits = "roli"\n'
    )
    with pytest.raises(GridError, match="grids.g.splits: 'roli' unknown; choose one of auto, rules, paper"):
        load_experiments(bad)
