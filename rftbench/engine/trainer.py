"""Adversarial fine-tuning of one run: APGD examples at ε(t) under its objective, one callback.

    result = train(cfg, model, train_loader, val_loader, test_loader, callback=print, run_dir="runs/x")

After every epoch it reports through `callback(metrics)`, then writes `run_dir/last.pt` atomically. A
run whose `last.pt` exists continues after its last finished epoch; every epoch reseeds the RNG from
(seed, epoch), so a resumed run computes what an uninterrupted one would. Per-epoch adversarial validation
attacks a fixed subset of the validation split that covers every class (`split_seed`); the final
evaluation follows an explicit `EvalProtocol` (default: the paper's, in fp32). The loss is the run's
`objective` (`attacks.objectives`: AT, TRADES, MART); the parameters trained, epoch by epoch, its
`finetune` mode (`models.finetune`; a LoRA model comes with its adapters). Imports nothing from the CLI,
the store or the terminal UI.

Speed on a GPU (none of it changes what a run computes beyond floating-point rounding, and `provenance`
records it): loaders may ship uint8 batches, converted (and for `augmentation = "device"` augmented) on
the device; host-to-device copies come from pinned memory; AdamW is fused on CUDA; fp32 matmuls may use
TF32 there (`RuntimeOptions.tf32`) and cuDNN picks its kernels per shape (`cudnn.benchmark`); convnets run
channels-last on CUDA; `--compile` compiles the model with a dynamic batch dimension into at most four
graphs (`engine.compiled`), and every attack runs with the parameters frozen, so a compiled attack computes
no weight gradients. Checkpoints are snapshots in host memory written by a background thread
(`CheckpointWriter`), joined before the next epoch's metrics row; `RuntimeOptions.checkpoint_every` and
`checkpoint_minutes` write them less often (a resumed run replays the epochs since from (seed, epoch)).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rftbench.attacks.apgd import apgd_attack, frozen_parameters
from rftbench.attacks.objectives import OBJECTIVES
from rftbench.core.config import RunConfig, RuntimeOptions, budget_text, parse_budget
from rftbench.core.metrics import EvalProtocol
from rftbench.data.loading import augment_batch, augment_params, covering_loader, to_device, to_unit_float
from rftbench.engine.batches import AUTOCAST, BatchLog
from rftbench.engine.checkpoint import (
    CheckpointWriter,
    checkpoint_due,
    resume_training,
    save_checkpoint,
    training_state,
)
from rftbench.engine.compiled import CompiledModel
from rftbench.engine.evaluation import evaluate_budgets
from rftbench.engine.policy import KeptWeights
from rftbench.models.finetune import attack_mode_at, head_prefix, set_modes, set_trainable, trained
from rftbench.models.registry import BACKBONES


def warmup_cosine(warmup_steps: int, total_steps: int, min_ratio: float) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def epoch_seed(seed: int, epoch: int, stream: int = 0) -> int:
    """The seed of one epoch's random numbers; `stream` > 0 gives independent ones (1: the device-side
    augmentation's draws)."""
    entropy = [seed, epoch] + ([stream] if stream else [])
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def no_decay_names(model: nn.Module) -> set[str]:
    """Parameters without weight decay when `decay_norm_and_bias` is off: every parameter of at most one
    dimension (normalisation weights, biases) and those a module names in `no_weight_decay()` (timm's
    position embeddings, class tokens, relative position tables)."""
    names = {name for name, p in model.named_parameters() if p.ndim <= 1}
    for prefix, module in model.named_modules():
        if callable(getattr(module, "no_weight_decay", None)):
            names |= {f"{prefix}.{n}" if prefix else n for n in module.no_weight_decay()}
    return names


