"""APGD-CE under the ℓ∞ or the ℓ2 threat model, as one function.

    x_adv = apgd(model, x, y, eps=4 / 255, steps=10, returned="misclassified")
    x_adv = apgd(model, x, y, eps=0.5, steps=10, norm="L2")

Follows Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks" (arXiv 2003.01690), and auto-attack's `APGDAttack` for the ℓ∞ and ℓ2 norms and
the cross-entropy loss: initial step 2ε; momentum 0.75 (no momentum on the first step); at each checkpoint
the step of a sample is halved, and the sample restarted from its best iterate, when its loss increased
in at most ρ = 0.75 of the steps since the last checkpoint, or when its step was not halved at the last
checkpoint and its best loss has not improved since; per-sample tracking of the highest-loss iterate.
Under ℓ2, as auto-attack's ℓ2 version: the ascent direction is the gradient divided by its ℓ2 norm
(+1e-12) instead of its sign; a point is projected by rescaling its perturbation δ to min(ε, ‖δ‖)
(δ / (‖δ‖ + 1e-12) · min(ε, ‖δ‖)) and then clipping to [0, 1], which only shortens δ, so the result stays
in the ball (this is auto-attack's projection, not the exact projection onto ball ∩ box); a random start
is x + ε·t/‖t‖ for Gaussian t, clipped to [0, 1].

Where it departs from auto-attack, on purpose:
- Checkpoints are ⌈p_j·N⌉ for the paper's fractions p_0 = 0, p_1 = 0.22,
  p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06). For N = 100 these equal auto-attack's integer
  checkpoints; for the few steps of adversarial training auto-attack's integer rounding makes every step
  from the 2nd (N = 10) or the 1st (N = 7) a checkpoint, while these keep the growing-then-shrinking
  spacing: 3, 5, 6, 7, 8, 9 for N = 10 and 2, 3, 4, 5, 6 for N = 7.
- The start is the clean image by default (the paper's ancestor code); `random_start` draws uniform
  noise in the ε-ball, and `x_init` gives an explicit start (for per-sample deterministic restarts).
- `returned` chooses the output: "best_loss" (the highest-loss iterate, for training) or
  "misclassified" (the first misclassified iterate where one exists, else the highest-loss iterate, for
  evaluation; auto-attack returns the start point for samples it never fools).
- The loss increase count compares each step with the previous loss, the start point included.
- The last iteration computes no gradient (it is never used), so N steps cost N backward passes. Its
  forward runs with gradients enabled all the same, so a compiled model reuses the attack's graph.
- `y` may be target probabilities (a float tensor, one row per image) instead of labels: the loss is then
  the KL divergence KL(y ‖ softmax(model(x'))) per image (TRADES' inner maximisation,
  `rftbench.attacks.objectives`), and an image counts as misclassified where its prediction leaves y's
  argmax.
- Parameters are frozen during the attack (`freeze_parameters`, on by default): eager autograd computes only
  the input gradient either way, but a compiled backward computes every gradient its graph was traced
  with, weight gradients included, and throws them away.

Evaluation-only savings of `apgd_attack`, each exact (rows of an eval-mode model are independent; only
the batch's composition, and so floating-point rounding, can change):
- `early_exit=True` (with `returned="misclassified"`): a fooled sample's result is fixed the step it is
  fooled, so fooled samples leave the batch before the first step (a clean mistake) and at every
  step-size checkpoint. The batch then takes many sizes, each of which `cudnn.benchmark` would time anew
  (on an H200, R50's evaluation fell to 10 img/s): cuDNN picks by its heuristics during such an attack.
- `start=(loss, grad, wrong)` at `x` (`loss_and_gradient`): the first forward and backward, which are the
  same at every ε when the attack starts at the clean image, computed once by the caller.
- The result carries APGD's own flags (is the returned point misclassified) and its loss, so callers need
  not predict the returned points again.
"""

from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

RETURNED = ("best_loss", "misclassified")
MODES = ("eval", "train", "keep")
NORMS = ("Linf", "L2")


