"""ε schedules against hand-computed values (0-based epochs, CONVENTIONS.md)."""

from __future__ import annotations

import dataclasses
import typing

import numpy as np
import pytest

from rftbench import RunConfig, ScheduleSpec, get_schedule
from rftbench.core.config import SCHEDULE_FIELDS
from rftbench.core.schedules import adaptive_alphas
from rftbench.experiments.schema import VARIANT_KEYS, Setting, experiments_schema

EPS = 4 / 255


def values(setting, epochs=50, **params):
    spec = ScheduleSpec(setting, EPS, **params).canonical()
    spec.validate(epochs)
    return spec.values(epochs)


def test_paper_hinge_t1_12_t2_37_of_50_epochs():
    eps = values("sched", t1=12, t2=37)
    # hand-computed: α(t) = 0 for t < 12, (t − 12)/25 for 12 ≤ t < 37, 1 from 37 on
    expected = {0: 0.0, 11: 0.0, 12: 0.0, 13: 1 / 25, 20: 8 / 25, 24: 12 / 25, 36: 24 / 25, 37: 1.0, 49: 1.0}
    for epoch, alpha in expected.items():
        assert eps[epoch] == pytest.approx(alpha * EPS, abs=1e-15), epoch
    assert len(eps) == 50
    assert all(a <= b for a, b in zip(eps, eps[1:])), "the hinge never decreases"


def test_special_cases_coincide_with_the_hinge():
    assert values("fix") == values("sched", t1=0, t2=0) == [EPS] * 50
    assert values("linear", t2=10) == values("sched", t1=0, t2=10)
    assert values("linear", t2=10)[:3] == pytest.approx([0.0, EPS / 10, 2 * EPS / 10])
    assert values("standard") == [0.0] * 50


def test_hard_switch_jumps_from_zero_to_the_budget():
    eps = values("sched", t1=25, t2=25)
    assert eps[24] == 0.0 and eps[25] == EPS


def test_step_granularity_uses_the_fractional_epoch():
    spec = ScheduleSpec("sched", EPS, t1=12, t2=37, granularity="step").canonical()
    assert spec.epsilon(12, 50, step=5, steps_per_epoch=10) == pytest.approx(0.5 / 25 * EPS)
    assert spec.epsilon(36, 50, step=9, steps_per_epoch=10) == pytest.approx(24.9 / 25 * EPS)
    per_epoch = ScheduleSpec("sched", EPS, t1=12, t2=37).canonical()
    assert per_epoch.epsilon(12, 50, step=5, steps_per_epoch=10) == 0.0


@pytest.mark.parametrize(
    "given, canonical",
    [
        (dict(setting="sched", eps="0/255", t1=12, t2=37), ("standard", None, None)),
        (dict(setting="fix", eps="0"), ("standard", None, None)),
        (dict(setting="sched", eps="4/255", t1=0, t2=0), ("fix", None, None)),
        (dict(setting="sched", eps="4/255", t1=0, t2=37), ("linear", 0.0, 37.0)),
        (dict(setting="linear", eps="4/255", t2=0), ("fix", None, None)),
        (dict(setting="sched", eps="4/255", t1=12, t2=37), ("sched", 12.0, 37.0)),
        (dict(setting="fix", eps="4/255", t1=12, t2=37), ("fix", None, None)),
    ],
)
def test_canonical_forms_give_one_run_id_per_schedule(given, canonical):
    cfg = RunConfig(backbone="SWIN", dataset="Cars", **given)
    assert (cfg.setting, cfg.t1, cfg.t2) == canonical
    twin = RunConfig(backbone="SWIN", dataset="Cars", setting=canonical[0], eps=given["eps"], t1=canonical[1],
                     t2=canonical[2])  # fmt: skip
    assert cfg.run_id == twin.run_id


@pytest.mark.parametrize(
    "params, message",
    [
        (dict(setting="sched", t1=20, t2=10), "T1 (20) > T2 (10)"),
        (dict(setting="sched", t1=12, t2=60), "T2 (60) > epochs (50)"),
        (dict(setting="sched", t1=-1, t2=10), "T1 must be >= 0"),
        (dict(setting="sched", t1=12), "needs T1 and T2"),
        (dict(setting="linear", t1=5, t2=10), "linear is the hinge with T1 = 0: for T1 = 5 use sched"),
        (dict(setting="fix", eps="-4/255"), "outside [0, 1]"),
        (
            dict(setting="nope"),
            "valid ones are standard, fix, sched, linear, piecewise, uniform, auto, adaptive",
        ),
        (dict(setting="sched", t1=1, t2=2, schedule_granularity="batch"), "granularity"),
    ],
)
def test_invalid_parameters_raise_clear_errors(params, message):
    with pytest.raises(ValueError, match=None) as info:
        RunConfig(backbone="SWIN", dataset="Cars", **params)
    assert message in str(info.value)


