"""Reports on a database mixing variants (objective and fine-tuning mode, `RunConfig.variant`): AT and TRADES
runs of fix and sched and LoRA fix runs over three seeds, filled through the store API with known numbers.
No run is set aside against another variant, no cell averages two variants, t-tests pair within a variant
unless told otherwise, and each run's trainable-parameter count reaches the main table. A database whose
configs predate the fields reports as it did."""

from __future__ import annotations

import csv
import io
import json
import sqlite3

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import stats
from test_report import add_run, evaluation
from typer.testing import CliRunner

from rftbench.cli import app
from rftbench.core.config import RunConfig
from rftbench.reports.cells import VARIANT_FIELDS
from rftbench.reports.commands import report_sections
from rftbench.reports.render import render
from rftbench.reports.results import Results
from rftbench.reports.stats import setting_labels, setting_order
from rftbench.results.store import Store

VARIANTS = {"": {}, "trades": {"objective": "trades"}, "lora": {"finetune": "lora"}}
# (clean, adv, eadv) in % per seed 0, 1, 2 of SWIN on Cars at 8/255, by (setting, variant)
NUMBERS = {
    ("standard", ""): [(60.0, 0.0, 5.0), (62.0, 0.0, 6.0), (61.0, 0.0, 5.0)],
    ("fix", ""): [(40.0, 10.0, 20.0), (44.0, 12.0, 21.0), (42.0, 11.0, 25.0)],
    ("sched", ""): [(50.0, 12.0, 26.0), (51.0, 11.0, 27.0), (55.0, 13.0, 29.0)],
    ("fix", "trades"): [(45.0, 15.0, 28.0), (48.0, 16.0, 30.0), (46.0, 14.0, 29.0)],
    ("sched", "trades"): [(52.0, 14.0, 31.0), (56.0, 17.0, 34.0), (54.0, 15.0, 32.0)],
    ("fix", "lora"): [(30.0, 8.0, 15.0), (31.0, 9.0, 16.0), (35.0, 7.0, 14.0)],
}
CURVES = {0: [0.01, 0.02, 0.3, 0.5], 1: [0.01, 0.2, 0.4, 0.5], 2: [0.1, 0.3, 0.4, 0.5]}
TRAINABLE = {"": 27_530_000, "trades": 27_530_000, "lora": 295_000}


def config(setting: str, variant: str, seed: int, **extra) -> RunConfig:
    budget = {"eps": "0/255"} if setting == "standard" else {"eps": "8/255"}
    hinge = {"t1": 1, "t2": 3} if setting == "sched" else {}
    return RunConfig(backbone="SWIN", dataset="Cars", setting=setting, epochs=4, seed=seed,
                     eval_budgets=["8/255"], **budget, **hinge, **VARIANTS[variant], **extra)  # fmt: skip


def values(setting: str, variant: str, metric: int) -> np.ndarray:
    return np.array([numbers[metric] for numbers in NUMBERS[setting, variant]])


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("variants") / "v.db")
    store = Store.open(path)
    for (setting, variant), per_seed in NUMBERS.items():
        for seed, numbers in enumerate(per_seed):
            run = config(setting, variant, seed)
            add_run(store, "v", run, CURVES[seed], evaluation("8/255", *numbers))
            store.set_provenance(run.run_id, {"rftbench": "test", "trainable_params": TRAINABLE[variant]})
    running = config("sched", "lora", 0)  # in progress: 2 of 4 epochs, a row of its own
    add_run(store, "v", running, CURVES[0][:2], None)
    uniform = config("uniform", "trades", 0)  # a baseline of the TRADES variant alone
    add_run(store, "v", uniform, CURVES[0], evaluation("8/255", 47.0, 15.0, 30.0))
    for variant, adv in (("", 5.0), ("trades", 9.0)):  # AutoAttack on seed 0's fix of two variants
        run = config("fix", variant, 0)
        row = evaluation("8/255", 50.0, adv, 9.0, attack="autoattack-standard", steps=20)
        store.add_evaluation(run.run_id, row, kind="extra")
    return path


def results(path: str) -> Results:
    return Results.from_store(Store.open(path, create=False))


def sections(path: str, table: str, **flags) -> list:
    base = dict(db=path, grid=None, threshold=None, eps=[], results="ours", compare=None,
                include_standard=False, run_id=None, spread="sd", pairs=[], protocol="paper",
                precision="fp32", steps=None)  # fmt: skip
    return report_sections(table, **base | flags)


