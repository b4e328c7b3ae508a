"""Weights policies (`weights_policy`: last, best, ema): the EMA is the per-step recurrence, `best` keeps
the weights of the epoch its metric names (ties: the earlier), killed `best` and `ema` runs resume bit for
bit, every evaluation row says which weights it scored (`evaluate` scores them all), a v5 database keeps
its rows as `last`, and bad input is one line and exit 2 with the database untouched."""

from __future__ import annotations

import dataclasses
import json
import sqlite3

import pytest
import torch
from conftest import EXPERIMENTS
from test_bad_input import GRID, check, db, toml  # noqa: F401 (db: the fixture)
from test_finetune import fit, loaders, model_of  # noqa: F401 (loaders: the fixture)
from test_trainer import DiesMidEpoch, Interrupted
from typer.testing import CliRunner

from rftbench import RunConfig
from rftbench.cli import app
from rftbench.engine.checkpoint import load_checkpoint
from rftbench.engine.policy import KeptWeights

BASE = RunConfig(backbone="cifar_resnet20", dataset="cifar10-jpeg", pretrained=False, setting="fix",
                 eps="8/255", epochs=3, batch_size=20, lr=1e-3, warmup_epochs=0, resolution=32,
                 train_attack_steps=1, eval_attack_steps=1, val_adv_samples=20)  # fmt: skip
DROP = ("epoch_seconds", "images_per_second", "seconds")


def strip(rows):
    return [{k: v for k, v in r.items() if k not in DROP} for r in rows]


def test_the_ema_is_the_per_step_recurrence_from_the_initial_weights():
    """ema ← d·ema + (1 − d)·w after every step, parameters and buffers alike, from the weights at start."""
    model = torch.nn.Sequential(torch.nn.Linear(2, 1), torch.nn.BatchNorm1d(1))
    kept = KeptWeights(dataclasses.replace(BASE, weights_policy="ema", ema_decay=0.75), model)
    expected = {k: v.clone() for k, v in model.state_dict().items() if v.is_floating_point()}
    for step in range(3):
        with torch.no_grad():
            model[0].weight.add_(step + 1.0)
            model[1].running_mean.fill_(4.0 * step)
        kept.step()
        for k, v in model.state_dict().items():
            if k in expected:
                expected[k] = 0.75 * expected[k] + 0.25 * v
    ema = kept.module().state_dict()
    for k, v in expected.items():
        torch.testing.assert_close(ema[k], v, rtol=0, atol=1e-6)
    assert kept.state().keys() == {"ema"} and kept.details() == {"decay": 0.75}


def test_best_keeps_the_first_epoch_with_the_highest_value_and_skips_unmeasured_ones():
    model = torch.nn.Linear(2, 1)
    kept = KeptWeights(dataclasses.replace(BASE, weights_policy="best", best_metric="adv"), model)
    for epoch, adv in enumerate([None, 0.2, 0.5, 0.5, 0.4]):
        with torch.no_grad():
            model.weight.fill_(epoch)
        kept.epoch({"epoch": epoch, "val_adv_acc": adv, "val_acc": 1.0})
    assert kept.details() == {"epoch": 2, "metric": "val_adv_acc", "value": 0.5}
    assert torch.equal(kept.module().weight, torch.full((1, 2), 2.0))
    assert KeptWeights(BASE, model).module() is None and KeptWeights(BASE, model).state() == {}


@pytest.mark.parametrize("metric", ["clean", "eadv"])
def test_best_weights_are_those_of_the_best_epoch_and_are_scored_beside_the_last(metric, loaders, tmp_path):  # noqa: F811
    config = dataclasses.replace(BASE, weights_policy="best", best_metric=metric)
    model, states, history = model_of(config), [], []

    def record(metrics):
        history.append(metrics)
        states.append({k: v.clone() for k, v in model.state_dict().items()})

    result = fit(config, model, loaders, run_dir=tmp_path, callback=record)
    column = {"clean": "val_acc", "eadv": "val_eadv"}[metric]
    values = [m[column] for m in history]
    best = values.index(max(values))
    assert all(m.get("val_eadv") is not None for m in history) == (metric == "eadv")
    kept = load_checkpoint(tmp_path / "best.pt")
    assert kept["weights"] == "best" and all(
        torch.equal(v, states[best][k]) for k, v in kept["model"].items()
    )
    scored = result["kept"]
    assert scored["weights"] == "best" and scored["details"] == {"epoch": best, "metric": column,
                                                                 "value": values[best]}  # fmt: skip
    assert [b["budget"] for b in scored["budgets"]] == [b["budget"] for b in result["budgets"]]