def test_negative_budget_is_rejected_by_the_schedule_itself():
    with pytest.raises(ValueError, match="non-negative"):
        ScheduleSpec("fix", -0.01).canonical().validate(50)


def test_uniform_is_drawn_from_seed_and_epoch_alone():
    spec = ScheduleSpec("uniform", EPS).canonical()
    first = spec.values(50, seed=3)
    assert first == spec.values(50, seed=3), "a resumed run redraws the same budgets"
    assert spec.epsilon(17, 50, seed=3) == first[17], "an epoch's draw does not depend on earlier draws"
    assert first != spec.values(50, seed=4)
    assert all(0 <= e <= EPS for e in first) and len(set(first)) == 50
    assert min(first) < EPS / 4 and max(first) > 3 * EPS / 4


def test_auto_waits_for_a_plateau_then_ramps_to_the_budget_at_the_last_epoch():
    spec = ScheduleSpec("auto", EPS).canonical()
    assert (spec.patience, spec.tolerance) == (5, 0.02)
    # best 0.50 at epoch 2; epochs 3..7 never beat it by more than 0.02 -> plateau declared at epoch 7
    history = [0.10, 0.30, 0.50, 0.51, 0.52, 0.52, 0.51, 0.515] + [0.9] * 12
    eps = [spec.epsilon(e, 20, val_accuracies=history) for e in range(20)]
    assert eps[:8] == [0.0] * 8
    assert eps[8] == pytest.approx(EPS * 1 / 12) and eps[13] == pytest.approx(EPS * 6 / 12)
    assert eps[19] == pytest.approx(EPS)
    # epoch 6 sees only epochs 0..5: no plateau yet, even though later epochs are known
    assert spec.epsilon(6, 20, val_accuracies=history) == 0.0


def test_auto_never_ramps_while_accuracy_keeps_improving():
    spec = ScheduleSpec("auto", EPS, patience=3, tolerance=0.01).canonical()
    history = [0.05 * i for i in range(20)]
    assert [spec.epsilon(e, 20, val_accuracies=history) for e in range(20)] == [0.0] * 20


def test_unknown_schedule_lists_the_valid_ones():
    with pytest.raises(
        ValueError, match="valid ones are standard, fix, sched, linear, piecewise, uniform, auto, adaptive"
    ):
        get_schedule("cosine")


# ---- piecewise ------------------------------------------------------------------------------------------

PAPER_SCHED_ID = "09ed814cc629ad50"  # test_identity: the paper's SWIN-Cars sched 12/37 at 4/255


@pytest.mark.parametrize(
    "points, setting, t1, t2",
    [
        (((12, 0), (37, 1)), "sched", 12.0, 37.0),
        (((0, 0), (12, 0), (24.5, 0.5), (37, 1), (50, 1)), "sched", 12.0, 37.0),  # collinear and flat points
        (((0, 0), (37, 1)), "linear", 0.0, 37.0),
        (((0, 1),), "fix", None, None),
        (((0, 0), (0, 1)), "fix", None, None),  # a jump at epoch 0
        (((5, 0), (5, 1)), "sched", 5.0, 5.0),  # the hard switch of Table 7
        (((0, 0), (20, 0)), "standard", None, None),
    ],
)
def test_piecewise_special_cases_keep_the_ids_of_their_settings(points, setting, t1, t2):
    cfg = RunConfig(backbone="SWIN", dataset="Cars", setting="piecewise", eps="4/255", points=points)
    assert (cfg.setting, cfg.t1, cfg.t2, cfg.points) == (setting, t1, t2, ())
    twin = RunConfig(backbone="SWIN", dataset="Cars", setting=setting, eps="4/255", t1=t1, t2=t2)
    assert cfg.run_id == twin.run_id
    if setting == "sched" and (t1, t2) == (12.0, 37.0):
        assert cfg.run_id == PAPER_SCHED_ID