def test_variants_are_cells_of_their_own_and_no_run_is_set_aside(mixed):
    data = results(mixed)
    assert "set aside" not in data.missing
    assert data.values.run_id.nunique() == 3 * len(NUMBERS) + 1  # every completed run shows
    runs = data.runs.set_index("run_id")
    assert runs.loc[config("fix", "trades", 1).run_id, "variant"] == "trades"
    assert runs.loc[config("fix", "lora", 1).run_id, "trainable_params"] == 295_000
    assert data.standard_variant("trades") == "" and data.standard_variant("lora") == "lora"


def test_labels_and_their_order():
    frame = pd.DataFrame(
        {"setting": ["sched", "sched", "fix", "fix", "standard"], "variant": ["trades", "", "lora", "", ""],
         "t1": [12.0, 10.0, None, None, None], "t2": [37.0, 30.0, None, None, None]}
    )  # fmt: skip
    labels = list(setting_labels(frame))
    assert labels == ["sched 12/37+trades", "sched 10/30", "fix+lora", "fix", "standard"]
    assert setting_order(labels) == ["standard", "fix", "fix+lora", "sched 10/30", "sched 12/37+trades"]
    one = frame[frame.setting != "sched"].assign(variant=["trades", "", ""])
    assert list(setting_labels(one)) == ["fix+trades", "fix", "standard"]


def test_main_shows_each_variant_and_its_trainable_parameters(mixed, tmp_path):
    (section,) = sections(mixed, "main")
    table = section.table.set_index(["Backbone", "Setting"])
    assert list(table.index.get_level_values("Setting")) == [
        "standard", "fix", "fix+lora", "fix+trades", "sched", "sched+lora", "sched+trades", "uniform+trades"
    ]  # fmt: skip
    assert table.loc[("SWIN", "sched+lora"), "Cars Clean"] == "(running 2 ep.)"
    assert table.loc[("SWIN", "sched"), "Cars Clean"] == "52.00 ± 2.65"  # not marked: another variant
    for (setting, variant), _ in NUMBERS.items():
        label = f"{setting}+{variant}" if variant else setting
        clean, eadv = values(setting, variant, 0), values(setting, variant, 2)
        assert table.loc[("SWIN", label), "Cars Clean"] == f"{clean.mean():.2f} ± {clean.std(ddof=1):.2f}"
        assert table.loc[("SWIN", label), "Cars E. adv."] == f"{eadv.mean():.2f} ± {eadv.std(ddof=1):.2f}"
    assert table.loc[("SWIN", "fix+trades"), "Cars Clean"] == "46.33 ± 1.53"
    # per backbone and variant; the uniform+trades run recorded none (a run of an earlier release)
    assert "trainable parameters: SWIN 27.53 M, SWIN lora 295.0 k, SWIN trades 27.53 M (2 of 3 cells)" in (
        section.note
    )
    rows = list(csv.DictReader(io.StringIO(render([section], "csv"))))
    lora = next(r for r in rows if r["setting"] == "fix+lora" and r["metric"] == "clean")
    assert lora["trainable_params"] == "295000" and float(lora["value"]) == 32.0
    out = tmp_path / "main.md"
    made = CliRunner().invoke(app, ["report", "--db", mixed, "--format", "md", "--out", str(out)])
    assert made.exit_code == 0, made.output
    text = out.read_text()
    assert "| SWIN | sched+trades | 54.00 ± 2.00 | 15.33 ± 1.53 | 32.33 ± 1.53 |" in text
    assert "trainable parameters: SWIN 27.53 M" in text


def _comparisons(section) -> dict[tuple[str, str], pd.Series]:
    table = section.table
    return {(c, m): row for (c, m), row in table.set_index(["Comparison", "Metric"]).iterrows()}


