"""Measuring the paper's metrics on a model: robustness curves and a run's evaluation under a protocol.

    curve = robustness_curve(model, loader, eps_grid("8/255"))  # APGD-10 at each ε, one attack per ε
    expected_robustness(curve.eps, curve.accuracies)
    evaluate_budgets(model, loader, ["8/255"], EvalProtocol(attack="autoattack-standard", steps=100))

The protocols and the formulas are `rftbench.core.metrics` (torch-free: reports and the CLI read them fast).

Every evaluation goes batch by batch, yields per-sample flags, and resumes per batch from its `BatchLog`
(`engine.batches`, which both this module and `engine.autoattack` use).

AutoAttack runs through torchattacks with auto-attack's own parameters (`engine.autoattack`).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import time
from collections.abc import Iterable, Sequence
from fractions import Fraction

import torch
from torch import Tensor, nn

from rftbench.attacks.apgd import (
    apgd_attack,
    frozen_parameters,
    loss_and_gradient,
    module_modes,
    random_point,
)
from rftbench.core.config import budget_text, parse_budget
from rftbench.core.metrics import EVAL_PROTOCOLS, EvalProtocol, RobustnessCurve, eps_grid
from rftbench.engine.autoattack import autoattack_curve
from rftbench.engine.batches import AUTOCAST, BatchLog, accuracies, predictor, rows_bits, run_batches


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
    norm: str = "Linf",
    log: BatchLog | None = None,
) -> RobustnessCurve:
    """Accuracy at each ε of the grid (sorted; 0 is clean accuracy), APGD-`steps` in eval mode, returning
    any misclassified iterate. Only clean-correct samples are attacked (a clean mistake is a mistake at
    every ε, as in auto-attack).

    `protocol` "paper" attacks them independently at every ε; "monotone" attacks at each larger ε only the
    samples still correct at every smaller one (module docstring). A random start is per-sample
    deterministic (drawn from (seed, batch index) for the whole batch), so both protocols see the same
    starts. `log` makes it resumable per batch (module docstring).

    The work is that of attacking each ε separately and predicting the returned points, less what cannot
    change a flag: without a random start, the first forward and backward (the clean predictions come from
    it) is shared by every ε; fooled samples leave the batch at APGD's step-size checkpoints; APGD's own
    flags replace predicting its points again; one host copy per batch. The flags are those of the plain
    way, up to the floating-point rounding that a batch's composition can change (tests/test_evaluation.py
    compares them on the real ResNet-20).
    """
    if protocol not in EVAL_PROTOCOLS:
        raise ValueError(f"evaluation protocol {protocol!r} unknown: choose {', '.join(EVAL_PROTOCOLS)}")
    grid = sorted({parse_budget(e, norm) for e in eps} | {Fraction(0)})
    texts = [budget_text(e, norm) for e in grid]
    predict = predictor(model, autocast_dtype)

    def measure(batch_index: int, x: Tensor, y: Tensor) -> dict:
        start = None
        if random_start:  # a unit direction per sample, scaled to each ε
            gen = torch.Generator().manual_seed(seed * 1_000_003 + batch_index)
            unit = random_point(torch.zeros(x.shape), 1.0, norm, gen).to(x.device, x.dtype)
            clean = predict(x) == y
        else:  # every ε starts at the clean image: its forward and backward, once for the whole grid
            start = loss_and_gradient(model, x, y, autocast_dtype)
            clean = ~start[2]
        robust, flags, attacked = clean, [clean], 0
        for e in grid[1:]:
            idx = (robust if protocol == "monotone" else clean).nonzero().squeeze(1)
            robust = torch.zeros_like(clean)
            if idx.numel():
                attack = apgd_attack(
                    model, x[idx], y[idx], float(e), steps, returned="misclassified", early_exit=True,
                    x_init=x[idx] + unit[idx] * float(e) if random_start else None,
                    start=tuple(t[idx] for t in start) if start is not None else None,
                    autocast_dtype=autocast_dtype, norm=norm,
                )  # fmt: skip
                robust = robust.index_copy(0, idx, ~attack.fooled)  # APGD's own flags: no re-prediction
            attacked += idx.numel()
            flags.append(robust)
        return {"flags": dict(zip(texts, rows_bits(torch.stack(flags)))), "attacks_run": attacked}

    start = time.perf_counter()
    with module_modes(model, training=False), frozen_parameters(model):
        payloads = run_batches(batches, measure, device, log)
    n, attacks_run = sum(p["n"] for p in payloads), sum(p["attacks_run"] for p in payloads)
    seconds = time.perf_counter() - start
    return RobustnessCurve(
        grid, accuracies(payloads, texts), n, attacks_run, n * (len(grid) - 1), seconds, norm
    )


def implementation(protocol: EvalProtocol) -> str:
    """Which package and version measured an evaluation under `protocol`, as stored with its rows."""
    package = "torchattacks" if protocol.autoattack else "rftbench"
    try:
        return f"{package} {importlib.metadata.version(package)}"
    except importlib.metadata.PackageNotFoundError:
        return package


def evaluate_budgets(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    budgets: Sequence[str | float | Fraction],
    protocol: EvalProtocol = EvalProtocol(),
    *,
    device: str | torch.device = "cpu",
    n_classes: int | None = None,
    log: BatchLog | None = None,
) -> dict:
    """A run's evaluation under `protocol`: clean accuracy, then for each budget ε_g its accuracy under
    the attack (`adv`), the accuracy at every point of its E.adv grid and E.adv, from one pass over the
    union of the budgets' grids (protocol `budget`: at ε_g only, no E.adv). The result names its protocol
    and the package that measured it, as every stored row must. `log`: resumable per batch."""
    extra, grid = {}, evaluated_grid(protocol, budgets)
    if protocol.autoattack:
        if n_classes is None:
            raise ValueError("AutoAttack needs the number of classes (its targeted attacks pick targets)")
        curve, extra = autoattack_curve(model, batches, grid, protocol, n_classes, device=device, log=log)
    else:
        curve = robustness_curve(
            model,
            batches,
            grid,
            protocol.steps,
            protocol="paper" if protocol.protocol == "budget" else protocol.protocol,
            random_start=protocol.random_start,
            seed=protocol.seed,
            device=device,
            autocast_dtype=AUTOCAST[protocol.precision],
            norm=protocol.norm,
            log=log,
        )
    if protocol.protocol == "budget":
        rows = [curve.summary(b, [Fraction(0), parse_budget(b, protocol.norm)]) for b in budgets]
    else:
        rows = [curve.summary(budget) for budget in budgets]
    if protocol.autoattack:  # at each ε_g (none at 0)
        extra["per_attack"] = {row["budget"]: extra["per_attack"].get(row["budget"], {}) for row in rows}
    return {
        "n": curve.n,
        "clean": curve.accuracies[0],
        "budgets": rows,
        "attacks_run": curve.attacks_run,
        "attacks_naive": curve.attacks_naive,
        "seconds": curve.seconds,
        "protocol": protocol.as_dict(),
        "implementation": implementation(protocol),
        **extra,
    }


def evaluated_grid(protocol: EvalProtocol, budgets: Sequence[str | float | Fraction]) -> list[Fraction]:
    """The ε an evaluation attacks at: the union of the budgets' E.adv grids, or (`budget`) the budgets."""
    if protocol.protocol == "budget":
        return sorted({Fraction(0)} | {parse_budget(b, protocol.norm) for b in budgets})
    return sorted({Fraction(0)} | {e for b in budgets for e in eps_grid(b, protocol.norm)})


def evaluation_key(protocol: EvalProtocol, budgets: Sequence[str], model: nn.Module) -> dict:
    """What makes two evaluations' batches interchangeable: the protocol, the ε grid, the package that
    measures them, and the weights (a run trained again from scratch never reads its predecessor's)."""
    grid = evaluated_grid(protocol, budgets)
    return {
        "protocol": protocol.as_dict(),
        "eps": [budget_text(e, protocol.norm) for e in grid],
        "implementation": implementation(protocol),
        "weights": weights_fingerprint(model),
    }


def weights_fingerprint(model: nn.Module) -> str:
    """sha256 of the model's parameters and buffers (names, dtypes, shapes, bytes), 16 hex digits."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()[:16]
