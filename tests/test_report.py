"""Reports and plots on a database filled with known numbers through the store API, checked against hand
computations (means, scipy's paired t-test and correlations on the same arrays), and the paper's Table 1
reproduced from the shipped CSV."""

from __future__ import annotations

import csv
import io
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from results_helpers import write_epoch
from scipy import stats
from typer.testing import CliRunner

from rftbench.cli import app
from rftbench.core.config import RunConfig
from rftbench.core.metrics import EvalProtocol
from rftbench.experiments.grids import Job
from rftbench.reports.render import render
from rftbench.reports.results import ReportError, Results, Selection
from rftbench.reports.tables import build
from rftbench.results.batches import EvalLog, batches_key
from rftbench.results.queue import JobQueue, Worker
from rftbench.results.store import Store

PAPER_CSV = Path(__file__).resolve().parents[1].parent / "shared" / "paper" / "results.csv"
BACKBONES, DATASETS = ["ViT", "SWIN"], ["Aircraft", "Cars", "Cub"]
# (clean, adv, eadv) in % for fix and sched at 4/255, per (backbone, dataset)
FIX = {
    ("ViT", "Aircraft"): (6.4, 2.8, 4.48),
    ("ViT", "Cars"): (12.7, 4.9, 8.2),
    ("ViT", "Cub"): (42.82, 15.12, 27.79),
    ("SWIN", "Aircraft"): (7.7, 4.8, 6.11),
    ("SWIN", "Cars"): (60.2, 29.7, 44.74),
    ("SWIN", "Cub"): (72.25, 41.87, 57.55),
}
SCHED = {
    ("ViT", "Aircraft"): (58.6, 13.2, 34.95),
    ("ViT", "Cars"): (73.4, 19.1, 46.71),
    ("ViT", "Cub"): (73.4, 23.63, 48.09),
    ("SWIN", "Aircraft"): (73.8, 32.0, 53.75),
    ("SWIN", "Cars"): (84.7, 43.2, 66.41),
    ("SWIN", "Cub"): (40.0, 50.0, 45.0),
}
# the ε sweep of SWIN-Cars: fix at k/255 with its validation curve (6 epochs, threshold 0.05)
SWEEP = {
    1: [0.3, 0.5, 0.6, 0.7, 0.75, 0.8],
    2: [0.02, 0.2, 0.4, 0.5, 0.6, 0.7],
    3: [0.01, 0.04, 0.1, 0.3, 0.4, 0.5],
    5: [0.01, 0.02, 0.03, 0.04, 0.2, 0.3],
}
STANDARD_CLEAN = 88.1


def add_run(store: Store, grid: str, config: RunConfig, accs: list[float], evaluation: dict | None) -> None:
    store.record_grid(grid, [Job(config, grid, 0, {})], adaptation_threshold=0.05)
    queue, worker = JobQueue(store), Worker("test")
    queue.claim(worker, [config.run_id], 60)
    for epoch, acc in enumerate(accs):
        write_epoch(
            store,
            config.run_id,
            {
                "epoch": epoch,
                "eps": config.eps_value,
                "lr": 1e-4,
                "train_loss": 1.0,
                "train_acc": acc,
                "val_loss": 1.0,
                "val_acc": acc,
                "val_adv_loss": 2.0,
                "val_adv_acc": acc / 2,
                "val_adv_eps": "4/255",
                "epoch_seconds": 1.0,
                "images_per_second": 1.0,
            },
        )
    if evaluation is not None:
        queue.complete(config.run_id, worker, evaluation)