def test_ttest_default_pairs_stay_within_a_variant(mixed):
    (section,) = sections(mixed, "ttest")
    assert list(dict.fromkeys(section.table.Comparison)) == [
        "sched vs fix", "standard vs fix", "sched+trades vs fix+trades", "uniform+trades vs fix+trades",
        "uniform+trades vs sched+trades",
    ]  # fmt: skip
    rows = _comparisons(section)
    for variant, suffix in (("", ""), ("trades", "+trades")):
        for index, metric in enumerate(("Clean", "Adv.", "E. adv.")):
            diff = values("sched", variant, index) - values("fix", variant, index)
            row = rows[f"sched{suffix} vs fix{suffix}", metric]
            assert row["n pairs"] == 3 and row["mean diff (pp)"] == f"{diff.mean():.2f}"
            t = stats.ttest_rel(values("sched", variant, index), values("fix", variant, index)).statistic
            assert row["t"] == f"{t:.3f}"
    assert rows["sched vs fix", "Clean"]["mean diff (pp)"] == "10.00"  # 10, 7, 13
    assert rows["sched+trades vs fix+trades", "Clean"]["mean diff (pp)"] == "7.67"  # 7, 8, 8
    assert rows["sched+trades vs fix+trades", "E. adv."]["mean diff (pp)"] == "3.33"  # 3, 4, 3


def test_an_explicit_pair_of_settings_applies_within_each_variant_and_a_label_exactly(mixed):
    (within,) = sections(mixed, "ttest", pairs=["sched:fix"])
    assert list(dict.fromkeys(within.table.Comparison)) == ["sched vs fix", "sched+trades vs fix+trades"]
    (across,) = sections(mixed, "ttest", pairs=["sched+trades:sched"])
    rows = _comparisons(across)
    assert list(dict.fromkeys(across.table.Comparison)) == ["sched+trades vs sched"]
    diff = values("sched", "trades", 0) - values("sched", "", 0)  # 2, 5, -1
    assert rows["sched+trades vs sched", "Clean"]["mean diff (pp)"] == f"{diff.mean():.2f}" == "2.00"
    assert (
        rows["sched+trades vs sched", "Clean"]["wins"],
        rows["sched+trades vs sched", "Clean"]["losses"],
    ) == (
        2,
        1,
    )
    made = CliRunner().invoke(
        app, ["report", "--db", mixed, "--table", "ttest", "--pair", "fix+lora:fix"], env={"COLUMNS": "250"}
    )
    assert made.exit_code == 0 and "fix+lora vs fix" in made.output, made.output
    (lora,) = sections(mixed, "ttest", pairs=["fix+lora:fix"])
    diff = values("fix", "lora", 0) - values("fix", "", 0)  # -10, -13, -7
    assert _comparisons(lora)["fix+lora vs fix", "Clean"]["mean diff (pp)"] == f"{diff.mean():.2f}"


def test_effect_tells_the_story_per_variant(mixed):
    story, starts = sections(mixed, "effect")
    rows = story.table.set_index("Finding")
    loss = values("standard", "", 0) - values("fix", "trades", 0)  # 15, 14, 15
    won = values("sched", "trades", 0) - values("fix", "trades", 0)  # 7, 8, 8
    assert rows.loc["what fix lost to standard (clean, standard − fix)", "pp"] == "+19.00"
    trades = "what fix+trades lost to standard (clean, standard − fix+trades)"
    assert rows.loc[trades, "pp"] == f"{loss.mean():+.2f}"
    share = f"{100 * won.mean() / loss.mean():.0f}"
    assert rows.loc[
        f"what sched+trades won back (clean, sched+trades − fix+trades): {share}% of it", "pp"
    ] == (f"{won.mean():+.2f}")
    assert "sched+trades − fix, Clean" not in rows.index and "sched − fix+trades, Clean" not in rows.index
    assert set(starts.table.Setting) == {"standard", "fix", "fix+lora", "fix+trades", "sched", "sched+trades",
                                         "uniform+trades"}  # fmt: skip


def test_delay_drops_and_correlations_per_variant(mixed):
    tables = {s.title: s for s in sections(mixed, "delay")}
    per_run = tables["Task-adaptation start and final validation accuracy per run"].table
    assert {"fix+trades", "fix+lora", "sched+trades"} <= set(per_run.Setting)
    drops = tables["Clean-accuracy drop of fix runs from standard fine-tuning (ε = 0)"].table
    trades = drops[(drops.Setting == "fix+trades") & (drops.Seed == 1)].iloc[0]
    assert trades["drop (pp)"] == "14.00"  # from the standard run of seed 1: TRADES at ε = 0 is standard
    assert "fix+lora" not in set(drops.Setting)  # no standard+lora run to measure from
    correlations = tables["Delay correlations over the fix sweep (ε_g > 0): start epoch vs final val acc"]
    assert list(correlations.table.Setting) == ["fix", "fix+lora", "fix+trades"]
    assert set(correlations.table["n runs"]) == {3}