class Attack(NamedTuple):
    """What `apgd_attack` returns, per sample: the returned point, whether it is misclassified (APGD's own
    prediction there), and its cross-entropy loss (fp32)."""

    x: Tensor
    fooled: Tensor
    loss: Tensor


def step_size_checkpoints(steps: int) -> list[int]:
    """Iteration counts after which APGD checks whether to halve the step (see module docstring)."""
    checkpoints: list[int] = []
    p_prev, p = 0.0, 0.22
    while p < 1.0:
        at = math.ceil(p * steps - 1e-9)
        if 0 < at < steps and (not checkpoints or at > checkpoints[-1]):
            checkpoints.append(at)
        p_prev, p = p, p + max(p - p_prev - 0.03, 0.06)
    return checkpoints


def apgd(model: nn.Module, x: Tensor, y: Tensor, eps: float, steps: int = 10, **options) -> Tensor:
    """Adversarial examples for images `x` in [0, 1] with labels `y` (`apgd_attack`'s points)."""
    return apgd_attack(model, x, y, eps, steps, **options).x


def apgd_attack(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    steps: int = 10,
    *,
    random_start: bool = False,
    x_init: Tensor | None = None,
    returned: str = "best_loss",
    mode: str = "eval",
    momentum: float = 0.75,
    rho: float = 0.75,
    autocast_dtype: torch.dtype | None = None,
    generator: torch.Generator | None = None,
    freeze_parameters: bool = True,
    norm: str = "Linf",
    early_exit: bool = False,
    start: tuple[Tensor, Tensor, Tensor] | None = None,
) -> Attack:
    """APGD for images `x` in [0, 1] with labels `y`, inside the `norm` ("Linf" or "L2") ball of radius
    `eps`: the returned points, APGD's flags of them being misclassified, and their losses.

    `mode` is the model's mode during the attack ("eval", "train", or "keep" it as found); every
    module's mode is restored afterwards. Only input gradients are computed: parameters' `.grad` are
    untouched. The loss is computed in fp32 on the logits, also under `autocast_dtype`. With eps == 0
    (or steps == 0) `x` itself is returned without any forward pass, and its flags and losses are
    those of `start` if given, else NaN losses and unknown (False) flags. `early_exit` and `start`: the
    module docstring; `start` is `loss_and_gradient` at `x` (no random start, no `x_init`).
    """
    if returned not in RETURNED:
        raise ValueError(f"returned={returned!r} unknown: use one of {RETURNED}")
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} unknown: use one of {MODES}")
    if norm not in NORMS:
        raise ValueError(f"norm={norm!r} unknown: use one of {NORMS}")
    if eps < 0:
        raise ValueError(f"eps must be non-negative, got {eps}")
    if early_exit and (returned != "misclassified" or mode != "eval"):
        raise ValueError("early_exit needs returned='misclassified' and mode='eval' (independent rows)")
    if start is not None and (random_start or x_init is not None):
        raise ValueError("start is the loss and gradient at x: it cannot go with a random start or x_init")
    if eps == 0 or steps == 0:
        if start is not None:
            return Attack(x, start[2], start[0])
        n = x.shape[0]
        return Attack(
            x, torch.zeros(n, dtype=torch.bool, device=x.device), torch.full((n,), math.nan, device=x.device)
        )
    frozen = frozen_parameters(model) if freeze_parameters else nullcontext()
    heuristics = cudnn_heuristics() if early_exit else nullcontext()
    with module_modes(model, None if mode == "keep" else mode == "train"), frozen, heuristics:
        return _apgd(model, x.detach(), y, eps, steps, random_start, x_init, returned, momentum, rho,
                     autocast_dtype, generator, norm, early_exit, start)  # fmt: skip