def evaluation(budget: str, clean: float, adv: float, eadv: float, **protocol) -> dict:
    return {
        "protocol": EvalProtocol(**protocol).as_dict(),
        "n": 1000,
        "clean": clean / 100,
        "attacks_run": 0,
        "budgets": [
            {
                "budget": budget,
                "clean": clean / 100,
                "adv": adv / 100,
                "eadv": eadv / 100,
                "eps": ["0/255", budget],
                "accuracies": [clean / 100, adv / 100],
            }
        ],
    }


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("report") / "r.db")
    store = Store.open(path)
    for (backbone, dataset), numbers in FIX.items():
        add_run(
            store,
            "g",
            RunConfig(backbone=backbone, dataset=dataset, setting="fix", eps="4/255", epochs=6),
            [0.5] * 6,
            evaluation("4/255", *numbers),
        )
    for (backbone, dataset), numbers in SCHED.items():
        config = RunConfig(
            backbone=backbone, dataset=dataset, setting="sched", t1=2, t2=4, eps="4/255", epochs=6
        )
        add_run(store, "g", config, [0.5] * 6, evaluation("4/255", *numbers))
    for k, accs in SWEEP.items():
        config = RunConfig(backbone="SWIN", dataset="Cars", setting="fix", eps=f"{k}/255", epochs=6, seed=1)
        add_run(store, "sweep", config, accs, evaluation(f"{k}/255", 100 * accs[-1] - 3, 10.0, 20.0))
    standard = RunConfig(
        backbone="SWIN", dataset="Cars", eps="0/255", eval_budgets=["4/255"], epochs=6, seed=1
    )
    add_run(store, "sweep", standard, [0.6] * 6, evaluation("4/255", STANDARD_CLEAN, 1.0, 30.0))
    for t1, t2 in ((0, 3), (3, 3)):
        config = RunConfig(
            backbone="SWIN", dataset="Cars", setting="sched", t1=t1, t2=t2, eps="4/255", epochs=6
        )
        add_run(store, "ablation", config, [0.5] * 6, evaluation("4/255", 50.0 + t2, 20.0 + t1, 35.0))
    uniform = RunConfig(backbone="SWIN", dataset="Cars", setting="uniform", eps="4/255", epochs=6)
    add_run(store, "baselines", uniform, [0.5] * 6, evaluation("4/255", 70.0, 30.0, 50.0))
    running = RunConfig(backbone="ViT", dataset="Cars", setting="uniform", eps="4/255", epochs=6)
    add_run(store, "baselines", running, [0.5, 0.5], None)  # in progress: 2 of 6 epochs
    return path


def results(db: str, grid: str | None = None) -> Results:
    return Results.from_store(Store.open(db, create=False), grid=grid)


def test_main_table_cells_and_in_progress_marks(db):
    (section,) = build("main", results(db, "g"), eps=["4/255"])
    table = section.table.set_index(["Backbone", "Setting"])
    assert list(table.columns[:3]) == ["Aircraft Clean", "Aircraft Adv.", "Aircraft E. adv."]
    assert table.loc[("SWIN", "fix"), "Cars Clean"] == "60.20"
    assert table.loc[("ViT", "sched"), "Cub E. adv."] == "48.09"
    assert table.loc[("SWIN", "sched"), "Cub Adv."] == "50.00"
    every = build("main", results(db), eps=["4/255"])[0].table.set_index(["Backbone", "Setting"])
    assert every.loc[("ViT", "uniform"), "Cars Clean"] == "(running 2 ep.)"  # marked, not blank
    assert every.loc[("SWIN", "sched 2/4"), "Cars Clean"] == "84.70"  # several T1/T2: labelled
    assert every.loc[("SWIN", "standard"), "Cars Clean"] == "88.10"
    long = section.long
    assert set(long.columns) >= {"backbone", "dataset", "setting", "eps", "metric", "value"}
    assert len(long) == 2 * 3 * 2 * 3 and set(long.eps) == {"4/255"}


def test_averages_equal_hand_means(db):
    sections = build("averages", results(db, "g"), eps=["4/255"])
    per_backbone = sections[0].table.set_index(["Backbone", "Setting"])
    swin_fix_clean = np.mean([FIX["SWIN", d][0] for d in DATASETS])
    assert per_backbone.loc[("SWIN", "fix"), "Clean"] == f"{swin_fix_clean:.2f}"
    assert per_backbone.loc[("SWIN", "fix"), "n datasets"] == 3
    per_dataset = sections[1].table.set_index(["Dataset", "Setting"])
    cub_sched_eadv = np.mean([SCHED[b, "Cub"][2] for b in BACKBONES])
    assert per_dataset.loc[("Cub", "sched"), "E. adv."] == f"{cub_sched_eadv:.2f}"


