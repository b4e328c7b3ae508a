"""Expected robustness, the adaptation start, and the robustness curve under both per-ε protocols."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch

from rftbench import adaptation_start_epoch, apgd, eps_grid, expected_robustness, robustness_curve
from rftbench.core.metrics import EvalProtocol
from rftbench.engine.evaluation import evaluate_budgets


def test_eps_grid_is_every_255th_up_to_the_budget():
    assert eps_grid("4/255") == [Fraction(k, 255) for k in range(5)]
    assert len(eps_grid("8/255")) == 9
    assert eps_grid("0.5/255") == [Fraction(0), Fraction(1, 510)]
    assert eps_grid("0") == [Fraction(0)]


def test_expected_robustness_at_4_over_255_by_hand():
    accs = [0.80, 0.60, 0.40, 0.20, 0.10]
    # (1/4)·[(0.8+0.6)/2 + (0.6+0.4)/2 + (0.4+0.2)/2 + (0.2+0.1)/2] = (0.7 + 0.5 + 0.3 + 0.15)/4
    assert expected_robustness(eps_grid("4/255"), accs) == pytest.approx(0.4125, abs=1e-12)


def test_expected_robustness_at_8_over_255_by_hand():
    accs = [0.9, 0.7, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05, 0.0]
    # sum of pairwise means = 0.8 + 0.6 + 0.45 + 0.35 + 0.25 + 0.15 + 0.075 + 0.025 = 2.7; / 8
    assert expected_robustness(eps_grid("8/255"), accs) == pytest.approx(2.7 / 8, abs=1e-12)


def test_expected_robustness_edge_cases():
    assert expected_robustness([0], [0.7]) == 0.7  # ε_g = 0: clean accuracy
    assert expected_robustness([0, 0.5, 2], [1.0, 1.0, 0.0]) == pytest.approx((0.5 * 1.0 + 1.5 * 0.5) / 2)
    with pytest.raises(ValueError):
        expected_robustness([1 / 255, 2 / 255], [0.5, 0.4])
    with pytest.raises(ValueError):
        expected_robustness([0, 1 / 255], [0.5])


def test_adaptation_start_is_the_first_epoch_strictly_above_the_threshold():
    assert adaptation_start_epoch([0.01, 0.04, 0.05, 0.06, 0.5]) == 3
    assert adaptation_start_epoch([0.5]) == 0
    assert adaptation_start_epoch([0.01] * 7) == 7
    assert adaptation_start_epoch([0.01] * 7, epochs=50) == 50
    assert adaptation_start_epoch([0.05, 0.2, 0.3], threshold=0.2) == 2


@pytest.mark.slow
def test_monotone_never_beats_the_paper_protocol_and_saves_attacks(resnet20, cifar_test_500):
    x, y = cifar_test_500
    x, y = x[::4], y[::4]  # 125 images, 12-13 per class, in two batches
    batches = [(x[:64], y[:64]), (x[64:], y[64:])]
    grid = [Fraction(k, 4 * 255) for k in range(5)]  # 0, 0.25, 0.5, 0.75, 1 (/255)
    for random_start in (False, True):
        early = robustness_curve(
            resnet20, batches, grid, steps=10, random_start=random_start, protocol="monotone"
        )
        naive = robustness_curve(
            resnet20, batches, grid, steps=10, random_start=random_start, protocol="paper"
        )
        saved = naive.attacks_run - early.attacks_run
        print(f"random_start={random_start}: early {early.accuracies} naive {naive.accuracies}; "
              f"attacks {early.attacks_run} vs {naive.attacks_run} naive ({saved} saved)")  # fmt: skip
        assert early.eps == naive.eps == grid and early.n == naive.n == 125
        assert early.accuracies[0] == naive.accuracies[0]  # clean
        assert all(e <= n for e, n in zip(early.accuracies, naive.accuracies))
        assert (
            early.accuracies == naive.accuracies
        )  # exact on this model: no point is robust only at a larger ε
        clean_correct = round(naive.accuracies[0] * 125)  # paper: every clean-correct sample at every ε
        assert naive.attacks_run == 4 * clean_correct and naive.attacks_naive == 4 * 125
        assert early.attacks_naive == 500 and early.attacks_run < 0.6 * naive.attacks_run
        # robust accuracy falls with ε (early exit makes this monotone by construction)
        assert all(a >= b for a, b in zip(early.accuracies, early.accuracies[1:]))
    assert 0.45 < early.at(Fraction(1, 1020)) < 0.65 and early.at(Fraction(1, 255)) < 0.1


def test_robustness_curve_restores_the_model_mode():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)).train()
    batches = [(torch.rand(6, 3, 2, 2), torch.randint(0, 3, (6,)))]
    curve = robustness_curve(model, batches, ["1/255", "2/255"], steps=3)
    assert model.training and curve.n == 6 and len(curve.accuracies) == 3
    assert curve.attacks_naive == 12 and curve.attacks_run <= 12


def tiny_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(48, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4)
    )


def test_the_paper_protocol_is_one_independent_apgd_per_eps():
    """Its accuracy at each ε is exactly that of one APGD at that ε on the clean-correct samples, done by
    hand; monotone's at ε_g is the union of the attacks at every ε up to it."""
    model = tiny_net().eval()
    x, y = torch.rand(64, 3, 4, 4), torch.randint(0, 4, (64,))
    grid = eps_grid("3/255")
    with torch.no_grad():
        clean = model(x).argmax(1) == y
    by_hand, fooled_so_far = [clean.float().mean().item()], ~clean
    for e in grid[1:]:
        adv = apgd(model, x[clean], y[clean], float(e), 4, returned="misclassified")
        with torch.no_grad():
            robust = torch.zeros_like(clean).index_copy(
                0, clean.nonzero().squeeze(1), model(adv).argmax(1) == y[clean]
            )
        by_hand.append(robust.float().mean().item())
        fooled_so_far |= ~robust
    paper = robustness_curve(model, [(x[:40], y[:40]), (x[40:], y[40:])], grid, steps=4, protocol="paper")
    monotone = robustness_curve(
        model, [(x[:40], y[:40]), (x[40:], y[40:])], grid, steps=4, protocol="monotone"
    )
    assert paper.accuracies == pytest.approx(by_hand, abs=1e-9)
    assert monotone.accuracies[-1] <= (~fooled_so_far).float().mean().item() + 1e-9
    assert all(m <= p + 1e-9 for m, p in zip(monotone.accuracies, paper.accuracies))
    assert paper.attacks_run == 3 * int(clean.sum()) and monotone.attacks_run <= paper.attacks_run


def test_an_evaluation_names_its_protocol():
    model = tiny_net()
    batches = [(torch.rand(8, 3, 4, 4), torch.randint(0, 4, (8,)))]
    protocol = EvalProtocol(protocol="monotone", steps=2, precision="bf16")
    result = evaluate_budgets(model, batches, ["2/255"], protocol)
    assert result["protocol"] == protocol.as_dict() and result["seconds"] > 0
    assert EvalProtocol(seed=5).seed == 0  # without random starts the seed draws nothing: one key
    with pytest.raises(ValueError, match="evaluation protocol 'union' unknown"):
        EvalProtocol(protocol="union")
