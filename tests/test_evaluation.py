"""Evaluations beyond the paper's APGD: AutoAttack through torchattacks, the ℓ2 threat model, per-sample
flags, and evaluations that resume per batch."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch
from torch import nn

from rftbench.core.config import budget_text, parse_budget
from rftbench.core.metrics import EvalProtocol, eps_grid
from rftbench.engine.batches import EvaluationError
from rftbench.engine.evaluation import evaluate_budgets, evaluation_key


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 10)
    ).eval()


def tiny_data(n: int = 24, batch: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Random images labelled by the model itself, with a few clean mistakes: robust at small budgets."""
    model = tiny_model()
    x = torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:3] = (y[:3] + 1) % 10
    return [(x[i : i + batch], y[i : i + batch]) for i in range(0, n, batch)]


class MemoryLog:
    """A `BatchLog` in memory that can stop the evaluation after `stop_after` new batches (a kill)."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.batches: dict[int, dict] = {}
        self.stop_after, self.saved = stop_after, 0

    def done(self) -> dict[int, dict]:
        return dict(self.batches)

    def save(self, index: int, payload: dict) -> None:
        if self.stop_after is not None and self.saved == self.stop_after:
            raise KeyboardInterrupt("killed")
        self.batches[index] = payload
        self.saved += 1


def test_budgets_are_read_and_written_per_norm():
    assert budget_text("4/255") == "4/255" and budget_text(0.5, "L2") == "0.5"
    assert parse_budget("1.5", "L2") == Fraction(3, 2)  # ℓ2 budgets may exceed 1
    assert [budget_text(e, "L2") for e in eps_grid("0.5", "L2")] == [
        "0", "0.0625", "0.125", "0.1875", "0.25", "0.3125", "0.375", "0.4375", "0.5"
    ]  # fmt: skip
    assert eps_grid("0", "L2") == [0]
    for bad, message in (("4/255", "write it as a number"), ("-1", "negative"), ("x", "cannot read")):
        with pytest.raises(ValueError, match=message):
            parse_budget(bad, "L2")
    with pytest.raises(ValueError, match="norm 'L1' unknown"):
        parse_budget("1", "L1")
    with pytest.raises(ValueError, match="norm 'L1' unknown"):
        EvalProtocol(norm="L1")


def test_autoattack_on_a_tiny_model():
    """torchattacks' APGD-CE, APGD-T, FAB-T and Square in auto-attack's order, at every ε of the grid: each
    attack's survivors are a subset of the previous one's, the result is at least as strong as our APGD-10
    (up to one sample), the per-sample flags give the accuracies, and `budget` (ε_g only) measures the same
    accuracy at ε_g as the full grid (the same seeded attacks on the same samples)."""
    model, batches = tiny_model(), tiny_data(n=12, batch=12)  # one batch: Square costs 5,000 queries
    log = MemoryLog()
    aa = EvalProtocol(attack="autoattack-standard", steps=20)
    result = evaluate_budgets(model, batches, ["2/255"], aa, n_classes=10, log=log)
    (row,) = result["budgets"]
    ours = evaluate_budgets(model, batches, ["2/255"], EvalProtocol(steps=10))["budgets"][0]
    n = result["n"]
    assert n == 12 and row["eps"] == ["0/255", "1/255", "2/255"] and row["eadv"] is not None
    assert result["implementation"].startswith("torchattacks 3.")
    assert result["outside_ball"] == 0
    stages = result["per_attack"]["2/255"]
    assert list(stages) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert all(a >= b for a, b in zip(stages.values(), list(stages.values())[1:]))
    assert stages["square"] == row["adv"]
    assert 0 < row["adv"] < row["clean"], "the grid must leave the model partly robust, or this proves little"
    for aa_acc, apgd_acc in zip(row["accuracies"], ours["accuracies"]):
        assert aa_acc <= apgd_acc + 1 / n
    flags = [p["flags"] for _, p in sorted(log.batches.items())]
    assert [sum(f[e].count("1") for f in flags) / n for e in row["eps"]] == row["accuracies"]
    for f, p in zip(flags, log.batches.values()):  # robust to every attack so far: a shrinking set
        chain = [f["0/255"], *p["stages"]["2/255"].values()]
        assert all(set(zip(a, b)) <= {("0", "0"), ("1", "1"), ("1", "0")} for a, b in zip(chain, chain[1:]))
    at_budget = evaluate_budgets(
        model, batches, ["2/255"], EvalProtocol(attack="autoattack-standard", steps=20, protocol="budget"),
        n_classes=10,
    )["budgets"][0]  # fmt: skip
    assert (at_budget["adv"], at_budget["eadv"], at_budget["eps"]) == (row["adv"], None, ["0/255", "2/255"])


def test_an_evaluation_resumes_per_batch_with_identical_results():
    model, batches = tiny_model(), tiny_data()
    protocol = EvalProtocol(steps=5, random_start=True, seed=3)
    whole = evaluate_budgets(model, batches, ["4/255"], protocol)
    log = MemoryLog(stop_after=2)
    with pytest.raises(KeyboardInterrupt):
        evaluate_budgets(model, batches, ["4/255"], protocol, log=log)
    assert sorted(log.batches) == [0, 1]
    first = dict(log.batches)
    torch.manual_seed(123)  # the global RNG state is not what a resumed evaluation depends on
    log.stop_after, log.saved = None, 0
    resumed = evaluate_budgets(model, batches, ["4/255"], protocol, log=log)
    assert log.saved == 1 and all(log.batches[i] is first[i] for i in first)  # only the missing batch
    assert resumed["budgets"] == whole["budgets"] and resumed["attacks_run"] == whole["attacks_run"]


def test_a_logged_batch_of_another_size_is_refused():
    model, batches = tiny_model(), tiny_data()
    log = MemoryLog()
    evaluate_budgets(model, batches, ["1/255"], EvalProtocol(steps=2), log=log)
    with pytest.raises(EvaluationError, match="batch 0 was logged with 8 samples .* now gives 6"):
        evaluate_budgets(
            model, [(x[:6], y[:6]) for x, y in batches], ["1/255"], EvalProtocol(steps=2), log=log
        )


def test_l2_evaluation_on_its_explicit_grid():
    model, batches = tiny_model(), tiny_data()
    paper = evaluate_budgets(model, batches, ["0.5"], EvalProtocol(steps=5, norm="L2"))
    monotone = evaluate_budgets(
        model, batches, ["0.5"], EvalProtocol(steps=5, norm="L2", protocol="monotone")
    )
    (p,), (m,) = paper["budgets"], monotone["budgets"]
    assert p["budget"] == "0.5" and p["eps"] == [budget_text(e, "L2") for e in eps_grid("0.5", "L2")]
    assert all(a <= b for a, b in zip(m["accuracies"], p["accuracies"]))
    assert p["accuracies"][0] > p["adv"] > 0
    assert evaluation_key(EvalProtocol(norm="L2"), ["0.5"], model)["eps"] == p["eps"]


@pytest.mark.slow
@pytest.mark.parametrize("norm, budget", [("Linf", "0.5/255"), ("L2", "0.05")])
def test_bf16_evaluation_agrees_with_fp32_on_a_real_model(resnet20, cifar_test_500, norm, budget):
    """Mixed precision in the attack, where it matters (a real non-robust model at budgets it partly
    survives): bf16 autocast moves the accuracy at ε_g by at most 3 points in 300 images. bf16 rounds the
    first layer's input to 8 significant bits, a step of 1/256 at intensities in [0.5, 1), coarser than a
    0.5/255 perturbation, so the bf16 attack is a little weaker there (measured: 30.0% fp32, 32.0% bf16)."""
    x, y = cifar_test_500[0][::5][:300], cifar_test_500[1][::5][:300]
    batches = [(x[i : i + 100], y[i : i + 100]) for i in range(0, 300, 100)]
    fp32, bf16 = (
        evaluate_budgets(
            resnet20, batches, [budget], EvalProtocol(steps=10, norm=norm, precision=p, protocol="budget")
        )["budgets"][0]
        for p in ("fp32", "bf16")
    )
    print(f"{norm} {budget}: fp32 {fp32['accuracies']} bf16 {bf16['accuracies']}")
    assert 0.1 < fp32["adv"] < fp32["clean"] - 0.1, "the budget must leave the model partly robust"
    assert max(abs(a - b) for a, b in zip(fp32["accuracies"], bf16["accuracies"])) <= 0.03


def test_the_batch_key_names_the_weights_and_the_package():
    """A run trained again from scratch (other weights) never reads its predecessor's batches."""
    model, protocol = tiny_model(), EvalProtocol(steps=2)
    key = evaluation_key(protocol, ["1/255"], model)
    assert key == evaluation_key(protocol, ["1/255"], tiny_model())  # the same weights, another object
    assert key["implementation"].startswith("rftbench") and key["eps"] == ["0/255", "1/255"]
    with torch.no_grad():
        model[0].weight[0, 0, 0, 0] += 1e-6
    assert evaluation_key(protocol, ["1/255"], model)["weights"] != key["weights"]
    aa = evaluation_key(EvalProtocol(attack="autoattack-standard"), ["1/255"], model)
    assert aa["implementation"].startswith("torchattacks")


def test_autoattack_in_bf16_leaves_a_batchnorm_model_in_eval_mode_and_its_statistics_alone():
    """torchattacks puts back the mode it found on what it attacks; under autocast that is a wrapper of
    the model, which must be in eval mode, or every later prediction would use (and update) batch
    statistics. At 64/255 APGD-CE fools every image, so Square has nothing to query."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 10)
    ).eval()
    model[1].running_mean.uniform_(-0.5, 0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    protocol = EvalProtocol(attack="autoattack-standard", steps=5, precision="bf16", protocol="budget")
    result = evaluate_budgets(model, tiny_data(16, 8), ["64/255"], protocol, n_classes=10)
    assert not any(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert result["budgets"][0]["adv"] == 0 and result["per_attack"]["64/255"]["apgd-ce"] == 0