def test_ttest_equals_scipy_on_the_same_arrays(db):
    (section,) = build("ttest", results(db, "g"), eps=["4/255"])
    table = section.table.set_index("Metric")
    for i, name in enumerate(["Clean", "Adv.", "E. adv."]):
        sched = np.array([SCHED[k][i] for k in FIX])
        fix = np.array([FIX[k][i] for k in FIX])
        t, p = stats.ttest_rel(sched, fix)
        row = table.loc[name]
        assert (row["n pairs"], row["t"], row["p"]) == (6, f"{t:.3f}", f"{p:.2e}")
        assert row["mean diff (pp)"] == f"{np.mean(sched - fix):.2f}"
        assert (row["wins"], row["losses"]) == ((sched > fix).sum(), (sched < fix).sum())
    assert table.loc["Adv.", "losses"] == 0 and table.loc["Clean", "losses"] == 1  # SWIN-Cub, planted


def test_delay_start_epochs_correlations_and_drops(db):
    per_run, correlations, drops = build("delay", results(db, "sweep"))
    starts = {row["ε_g"]: row["start epoch"] for _, row in per_run.table.iterrows()}
    assert starts == {"1/255": 0, "2/255": 1, "3/255": 2, "5/255": 4, "0/255": 0}  # first acc > 0.05
    start = np.array([0, 1, 2, 4])
    final = np.array([100 * SWEEP[k][-1] for k in (1, 2, 3, 5)])
    row = correlations.table.iloc[0]
    assert (row["Backbone"], row["Dataset"], row["n runs"]) == ("SWIN", "Cars", 4)  # ε = 0 excluded
    assert row["Pearson r"] == f"{np.corrcoef(start, final)[0, 1]:.3f}"
    assert row["Spearman ρ"] == f"{stats.spearmanr(start, final).statistic:.3f}" == "-1.000"
    drop = drops.table.set_index("ε_g").loc["5/255"]
    assert drop["drop (pp)"] == f"{STANDARD_CLEAN - (100 * 0.3 - 3):.2f}"
    with_standard = build("delay", results(db, "sweep"), include_standard=True)[1].table.iloc[0]
    assert with_standard["n runs"] == 5


def test_ablation_baselines_and_evaluations(db):
    (ablation,) = build("ablation", results(db, "ablation"), eps=["4/255"])
    rows = ablation.table.set_index(["T1", "T2"])
    assert rows.loc[("0", "3"), "4/255 Clean"] == "53.00" and rows.loc[("3", "3"), "4/255 Adv."] == "23.00"
    (baselines,) = build("baselines", results(db), eps=["4/255"])
    row = baselines.table.set_index(["Backbone", "Dataset"]).loc[("SWIN", "Cars")]
    assert (row["fix Clean"], row["uniform Clean"], row["sched Clean"]) == ("60.20", "70.00", "84.70")
    (evaluations,) = build("evaluations", results(db, "baselines"))
    assert list(evaluations.table["Clean"]) == ["70.00"]


def test_formats(db):
    sections = build("main", results(db, "g"), eps=["4/255"])
    rows = list(csv.DictReader(io.StringIO(render(sections, "csv"))))
    assert {"backbone", "dataset", "setting", "eps", "metric", "value"} <= set(rows[0])
    assert any(
        r["backbone"] == "SWIN"
        and r["dataset"] == "Cars"
        and r["setting"] == "fix"
        and r["metric"] == "clean"
        and float(r["value"]) == 60.2
        for r in rows
    )
    latex = render(sections, "latex")
    assert "\\toprule" in latex and "\\midrule" in latex and "\\bottomrule" in latex and "60.20" in latex
    markdown = render(sections, "md")
    assert "| SWIN | fix | 7.70 | 4.80 | 6.11 | 60.20 |" in markdown


