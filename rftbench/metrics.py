"""The paper's metrics: expected robustness, robustness curves, the task-adaptation start.

    grid = eps_grid("8/255")                       # 0, 1/255, …, 8/255
    curve = robustness_curve(model, loader, grid)  # APGD-10 accuracy at each ε, one attack per ε
    expected_robustness(curve.eps, curve.accuracies)

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
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from fractions import Fraction

import torch
from torch import Tensor, nn

from rftbench.attacks import apgd, module_modes
from rftbench.config import PRECISIONS, PROTOCOLS, eps_text, parse_eps
from rftbench.data import to_unit_float


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


AUTOCAST = dict(zip(PRECISIONS, (None, torch.bfloat16, torch.float16)))  # precision -> autocast dtype


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
        if self.precision not in AUTOCAST:
            raise ValueError(
                f"evaluation precision {self.precision!r} unknown: choose one of {', '.join(AUTOCAST)}"
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


@torch.no_grad()
def robustness_curve(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    eps: Sequence[str | float | Fraction],
    steps: int = 10,
    *,
    protocol: str = "paper",
    random_start: bool = False,
    seed: int = 0,
    device: str | torch.device = "cpu",
    autocast_dtype: torch.dtype | None = None,
) -> RobustnessCurve:
    """Accuracy at each ε of the grid (sorted; 0 is clean accuracy), APGD-`steps` in eval mode, returning
    any misclassified iterate. Only clean-correct samples are attacked (a clean mistake is a mistake at
    every ε, as in auto-attack).

    `protocol` "paper" attacks them independently at every ε; "monotone" attacks at each larger ε only the
    samples still correct at every smaller one (module docstring). A random start is per-sample
    deterministic (drawn from (seed, batch index) for the whole batch), so both protocols see the same
    starts.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"evaluation protocol {protocol!r} unknown: choose {' or '.join(PROTOCOLS)}")
    grid = sorted({parse_eps(e) for e in eps} | {Fraction(0)})
    correct = torch.zeros(len(grid), dtype=torch.int64)
    n = attacks_run = 0
    start = time.perf_counter()

    def predict(inputs: Tensor) -> Tensor:
        with torch.autocast(inputs.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            return model(inputs).argmax(1)

    with module_modes(model, training=False):
        for batch_index, (x, y) in enumerate(batches):
            x, y = to_unit_float(x.to(device, non_blocking=True)), y.to(device, non_blocking=True)
            if random_start:
                gen = torch.Generator().manual_seed(seed * 1_000_003 + batch_index)
                noise = (2 * torch.rand(x.shape, generator=gen) - 1).to(x.device, x.dtype)
            clean = robust = predict(x) == y
            correct[0] += clean.sum().cpu()
            for k, e in enumerate(grid[1:], start=1):
                idx = (robust if protocol == "monotone" else clean).nonzero().squeeze(1)
                robust = torch.zeros_like(clean)
                if idx.numel():
                    x_init = x[idx] + noise[idx] * float(e) if random_start else None
                    x_adv = apgd(model, x[idx], y[idx], float(e), steps, x_init=x_init,
                                 returned="misclassified", autocast_dtype=autocast_dtype)  # fmt: skip
                    robust = robust.index_copy(0, idx, predict(x_adv) == y[idx])
                attacks_run += idx.numel()
                correct[k] += robust.sum().cpu()
            n += len(y)
    accuracies = [c / max(n, 1) for c in correct.tolist()]
    seconds = time.perf_counter() - start
    return RobustnessCurve(grid, accuracies, n, attacks_run, n * (len(grid) - 1), seconds)


def evaluate_budgets(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    budgets: Sequence[str | float | Fraction],
    protocol: EvalProtocol = EvalProtocol(),
    *,
    device: str | torch.device = "cpu",
) -> dict:
    """A run's evaluation under `protocol`: clean accuracy, then for each budget ε_g its APGD accuracy
    (`adv`), the accuracy at every point of its E.adv grid and E.adv, from one pass over the union of the
    budgets' grids. The result names its protocol, as every stored row must."""
    grid = sorted({e for budget in budgets for e in eps_grid(budget)})
    curve = robustness_curve(
        model,
        batches,
        grid,
        protocol.steps,
        protocol=protocol.protocol,
        random_start=protocol.random_start,
        seed=protocol.seed,
        device=device,
        autocast_dtype=AUTOCAST[protocol.precision],
    )
    return {
        "n": curve.n,
        "clean": curve.accuracies[0],
        "budgets": [curve.summary(budget) for budget in budgets],
        "attacks_run": curve.attacks_run,
        "attacks_naive": curve.attacks_naive,
        "seconds": curve.seconds,
        "protocol": protocol.as_dict(),
    }
