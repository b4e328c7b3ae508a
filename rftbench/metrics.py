"""The paper's metrics, without torch: expected robustness, the E.adv grid, the task-adaptation start, and
the protocol every stored evaluation names (measuring them is `rftbench.evaluation`'s).

    grid = eps_grid("8/255")                                  # 0, 1/255, …, 8/255
    expected_robustness(grid, [0.8, 0.6, 0.5, 0.4, 0.3, 0.2, 0.15, 0.1, 0.05])
    adaptation_start_epoch([0.01, 0.03, 0.12])                # 2

Accuracies are fractions in [0, 1] (CONVENTIONS.md). Every stored evaluation says how it was measured
(`EvalProtocol`): two per-ε protocols exist, and they answer different questions.
- `paper`: one independent APGD per ε of the grid on every clean-correct sample, so the accuracy at ε_g is
  "APGD accuracy at ε_g" as the paper defines it (and as its published numbers were measured).
- `monotone`: each larger ε attacks only the samples still correct at every smaller one, so a point counts
  as fooled at ε_g if any of up to |grid| - 1 attacks fooled it inside its ball. Fewer attacks and a
  stronger (union) attack: its accuracies are never above `paper`'s and not comparable with the paper.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from fractions import Fraction

from rftbench.config import PRECISIONS, PROTOCOLS, eps_text, parse_eps


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
class EvalProtocol:
    """How an evaluation was measured; stored with every evaluation row, which it keys with the budget."""

    protocol: str = "paper"  # per-ε protocol, PROTOCOLS (module docstring)
    steps: int = 10
    precision: str = "fp32"  # autocast of the attacked forward passes; the loss is always fp32
    random_start: bool = False  # else the attack starts from the clean image
    seed: int = 0  # draws the random starts (per batch, so both protocols see the same starts)
    restarts: int = 1
    attack: str = "apgd-ce"
    norm: str = "Linf"

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(
                f"evaluation protocol {self.protocol!r} unknown: choose {' or '.join(PROTOCOLS)}"
            )
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"evaluation precision {self.precision!r} unknown: choose one of {', '.join(PRECISIONS)}"
            )
        if self.steps < 1:
            raise ValueError(f"evaluation steps must be a positive integer, got {self.steps}")
        if (self.attack, self.norm, self.restarts) != ("apgd-ce", "Linf", 1):
            raise ValueError("only APGD-CE under the ℓ∞ norm with one restart is implemented")
        if not self.random_start:
            object.__setattr__(self, "seed", 0)  # draws nothing: one protocol, one key

    def as_dict(self) -> dict:
        return asdict(self)

    def label(self) -> str:
        """One line for table titles: 'APGD-CE-10 ℓ∞, paper protocol (one attack per ε), clean start, …'."""
        per_eps = "one attack per ε" if self.protocol == "paper" else "early exit: fooled at any smaller ε"
        start = f"random start (seed {self.seed})" if self.random_start else "clean start"
        return (
            f"APGD-CE-{self.steps} ℓ∞, {self.protocol} protocol ({per_eps}), {start}, "
            f"{self.restarts} restart, {self.precision}"
        )


@dataclass(frozen=True)
class RobustnessCurve:
    eps: list[Fraction]
    accuracies: list[float]
    n: int
    attacks_run: int  # per-sample APGD runs actually made
    attacks_naive: int  # what attacking every sample at every ε > 0 would have cost
    seconds: float = 0.0

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
