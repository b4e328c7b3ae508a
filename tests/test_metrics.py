"""Expected robustness, the adaptation start, and the early-exit robustness curve."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch

from rftbench import adaptation_start_epoch, eps_grid, expected_robustness, robustness_curve


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
def test_early_exit_never_beats_the_naive_curve_and_saves_attacks(resnet20, cifar_test_500):
    x, y = cifar_test_500
    x, y = x[::2], y[::2]  # 250 images, 25 per class
    batches = [(x[i : i + 125], y[i : i + 125]) for i in range(0, len(y), 125)]
    grid = [Fraction(k, 4 * 255) for k in range(5)]  # 0, 0.25, 0.5, 0.75, 1 (/255)
    for random_start in (False, True):
        early = robustness_curve(resnet20, batches, grid, steps=10, random_start=random_start)
        naive = robustness_curve(
            resnet20, batches, grid, steps=10, random_start=random_start, early_exit=False
        )
        saved = naive.attacks_run - early.attacks_run
        print(f"random_start={random_start}: early {early.accuracies} naive {naive.accuracies}; "
              f"attacks {early.attacks_run} vs {naive.attacks_run} naive ({saved} saved)")  # fmt: skip
        assert early.eps == naive.eps == grid and early.n == naive.n == 250
        assert early.accuracies[0] == naive.accuracies[0]  # clean
        assert all(e <= n for e, n in zip(early.accuracies, naive.accuracies))
        assert (
            early.accuracies == naive.accuracies
        )  # exact on this model: no point is robust only at a larger ε
        assert naive.attacks_run == naive.attacks_naive == 4 * 250
        assert early.attacks_naive == 1000 and early.attacks_run < 0.6 * naive.attacks_run
        # robust accuracy falls with ε (early exit makes this monotone by construction)
        assert all(a >= b for a, b in zip(early.accuracies, early.accuracies[1:]))
    assert 0.45 < early.at(Fraction(1, 1020)) < 0.65 and early.at(Fraction(1, 255)) < 0.1


def test_robustness_curve_restores_the_model_mode():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)).train()
    batches = [(torch.rand(6, 3, 2, 2), torch.randint(0, 3, (6,)))]
    curve = robustness_curve(model, batches, ["1/255", "2/255"], steps=3)
    assert model.training and curve.n == 6 and len(curve.accuracies) == 3
    assert curve.attacks_naive == 12 and curve.attacks_run <= 12