def loss_and_gradient(
    model: nn.Module, x: Tensor, y: Tensor, autocast_dtype: torch.dtype | None = None, need_grad: bool = True
) -> tuple[Tensor, Tensor | None, Tensor]:
    """Per-sample cross-entropy (fp32; KL divergence from `y` where `y` holds target probabilities), its
    gradient with respect to `x` (None without `need_grad`: the forward still runs with gradients enabled,
    so a compiled model reuses one graph), and the flags of misclassified samples: one forward and at most
    one input-gradient backward."""
    z = x.detach().requires_grad_(True)
    autocast = torch.autocast(x.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None)
    soft = y.is_floating_point()
    with torch.enable_grad():
        with autocast:
            logits = model(z)
        logits = logits.float()
        if soft:  # KL(y ‖ softmax(logits)), with 0 · log 0 = 0
            loss = F.kl_div(F.log_softmax(logits, 1), y, reduction="none").sum(1)
        else:
            loss = F.cross_entropy(logits, y, reduction="none")
        grad = torch.autograd.grad(loss.sum(), z)[0].detach() if need_grad else None
    return loss.detach(), grad, logits.detach().argmax(1) != (y.argmax(1) if soft else y)


@contextmanager
def module_modes(model: nn.Module, training: bool | None):
    """Put `model` in train (True) or eval (False) mode, or leave it (None); afterwards every module gets
    back its own mode (a frozen BatchNorm inside a training model stays in eval mode)."""
    modes = [m.training for m in model.modules()]
    if training is not None:
        model.train(training)
    try:
        yield model
    finally:
        for module, was_training in zip(model.modules(), modes):
            module.training = was_training


@contextmanager
def cudnn_heuristics():
    """cuDNN chooses kernels by its heuristics inside, not by timing each new shape (`cudnn.benchmark`)."""
    benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = benchmark