def test_piecewise_values_by_hand():
    spec = ScheduleSpec("piecewise", EPS, points=((0, 0), (5, 0.5), (30, 1))).canonical()
    assert spec.setting == "piecewise" and spec.label == "piecewise 0:0,5:0.5,30:1"
    # 0 → 0.5 over epochs 0-5 (0.1 per epoch), then 0.5 → 1 over 5-30 (0.02 per epoch), then 1
    expected = {0: 0.0, 2: 0.2, 5: 0.5, 10: 0.6, 29: 0.98, 30: 1.0, 49: 1.0}
    for epoch, alpha in expected.items():
        assert spec.epsilon(epoch, 50) == pytest.approx(alpha * EPS), epoch
    jump = ScheduleSpec("piecewise", EPS, points=((2, 0.25), (3, 0.25), (3, 0.75))).canonical()
    assert jump.points == ((3.0, 0.25), (3.0, 0.75))  # the flat start is dropped, the jump kept
    assert [v / EPS for v in jump.values(5)] == pytest.approx([0.25, 0.25, 0.25, 0.75, 0.75])
    steps = ScheduleSpec("piecewise", EPS, points=((0, 0), (5, 0.5), (30, 1)), granularity="step").canonical()
    assert steps.epsilon(2, 50, step=5, steps_per_epoch=10) == pytest.approx(0.25 * EPS)
    assert spec.epsilon(2, 50, step=5, steps_per_epoch=10) == pytest.approx(0.2 * EPS)  # per epoch: t = 2


def test_piecewise_points_are_part_of_the_id_and_survive_the_database():
    a = RunConfig(
        backbone="SWIN", dataset="Cars", setting="piecewise", eps="4/255", points=((0, 0), (5, 0.5), (30, 1))
    )
    b = RunConfig(
        backbone="SWIN", dataset="Cars", setting="piecewise", eps="4/255", points=((0, 0), (5, 0.4), (30, 1))
    )
    assert a.run_id != b.run_id and a.identity()["points"] == [[0.0, 0.0], [5.0, 0.5], [30.0, 1.0]]
    assert (
        RunConfig.from_json(a.canonical_json()) == a
        and RunConfig.from_json(a.canonical_json()).run_id == a.run_id
    )
    assert "points" not in RunConfig(backbone="SWIN", dataset="Cars").identity()  # every other id unchanged


@pytest.mark.parametrize(
    "params, message",
    [
        (dict(points=()), "needs points"),
        (dict(points=((0, 1.5),)), r"fractions of ε_g in \[0, 1\]"),
        (dict(points=((5, 0), (2, 1))), "in order of epoch"),
        (dict(points=((1, 0), (1, 0.5), (1, 1))), "at most two at one epoch"),
        (dict(points=((0, 0), (5, 0.5), (60, 1))), "point at epoch 60 > epochs"),
        (dict(points=((0, 0), (60, 1))), r"T2 \(60\) > epochs \(50\)"),  # a hinge: its own message
        (dict(points=((0, 0, 1),)), r"\[epoch, fraction of ε_g\] pairs"),
        (dict(setting="sched", t1=1, t2=2, points=((0, 1),)), "points are for the piecewise schedule"),
    ],
)
def test_bad_piecewise_points_raise_one_clear_error(params, message):
    with pytest.raises(ValueError, match=message):
        RunConfig(
            backbone="SWIN", dataset="Cars", eps="4/255", epochs=50, **({"setting": "piecewise"} | params)
        )