@pytest.mark.parametrize("policy", ["best", "ema"])
def test_a_killed_run_resumes_to_the_uninterrupted_kept_weights(policy, loaders, tmp_path):  # noqa: F811
    config = dataclasses.replace(BASE, weights_policy=policy, best_metric="adv", ema_decay=0.9)
    whole, killed, resumed = [], [], []
    model = model_of(config)
    result = fit(config, model, loaders, run_dir=tmp_path / "whole", callback=whole.append)
    with pytest.raises(Interrupted):
        fit(config, model_of(config), loaders, run_dir=tmp_path / "killed", callback=killed.append,
            train_loader=DiesMidEpoch(loaders[0], epoch=2, after=1))  # fmt: skip
    assert "kept" in load_checkpoint(tmp_path / "killed" / "last.pt")  # the kept state travels with it
    again = model_of(config)
    result_again = fit(config, again, loaders, run_dir=tmp_path / "killed", callback=resumed.append)
    assert strip(resumed) == strip(whole)
    assert strip([result_again["kept"]]) == strip([result["kept"]])
    a, b = (load_checkpoint(tmp_path / d / f"{policy}.pt")["model"] for d in ("whole", "killed"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    if policy == "ema":  # an average, not the last weights
        assert not all(torch.equal(a[k], v) for k, v in model.state_dict().items())


def cli(*args):
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_every_row_says_which_weights_it_scored_and_evaluate_scores_them_all(tmp_path):
    """`run --weights-policy ema`, then `evaluate` under another protocol: final and extra rows for the
    last weights and for the EMA, never mixed up; a second `evaluate` adds nothing."""
    database, runs = str(tmp_path / "r.db"), str(tmp_path / "runs")
    where = ["--db", database, "--runs-dir", runs, "--experiments", str(EXPERIMENTS)]
    policy = ["--weights-policy", "ema", "--ema-decay", "0.9"]
    cli("run", "--grid", "smoke", "--backbone", "cifar_resnet20", "--dataset", "synthetic", "--setting",
        "sched", "--t1", "1", "--t2", "2", *policy, *where)  # fmt: skip
    (run_id,) = [p.name for p in (tmp_path / "runs").iterdir()]
    assert sorted(p.name for p in (tmp_path / "runs" / run_id).iterdir()) == ["ema.pt", "final.pt", "last.pt"]
    out = cli("evaluate", run_id, "--protocol", "monotone", "--db", database, "--runs-dir", runs)
    assert "ema weights" in out and out.count("stored 1 new evaluation row(s)") == 2
    out = cli("evaluate", run_id, "--protocol", "monotone", "--db", database, "--runs-dir", runs)
    assert "new evaluation" not in out
    with sqlite3.connect(database) as connection:
        rows = connection.execute(
            "SELECT kind, weights, protocol, clean, adv, details FROM evaluation"
        ).fetchall()
    assert sorted((k, w, p) for k, w, p, *_ in rows) == [
        ("extra", "ema", "monotone"), ("extra", "last", "monotone"), ("final", "ema", "paper"),
        ("final", "last", "paper"),
    ]  # fmt: skip
    by = {(k, w): (clean, adv) for k, w, _, clean, adv, _ in rows}
    details = {(k, w): json.loads(d or "{}") for k, w, _, _, _, d in rows}
    assert details["final", "ema"] == details["extra", "ema"] == {"decay": 0.9}  # evaluate keeps them too
    assert by["final", "ema"] != by["final", "last"]  # two sets of weights, two sets of numbers
    assert by["extra", "ema"][0] == by["final", "ema"][0]  # the same EMA weights: the same clean accuracy


def test_bad_weights_policies_are_one_line_and_exit_2(db, tmp_path):  # noqa: F811 (db: the fixture)
    runs = tmp_path / "runs"
    run = ["run", "--grid", "smoke", "--backbone", "cifar_resnet20", "--dataset", "synthetic",
           "--db", str(db), "--runs-dir", str(runs), "--experiments", str(EXPERIMENTS)]  # fmt: skip
    cases = [
        ([*run, "--weights-policy", "ema", "--ema-decay", "1.5"], "ema_decay must be between 0 and 1"),
        ([*run, "--weights-policy", "swa"], "'swa' is not one of 'last', 'best', 'ema'"),
        ([*run, "--weights-policy", "best", "--best-metric", "auc"], "'auc' is not one of 'clean', 'adv'"),
    ]
    body = (
        GRID.format(dataset="synthetic")
        + 'pretrained = false\nval_adv_samples = 0\nweights_policy = "best"\n'
    )
    grid = ["run-grid", "--grid", "g", "--experiments", toml(tmp_path, "g.toml", body), "--db", str(db)]
    cases.append(([*grid, "--runs-dir", str(runs)], "best_metric 'adv' needs adversarial validation"))
    check(cases, db, runs)
