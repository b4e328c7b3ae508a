"""Which parameters a run trains (`RunConfig.finetune`), and LoRA adapters through peft.

    model = add_lora(build_backbone("ViT", 100), config)   # no-op unless config.finetune == "lora"
    set_trainable(model, config, epoch)                     # requires_grad of every parameter, this epoch
    set_modes(model, config, epoch)                         # after model.train(): a probed backbone in eval

- `full`: every parameter (the paper's).
- `linear`: the fresh head alone (a linear probe); the backbone runs in eval mode, so its features,
  normalisation statistics included, stay those of the pretrained model.
- `lp_ft`: `linear` for the first `lp_ft_epochs` epochs, then `full` (Kumar et al. 2022, "Fine-Tuning can
  Distort Pretrained Features and Underperform Out-of-Distribution", arXiv 2202.10054). One AdamW and one
  learning-rate schedule span both phases; the backbone's parameters join the optimiser's steps at epoch k.
- `bitfit`: every bias and the head (Ben Zaken et al. 2022, arXiv 2106.10199); modules keep their modes. A
  bias is a parameter whose name ends in "bias" (Swin's relative-position bias tables are not: they are
  attention logits' tables, not a layer's offset).
- `lora`: rank-`lora_r` adapters with scale lora_alpha / lora_r on the modules `LORA_TARGETS` matches
  (Hu et al. 2022, arXiv 2106.09685; peft's `inject_adapter_in_model`, so the model stays the same
  module tree and its state dict adds `lora_A` / `lora_B` beside `base_layer`), and the head in full.
  peft initialises A (Kaiming-uniform, from torch's RNG: the runner seeds it) and B at zero, so training
  starts at the pretrained function.

Frozen parameters keep `requires_grad = False`: their gradients are never computed (None), and AdamW, which
skips parameters without a gradient, neither moves nor decays them. Trained parameters are decayed as in
full fine-tuning (`engine.trainer.param_groups`), LoRA's A and B matrices included: `decay_norm_and_bias
= False` exempts one-dimensional parameters only.
"""

from __future__ import annotations

import re

from torch import nn

from rftbench.core.config import RunConfig
from rftbench.errors import RftbenchError
from rftbench.models.registry import LORA_TARGETS, get_backbone_spec


class FinetuneError(RftbenchError, ValueError):
    """A fine-tuning mode the model cannot take (LoRA without a target layer): one line."""


def head_prefix(config: RunConfig) -> str:
    """The fresh head's parameter-name prefix in the normalised model (`Normalize` is module 0)."""
    return f"1.{get_backbone_spec(config.backbone).head}."


def add_lora(model: nn.Module, config: RunConfig) -> nn.Module:
    """`model` with LoRA adapters injected in place when `config.finetune == "lora"` (else unchanged)."""
    if config.finetune != "lora":
        return model
    from peft import LoraConfig, inject_adapter_in_model

    body = model[1]
    targets = [name for name, _ in body.named_modules() if re.fullmatch(LORA_TARGETS, name)]
    if not targets:
        raise FinetuneError(
            f'finetune = "lora": {config.backbone} has no module matching {LORA_TARGETS} (attention or MLP '
            f"projections); choose full, linear, lp_ft or bitfit for it"
        )
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, target_modules=LORA_TARGETS)
    inject_adapter_in_model(lora, body)
    return model


def trained(model: nn.Module, config: RunConfig, epoch: int | None = None) -> list[str]:
    """Names of the parameters `config` trains at 0-based `epoch` (None: at any epoch of the run)."""
    if config.finetune == "full":  # what the caller left trainable (a library user's model may freeze some)
        return [name for name, p in model.named_parameters() if p.requires_grad]
    head = head_prefix(config)
    mode = "linear" if epoch is not None and head_only(config, epoch) else config.finetune
    keep = {
        "lp_ft": lambda name: True,
        "linear": lambda name: False,
        "bitfit": lambda name: name.endswith("bias"),  # `.bias`, q_bias, in_proj_bias
        "lora": lambda name: ".lora_" in name,
    }[mode]
    return [name for name, _ in model.named_parameters() if name.startswith(head) or keep(name)]


def set_trainable(model: nn.Module, config: RunConfig, epoch: int) -> None:
    """`requires_grad` of every parameter: True exactly for those `config` trains at `epoch` (`full`: as
    the caller left them)."""
    if config.finetune == "full":
        return
    train = set(trained(model, config, epoch))
    for name, p in model.named_parameters():
        p.requires_grad_(name in train)


def head_only(config: RunConfig, epoch: int) -> bool:
    """Whether only the head trains at `epoch` (a linear probe, or lp_ft's first phase)."""
    return config.finetune == "linear" or (config.finetune == "lp_ft" and epoch < config.lp_ft_epochs)


def attack_mode_at(config: RunConfig, epoch: int) -> str:
    """The model's mode while the training attack runs: the run's `attack_mode`, except that "train" keeps
    the modes `set_modes` chose while only the head trains (a probed backbone keeps its statistics)."""
    return "keep" if config.attack_mode == "train" and head_only(config, epoch) else config.attack_mode


def set_modes(model: nn.Module, config: RunConfig, epoch: int) -> None:
    """After `model.train()`: while only the head trains, every other module in eval mode (a probe reads
    the pretrained features: no dropout, normalisation by the pretrained running statistics)."""
    if head_only(config, epoch):
        head = head_prefix(config)[:-1]
        for name, module in model.named_modules():
            module.training = name == head or name.startswith(head + ".")


def trainable_count(model: nn.Module, config: RunConfig) -> int:
    """How many parameter values the run trains at some epoch (lp_ft: all of them, from epoch k)."""
    train = set(trained(model, config))
    return sum(p.numel() for name, p in model.named_parameters() if name in train)
