"""Measuring the paper's metrics on a model: robustness curves and a run's evaluation under a protocol.

    curve = robustness_curve(model, loader, eps_grid("8/255"))  # APGD-10 at each ε, one attack per ε
    expected_robustness(curve.eps, curve.accuracies)
    evaluate_budgets(model, loader, ["8/255"], EvalProtocol(attack="autoattack-standard", steps=100))

The protocols and the formulas are `rftbench.core.metrics` (torch-free: reports and the CLI read them fast).

Every evaluation goes batch by batch over a loader in a fixed order, and each batch yields per-sample
robust flags: a text of '0'/'1' per sample for every ε of the grid ("flags"), and for AutoAttack, the flags
after each of its attacks in turn ("stages", cumulative: robust to every attack so far). The accuracies
are their means. With a `BatchLog` (the results database keeps one per run and evaluation), a batch already
logged is read back instead of measured, and each new one is logged as soon as it is measured: a killed
evaluation continues at its first missing batch and ends with the numbers an uninterrupted one gives (every
batch's randomness is drawn from (seed, batch index), never from what ran before).

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

import hashlib
import importlib.metadata
import time
from collections.abc import Callable, Iterable, Sequence
from fractions import Fraction
from typing import Protocol

import torch
from torch import Tensor, nn

from rftbench.attacks.apgd import apgd, l2_norms, module_modes, random_point
from rftbench.core.config import PRECISIONS, budget_text, parse_budget
from rftbench.core.metrics import EVAL_PROTOCOLS, EvalProtocol, RobustnessCurve, eps_grid
from rftbench.data.loading import to_unit_float
from rftbench.errors import RftbenchError

AUTOCAST = dict(zip(PRECISIONS, (None, torch.bfloat16, torch.float16)))  # precision -> autocast dtype
TARGETS = 9  # auto-attack's target classes for APGD-T and FAB-T (fewer where the task has fewer)


class BatchLog(Protocol):
    """Where an evaluation keeps its per-batch results (`results.store.EvalLog`): read back on resume."""

    key: str  # which evaluation of which weights (`evaluation_key`), as stored with its rows

    def done(self) -> dict[int, dict]: ...

    def save(self, index: int, payload: dict) -> None: ...


class EvaluationError(RftbenchError, RuntimeError):
    pass


def bits(flags: Tensor) -> str:
    """Per-sample booleans as a text of '0' and '1' (one host copy)."""
    return (flags.to(torch.uint8).cpu().numpy() + ord("0")).tobytes().decode()


def accuracies(payloads: list[dict], texts: Sequence[str]) -> list[float]:
    """The share of robust samples over all batches for each of `texts` (ε, or attack), from their flags."""
    n = max(sum(p["n"] for p in payloads), 1)
    return [sum(p["flags"][t].count("1") for p in payloads) / n for t in texts]


def run_batches(
    batches: Iterable[tuple[Tensor, Tensor]],
    measure: Callable[[int, Tensor, Tensor], dict],
    device: str | torch.device,
    log: BatchLog | None,
) -> list[dict]:
    """`measure(index, x, y)` on every batch not in `log`, each result logged at once; the logged ones read
    back. A logged batch of another size means the test split changed since: refused."""
    done = log.done() if log is not None else {}
    payloads, first = [], 0
    for index, (x, y) in enumerate(batches):
        if index in done:
            payload = done[index]
            if payload["n"] != len(y) or payload["start"] != first:
                raise EvaluationError(
                    f"batch {index} was logged with {payload['n']} samples from sample {payload['start']}, "
                    f"the test split now gives {len(y)} from {first}: the data changed since that evaluation "
                    f"began; restore it, or evaluate under another protocol"
                )
        else:
            start = time.perf_counter()
            x, y = to_unit_float(x.to(device, non_blocking=True)), y.to(device, non_blocking=True)
            payload = measure(index, x, y) | {"n": len(y), "start": first}
            payload["seconds"] = time.perf_counter() - start
            if log is not None:
                log.save(index, payload)
        payloads.append(payload)
        first += len(y)
    return payloads


def predictor(model: nn.Module, autocast_dtype: torch.dtype | None) -> Callable[[Tensor], Tensor]:
    @torch.no_grad()
    def predict(inputs: Tensor) -> Tensor:
        with torch.autocast(inputs.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            return model(inputs).argmax(1)

    return predict


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
    """
    if protocol not in EVAL_PROTOCOLS:
        raise ValueError(f"evaluation protocol {protocol!r} unknown: choose {', '.join(EVAL_PROTOCOLS)}")
    grid = sorted({parse_budget(e, norm) for e in eps} | {Fraction(0)})
    texts = [budget_text(e, norm) for e in grid]
    predict = predictor(model, autocast_dtype)

    def measure(batch_index: int, x: Tensor, y: Tensor) -> dict:
        if random_start:  # a unit direction per sample, scaled to each ε
            gen = torch.Generator().manual_seed(seed * 1_000_003 + batch_index)
            unit = random_point(torch.zeros(x.shape), 1.0, norm, gen).to(x.device, x.dtype)
        clean = robust = predict(x) == y
        flags, attacked = [clean], 0
        for e in grid[1:]:
            idx = (robust if protocol == "monotone" else clean).nonzero().squeeze(1)
            robust = torch.zeros_like(clean)
            if idx.numel():
                x_init = x[idx] + unit[idx] * float(e) if random_start else None
                x_adv = apgd(model, x[idx], y[idx], float(e), steps, x_init=x_init, returned="misclassified",
                             autocast_dtype=autocast_dtype, norm=norm)  # fmt: skip
                robust = robust.index_copy(0, idx, predict(x_adv) == y[idx])
            attacked += idx.numel()
            flags.append(robust)
        return {"flags": dict(zip(texts, map(bits, flags))), "attacks_run": attacked}

    start = time.perf_counter()
    with module_modes(model, training=False):
        payloads = run_batches(batches, measure, device, log)
    n, attacks_run = sum(p["n"] for p in payloads), sum(p["attacks_run"] for p in payloads)
    seconds = time.perf_counter() - start
    return RobustnessCurve(
        grid, accuracies(payloads, texts), n, attacks_run, n * (len(grid) - 1), seconds, norm
    )


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
