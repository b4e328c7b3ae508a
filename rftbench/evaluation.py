"""Measuring the paper's metrics on a model: robustness curves and a run's evaluation under a protocol.

    curve = robustness_curve(model, loader, eps_grid("8/255"))  # APGD-10 at each ε, one attack per ε
    expected_robustness(curve.eps, curve.accuracies)

The protocols and the formulas are `rftbench.metrics` (torch-free, so reports and the CLI read them fast).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from fractions import Fraction

import torch
from torch import Tensor, nn

from rftbench.attacks import apgd, module_modes
from rftbench.config import PRECISIONS, PROTOCOLS, parse_eps
from rftbench.data import to_unit_float
from rftbench.metrics import EvalProtocol, RobustnessCurve, eps_grid

AUTOCAST = dict(zip(PRECISIONS, (None, torch.bfloat16, torch.float16)))  # precision -> autocast dtype


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
