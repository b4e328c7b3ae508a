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
- The last iteration computes no gradient (it is never used), so N steps cost N backward passes.
- `freeze_parameters=True` stops the parameters requiring gradients during the attack, so the forward
  passes keep only what input gradients need; off by default, as it measured no faster on CPU
  (`rftbench bench` measures it on any device).
"""

from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor, nn

RETURNED = ("best_loss", "misclassified")
MODES = ("eval", "train", "keep")
NORMS = ("Linf", "L2")


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


def apgd(
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
    freeze_parameters: bool = False,
    norm: str = "Linf",
) -> Tensor:
    """Adversarial examples for images `x` in [0, 1] with labels `y`, inside the `norm` ("Linf" or "L2")
    ball of radius `eps`.

    `mode` is the model's mode during the attack ("eval", "train", or "keep" it as found); every
    module's mode is restored afterwards. Only input gradients are computed: parameters' `.grad` are
    untouched. The loss is computed in fp32 on the logits, also under `autocast_dtype`. With eps == 0
    (or steps == 0) `x` itself is returned without any forward pass.
    """
    if returned not in RETURNED:
        raise ValueError(f"returned={returned!r} unknown: use one of {RETURNED}")
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} unknown: use one of {MODES}")
    if norm not in NORMS:
        raise ValueError(f"norm={norm!r} unknown: use one of {NORMS}")
    if eps < 0:
        raise ValueError(f"eps must be non-negative, got {eps}")
    if eps == 0 or steps == 0:
        return x
    frozen = frozen_parameters(model) if freeze_parameters else nullcontext()
    with module_modes(model, None if mode == "keep" else mode == "train"), frozen:
        return _apgd(model, x.detach(), y, eps, steps, random_start, x_init, returned, momentum, rho,
                     autocast_dtype, generator, norm)  # fmt: skip


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
          norm):  # fmt: skip
    if norm == "Linf":
        lower, upper = (x - eps).clamp(min=0.0), (x + eps).clamp(max=1.0)

        def project(z: Tensor) -> Tensor:
            return torch.minimum(torch.maximum(z, lower), upper)

        def direction(g: Tensor) -> Tensor:
            return g.sign()
    else:

        def project(z: Tensor) -> Tensor:
            delta = z - x
            length = l2_norms(delta)
            return (x + delta / (length + 1e-12) * length.clamp(max=eps)).clamp(0.0, 1.0)

        def direction(g: Tensor) -> Tensor:
            return g / (l2_norms(g) + 1e-12)

    autocast = (
        torch.autocast(x.device.type, dtype=autocast_dtype) if autocast_dtype is not None else nullcontext()
    )

    def loss_grad(z: Tensor, need_grad: bool = True) -> tuple[Tensor, Tensor | None, Tensor]:
        z = z.detach().requires_grad_(need_grad)
        with torch.set_grad_enabled(need_grad):
            with autocast:
                logits = model(z)
            loss = F.cross_entropy(logits.float(), y, reduction="none")
            grad = torch.autograd.grad(loss.sum(), z)[0].detach() if need_grad else None
        return loss.detach(), grad, logits.detach().argmax(1) != y

    if x_init is not None:
        x_adv = project(x_init.detach())
    elif random_start:
        x_adv = project(random_point(x, eps, norm, generator))
    else:
        x_adv = x.clone()

    per_sample = (-1,) + (1,) * (x.dim() - 1)
    step = torch.full((x.shape[0],), 2.0 * eps, device=x.device, dtype=x.dtype).view(per_sample)
    loss, grad, fooled = loss_grad(x_adv)
    x_best, loss_best, grad_best = x_adv, loss, grad
    x_fooled = x_adv
    loss_prev, increases = loss, torch.zeros_like(loss)
    loss_best_last_check, reduced_last_check = loss_best, torch.ones_like(fooled)
    checkpoints, last_check = set(step_size_checkpoints(steps)), 0
    x_prev = x_adv

    for i in range(steps):
        with torch.no_grad():
            a = momentum if i > 0 else 1.0
            z = project(x_adv + step * direction(grad))
            x_prev, x_adv = x_adv, project(x_adv + a * (z - x_adv) + (1 - a) * (x_adv - x_prev))
        loss, grad, wrong = loss_grad(x_adv, need_grad=i < steps - 1)
        with torch.no_grad():
            x_fooled = torch.where((wrong & ~fooled).view(per_sample), x_adv, x_fooled)
            fooled = fooled | wrong
            increases += loss > loss_prev
            loss_prev = loss
            improved = loss > loss_best
            x_best = torch.where(improved.view(per_sample), x_adv, x_best)
            loss_best = torch.where(improved, loss, loss_best)
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

    if returned == "misclassified":
        return torch.where(fooled.view(per_sample), x_fooled, x_best)
    return x_best
