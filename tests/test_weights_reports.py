"""Reports on runs with a weights policy (`RunConfig.weights_policy`): a best or EMA run scores its last
epoch's weights and the weights it kept, and is reported by the latter alone. Plain fix, sched and uniform
runs and sched+ema(0.999), uniform+ema(0.999) and sched+best(adv) runs over three seeds are filled through
the store API with known numbers; the policy runs' last-epoch rows are decoys no table but `evaluations` may
show. A database of schema v5 (no `weights` column: every row the last epoch's) reports as the same
database of v6."""

from __future__ import annotations

import csv
import io
import re
import sqlite3

import numpy as np
import pytest
from scipy import stats
from test_report import add_run, evaluation
from typer.testing import CliRunner

from rftbench.cli import app
from rftbench.core.config import RunConfig
from rftbench.reports.commands import report_sections
from rftbench.reports.render import render
from rftbench.reports.results import Results
from rftbench.results.store import Store

POLICIES = {
    "": {},
    "ema": {"weights_policy": "ema"},
    "best": {"weights_policy": "best", "best_metric": "adv"},
}
LABELS = {("fix", ""): "fix", ("sched", ""): "sched", ("sched", "ema"): "sched+ema(0.999)",
          ("sched", "best"): "sched+best(adv)", ("uniform", ""): "uniform",
          ("uniform", "ema"): "uniform+ema(0.999)"}  # fmt: skip
# (clean, adv, eadv) in % per seed 0, 1, 2 of SWIN on Cars at 8/255: the rows each run is reported by
NUMBERS = {
    ("fix", ""): [(40.0, 10.0, 20.0), (44.0, 12.0, 21.0), (42.0, 11.0, 25.0)],
    ("sched", ""): [(50.0, 12.0, 26.0), (51.0, 11.0, 27.0), (55.0, 13.0, 29.0)],
    ("sched", "ema"): [(53.0, 14.0, 30.0), (55.0, 15.0, 32.0), (58.0, 16.0, 33.0)],
    ("sched", "best"): [(52.0, 13.0, 28.0), (56.0, 12.0, 29.0), (57.0, 17.0, 32.0)],
    ("uniform", ""): [(45.0, 11.0, 22.0), (47.0, 14.0, 24.0), (46.0, 12.0, 26.0)],
    ("uniform", "ema"): [(48.0, 14.0, 27.0), (49.0, 16.0, 28.0), (51.0, 15.0, 30.0)],
}
# the policy runs' last-epoch rows: numbers (and means) no other row has
DECOYS = {
    "ema": [(91.25, 61.25, 71.25), (92.5, 62.5, 72.5), (93.75, 63.75, 73.75)],
    "best": [(81.25, 51.25, 66.25), (82.5, 52.5, 67.5), (83.75, 53.75, 68.75)],
}
DECOY_TEXT = {f"{v:.2f}" for rows in DECOYS.values() for row in rows for v in row} | {
    f"{np.mean(column):.2f}" for rows in DECOYS.values() for column in zip(*rows)
}
CURVES = {0: [0.01, 0.02, 0.3, 0.5], 1: [0.01, 0.2, 0.4, 0.5], 2: [0.1, 0.3, 0.4, 0.5]}
TABLES = ("main", "averages", "ttest", "effect", "delay", "ablation", "baselines")
EMA_NOTE = "+ema(0.999): an exponential moving average of the weights (decay 0.999 per step)"
BEST_NOTE = "+best(adv): the epoch with the best validation adv accuracy"


def config(setting: str, policy: str, seed: int, **extra) -> RunConfig:
    hinge = {"t1": 1, "t2": 3} if setting == "sched" else {}
    return RunConfig(backbone="SWIN", dataset="Cars", setting=setting, eps="8/255", epochs=4, seed=seed,
                     eval_budgets=["8/255"], **hinge, **POLICIES[policy], **extra)  # fmt: skip


def values(setting: str, policy: str, metric: int) -> np.ndarray:
    return np.array([numbers[metric] for numbers in NUMBERS[setting, policy]])


def fill(path: str, policies: bool) -> str:
    store = Store.open(path)
    for (setting, policy), per_seed in NUMBERS.items():
        if policy and not policies:
            continue
        for seed, numbers in enumerate(per_seed):
            run = config(setting, policy, seed)
            last = DECOYS[policy][seed] if policy else numbers
            add_run(store, "w", run, CURVES[seed], evaluation("8/255", *last))
            if policy:  # scored in addition, under the same protocol
                store.add_evaluation(run.run_id, evaluation("8/255", *numbers) | {"weights": policy})
    if policies:  # AutoAttack on seed 0's sched+ema: of the last epoch's weights (a decoy) and the EMA's
        ema = config("sched", "ema", 0).run_id
        for weights, adv in (("ema", 9.0), ("last", 61.5)):
            row = evaluation("8/255", 53.0, adv, 19.0, attack="autoattack-standard", steps=20)
            store.add_evaluation(ema, row | {"weights": weights}, kind="extra")
    if policies:  # an EMA run whose kept weights were never scored: no cell, named in the notes
        add_run(
            store,
            "w",
            config("sched", "ema", 0, ema_decay=0.99),
            CURVES[0],
            evaluation("8/255", *DECOYS["ema"][0]),
        )
    return path


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> str:
    return fill(str(tmp_path_factory.mktemp("weights") / "plain.db"), policies=False)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> str:
    return fill(str(tmp_path_factory.mktemp("weights") / "mixed.db"), policies=True)


