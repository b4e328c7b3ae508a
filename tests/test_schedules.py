"""ε schedules against hand-computed values (0-based epochs, CONVENTIONS.md)."""

from __future__ import annotations

import pytest

from rftbench import RunConfig, ScheduleSpec, get_schedule

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
        (dict(setting="nope"), "valid ones are standard, fix, sched, linear, uniform, auto"),
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
    with pytest.raises(ValueError, match="valid ones are standard, fix, sched, linear, uniform, auto"):
        get_schedule("cosine")