def param_groups(model: nn.Module, config: RunConfig) -> list[dict]:
    """AdamW's parameter groups under `config`: one group of every parameter the run trains by default (as
    release 0.1; `models.finetune.trained`: at any epoch); `decay_norm_and_bias = False` moves
    `no_decay_names` to a group without weight decay, `head_lr_scale` the fresh head (the backbone registry's
    `head` path) to a group with lr × that scale."""
    no_decay = set() if config.decay_norm_and_bias else no_decay_names(model)
    head = head_prefix(config) if config.head_lr_scale != 1 else None
    groups: dict[tuple[bool, bool], list] = {}
    train = set(trained(model, config))
    for name, p in model.named_parameters():
        if name in train:
            is_head = head is not None and name.startswith(head)
            groups.setdefault((name not in no_decay, is_head), []).append(p)
    if head is not None and not any(is_head for _, is_head in groups):
        raise ValueError(f"head_lr_scale: the model has no parameters under {head[:-1]!r}")
    return [
        {"params": params, "weight_decay": config.weight_decay if decay else 0.0,
         "lr": config.lr * (config.head_lr_scale if is_head else 1.0)}
        for (decay, is_head), params in groups.items()
    ]  # fmt: skip


def configure_device(device: torch.device, runtime: RuntimeOptions) -> None:
    """CUDA's math and kernel choices for this process (recorded by the runner's `provenance`)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = runtime.tf32
        torch.backends.cudnn.allow_tf32 = runtime.tf32
        torch.backends.cudnn.benchmark = True  # shapes are fixed within a run


def memory_format(config: RunConfig, runtime: RuntimeOptions) -> torch.memory_format:
    """channels-last where asked, by default for convnets on CUDA (where cuDNN prefers it)."""
    wanted = runtime.channels_last
    if wanted is None:  # a model outside the registry (the library's users) keeps the default layout
        spec = BACKBONES.get(config.backbone)
        wanted = torch.device(runtime.device).type == "cuda" and spec is not None and spec.convnet
    return torch.channels_last if wanted else torch.contiguous_format


def val_adv_budget(config: RunConfig) -> float:
    """ε_g; for a standard run its smallest evaluation budget, so its curves compare with fix/sched."""
    if config.eps_value > 0 or not config.eval_budgets:
        return config.eps_value
    return float(parse_budget(config.eval_budgets[0], config.norm))


def epoch_constant(value: float, step: int = 0) -> float:
    """ε of a per-epoch schedule at any step (computed once: auto and adaptive replay the history)."""
    return value


def train_one_epoch(net, loader, optimizer, scheduler, scaler, eps_at, config, device, amp, fmt, augment=None,
                    modes=None, mode=None, after_step=None) -> dict:  # fmt: skip
    """One epoch; `augment` (a CPU generator) draws the device-side augmentation of every batch; `modes`,
    called after `net.train()`, sets the modes of modules that do not train (a probed backbone), and
    `mode` (default: the run's `attack_mode`) is the model's mode during the attack; `after_step` is called
    after every optimiser step (an EMA's update)."""
    net.train()
    if modes is not None:
        modes()
    objective = OBJECTIVES[config.objective]
    loss_sum, correct = torch.zeros((), device=device), torch.zeros((), device=device)
    seen, start = 0, time.perf_counter()
    for step, (x, y) in enumerate(loader):
        x = to_device(x, device)
        if augment is not None:
            x = augment_batch(x, to_device(augment_params(len(y), augment), device))
        x = to_unit_float(x).contiguous(memory_format=fmt)
        y = to_device(y, device)
        eps = eps_at(step=step)
        loss, logits = objective(net, x, y, eps, config.beta, config.train_attack_steps, autocast_dtype=amp,
                                 random_start=config.attack_random_start, mode=mode or config.attack_mode,
                                 norm=config.norm)  # fmt: skip
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        if after_step is not None:
            after_step()
        loss_sum += loss.detach() * len(y)
        correct += (logits.detach().argmax(1) == y).sum()
        seen += len(y)
    loss_total, correct_total = torch.stack([loss_sum, correct.float()]).tolist()  # the epoch's one host sync
    seconds = time.perf_counter() - start
    return {
        "train_loss": loss_total / seen,
        "train_acc": correct_total / seen,
        "images_per_second": seen / seconds,
    }


@torch.no_grad()
def validate(net, loader, adv_loader, eps, steps, device, amp, fmt, norm="Linf") -> dict:
    """Clean loss/accuracy on `loader`; APGD loss/accuracy at `eps` on `adv_loader` (when eps > 0): the
    loss and the prediction at the point APGD returns (its first misclassified iterate, else its highest
    loss), taken from the attack itself. Clean mistakes leave the attack before its first step and fooled
    images at its step-size checkpoints (`apgd_attack(early_exit=True)`): their returned point is fixed."""
    net.eval()
    sums, n, n_adv = torch.zeros(4, device=device), 0, 0  # clean loss, clean correct, adv loss, adv correct
    with frozen_parameters(net):
        for x, y in loader:
            x = to_unit_float(to_device(x, device)).contiguous(memory_format=fmt)
            y = to_device(y, device)
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                logits = net(x).float()
            sums[0] += F.cross_entropy(logits, y, reduction="sum")
            sums[1] += (logits.argmax(1) == y).sum()
            n += len(y)
        for x, y in adv_loader if eps > 0 else ():
            x = to_unit_float(to_device(x, device)).contiguous(memory_format=fmt)
            y = to_device(y, device)
            attack = apgd_attack(net, x, y, eps, steps, returned="misclassified", autocast_dtype=amp,
                                 norm=norm, early_exit=True, freeze_parameters=False)  # fmt: skip
            sums[2] += attack.loss.sum()
            sums[3] += (~attack.fooled).sum()
            n_adv += len(y)
    loss, acc, adv_loss, adv_acc = sums.tolist()
    adv = {"val_adv_loss": adv_loss / n_adv, "val_adv_acc": adv_acc / n_adv} if n_adv else {}
    return {"val_loss": loss / n, "val_acc": acc / n, "val_adv_loss": None, "val_adv_acc": None, **adv}


def train(
    config: RunConfig,
    model: nn.Module,
    train_loader,
    val_loader,
    test_loader,
    *,
    callback: Callable[[dict], None] | None = None,
    run_dir: str | Path | None = None,
    runtime: RuntimeOptions = RuntimeOptions(),
    evaluation: EvalProtocol | None = None,
    evaluation_log: Callable[[nn.Module], BatchLog] | None = None,
) -> dict:
    """Fine-tune `model` under `config`, then evaluate it on `test_loader` under `evaluation` (default: the
    paper protocol with the run's `eval_attack_steps`, fp32; logged per batch in `evaluation_log(model)`,
    so a killed final evaluation continues where it stopped); returns the final evaluation."""
    device, amp = torch.device(runtime.device), AUTOCAST[config.precision]
    configure_device(device, runtime)
    fmt = memory_format(config, runtime)
    model.to(device=device, memory_format=fmt)
    fused = device.type == "cuda"  # CPU keeps the foreach kernels, and release 0.1's exact numbers
    optimizer = torch.optim.AdamW(param_groups(model, config), config.lr, weight_decay=config.weight_decay,
                                  fused=fused)  # fmt: skip
    steps = len(train_loader)
    lr_factor = warmup_cosine(
        round(config.warmup_epochs * steps), config.epochs * steps, config.min_lr / config.lr
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    scaler = torch.amp.GradScaler(device.type, enabled=config.precision == "fp16")
    callback = callback or (lambda metrics: None)
    last = Path(run_dir) / "last.pt" if run_dir is not None else None
    kept = KeptWeights(config, model)  # the weights its policy keeps besides the last (engine.policy)
    history = resume_training(last, config, model, optimizer, scheduler, scaler, device, kept) if last else []
    for metrics in history:  # idempotent upserts: repairs a row the store may have lost
        metrics.setdefault("val_adv_subset", "prefix" if metrics["val_adv_acc"] is not None else None)  # v0.1
        callback(metrics)
    net = CompiledModel(model, runtime.compile_mode, runtime.compile_backend) if runtime.compile else model
    val_eps = val_adv_budget(config)
    val_adv_loader = covering_loader(val_loader, config.val_adv_samples, config.split_seed)
    last_write, policy = time.perf_counter(), (runtime.checkpoint_every, runtime.checkpoint_minutes)

    with CheckpointWriter() as writer:  # checkpoints written in the background, joined before the next row
        for epoch in range(len(history), config.epochs):
            metrics = train_epoch(epoch, config, model, net, train_loader, val_loader, val_adv_loader,
                                  val_eps, optimizer, scheduler, scaler, history, device, amp, fmt,
                                  kept)  # fmt: skip
            kept.epoch(metrics)
            history.append(metrics)
            writer.join()  # the previous epoch's checkpoint is on disk before this epoch's row
            callback(metrics)  # first the metrics row, then the checkpoint (CONVENTIONS.md write order)
            since = time.perf_counter() - last_write
            if last is not None and checkpoint_due(epoch, config.epochs, since, *policy):
                state = training_state(config, history, model, optimizer, scheduler, scaler, device,
                                       kept.state())  # fmt: skip
                writer.submit(last, state)
                last_write = time.perf_counter()

    evaluation = evaluation or EvalProtocol(steps=config.eval_attack_steps, norm=config.norm)
    result = {"run_id": config.run_id}
    log = evaluation_log(model) if evaluation_log is not None else None
    result |= evaluate_budgets(net, test_loader, config.eval_budgets, evaluation, device=device, log=log)
    if log is not None:
        result["batches"] = log.key
    if last is not None:  # the final weights, so later evaluations need no retraining
        final = {"run_id": config.run_id, "config": config.canonical_json(), "evaluation": result}
        save_checkpoint(last.with_name("final.pt"), final | {"model": model.state_dict()})
    if (kept_model := kept.module()) is not None:  # its policy's weights, under the same protocol
        log = evaluation_log(kept_model) if evaluation_log is not None else None
        scored = evaluate_budgets(
            kept_model, test_loader, config.eval_budgets, evaluation, device=device, log=log
        )
        result["kept"] = scored | {"weights": config.weights_policy, "details": kept.details()}
        result["kept"] |= {"batches": log.key} if log is not None else {}
        if last is not None:  # beside final.pt (best.pt, ema.pt): `rftbench evaluate` scores them too
            kept_file = {
                "run_id": config.run_id,
                "config": config.canonical_json(),
                "weights": config.weights_policy,
            }
            save_checkpoint(
                last.with_name(f"{config.weights_policy}.pt"), kept_file | {"model": kept_model.state_dict()}
            )
    if runtime.compile:
        result["compile"] = net.stats()  # graphs and compile seconds: provenance, not a result
    return result


def train_epoch(epoch, config, model, net, train_loader, val_loader, val_adv_loader, val_eps, optimizer,
                scheduler, scaler, history, device, amp, fmt, kept=None) -> dict:  # fmt: skip
    """One epoch's training and validation from its own seed (seed, epoch), and its metrics row (with
    `val_eadv` where the kept weights are chosen by it)."""
    torch.manual_seed(epoch_seed(config.seed, epoch))
    set_trainable(model, config, epoch)  # lp_ft's backbone joins at epoch lp_ft_epochs
    eps_at = functools.partial(
        config.schedule.epsilon,
        epoch,
        config.epochs,
        steps_per_epoch=len(train_loader),
        seed=config.seed,
        val_accuracies=[m["val_acc"] for m in history],
    )
    if config.schedule_granularity == "epoch":  # one ε per epoch: computed once, not at every step
        eps_at = functools.partial(epoch_constant, eps_at(step=0))
    lr, start = scheduler.get_last_lr()[0], time.perf_counter()
    augment = None
    if config.augmentation == "device":
        augment = torch.Generator().manual_seed(epoch_seed(config.seed, epoch, stream=1))
    modes = functools.partial(set_modes, model, config, epoch)
    ema = kept.step if kept is not None and kept.ema is not None else None
    stats = train_one_epoch(net, train_loader, optimizer, scheduler, scaler, eps_at, config, device, amp, fmt,
                            augment, modes, attack_mode_at(config, epoch), ema)  # fmt: skip
    val = validate(net, val_loader, val_adv_loader, val_eps, config.eval_attack_steps, device, amp, fmt,
                   config.norm)  # fmt: skip
    if kept is not None and kept.needs_eadv and val_eps > 0:  # E.adv on the same subset, monotone protocol
        protocol = EvalProtocol("monotone", precision=config.precision, steps=config.eval_attack_steps,
                                norm=config.norm)  # fmt: skip
        budget = budget_text(val_eps, config.norm)
        scored = evaluate_budgets(net, val_adv_loader, [budget], protocol, device=device)
        val["val_eadv"] = scored["budgets"][0]["eadv"]
    return {
        "epoch": epoch,
        "eps": eps_at(step=0),
        "lr": lr,
        **stats,
        **val,
        "val_adv_eps": budget_text(val_eps, config.norm),
        "val_adv_subset": "stratified" if val["val_adv_acc"] is not None else None,
        "epoch_seconds": time.perf_counter() - start,
    }
