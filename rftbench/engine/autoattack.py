"""AutoAttack on a model, batch by batch: clean accuracy and each attack's survivors at each ε.

AutoAttack is not re-implemented: torchattacks' APGD, APGDT, FAB and Square run with auto-attack's own
parameters, which torchattacks' `AutoAttack` class does not pass (it runs APGD and FAB for 10 iterations, and
targets n_classes - 1 classes): 100 iterations for APGD-CE, APGD-T (9 target classes) and FAB-T (9), 5,000
queries for Square (p_init 0.8, the margin loss, p's schedule not rescaled to the query count), one restart
each ("standard"; "plus" adds APGD-DLR and untargeted FAB with 5 restarts), each attack on the samples that
survived the ones before, as auto-attack does. adv-lib (the other candidate on the package registry) has
neither Square nor the ensemble. torchattacks is optional: its metadata pins an old `requests`, so it is
installed with `pip install --no-deps torchattacks==3.5.1` (it imports only torch, numpy and scipy).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from fractions import Fraction

import torch
from torch import Tensor, nn

from rftbench.attacks.apgd import l2_norms, module_modes
from rftbench.core.config import budget_text, parse_budget
from rftbench.core.metrics import EvalProtocol, RobustnessCurve
from rftbench.engine.batches import (
    AUTOCAST,
    BatchLog,
    EvaluationError,
    accuracies,
    bits,
    predictor,
    run_batches,
)

TARGETS = 9  # auto-attack's target classes for APGD-T and FAB-T (fewer where the task has fewer)


class Autocast(nn.Module):
    """`model` under autocast, returning fp32 logits (for attacks that call the model themselves)."""

    def __init__(self, model: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.model, self.dtype = model, dtype

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(x.device.type, dtype=self.dtype):
            return self.model(x).float()


def torchattacks_module():
    try:
        import torchattacks
    except ModuleNotFoundError:
        raise EvaluationError(
            "AutoAttack needs torchattacks, which is not installed: pip install --no-deps "
            "torchattacks==3.5.1 (its metadata pins an old requests; what it needs comes with rftbench)"
        ) from None
    return torchattacks


def autoattack_attacks(model: nn.Module, eps: float, protocol: EvalProtocol, n_classes: int) -> list:
    """auto-attack's `standard` or `plus` ensemble, as (name, torchattacks attack), with auto-attack's
    parameters (module docstring)."""
    ta = torchattacks_module()
    targets = min(TARGETS, n_classes - 1) + 1  # torchattacks' `n_classes` means "targets + 1"
    common = dict(norm=protocol.norm, eps=eps, seed=protocol.seed)
    steps = protocol.steps
    fab_t = dict(steps=steps, n_restarts=1, multi_targeted=True, n_classes=targets)
    # auto-attack's Square: p's schedule over 10,000 queries whatever their number (torchattacks rescales it)
    square = dict(n_queries=5000, n_restarts=1, p_init=0.8, loss="margin", resc_schedule=False)
    if protocol.attack == "autoattack-standard":
        return [
            ("apgd-ce", ta.APGD(model, steps=steps, n_restarts=1, loss="ce", **common)),
            ("apgd-t", ta.APGDT(model, steps=steps, n_restarts=1, n_classes=targets, **common)),
            ("fab-t", ta.FAB(model, **fab_t, **common)),
            ("square", ta.Square(model, **square, **common)),
        ]
    restarts = protocol.restarts
    return [
        ("apgd-ce", ta.APGD(model, steps=steps, n_restarts=restarts, loss="ce", **common)),
        ("apgd-dlr", ta.APGD(model, steps=steps, n_restarts=restarts, loss="dlr", **common)),
        ("fab", ta.FAB(model, steps=steps, n_restarts=restarts, n_classes=n_classes, **common)),
        ("square", ta.Square(model, **square, **common)),
        ("apgd-t", ta.APGDT(model, steps=steps, n_restarts=1, n_classes=targets, **common)),
        ("fab-t", ta.FAB(model, **fab_t, **common)),
    ]


def inside_ball(x_adv: Tensor, x: Tensor, eps: float, norm: str) -> Tensor:
    """Per sample: inside the ε-ball (up to rounding) and the image range. A point outside is no success."""
    delta = (x_adv - x).flatten(1)
    size = delta.abs().amax(1) if norm == "Linf" else l2_norms(delta).view(-1)
    in_range = (x_adv.flatten(1) >= 0).all(1) & (x_adv.flatten(1) <= 1).all(1)
    return (size <= eps * (1 + 1e-5) + 1e-7) & in_range


def autoattack_curve(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    eps: Sequence[str | float | Fraction],
    protocol: EvalProtocol,
    n_classes: int,
    *,
    device: str | torch.device = "cpu",
    log: BatchLog | None = None,
) -> tuple[RobustnessCurve, dict]:
    """Clean accuracy and AutoAttack accuracy at each ε of the grid (each of its attacks on the survivors
    of the ones before; under `monotone`, each larger ε on the survivors of the smaller ones), with the
    survivors after each attack: (curve, {"per_attack": {ε: {attack: accuracy}}, "outside_ball": count})."""
    grid = sorted({parse_budget(e, protocol.norm) for e in eps} | {Fraction(0)})
    texts = [budget_text(e, protocol.norm) for e in grid]
    dtype = AUTOCAST[protocol.precision]
    # (torchattacks puts back the mode it found on what it attacks: a new wrapper must be in eval mode)
    attacked = Autocast(model, dtype).eval() if dtype is not None else model
    predict = predictor(model, dtype)

    def measure(batch_index: int, x: Tensor, y: Tensor) -> dict:
        clean = survivors = predict(x) == y
        flags, stages, attacks_run, outside = {texts[0]: bits(clean)}, {}, 0, 0
        for e, text in zip(grid[1:], texts[1:]):
            robust, stages[text] = survivors if protocol.protocol == "monotone" else clean, {}
            for name, attack in autoattack_attacks(attacked, float(e), protocol, n_classes):
                idx = robust.nonzero().squeeze(1)
                if idx.numel():
                    cuda = [x.device] if x.device.type == "cuda" else []
                    with (
                        torch.random.fork_rng(devices=cuda),
                        torch.enable_grad(),
                    ):  # they reseed the global RNGs
                        x_adv = attack(x[idx], y[idx])
                    valid = inside_ball(x_adv, x[idx], float(e), protocol.norm)
                    outside += int((~valid).sum())
                    robust = robust.index_copy(0, idx, (predict(x_adv) == y[idx]) | ~valid)
                    attacks_run += idx.numel()
                stages[text][name] = bits(robust)
            flags[text], survivors = bits(robust), robust
        return {"flags": flags, "stages": stages, "attacks_run": attacks_run, "outside_ball": outside}

    start = time.perf_counter()
    with module_modes(model, training=False):
        payloads = run_batches(batches, measure, device, log)
    per_attack = {}
    for t in texts[1:] if payloads else ():
        attacks = list(payloads[0]["stages"][t])
        per_attack[t] = dict(
            zip(attacks, accuracies([{"n": p["n"], "flags": p["stages"][t]} for p in payloads], attacks))
        )
    outside, n = sum(p["outside_ball"] for p in payloads), sum(p["n"] for p in payloads)
    attacks_run, seconds = sum(p["attacks_run"] for p in payloads), time.perf_counter() - start
    curve = RobustnessCurve(
        grid, accuracies(payloads, texts), n, attacks_run, n * (len(grid) - 1), seconds, protocol.norm
    )
    return curve, {"per_attack": per_attack, "outside_ball": outside}
