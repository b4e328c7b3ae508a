"""The paper's metrics: expected robustness, robustness curves, the task-adaptation start.

    grid = eps_grid("8/255")                       # 0, 1/255, …, 8/255
    curve = robustness_curve(model, loader, grid)  # APGD-10 accuracy at each ε, early exit
    expected_robustness(curve.eps, curve.accuracies)

Accuracies are fractions in [0, 1] (CONVENTIONS.md).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction

import torch
from torch import Tensor, nn

from rftbench.attacks import apgd, module_modes
from rftbench.config import eps_text, parse_eps


def adaptation_start_epoch(
    val_accuracies: Sequence[float], threshold: float = 0.05, epochs: int | None = None
) -> int:
    """First 0-based epoch whose clean validation accuracy exceeds `threshold`; the epoch count
    (`epochs`, default the length of the history) if none does."""
    for epoch, acc in enumerate(val_accuracies):
        if acc > threshold:
            return epoch
    return len(val_accuracies) if epochs is None else epochs


def eps_grid(eps_g: str | float | Fraction) -> list[Fraction]:
    """{0, 1/255, …, ε_g}: every multiple of 1/255 below ε_g, then ε_g itself."""
    eps_g = parse_eps(eps_g)
    return [Fraction(k, 255) for k in range(math.ceil(eps_g * 255))] + [eps_g] if eps_g else [Fraction(0)]


def expected_robustness(eps: Sequence[float | Fraction], accuracies: Sequence[float]) -> float:
    """Trapezoid mean of accuracy over [0, ε_g]: (1/ε_g)∫Acc_ε dε on the grid `eps` (starting at 0).
    With ε_g = 0 it is the clean accuracy."""
    if len(eps) != len(accuracies) or not eps:
        raise ValueError("eps and accuracies must be non-empty and of equal length")
    e = [float(v) for v in eps]
    if e[0] != 0 or any(b <= a for a, b in zip(e, e[1:])):
        raise ValueError("the ε grid must start at 0 and increase strictly")
    if len(e) == 1:
        return float(accuracies[0])
    area = sum((e[i + 1] - e[i]) * (accuracies[i] + accuracies[i + 1]) / 2 for i in range(len(e) - 1))
    return area / e[-1]


@dataclass(frozen=True)
class RobustnessCurve:
    eps: list[Fraction]
    accuracies: list[float]
    n: int
    attacks_run: int  # per-sample APGD runs actually made
    attacks_naive: int  # what attacking every sample at every ε > 0 would have cost

    def at(self, eps: str | float | Fraction) -> float:
        return self.accuracies[self.eps.index(parse_eps(eps))]

    def summary(self, budget: str | float | Fraction) -> dict:
        """clean / adv / eadv and the accuracy curve for budget ε_g (its grid must lie in this curve)."""
        grid = eps_grid(budget)
        accs = [self.at(e) for e in grid]
        return {
            "budget": eps_text(budget),
            "clean": accs[0],
            "adv": accs[-1],
            "eadv": expected_robustness(grid, accs),
            "eps": [eps_text(e) for e in grid],
            "accuracies": accs,
        }


@torch.no_grad()
def robustness_curve(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    eps: Sequence[str | float | Fraction],
    steps: int = 10,
    *,
    early_exit: bool = True,
    random_start: bool = False,
    seed: int = 0,
    device: str | torch.device = "cpu",
    autocast_dtype: torch.dtype | None = None,
) -> RobustnessCurve:
    """Accuracy at each ε of the grid (sorted; 0 is clean accuracy), APGD-`steps` in eval mode,
    returning any misclassified iterate.

    With `early_exit` each larger ε attacks only the samples still correct at every smaller one: a point
    fooled inside a small ball is fooled inside every larger one, so this skips attacks and never
    reports a higher accuracy than attacking every sample at every ε. A random start is per-sample
    deterministic (drawn from (seed, batch index) for the whole batch), so both modes see the same starts.
    """
    grid = sorted({parse_eps(e) for e in eps} | {Fraction(0)})
    correct = torch.zeros(len(grid), dtype=torch.int64)
    n = attacks_run = 0

    def predict(inputs: Tensor) -> Tensor:
        with torch.autocast(inputs.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            return model(inputs).argmax(1)

    with module_modes(model, training=False):
        for batch_index, (x, y) in enumerate(batches):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if random_start:
                gen = torch.Generator().manual_seed(seed * 1_000_003 + batch_index)
                noise = (2 * torch.rand(x.shape, generator=gen) - 1).to(x.device, x.dtype)
            robust = predict(x) == y
            correct[0] += robust.sum().cpu()
            for k, e in enumerate(grid[1:], start=1):
                idx = robust.nonzero().squeeze(1) if early_exit else torch.arange(len(y), device=x.device)
                if idx.numel():
                    x_init = x[idx] + noise[idx] * float(e) if random_start else None
                    x_adv = apgd(model, x[idx], y[idx], float(e), steps, x_init=x_init,
                                 returned="misclassified", autocast_dtype=autocast_dtype)  # fmt: skip
                    still = predict(x_adv) == y[idx]
                    robust = torch.zeros_like(robust).index_copy(0, idx, still) if early_exit else still
                attacks_run += idx.numel()
                correct[k] += robust.sum().cpu()
            n += len(y)
    accuracies = [c / max(n, 1) for c in correct.tolist()]
    return RobustnessCurve(grid, accuracies, n, attacks_run, n * (len(grid) - 1))


def evaluate_budgets(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    budgets: Sequence[str | float | Fraction],
    steps: int = 10,
    **kwargs,
) -> dict:
    """A run's final evaluation: clean accuracy, then for each budget ε_g its APGD accuracy (`adv`), the
    accuracy at every point of its E.adv grid and E.adv, from one early-exit pass over the union of grids.
    Keyword arguments go to `robustness_curve`."""
    grid = sorted({e for budget in budgets for e in eps_grid(budget)})
    curve = robustness_curve(model, batches, grid, steps, **kwargs)
    return {
        "n": curve.n,
        "clean": curve.accuracies[0],
        "budgets": [curve.summary(budget) for budget in budgets],
        "attacks_run": curve.attacks_run,
        "attacks_naive": curve.attacks_naive,
    }
