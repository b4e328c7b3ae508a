"""The paper's metrics, without torch: expected robustness, the E.adv grid, the task-adaptation start, and
the protocol every stored evaluation names (measuring them is `rftbench.engine.evaluation`'s).

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
- `budget` (`rftbench evaluate` only): one attack at ε_g, no E.adv (stored as None); `adv` equals `paper`'s.

The attack is rftbench's own APGD-CE (`apgd-ce`), or AutoAttack (`autoattack-standard`: APGD-CE, APGD-T,
FAB-T, Square; `autoattack-plus`), run by torchattacks with auto-attack's parameters (engine.evaluation),
at every ε under any protocol, as the paper's AutoAttack table (its E.adv too).

Under ℓ2 a budget is a number ('0.5') and the E.adv grid is explicit: `L2_GRID_INTERVALS` equal steps
from 0 to ε_g (0, ε_g/8, …, ε_g), stored with every row as its ε grid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from fractions import Fraction

from rftbench.core.config import NORMS, PRECISIONS, PROTOCOLS, budget_text, parse_budget, parse_eps

ATTACKS = ("apgd-ce", "autoattack-standard", "autoattack-plus")
EVAL_PROTOCOLS = (*PROTOCOLS, "budget")  # `budget`: at ε_g only; not for a grid's final evaluation
AUTOATTACK_RESTARTS = {"autoattack-standard": 1, "autoattack-plus": 5}  # auto-attack's, per version
L2_GRID_INTERVALS = 8  # the ℓ2 E.adv grid: 0, ε_g/8, …, ε_g (module docstring)


def adaptation_start_epoch(
    val_accuracies: Sequence[float], threshold: float = 0.05, epochs: int | None = None
) -> int:
    """First 0-based epoch whose clean validation accuracy exceeds `threshold`; the epoch count
    (`epochs`, default the length of the history) if none does."""
    for epoch, acc in enumerate(val_accuracies):
        if acc > threshold:
            return epoch
    return len(val_accuracies) if epochs is None else epochs


def eps_grid(eps_g: str | float | Fraction, norm: str = "Linf") -> list[Fraction]:
    """ℓ∞: {0, 1/255, …, ε_g}, every multiple of 1/255 below ε_g, then ε_g itself. ℓ2: {0, ε_g/8, …, ε_g}."""
    if norm != "Linf":
        eps_g = parse_budget(eps_g, norm)
        steps = range(L2_GRID_INTERVALS + 1) if eps_g else range(1)
        return [eps_g * Fraction(k, L2_GRID_INTERVALS) for k in steps]
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

    protocol: str = "paper"  # per-ε protocol, EVAL_PROTOCOLS (module docstring)
    steps: int = 10
    precision: str = "fp32"  # autocast of the attacked forward passes; the loss is always fp32
    random_start: bool = False  # else the attack starts from the clean image
    seed: int = 0  # draws the random starts (per batch, so both protocols see the same starts)
    restarts: int = 1
    attack: str = "apgd-ce"  # ATTACKS (module docstring)
    norm: str = "Linf"

    def __post_init__(self) -> None:
        if self.protocol not in EVAL_PROTOCOLS:
            raise ValueError(
                f"evaluation protocol {self.protocol!r} unknown: choose {', '.join(EVAL_PROTOCOLS)}"
            )
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"evaluation precision {self.precision!r} unknown: choose one of {', '.join(PRECISIONS)}"
            )
        if self.steps < 1:
            raise ValueError(f"evaluation steps must be a positive integer, got {self.steps}")
        if self.attack not in ATTACKS:
            raise ValueError(f"attack {self.attack!r} unknown: choose one of {', '.join(ATTACKS)}")
        if self.norm not in NORMS:
            raise ValueError(f"norm {self.norm!r} unknown: choose one of {', '.join(NORMS)}")
        if self.attack == "apgd-ce" and self.restarts != 1:
            raise ValueError("rftbench's APGD-CE runs one restart: use --attack autoattack for more")
        if self.autoattack:  # its own seeded starts
            if self.random_start:
                raise ValueError("AutoAttack takes no --random-start: it seeds its own starts (--seed)")
            object.__setattr__(self, "restarts", AUTOATTACK_RESTARTS[self.attack])
        elif not self.random_start:
            object.__setattr__(self, "seed", 0)  # draws nothing: one protocol, one key

    @property
    def autoattack(self) -> bool:
        return self.attack.startswith("autoattack")

    def as_dict(self) -> dict:
        return asdict(self)

    def label(self) -> str:
        """One line for table titles: 'APGD-CE-10 ℓ∞, paper protocol (one attack per ε), clean start, …'."""
        norm = "ℓ∞" if self.norm == "Linf" else "ℓ2"
        if self.autoattack:
            version = self.attack.removeprefix("autoattack-")
            return (
                f"AutoAttack {version} {norm} (torchattacks, {self.steps} iterations, seed {self.seed}), "
                f"{self.protocol} protocol, {self.precision}"
            )
        per_eps = {"paper": "one attack per ε", "monotone": "early exit: fooled at any smaller ε",
                   "budget": "at ε_g only"}[self.protocol]  # fmt: skip
        start = f"random start (seed {self.seed})" if self.random_start else "clean start"
        return (
            f"APGD-CE-{self.steps} {norm}, {self.protocol} protocol ({per_eps}), {start}, "
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
    norm: str = "Linf"

    def at(self, eps: str | float | Fraction) -> float:
        return self.accuracies[self.eps.index(parse_budget(eps, self.norm))]

    def summary(self, budget: str | float | Fraction, grid: Sequence[Fraction] | None = None) -> dict:
        """clean / adv / eadv and the accuracy curve for budget ε_g on `grid` (default its E.adv grid; it
        must lie in this curve). A grid of only 0 and ε_g (AutoAttack's) has no E.adv: None."""
        grid = list(grid) if grid is not None else eps_grid(budget, self.norm)
        accs = [self.at(e) for e in grid]
        full = len(grid) == len(eps_grid(budget, self.norm))
        return {
            "budget": budget_text(budget, self.norm),
            "clean": accs[0],
            "adv": accs[-1],
            "eadv": expected_robustness(grid, accs) if full else None,
            "eps": [budget_text(e, self.norm) for e in grid],
            "accuracies": accs,
        }