@contextmanager
def frozen_parameters(model: nn.Module):
    """No parameter of `model` requires a gradient inside; those that did get it back afterwards."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    for p in trainable:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p in trainable:
            p.requires_grad_(True)


def l2_norms(z: Tensor) -> Tensor:
    """Per-sample ℓ2 norms, shaped to broadcast over `z` (summed as auto-attack sums them)."""
    return (z**2).sum(dim=tuple(range(1, z.dim())), keepdim=True).sqrt()


def random_point(x: Tensor, eps: float, norm: str, generator: torch.Generator | None = None) -> Tensor:
    """A random start in the `norm` ball of radius `eps` around `x`, before clipping to [0, 1]: uniform in
    the ℓ∞ cube, or on the ℓ2 sphere (auto-attack's starts)."""
    device = generator.device if generator is not None else x.device
    if norm == "Linf":
        noise = 2 * torch.rand(x.shape, generator=generator, device=device) - 1
    else:
        noise = torch.randn(x.shape, generator=generator, device=device)
        noise = noise / (l2_norms(noise) + 1e-12)
    return x + noise.to(x.device, x.dtype) * eps


def _apgd(model, x, y, eps, steps, random_start, x_init, returned, momentum, rho, autocast_dtype, generator,
          norm, early_exit, start):  # fmt: skip
    def project(z: Tensor) -> Tensor:  # reads x (and the ℓ∞ bounds) of the samples still attacked
        if norm == "Linf":
            return torch.minimum(torch.maximum(z, lower), upper)
        delta = z - x
        length = l2_norms(delta)
        return (x + delta / (length + 1e-12) * length.clamp(max=eps)).clamp(0.0, 1.0)

    def direction(g: Tensor) -> Tensor:
        return g.sign() if norm == "Linf" else g / (l2_norms(g) + 1e-12)

    def loss_grad(z: Tensor, need_grad: bool = True) -> tuple[Tensor, Tensor | None, Tensor]:
        return loss_and_gradient(model, z, y, autocast_dtype, need_grad)

    lower, upper = (x - eps).clamp(min=0.0), (x + eps).clamp(max=1.0)
    if x_init is not None:
        x_adv = project(x_init.detach())
    elif random_start:
        x_adv = project(random_point(x, eps, norm, generator))
    else:
        x_adv = x.clone()

    per_sample = (-1,) + (1,) * (x.dim() - 1)
    step = torch.full((x.shape[0],), 2.0 * eps, device=x.device, dtype=x.dtype).view(per_sample)
    loss, grad, fooled = loss_grad(x_adv) if start is None else start
    x_best, loss_best, grad_best, wrong_best = x_adv, loss, grad, fooled
    x_fooled, loss_fooled = x_adv, loss
    loss_prev, increases = loss, torch.zeros_like(loss)
    loss_best_last_check, reduced_last_check = loss_best, torch.ones_like(fooled)
    checkpoints, last_check = set(step_size_checkpoints(steps)), 0
    x_prev = x_adv
    # with early exit: where each row of the working batch sits in the caller's, and the rows that left
    rows = torch.arange(x.shape[0], device=x.device)
    out = Attack(x.clone(), fooled.clone(), loss.clone()) if early_exit else None

    def results() -> Attack:
        """The returned points, flags and losses of the working rows."""
        if returned == "misclassified":
            point = torch.where(fooled.view(per_sample), x_fooled, x_best)
            return Attack(point, fooled | wrong_best, torch.where(fooled, loss_fooled, loss_best))
        return Attack(x_best, wrong_best, loss_best)

    def finish(done: Tensor | None = None) -> None:
        """Copy the results of the working rows flagged `done` (None: all) to `out`; a mask costs a sync."""
        index, result = (rows, results()) if done is None else (rows[done], [t[done] for t in results()])
        for target, values in zip(out, result):
            target.index_copy_(0, index, values)

    for i in range(steps):
        if early_exit and (i == 0 or i in checkpoints) and bool(fooled.any()):  # one host sync per check
            finish(fooled)
            keep = (~fooled).nonzero().squeeze(1)
            if keep.numel() == 0:
                return out
            (x, y, lower, upper, rows, step, x_adv, x_prev, grad, x_best, loss_best, grad_best, wrong_best,
             x_fooled, loss_fooled, fooled, loss_prev, increases, loss_best_last_check,
             reduced_last_check) = (
                t[keep] for t in (x, y, lower, upper, rows, step, x_adv, x_prev, grad, x_best, loss_best,
                                  grad_best, wrong_best, x_fooled, loss_fooled, fooled, loss_prev, increases,
                                  loss_best_last_check, reduced_last_check)
            )  # fmt: skip
        with torch.no_grad():
            a = momentum if i > 0 else 1.0
            z = project(x_adv + step * direction(grad))
            x_prev, x_adv = x_adv, project(x_adv + a * (z - x_adv) + (1 - a) * (x_adv - x_prev))
        loss, grad, wrong = loss_grad(x_adv, need_grad=i < steps - 1)
        with torch.no_grad():
            first = wrong & ~fooled
            x_fooled = torch.where(first.view(per_sample), x_adv, x_fooled)
            loss_fooled = torch.where(first, loss, loss_fooled)
            fooled = fooled | wrong
            increases += loss > loss_prev
            loss_prev = loss
            improved = loss > loss_best
            x_best = torch.where(improved.view(per_sample), x_adv, x_best)
            loss_best = torch.where(improved, loss, loss_best)
            wrong_best = torch.where(improved, wrong, wrong_best)
            if grad is not None:
                grad_best = torch.where(improved.view(per_sample), grad, grad_best)
            if i + 1 in checkpoints:
                oscillating = increases <= rho * (i + 1 - last_check)
                stalled = ~reduced_last_check & (loss_best_last_check >= loss_best)
                reduce = (oscillating | stalled).view(per_sample)
                step = torch.where(reduce, step / 2, step)
                x_adv = torch.where(reduce, x_best, x_adv)
                grad = torch.where(reduce, grad_best, grad)
                reduced_last_check, loss_best_last_check = reduce.view(-1), loss_best
                increases, last_check = torch.zeros_like(increases), i + 1

    if out is None:  # every row stayed: no copy, and no host sync in the training attack
        return results()
    finish()
    return out
