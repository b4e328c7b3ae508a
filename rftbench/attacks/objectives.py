"""Robust training objectives: one training step's loss under cross-entropy AT, TRADES or MART.

    loss, logits = OBJECTIVES["trades"](model, x, y, eps=8 / 255, beta=6.0, steps=7)
    loss.backward()

Each takes the model in the mode its outer loss runs in (train mode, as the trainer leaves it) and returns
the loss to minimise and the logits of the adversarial points (their accuracy is the epoch's train_acc).
Every inner maximisation is APGD (`rftbench.attacks.apgd`: its step-size rule, its mode handling, frozen
parameters, the loss in fp32), run in `mode` ("eval" by default, as TRADES' and MART's code do), from the
start each function names. At ε = 0 no attack runs and the adversarial points are the clean images, whose
logits are reused (one forward), so TRADES at ε = 0 is plain cross-entropy fine-tuning.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rftbench.attacks.apgd import apgd, module_modes


def kl_divergence(p: Tensor, logits: Tensor) -> Tensor:
    """KL(p ‖ softmax(logits)) per row, with 0 · log 0 = 0 (torch's `kl_div`, as TRADES' `KLDivLoss`)."""
    return F.kl_div(F.log_softmax(logits, 1), p, reduction="none").sum(1)


def trades_loss(logits: Tensor, logits_adv: Tensor, y: Tensor, beta: float) -> Tensor:
    """TRADES' outer loss (Zhang et al. 2019, "Theoretically Principled Trade-off between Robustness and
    Accuracy", arXiv 1901.08573, eq. 5): CE(f(x), y) + β · mean_i KL(softmax f(x_i) ‖ softmax f(x'_i)),
    the KL's gradient flowing through both outputs (their code's `KLDivLoss(size_average=False) / n`)."""
    return F.cross_entropy(logits, y) + beta * kl_divergence(F.softmax(logits, 1), logits_adv).mean()


def mart_loss(logits: Tensor, logits_adv: Tensor, y: Tensor, beta: float) -> Tensor:
    """MART's outer loss (Wang et al. 2020, "Improving Adversarial Robustness Requires Revisiting
    Misclassified Examples", ICLR, eq. 9), as their code computes it: the boosted cross-entropy of the
    adversarial points, −log p'_y − log(1.0001 − max_{k≠y} p'_k + 1e-12), plus β times the KL divergence
    KL(p ‖ p'), log p' taken as log(p' + 1e-12), weighted per image by (1.0000001 − p_y) (p: clean
    probabilities, p': adversarial ones), both averaged over the batch."""
    p, p_adv = F.softmax(logits, 1), F.softmax(logits_adv, 1)
    top2 = p_adv.argsort(1)[:, -2:]
    runner_up = torch.where(top2[:, -1] == y, top2[:, -2], top2[:, -1])  # the most likely wrong class
    boosted = F.cross_entropy(logits_adv, y) + F.nll_loss(torch.log(1.0001 - p_adv + 1e-12), runner_up)
    kl = F.kl_div(torch.log(p_adv + 1e-12), p, reduction="none").sum(1)
    true = p.gather(1, y[:, None]).squeeze(1)
    return boosted + beta * (kl * (1.0000001 - true)).mean()


def _forward(model: nn.Module, x: Tensor, autocast_dtype: torch.dtype | None) -> Tensor:
    with torch.autocast(x.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        return model(x).float()


def adversarial_training(
    model, x, y, eps, beta, steps, *, autocast_dtype=None, **attack
) -> tuple[Tensor, Tensor]:
    """Cross-entropy adversarial training (Madry et al. 2018) with APGD-CE (the paper's): CE(f(x'), y) at
    the highest-loss APGD iterate x'; `beta` is unused. One forward of the adversarial points."""
    x_adv = apgd(model, x, y, eps, steps, autocast_dtype=autocast_dtype, **attack)
    logits_adv = _forward(model, x_adv, autocast_dtype)
    return F.cross_entropy(logits_adv, y), logits_adv


def trades(
    model, x, y, eps, beta, steps, *, autocast_dtype=None, random_start=False, mode="eval", **attack
) -> tuple[Tensor, Tensor]:
    """TRADES (`trades_loss`). Inner maximisation: APGD on KL(p ‖ softmax f(x')) from the clean
    probabilities p, computed once without gradient in the attack's `mode` (TRADES' code: eval). The
    gradient of that KL is zero at x' = x, so the attack starts, as TRADES' code does, at x + 0.001·N(0, I)
    (torch's RNG; with `random_start`, uniform in the ε-ball instead). Outer: two forwards in the model's
    own mode after the attack, clean then adversarial, as TRADES' code (each with its own batch
    statistics)."""
    if eps == 0:
        logits = _forward(model, x, autocast_dtype)
        return F.cross_entropy(logits, y), logits
    with torch.no_grad(), module_modes(model, None if mode == "keep" else mode == "train"):
        p = F.softmax(_forward(model, x, autocast_dtype), 1)
    start = None if random_start else x + 0.001 * torch.randn_like(x)
    x_adv = apgd(model, x, p, eps, steps, x_init=start, random_start=random_start, mode=mode,
                 autocast_dtype=autocast_dtype, **attack)  # fmt: skip
    logits, logits_adv = _forward(model, x, autocast_dtype), _forward(model, x_adv, autocast_dtype)
    return trades_loss(logits, logits_adv, y, beta), logits_adv


def mart(model, x, y, eps, beta, steps, *, autocast_dtype=None, **attack) -> tuple[Tensor, Tensor]:
    """MART (`mart_loss`). Inner maximisation: APGD-CE, as MART's code maximises cross-entropy (from
    x + 0.001·N(0, I) there; here from the run's own start, the clean image by default, where the CE
    gradient is not zero). Outer, after the attack: forwards of the clean then the adversarial points in
    the model's mode; at ε = 0 one forward, reused as both."""
    if eps == 0:
        logits = _forward(model, x, autocast_dtype)
        return mart_loss(logits, logits, y, beta), logits
    x_adv = apgd(model, x, y, eps, steps, autocast_dtype=autocast_dtype, **attack)
    logits, logits_adv = _forward(model, x, autocast_dtype), _forward(model, x_adv, autocast_dtype)
    return mart_loss(logits, logits_adv, y, beta), logits_adv


Objective = Callable[..., tuple[Tensor, Tensor]]
OBJECTIVES: dict[str, Objective] = {"at": adversarial_training, "trades": trades, "mart": mart}
