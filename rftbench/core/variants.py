"""A run's variant: its objective, fine-tuning mode and weights policy off the paper's recipe (AT, every
parameter, the last epoch's weights). `canonical` checks those fields and resets the ones a run does not
use, so one computation has one id; `name` is how reports and progress lines label it.

    variants.name(RunConfig(..., objective="trades", finetune="lora"))   # "trades+lora"

Torch-free, as all of core/; it reads a RunConfig's fields and imports nothing of it.
"""

from __future__ import annotations

import dataclasses
import math


def canonical(config, adversarial: bool) -> None:
    """Check the objective, fine-tuning and weights-policy fields of a (frozen) RunConfig; reset those the
    run does not use to their defaults (as `standard` at ε_g > 0 is one run). `adversarial`: ε_g > 0."""
    set_ = lambda name, value: object.__setattr__(config, name, value)  # noqa: E731 (frozen dataclass)
    for name, kind in (("beta", float), ("lora_alpha", float), ("lora_r", int), ("lp_ft_epochs", int),
                       ("ema_decay", float)):  # fmt: skip
        set_(name, kind(getattr(config, name)))  # 3 and 3.0: one run, one id
    if not (math.isfinite(config.beta) and config.beta >= 0):
        raise ValueError(f"beta must be a number >= 0 (the weight of the robust term), got {config.beta}")
    if config.finetune == "lp_ft" and not 1 <= config.lp_ft_epochs < config.epochs:
        raise ValueError(
            f"lp_ft trains the head alone for lp_ft_epochs, then everything: set lp_ft_epochs between 1 "
            f"and epochs - 1 = {config.epochs - 1}, got {config.lp_ft_epochs}"
        )
    lora_ok = config.lora_r >= 1 and math.isfinite(config.lora_alpha) and config.lora_alpha > 0
    if config.finetune == "lora" and not lora_ok:
        raise ValueError(
            f"lora needs lora_r >= 1 and lora_alpha > 0, got {config.lora_r}, {config.lora_alpha}"
        )
    if config.weights_policy == "ema" and not 0 < config.ema_decay < 1:
        raise ValueError(f"ema_decay must be between 0 and 1 (both excluded), got {config.ema_decay}")
    attacked = config.val_adv_samples > 0 and (adversarial or bool(config.eval_budgets))
    if config.weights_policy == "best" and config.best_metric != "clean" and not attacked:
        raise ValueError(
            f"best_metric {config.best_metric!r} needs adversarial validation (val_adv_samples > 0 and a "
            f"budget): set them, or best_metric 'clean'"
        )
    ce = config.objective == "trades" and not adversarial  # TRADES at ε = 0 is cross-entropy
    lora, policy = config.finetune == "lora", config.weights_policy
    unused = {"objective": ce, "beta": ce or config.objective == "at", "lora_r": not lora,
              "lora_alpha": not lora, "lp_ft_epochs": config.finetune != "lp_ft",
              "best_metric": policy != "best", "ema_decay": policy != "ema"}  # fmt: skip
    defaults = {f.name: f.default for f in dataclasses.fields(config)}
    for name in (name for name, reset in unused.items() if reset):
        set_(name, defaults[name])


def name(config) -> str:
    """ "" (AT, full, last), "trades", "lora", "trades+lp_ft(k=2)", "mart(β=3)+lora(r=4,α=8)", "best(adv)",
    "ema(0.999)": the fields off their defaults, in that order."""
    beta = f"(β={config.beta:g})" if config.beta != 6.0 else ""
    lora = (
        ""
        if (config.lora_r, config.lora_alpha) == (8, 16)
        else f"(r={config.lora_r},α={config.lora_alpha:g})"
    )
    mode = {"full": "", "lp_ft": f"lp_ft(k={config.lp_ft_epochs})", "lora": "lora" + lora}
    policy = {"best": f"best({config.best_metric})", "ema": f"ema({config.ema_decay:g})"}
    parts = (
        config.objective + beta if config.objective != "at" else "",
        mode.get(config.finetune, config.finetune),
        policy.get(config.weights_policy, ""),
    )
    return "+".join(part for part in parts if part)