def test_paper_table_1_is_reproduced_exactly(tmp_path):
    out = tmp_path / "t1.csv"
    result = CliRunner().invoke(
        app,
        [
            "report",
            "--results",
            "paper",
            "--table",
            "main",
            "--eps",
            "4/255",
            "--format",
            "csv",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    ours = {
        (r["backbone"], r["dataset"], r["setting"], r["metric"]): r["value"]
        for r in csv.DictReader(out.open())
    }
    with PAPER_CSV.open() as f:
        paper = {
            (r["backbone"], r["dataset"], r["setting"], r["metric"]): r["value"]
            for r in csv.DictReader(f)
            if r["table"] == "1"
        }
    assert len(paper) == 6 * 5 * 2 * 3
    assert {k: f"{float(v):.2f}" for k, v in ours.items()} == paper


def test_paper_tables_and_compare(db, tmp_path):
    runner = CliRunner()
    ttest = runner.invoke(app, ["report", "--results", "paper", "--table", "ttest"])
    assert ttest.exit_code == 0 and "30" in ttest.output, ttest.output
    ablation = runner.invoke(app, ["report", "--results", "paper", "--table", "ablation", "--format", "csv"])
    rows = list(csv.DictReader(io.StringIO(ablation.output)))
    assert len(rows) == 90 and {r["t1"] for r in rows} >= {"0.0", "5.0", "12.0", "25.0"}
    delay = runner.invoke(app, ["report", "--results", "paper", "--table", "delay"])
    assert delay.exit_code == 2 and "publishes no" in delay.output
    (section,) = build("main", results(db, "g"), eps=["4/255"], compare=Results.paper("main"))
    table = section.table.set_index(["Backbone", "Setting"])
    assert table.loc[("SWIN", "fix"), "Cars Clean"] == "60.20 (60.20, +0.00)"
    assert table.loc[("SWIN", "sched"), "Cub Clean"] == "40.00 (82.29, -42.29)"


PLOTS = [
    ("curves", ["--backbone", "SWIN", "--dataset", "Cars", "--eps", "4/255"]),
    ("robustness", ["--dataset", "Cars"]),
    ("sweep", []),
    ("schedule", []),
]


@pytest.mark.parametrize("kind, extra", PLOTS)
def test_plots_write_pngs(db, tmp_path, kind, extra):
    out = tmp_path / f"{kind}.png"
    result = CliRunner().invoke(app, ["plot", kind, "--out", str(out), "--db", db, *extra])
    assert result.exit_code == 0, result.output
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size[0] > 400 and image.size[1] > 250
    assert out.stat().st_size > 10_000


def test_report_errors_are_one_line(db, tmp_path):
    for args, message in [
        (["--table", "nope"], "Invalid value for '--table': 'nope' is not one of 'main', 'averages',"),
        (["--table", "main", "--eps", "6/255"], "no results at ε_g = 6/255"),
        (
            ["--format", "xml"],
            "Invalid value for '--format': 'xml' is not one of 'md', 'csv', 'latex'",
        ),
    ]:
        result = CliRunner().invoke(app, ["report", "--db", db, *args])
        assert result.exit_code == 2 and message in result.output and result.output.count("\n") == 1, (
            result.output
        )
    missing = CliRunner().invoke(app, ["report", "--db", str(tmp_path / "none.db")])
    assert missing.exit_code == 2 and "not found" in missing.output


def test_rows_of_another_protocol_or_budget_never_reach_a_table(db, tmp_path):
    """Extra rows (another budget of a standard run, a random start, bf16) are shown by `evaluations` only;
    the tables and the note about missing rows follow one rule."""
    path = tmp_path / "r.db"
    with sqlite3.connect(db) as source, sqlite3.connect(path) as copy:  # with what its -wal file holds
        source.backup(copy)
    store = Store.open(str(path))
    standard = next(r for r in store.runs(grid="sweep") if r.setting == "standard")
    before = build("main", Results.from_store(store, grid="sweep"))
    store.add_evaluation(standard.id, evaluation("2/255", 88.1, 5.0, 40.0), kind="extra")  # another budget
    store.add_evaluation(
        standard.id, evaluation("4/255", 88.1, 0.0, 1.0, random_start=True, seed=3), kind="extra"
    )
    store.add_evaluation(standard.id, evaluation("4/255", 88.1, 0.0, 1.0, precision="bf16"), kind="extra")
    after = build("main", Results.from_store(store, grid="sweep"))
    assert [s.title for s in after] == [s.title for s in before]  # no section at 2/255
    assert all(a.table.equals(b.table) for a, b in zip(after, before))
    bf16 = Results.from_store(store, grid="sweep", selection=Selection(precision="bf16"))
    assert (
        "have no paper bf16 evaluation" in bf16.missing
        and "--protocol paper --precision bf16" in bf16.missing
    )


def test_a_cell_run_twice_under_two_grid_definitions_shows_its_newest_run_and_says_so(tmp_path):
    """A grid whose definition changed (release 0.2 made the paper grids bf16) holds two runs of a cell:
    the table shows the newest one's numbers, never their mean, and the note names what differs."""
    store = Store.open(str(tmp_path / "r.db"))
    fp32 = RunConfig(backbone="SWIN", dataset="Cars", setting="fix", eps="4/255", epochs=2, precision="fp32")
    bf16 = RunConfig(**{**fp32.to_dict(), "precision": "bf16", "augmentation": "device"})
    add_run(store, "paper", fp32, [0.1, 0.2], evaluation("4/255", 50.0, 10.0, 30.0))
    add_run(store, "paper", bf16, [0.1, 0.2], evaluation("4/255", 70.0, 20.0, 40.0))
    results = Results.from_store(store, grid="paper")
    assert sorted(results.values.query("metric == 'clean'").value) == [70.0]
    assert set(results.values.run_id) == {bf16.run_id}
    assert f"1 older run(s) set aside ({fp32.run_id})" in results.missing
    assert "differs in augmentation, precision;" in results.missing
    lone = Store.open(str(tmp_path / "lone.db"))
    add_run(lone, "paper", fp32, [0.1, 0.2], evaluation("4/255", 50.0, 10.0, 30.0))
    assert "set aside" not in Results.from_store(lone, grid="paper").missing


def test_the_paper_autoattack_table_is_table_6(tmp_path):
    result = CliRunner().invoke(
        app,
        [
            "report",
            "--results",
            "paper",
            "--table",
            "autoattack",
            "--format",
            "md",
            "--out",
            str(tmp_path / "t.md"),
        ],
    )
    assert result.exit_code == 0, result.output
    text = (tmp_path / "t.md").read_text()
    # SWIN-Aircraft fix at 4/255: clean 7.70, APGD 4.80 / 6.11, AutoAttack 3.30 / 4.97 (Table 6)
    assert "| SWIN | Aircraft | fix | 7.70 | 4.80 | 6.11 | 3.30 | 4.97 |" in text
    assert "| SWIN | Cars | sched | 78.00 | 23.50 | 53.57 | 22.90 | 52.81 |" in text  # 8/255


def test_the_autoattack_table_and_the_worst_case_over_stored_attacks(db, tmp_path):
    """AutoAttack rows sit beside the selected APGD rows of the same run; the worst case is the share of
    samples that every evaluation stored with per-sample flags left correct, by hand: APGD 1101 0110 and
    AutoAttack 1011 0100 leave 1001 0100, 3 of 8."""
    path = tmp_path / "r.db"
    with sqlite3.connect(db) as source, sqlite3.connect(path) as copy:
        source.backup(copy)
    store = Store.open(str(path))
    run = next(
        r for r in store.runs(grid="g") if (r.backbone, r.dataset, r.setting) == ("SWIN", "Cars", "fix")
    )
    for flags, protocol in (
        (("1101", "0110"), EvalProtocol(steps=50)),
        (("1011", "0100"), EvalProtocol(attack="autoattack-standard", steps=100, protocol="budget")),
    ):
        key = {"protocol": protocol.as_dict(), "eps": ["0/255", "4/255"]}
        log = EvalLog(store, run.id, key)
        for index, text in enumerate(flags):
            log.save(index, {"n": 4, "start": 4 * index, "flags": {"0/255": "1111", "4/255": text}})
        accuracy = sum(t.count("1") for t in flags) / 8
        row = evaluation("4/255", 60.2, 100 * accuracy, 0.0, **protocol.as_dict())
        row["budgets"][0]["eadv"] = None if protocol.autoattack else 0.3
        row |= {"batches": batches_key(key), "per_attack": {"4/255": {"apgd-ce": 0.5, "square": accuracy}}}
        store.add_evaluation(run.id, row, kind="extra")
    assert store.worst_case(run.id, "4/255") == 3 / 8
    (section,) = build("autoattack", Results.from_store(store, grid="g"))
    row = section.table.set_index(["Backbone", "Dataset", "Setting"]).loc[("SWIN", "Cars", "fix")]
    assert (row["Clean"], row["APGD Adv."], row["APGD E. adv."]) == (
        "60.20",
        "29.70",
        "44.74",
    )  # the final row
    assert (row["AA Adv."], row["AA E. adv."], row["Worst Adv."]) == ("50.00", "", "37.50")
    assert len(section.table) == 1  # only runs with an AutoAttack evaluation
    other = evaluation("4/255", 60.2, 40.0, 45.0, attack="autoattack-standard", steps=20)  # another one
    store.add_evaluation(run.id, other, kind="extra")
    (section,) = build("autoattack", Results.from_store(store, grid="g"))
    assert list(section.table["AutoAttack"]) == [
        "standard, budget, 100, fp32, 0",
        "standard, paper, 20, fp32, 0",
    ]
    assert list(section.table["AA Adv."]) == ["50.00", "40.00"] and list(section.table["AA E. adv."]) == [
        "",
        "45.00",
    ]
    (plain,) = build("evaluations", Results.from_store(store, grid="g"), run_id=run.id)
    assert set(plain.table.attack) == {"apgd-ce Linf", "autoattack-standard Linf"}
    with pytest.raises(ReportError, match="no AutoAttack evaluations in this database"):
        build("autoattack", Results.from_store(store, grid="sweep"))


# ---- seeds -----------------------------------------------------------------------------------------------

# (clean, adv, eadv) in % per seed, for fix and sched at 8/255 on two pairs, and a piecewise run
SEEDED = {
    ("fix", "SWIN", "Cars"): [(40.0, 10.0, 20.0), (44.0, 12.0, 21.0), (42.0, 11.0, 25.0)],
    ("sched", "SWIN", "Cars"): [(50.0, 12.0, 26.0), (51.0, 11.0, 27.0), (55.0, 13.0, 29.0)],
    ("fix", "ViT", "Cub"): [(30.0, 5.0, 10.0), (31.0, 6.0, 12.0), (35.0, 4.0, 11.0)],
    ("sched", "ViT", "Cub"): [(36.0, 6.0, 13.0), (33.0, 6.0, 12.0), (38.0, 7.0, 15.0)],
}
SEEDED_CURVES = {0: [0.01, 0.02, 0.3, 0.5], 1: [0.01, 0.2, 0.4, 0.5], 2: [0.02, 0.03, 0.04, 0.04]}


@pytest.fixture(scope="module")
def seeded(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("seeds") / "s.db")
    store = Store.open(path)
    for (setting, backbone, dataset), per_seed in SEEDED.items():
        hinge = {"t1": 1, "t2": 3} if setting == "sched" else {}
        for seed, numbers in enumerate(per_seed):
            config = RunConfig(backbone=backbone, dataset=dataset, setting=setting, eps="8/255", epochs=4,
                               seed=seed, **hinge)  # fmt: skip
            curve = SEEDED_CURVES[seed] if setting == "fix" else [0.5] * 4
            add_run(store, "s", config, curve, evaluation("8/255", *numbers))
    for seed, clean in enumerate((60.0, 62.0)):
        points = ((0, 0), (1, 0.5), (3, 1))
        config = RunConfig(backbone="SWIN", dataset="Cars", setting="piecewise", points=points, eps="8/255",
                           epochs=4, seed=seed)  # fmt: skip
        add_run(store, "s", config, [0.5] * 4, evaluation("8/255", clean, 9.0, 19.0))
    return path


def test_cells_over_seeds_show_mean_and_spread(seeded):
    data = results(seeded)
    (section,) = build("main", data)
    row = section.table.set_index(["Backbone", "Setting"]).loc[("SWIN", "fix")]
    # clean 40, 44, 42: mean 42, sd 2; E.adv 20, 21, 25: mean 22, sd sqrt(7) = 2.6458
    assert row["Cars Clean"] == "42.00 ± 2.00" and row["Cars E. adv."] == "22.00 ± 2.65"
    assert "mean ± standard deviation over up to 3 seeds" in section.note
    piecewise = section.table.set_index(["Backbone", "Setting"]).loc[("SWIN", "piecewise 0:0,1:0.5,3:1")]
    assert piecewise["Cars Clean"] == "61.00 ± 1.41"  # its own row, named by its points
    (ci,) = build("main", data, spread="ci")
    half = stats.t.ppf(0.975, 2) * 2 / np.sqrt(3)  # 4.9683
    assert (
        ci.table.set_index(["Backbone", "Setting"]).loc[("SWIN", "fix"), "Cars Clean"]
        == f"42.00 ± {half:.2f}"
    )
    assert "95% confidence interval" in ci.note
    long = ci.long.set_index(["backbone", "setting", "metric"]).loc[("SWIN", "fix", "clean")]
    assert (long.value, long.n, long.sd) == (42.0, 3, 2.0) and long.ci_low == round(42 - half, 2)
    (plain,) = build("main", data, spread="none")
    assert plain.table.set_index(["Backbone", "Setting"]).loc[("SWIN", "fix"), "Cars Clean"] == "42.00"
    # per-backbone averages: the spread is over seeds of the per-seed mean over datasets
    sections = build("averages", data)
    swin = sections[0].table.set_index(["Backbone", "Setting"]).loc[("SWIN", "sched")]
    assert swin["Clean"] == f"52.00 ± {np.std([50, 51, 55], ddof=1):.2f}"


def test_the_paper_numbers_show_as_they_are():
    (section, _) = build("main", Results.paper("main"))
    assert not section.table.map(lambda v: "±" in str(v)).any().any()
    assert "seeds" not in section.note


def test_ttest_pairs_by_backbone_dataset_and_seed(seeded):
    (section,) = build("ttest", results(seeded), pairs=[("sched", "fix")])
    row = section.table.set_index(["Comparison", "Metric"]).loc[("sched vs fix", "E. adv.")]
    fix = [v[2] for key in (("fix", "SWIN", "Cars"), ("fix", "ViT", "Cub")) for v in SEEDED[key]]
    sched = [v[2] for key in (("sched", "SWIN", "Cars"), ("sched", "ViT", "Cub")) for v in SEEDED[key]]
    t, p = stats.ttest_rel(sched, fix)  # paired seed by seed: (SWIN, Cars, 0) with (SWIN, Cars, 0), …
    diff = np.subtract(sched, fix)
    half = stats.t.ppf(0.975, 5) * diff.std(ddof=1) / np.sqrt(6)
    assert (row["n pairs"], row["t"], row["p"]) == (6, f"{t:.3f}", f"{p:.2e}")
    assert row["95% CI (pp)"] == f"[{diff.mean() - half:.2f}, {diff.mean() + half:.2f}]"
    # seed sd: the sd over seeds of each cell, averaged over the two cells
    sd_fix = np.mean([np.std([20, 21, 25], ddof=1), np.std([10, 12, 11], ddof=1)])
    sd_sched = np.mean([np.std([26, 27, 29], ddof=1), np.std([13, 12, 15], ddof=1)])
    assert row["seed sd a / b (pp)"] == f"{sd_sched:.2f} / {sd_fix:.2f}"
    # by default: sched vs fix, then every other setting vs fix, then every other vs sched
    (default,) = build("ttest", results(seeded))
    assert list(dict.fromkeys(default.table.Comparison)) == [
        "sched vs fix", "piecewise 0:0,1:0.5,3:1 vs fix", "piecewise 0:0,1:0.5,3:1 vs sched"
    ]  # fmt: skip
    made = CliRunner().invoke(app, ["report", "--table", "ttest", "--db", seeded, "--pair", "sched"])
    assert made.exit_code == 2 and "write each as A:B" in made.output


def test_delay_uses_every_seeds_point(seeded):
    sections = {s.title: s for s in build("delay", results(seeded))}
    starts = sections["Task-adaptation start over seeds"].table.set_index(["Backbone", "Setting"])
    # fix SWIN-Cars, threshold 0.05: seed 0 starts at 2, seed 1 at 1, seed 2 never (4 epochs)
    assert starts.loc[("SWIN", "fix"), "starts"] == "2, 1, 4"
    assert (
        starts.loc[("SWIN", "fix"), "start epoch"]
        == f"{np.mean([2, 1, 4]):.2f} ± {np.std([2, 1, 4], ddof=1):.2f}"
    )
    correlations = sections["Delay correlations over the fix sweep (ε_g > 0): start epoch vs final val acc"]
    row = correlations.table.set_index(["Backbone", "Dataset"]).loc[("SWIN", "Cars")]
    r = stats.pearsonr([2, 1, 4], [50.0, 50.0, 4.0]).statistic
    assert row["n runs"] == 3 and row["Pearson r"] == f"{r:.3f}" and "every seed's run" in correlations.note


def test_plots_draw_a_band_per_setting_over_seeds(seeded, tmp_path):
    from matplotlib.collections import PolyCollection

    from rftbench.reports.plots import curves_figure, robustness_figure

    data = results(seeded)
    ax = curves_figure(data, "SWIN", "Cars", "8/255").axes[0]
    bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
    # fix, sched and piecewise: a clean and an adversarial band each, one mean line per curve
    assert len(bands) == 6 and len(ax.lines) >= 6
    fix = next(line for line in ax.lines if line.get_label() == "fix 8/255: clean")
    assert list(fix.get_ydata()) == pytest.approx(100 * np.mean(list(SEEDED_CURVES.values()), axis=0))
    ax = robustness_figure(data, backbone="SWIN", dataset="Cars").axes[0]
    assert len([c for c in ax.collections if isinstance(c, PolyCollection)]) == 3
    assert any("fix: E.adv 22.0 ± 2.6%" in line.get_label() for line in ax.lines)
    made = CliRunner().invoke(app, ["plot", "curves", "--db", seeded, "--out", str(tmp_path / "c.png")])
    assert made.exit_code == 0 and Image.open(tmp_path / "c.png").size[0] > 500


def test_effect_tells_the_story_paired_over_seeds(tmp_path, seeded):
    """`report --table effect` (what `make demo` ends with): per cell and paired over seeds, what fix lost
    to standard fine-tuning, what sched won back and its share of that loss, E.adv, and each setting's
    task-adaptation start per seed; the numbers by hand and from scipy."""
    path = str(tmp_path / "effect.db")
    store = Store.open(path)
    per_seed = {  # (clean, adv, eadv) in %, seeds 0, 1, 2
        "standard": [(60.0, 0.0, 5.0), (62.0, 0.0, 6.0), (61.0, 0.0, 5.0)],
        "fix": [(40.0, 10.0, 20.0), (44.0, 12.0, 21.0), (42.0, 11.0, 25.0)],
        "sched": [(50.0, 12.0, 26.0), (51.0, 11.0, 27.0), (55.0, 13.0, 29.0)],
    }
    for setting, numbers in per_seed.items():
        for seed, values in enumerate(numbers):
            hinge = {"t1": 1, "t2": 3} if setting == "sched" else {}
            config = RunConfig(backbone="SWIN", dataset="Cars", setting=setting, eps="8/255", epochs=4,
                               seed=seed, eval_budgets=["8/255"], **hinge)  # fmt: skip
            curve = SEEDED_CURVES[seed] if setting == "fix" else [0.1, 0.3, 0.5, 0.6]
            add_run(store, "e", config, curve, evaluation("8/255", *values))
    story, starts = build("effect", results(path))
    assert story.title.startswith("What ε-scheduling changed — SWIN on Cars at ε_g = 8/255")
    rows = story.table.set_index("Finding")
    assert list(rows.index) == [
        "what fix lost to standard (clean, standard − fix)",
        "what sched won back (clean, sched − fix): 53% of it",  # 10 of 19
        "sched − fix, E. adv.",
    ]
    lost = rows.iloc[0]  # 20, 18, 19: mean 19, sd 1
    half = stats.t.ppf(0.975, 2) / np.sqrt(3)
    assert (lost.pp, lost["95% CI"]) == ("+19.00", f"[{19 - half:+.2f}, {19 + half:+.2f}]")
    assert lost["a > b"] == "3 of 3 seeds" and "Backbone" not in rows  # one cell: named in the title
    assert lost.p == f"{stats.ttest_rel([60, 62, 61], [40, 44, 42]).pvalue:.3f}"
    assert rows.iloc[1].pp == "+10.00" and rows.iloc[2].pp == "+5.33"  # E.adv: 6, 6, 4
    assert rows.iloc[2]["a > b"] == "3 of 3 seeds"
    shown = starts.table.set_index("Setting")["start epoch per seed"].to_dict()
    assert shown == {"standard": "0, 0, 0", "fix": "2, 1, 4 (never)", "sched": "0, 0, 0"}
    assert set(starts.table.threshold) == {"5%"} and set(starts.table.seeds) == {"0, 1, 2"}
    long = story.long.set_index(["a", "b", "metric"]).loc[("sched", "fix", "clean")]
    assert (long.n, long.wins) == (3, 3) and long.mean_diff == pytest.approx(10.0)
    several, _ = build("effect", results(seeded))  # two cells, no standard runs: each row names its cell
    assert set(zip(several.table.Backbone, several.table.Dataset)) == {("SWIN", "Cars"), ("ViT", "Cub")}
    assert "what sched won back (clean, sched − fix)" in set(several.table.Finding)  # no loss: no share
    made = CliRunner().invoke(app, ["report", "--table", "effect", "--db", path], env={"COLUMNS": "250"})
    assert made.exit_code == 0 and "what sched won back (clean, sched − fix): 53% of it" in made.output
    paper = CliRunner().invoke(app, ["report", "--table", "effect", "--results", "paper"])
    assert paper.exit_code == 2 and "publishes no numbers for the 'effect' report" in paper.output