def sections(path: str, table: str, **flags) -> list:
    base = dict(db=path, grid=None, threshold=None, eps=[], results="ours", compare=None,
                include_standard=False, run_id=None, spread="sd", pairs=[], protocol="paper",
                precision="fp32", steps=None)  # fmt: skip
    return report_sections(table, **base | flags)


def report(path: str, out, table: str, format_: str, *flags: str) -> str:
    """`rftbench report` through the CLI, its output file's text."""
    made = CliRunner().invoke(
        app, ["report", "--db", path, "--table", table, "--format", format_, "--out", str(out), *flags]
    )
    assert made.exit_code == 0, made.output
    return out.read_text()


def cell(mean: float, sd: float) -> str:
    return f"{mean:.2f} ± {sd:.2f}"


def test_policy_cells_show_their_policy_rows_and_the_plain_cells_are_unchanged(mixed, plain, tmp_path):
    text = report(mixed, tmp_path / "main.md", "main", "md")
    for (setting, policy), label in LABELS.items():
        shown = [
            cell(values(setting, policy, m).mean(), values(setting, policy, m).std(ddof=1)) for m in range(3)
        ]
        assert f"| SWIN | {label} | {' | '.join(shown)} |" in text, label
    assert "| sched+ema(0.99) |" not in text  # never scored its EMA weights: no row of its own
    assert not DECOY_TEXT & set(re.findall(r"\d+\.\d\d", text))
    rows = list(csv.DictReader(io.StringIO(report(mixed, tmp_path / "main.csv", "main", "csv"))))
    for (setting, policy), label in LABELS.items():
        for index, metric in enumerate(("clean", "adv", "eadv")):
            (row,) = [r for r in rows if r["setting"] == label and r["metric"] == metric]
            assert float(row["value"]) == pytest.approx(values(setting, policy, index).mean(), abs=0.005)
            assert row["n"] == "3"
    before = list(csv.DictReader(io.StringIO(report(plain, tmp_path / "p.csv", "main", "csv"))))
    assert before == [
        r for r in rows if r["setting"] in ("fix", "sched", "uniform")
    ]  # as without the policy runs


def test_ttest_pairs_the_policy_rows(mixed, tmp_path):
    pairs = ["--pair", "sched+ema(0.999):sched", "--pair", "sched+best(adv):sched", "--pair", "sched:fix"]
    rows = list(csv.DictReader(io.StringIO(report(mixed, tmp_path / "t.csv", "ttest", "csv", *pairs))))
    got = {(r["a"], r["b"], r["metric"], r["statistic"]): float(r["value"]) for r in rows}
    compared = (
        (("sched", "ema"), ("sched", "")),
        (("sched", "best"), ("sched", "")),
        (("sched", ""), ("fix", "")),
    )
    for a, b in compared:
        for index, metric in enumerate(("clean", "adv", "eadv")):
            diff = values(*a, index) - values(*b, index)
            t = stats.ttest_rel(values(*a, index), values(*b, index)).statistic
            key = (LABELS[a], LABELS[b], metric)
            assert got[(*key, "mean_diff")] == pytest.approx(diff.mean()) and got[(*key, "n")] == 3
            assert got[(*key, "t")] == pytest.approx(t)
    text = report(mixed, tmp_path / "t.md", "ttest", "md", *pairs)
    assert "| sched+ema(0.999) vs sched | 8/255 | Clean | 3 | 3.33 |" in text  # 3, 4, 3
    assert "| sched+best(adv) vs sched | 8/255 | Adv. | 3 | 2.00 |" in text  # 1, 1, 4