def test_every_other_table_and_plot_keeps_variants_apart(mixed, tmp_path):
    per_backbone = sections(mixed, "averages")[0].table.set_index(["Backbone", "Setting"])
    assert per_backbone.loc[("SWIN", "fix+lora"), "Clean"] == "32.00 ± 2.65"
    ablation = sections(mixed, "ablation")
    assert [s.title for s in ablation] == [
        "T1/T2 ablation, SWIN-Cars (%)",
        "T1/T2 ablation, SWIN-Cars, trades (%)",
    ]
    assert ablation[1].table.set_index(["T1", "T2"]).loc[("1", "3"), "8/255 Clean"] == "54.00 ± 2.00"
    (baselines,) = sections(mixed, "baselines")
    assert baselines.title == "Baselines at ε_g = 8/255, trades (%)"
    row = baselines.table.iloc[0]
    assert (row["fix+trades Clean"], row["uniform+trades Clean"]) == ("46.33 ± 1.53", "47.00")
    (autoattack,) = sections(mixed, "autoattack")
    shown = autoattack.table.set_index("Setting")
    assert (shown.loc["fix", "AA Adv."], shown.loc["fix+trades", "AA Adv."]) == ("5.00", "9.00")
    assert (shown.loc["fix", "APGD Adv."], shown.loc["fix+trades", "APGD Adv."]) == ("10.00", "15.00")
    (evaluations,) = sections(mixed, "evaluations", run_id=config("fix", "trades", 0).run_id)
    assert set(evaluations.table.Setting) == {"fix+trades"}
    for kind, extra in (("curves", ["--eps", "8/255"]), ("robustness", []), ("sweep", [])):
        out = tmp_path / f"{kind}.png"
        made = CliRunner().invoke(app, ["plot", kind, "--db", mixed, "--out", str(out), *extra])
        assert made.exit_code == 0, made.output
        assert Image.open(out).format == "PNG"
    from rftbench.reports.plots import curves_figure

    ax = curves_figure(results(mixed), "SWIN", "Cars", "8/255").axes[0]
    labels = {line.get_label() for line in ax.lines}
    assert {"fix 8/255: clean", "fix+trades 8/255: clean", "fix+lora 8/255: clean"} <= labels


def strip_variant_keys(source: str, target: str) -> None:
    """A copy of `source` whose stored configs lack the variant fields, as an earlier release wrote them."""
    with sqlite3.connect(source) as original, sqlite3.connect(target) as copy:
        original.backup(copy)
    with sqlite3.connect(target) as copy:
        for run_id, text in copy.execute("SELECT id, config FROM run").fetchall():
            stored = {k: v for k, v in json.loads(text).items() if k not in VARIANT_FIELDS}
            copy.execute(
                "UPDATE run SET config = ? WHERE id = ?", (json.dumps(stored, sort_keys=True), run_id)
            )


def test_a_database_without_the_new_fields_reports_as_before(tmp_path):
    path = str(tmp_path / "old.db")
    store = Store.open(path)
    for (setting, variant), per_seed in NUMBERS.items():
        if variant:
            continue
        for seed, numbers in enumerate(per_seed):
            add_run(store, "old", config(setting, "", seed), CURVES[seed], evaluation("8/255", *numbers))
    old = str(tmp_path / "stripped.db")
    strip_variant_keys(path, old)
    with sqlite3.connect(old) as copy:
        assert all("objective" not in text for (text,) in copy.execute("SELECT config FROM run"))
    data = results(old)
    assert "set aside" not in data.missing and set(data.values.variant) == {""}
    assert data.runs.trainable_params.isna().all()
    for table in ("main", "averages", "ttest", "effect", "delay", "ablation"):
        for format_ in ("md", "csv"):
            assert render(sections(old, table), format_) == render(sections(path, table), format_), table
    (main,) = sections(old, "main")
    assert "trainable" not in main.note and "trainable_params" not in render([main], "csv")
    assert list(main.table.Setting) == ["standard", "fix", "sched"]
    (ttest,) = sections(old, "ttest")
    assert list(dict.fromkeys(ttest.table.Comparison)) == ["sched vs fix", "standard vs fix"]
