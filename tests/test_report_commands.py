"""What `rftbench report` and `plot` do between parsing and printing (rftbench.reports.commands), and two
defects of the report loader: a threshold of 0 means 0, and AutoAttack rows read their worst cases in one
query however many rows there are."""

from __future__ import annotations

import re
import sqlite3

import pytest
from sqlalchemy import event
from test_report import SWEEP, add_run, evaluation

from rftbench.core.config import RunConfig
from rftbench.reports.commands import make_plot, render, report_sections, rich_tables
from rftbench.reports.results import ReportError, Results
from rftbench.reports.tables import build
from rftbench.results.store import Store

FLAGS = dict(
    db=None, grid=None, threshold=None, eps=[], results="ours", compare=None, include_standard=False,
    run_id=None, spread="sd", pairs=[], protocol="paper", precision="fp32", steps=None,
)  # fmt: skip


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> str:
    """The ε sweep of SWIN-Cars (fix at k/255, 6 epochs) of test_report."""
    path = str(tmp_path_factory.mktemp("commands") / "c.db")
    store = Store.open(path)
    for k, accs in SWEEP.items():
        config = RunConfig(backbone="SWIN", dataset="Cars", setting="fix", eps=f"{k}/255", epochs=6, seed=1)
        add_run(store, "sweep", config, accs, evaluation(f"{k}/255", 100 * accs[-1] - 3, 10.0, 20.0))
    return path


def add_autoattack(path: str, runs: int) -> None:
    store = Store.open(path)
    for run in sorted(store.runs(grid="sweep"), key=lambda r: r.eps)[:runs]:
        row = evaluation(run.eps, 50.0, 5.0, 9.0, attack="autoattack-standard", steps=20)
        store.add_evaluation(run.id, row, kind="extra")


def test_a_threshold_of_zero_means_zero(sweep):
    """`--threshold 0` was read as "no threshold given" (the grid's 0.05): 0 is a threshold like any other."""
    starts = {}
    for threshold in (None, 0.0):
        per_run = report_sections("delay", **FLAGS | {"db": sweep, "threshold": threshold})[0].table
        starts[threshold] = dict(zip(per_run["ε_g"], zip(per_run["threshold"], per_run["start epoch"])))
    assert starts[None]["2/255"] == ("0.05", 1) and starts[None]["5/255"] == ("0.05", 4)
    # every curve is above 0 from its first epoch
    assert set(starts[0.0].values()) == {("0", 0)}


def test_autoattack_worst_cases_are_one_query_whatever_the_rows(sweep, tmp_path, monkeypatch):
    """The report once asked the store for each AutoAttack row's worst case apart (one query per row)."""
    calls = []
    original = Store.worst_cases
    monkeypatch.setattr(Store, "worst_case", lambda *a: pytest.fail("one query per row"))
    monkeypatch.setattr(Store, "worst_cases", lambda self, keys: calls.append(keys) or original(self, keys))
    statements = {}
    for runs in (1, 3):
        path = tmp_path / f"{runs}.db"
        with sqlite3.connect(sweep) as source, sqlite3.connect(path) as copy:  # with what its -wal file holds
            source.backup(copy)
        add_autoattack(str(path), runs)
        store = Store.open(str(path), create=False, write=False)
        statements[runs] = []
        event.listen(store.engine, "before_cursor_execute", lambda *a, n=runs: statements[n].append(a[2]))
        sections = build("autoattack", Results.from_store(store, grid="sweep"))  # one per ε_g
        shown = [s.table.iloc[0] for s in sections]
        assert len(sections) == runs and all(len(s.table) == 1 for s in sections)
        assert [(r["Clean"], r["APGD Adv."], r["AA Adv."], r["Worst Adv."]) for r in shown] == [
            ("50.00", "10.00", "5.00", "")
        ] * runs  # no per-sample flags stored: no worst case
    assert len(statements[1]) == len(statements[3])
    assert len(calls) == 2 and [len(set(keys)) for keys in calls] == [1, 3]


def test_report_sections_refuse_in_one_line(sweep):
    for flags, message in [
        ({"grid": "nope"}, "no grid 'nope' in this database; it has sweep"),
        ({"threshold": 1.0}, "--threshold 1: an adaptation threshold is a validation accuracy in [0, 1)"),
        ({"pairs": ["sched"]}, "--pair sched: write each as A:B"),
        ({"results": "theirs"}, "--results takes ours or paper; --compare takes paper"),
        ({"compare": "paper", "protocol": "monotone"}, "--compare paper lines up against the paper protocol"),
        ({"eps": ["x/255"]}, "cannot read budget 'x/255'"),
        ({"eps": ["6/255"]}, "no results at ε_g = 6/255"),
    ]:
        with pytest.raises(ReportError, match="^" + re.escape(message)):
            report_sections("main", **FLAGS | {"db": sweep} | flags)


def test_every_format_and_the_terminal_show_the_same_cells(sweep):
    sections = report_sections("main", **FLAGS | {"db": sweep, "eps": ["1/255"]})
    (table,) = rich_tables(sections)
    assert table.title == sections[0].title and table.caption == sections[0].note
    assert [c.justify for c in table.columns[:3]] == ["left", "left", "right"]
    assert list(table.columns[2].cells) == ["77.00"]  # 100 * 0.8 - 3
    assert "| SWIN | fix | 77.00 | 10.00 | 20.00 |" in render(sections, "md")
    assert "SWIN,Cars,fix,1/255,clean,77.0," in render(sections, "csv")
    paper = report_sections("main", **FLAGS | {"results": "paper", "eps": ["4/255"]})
    assert "| SWIN | fix | 7.70 | 4.80 | 6.11 |" in render(paper, "md")


def test_make_plot_writes_what_the_command_prints(sweep, tmp_path):
    common = dict(backbone=None, dataset=None, grid=None, epochs=10, t1=2, t2=6, protocol="paper",
                  precision="fp32", steps=None, db=sweep)  # fmt: skip
    written = make_plot("sweep", tmp_path / "s.png", eps=None, **common)
    assert written == tmp_path / "s.png" and written.stat().st_size > 10_000
    with pytest.raises(ReportError, match="unknown plot 'nope'"):
        make_plot("nope", tmp_path / "n.png", eps=None, **common)
    with pytest.raises(ReportError):
        make_plot("schedule", tmp_path / "e.png", eps="x/255", **common)