def test_last_rows_of_policy_runs_enter_no_table_but_evaluations(mixed, tmp_path):
    data = Results.from_store(Store.open(mixed, create=False, write=False))
    decoys = {v for rows in DECOYS.values() for row in rows for v in row}
    assert not decoys & set(data.values.value.round(2))
    assert set(data.selected.weights) == {"last", "ema", "best"}
    for table in TABLES:
        for format_ in ("md", "csv"):
            text = render(sections(mixed, table), format_)
            assert not DECOY_TEXT & set(re.findall(r"\d+\.\d\d?", text)), (table, format_)
    (evaluations,) = sections(mixed, "evaluations")
    shown = evaluations.table
    assert list(shown.columns[shown.columns.get_loc("precision") + 1 :][:1]) == ["weights"]
    rows = list(csv.DictReader(io.StringIO(report(mixed, tmp_path / "e.csv", "evaluations", "csv"))))
    by = {(r["setting"], r["weights"], r["metric"], r["run_id"]): float(r["value"]) for r in rows
          if r["attack"] == "apgd-ce"}  # fmt: skip
    for policy, per_seed in DECOYS.items():
        for seed, numbers in enumerate(per_seed):
            run_id = config("sched", policy, seed).run_id
            label = LABELS["sched", policy]
            assert by[label, "last", "clean", run_id] == numbers[0]  # labelled: the last epoch's
            assert by[label, policy, "clean", run_id] == NUMBERS["sched", policy][seed][0]
    assert {r["weights"] for r in rows if r["setting"] in ("fix", "sched", "uniform")} == {"last"}
    text = report(mixed, tmp_path / "e.md", "evaluations", "md")
    assert "weights column: last = the last epoch's (the paper's); best, ema = the weights the run's" in text


def test_notes_name_the_weights_and_the_runs_without_their_policy_rows(mixed, plain, tmp_path):
    text = report(mixed, tmp_path / "main.md", "main", "md")
    assert "weights: the last epoch's (the paper's) where the setting names no policy" in text
    assert BEST_NOTE in text and EMA_NOTE in text
    assert (
        "1 completed run(s) have no paper fp32 evaluation of the weights their policy kept (ema; they "
        in text
    )
    assert "re-scores all kept weights" in text
    (only_plain,) = sections(mixed, "ttest", pairs=["sched:fix"])
    assert "weights: the last epoch's (the paper's)" in only_plain.note and "+ema" not in only_plain.note
    for table in TABLES:
        for section in sections(plain, table):
            assert "weights: the last epoch's (the paper's)" in section.note, table
            assert "policy" not in section.note, table
    (paper,) = sections(None, "main", results="paper", eps=["4/255"])
    assert "weights: the last epoch's (the paper's)" in paper.note


def schema_v5_copy(source: str, target: str) -> None:
    """A copy of `source` as schema v5 wrote it: no `weights` in the evaluation rows or their key, no
    `val_eadv` in the epochs."""
    with sqlite3.connect(source) as original, sqlite3.connect(target) as copy:
        original.backup(copy)
    with sqlite3.connect(target) as copy:
        (sql,) = copy.execute("SELECT sql FROM sqlite_master WHERE name = 'evaluation'").fetchone()
        old = sql.replace("\tweights VARCHAR NOT NULL, \n", "").replace(", weights)", ")")
        assert "weights" not in old
        columns = [row[1] for row in copy.execute("PRAGMA table_info(evaluation)") if row[1] != "weights"]
        copy.execute(old.replace("CREATE TABLE evaluation", "CREATE TABLE evaluation_v5"))
        copy.execute(f"INSERT INTO evaluation_v5 SELECT {', '.join(columns)} FROM evaluation")
        copy.execute("DROP TABLE evaluation")
        copy.execute("ALTER TABLE evaluation_v5 RENAME TO evaluation")
        copy.execute("CREATE INDEX ix_evaluation_run_id ON evaluation (run_id)")
        copy.execute("ALTER TABLE epoch_metric DROP COLUMN val_eadv")
        copy.execute("UPDATE schema_version SET version = 5")


def test_a_database_without_the_weights_column_reports_as_before(plain, tmp_path):
    old = str(tmp_path / "v5.db")
    schema_v5_copy(plain, old)
    with sqlite3.connect(old) as copy:
        assert "weights" not in {row[1] for row in copy.execute("PRAGMA table_info(evaluation)")}
    for table in (*TABLES, "evaluations"):
        for format_ in ("md", "csv"):
            assert render(sections(old, table), format_) == render(sections(plain, table), format_), table
    data = Results.from_store(Store.open(old, create=False, write=False))
    assert set(data.evaluations.weights) == {"last"} and data.policies == {} and data.missing == ""


def test_autoattack_and_the_robustness_plot_read_the_policy_rows(mixed):
    (autoattack,) = sections(mixed, "autoattack")
    (row,) = autoattack.table[autoattack.table.Setting == "sched+ema(0.999)"].to_dict("records")
    assert (row["AA Adv."], row["APGD Adv."], row["Clean"]) == ("9.00", "14.00", "53.00")
    assert row["Worst Adv."] == ""  # one AutoAttack and one APGD row, without per-sample flags: no worst case
    assert EMA_NOTE in autoattack.note and "61.50" not in render([autoattack], "md")
    from rftbench.reports.plots import robustness_figure

    figure = robustness_figure(Results.from_store(Store.open(mixed, create=False, write=False)))
    labels = {line.get_label() for line in figure.axes[0].lines}
    assert "SWIN/Cars sched+ema(0.999): E.adv 31.7 ± 1.5%" in labels
    assert "SWIN/Cars sched: E.adv 27.3 ± 1.5%" in labels
    assert EMA_NOTE in figure.texts[-1].get_text()