# ---- adaptive -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "history, epochs, alphas",
    [
        # epochs 8: T1 at the latest 2, pace 1/2, slow 1/4, ε_g by epoch 6. Gains 82%, 45%, 31%: T1 = 2 (the
        # cap); the accuracy after epoch 2 is its best, so full pace: 0.5, then 1.
        ([0.188, 0.342, 0.494, 0.58, 0.654, 0.65, 0.654], 8, [0, 0, 0, 0.5, 1, 1, 1, 1]),
        # adapted after epoch 1 (gain 0.02 < 10% of 0.52): α(2) = 1/2; 0.40 and 0.45 are below 95% of 0.52,
        # so two slow steps of 1/4
        ([0.5, 0.52, 0.40, 0.45, 0.46, 0.47, 0.48], 8, [0, 0, 0.5, 0.75, 1, 1, 1, 1]),
        # epochs 6: pace 1/2, slow 1/4, T1 at the latest 1, ε_g by epoch 4: slow steps would end at epoch 5,
        # so the deadline's (1 - α) / (epochs left) = 1/3 sets every step
        ([0.7, 0.5, 0.5, 0.5, 0.5], 6, [0, 0, 1 / 3, 2 / 3, 1, 1]),
        # 50 epochs: a 20% rise every epoch up to epoch 12 never counts as adapted, so the paper's T1 = 12;
        # then the accuracy keeps rising (always its best): full pace 1/round(12.5) = 1/12, ε_g at epoch 24
        (
            [0.02 * 1.2**k for k in range(13)] + [0.18 + 0.001 * j for j in range(36)],
            50,
            [0] * 13 + [k / 12 for k in range(1, 13)] + [1] * 25,
        ),
    ],
)
def test_adaptive_alphas_by_hand(history, epochs, alphas):
    assert adaptive_alphas(history, epochs) == pytest.approx(alphas)
    spec = ScheduleSpec("adaptive", EPS).canonical()
    got = [spec.epsilon(e, epochs, val_accuracies=history[:e]) / EPS for e in range(epochs)]
    assert got == pytest.approx(alphas)  # what the trainer asks for, epoch by epoch


def test_adaptive_reads_only_the_past_so_a_resumed_run_replays_it():
    """α(e) depends on the accuracies of epochs before e alone: any later history leaves it unchanged, so
    a run resumed from its stored history gets the same ε for every epoch."""
    rng = np.random.default_rng(0)
    for _ in range(50):
        epochs = int(rng.integers(2, 40))
        history = list(rng.uniform(0, 1, epochs - 1))
        full = adaptive_alphas(history, epochs)
        assert len(full) == epochs and full[0] == 0 and all(0 <= a <= 1 for a in full)
        assert all(b >= a for a, b in zip(full, full[1:]))  # never decreases
        assert full[min(epochs - 1, int(0.75 * epochs))] == 1 or epochs < 2
        for e in range(epochs):
            assert adaptive_alphas(history[:e], epochs) == full[: e + 1]
    with pytest.raises(ValueError, match="needs the validation accuracy of epochs 0-2"):
        ScheduleSpec("adaptive", EPS).epsilon(3, 10, val_accuracies=[0.5])


def test_adaptive_has_no_per_task_parameters():
    cfg = RunConfig(
        backbone="SWIN", dataset="Cars", setting="adaptive", eps="4/255", t1=12, t2=37, patience=3
    )
    assert (cfg.t1, cfg.t2, cfg.patience, cfg.tolerance, cfg.points) == (None, None, None, None, ())
    assert cfg.run_id == RunConfig(backbone="SWIN", dataset="Cars", setting="adaptive", eps="4/255").run_id


def test_a_schedule_parameter_is_declared_once_by_schedule_spec():
    """A parameter added to ScheduleSpec is a RunConfig field of the same type and default (hashed off its
    default, so stored ids keep), a key of a grid's `settings` and of the editors' schema."""
    spec_fields = {f.name: f for f in dataclasses.fields(ScheduleSpec)}
    run_fields = {f.name: f for f in dataclasses.fields(RunConfig)}
    spec_types, run_types = typing.get_type_hints(ScheduleSpec), typing.get_type_hints(RunConfig)
    assert set(SCHEDULE_FIELDS) == set(spec_fields) - {"eps"}
    for name, field in SCHEDULE_FIELDS.items():
        assert field in run_fields, f"RunConfig has no field for the schedule parameter {name}"
        assert run_types[field] == spec_types[name], field
        if spec_fields[name].default is not dataclasses.MISSING:
            assert run_fields[field].default == spec_fields[name].default, field
    # an entry of `settings` may also name its objective and fine-tuning mode (VARIANT_KEYS)
    keys = set(SCHEDULE_FIELDS.values()) | set(VARIANT_KEYS)
    assert set(Setting.model_fields) == keys
    assert set(experiments_schema()["$defs"]["Setting"]["properties"]) == keys
    config = RunConfig(backbone="SWIN", dataset="Cars", setting="auto", patience=3, tolerance=0.01)
    assert config.schedule == ScheduleSpec("auto", config.eps_value, patience=3, tolerance=0.01)
