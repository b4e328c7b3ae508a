"""Adversarial fine-tuning steps of the paper's six backbones on one GPU: images/s, achieved TFLOP/s and
MFU per precision, the adversarial/clean step ratio, the projected hours of one paper run, and an audit
of host syncs in the trainer's hot loop.

    python benchmarks/gpu_step.py --device cuda --batch-size 64 --attack-steps 7

Random-init weights (the paper's are not needed for speed). FLOPs are counted by torch's
FlopCounterMode over one whole step (attack included); MFU is against the H100 SXM's dense peak
(989 TFLOP/s bf16, 67 TFLOP/s fp32 without TF32), so it reads low for fp32 by construction.
"""

from __future__ import annotations

import argparse
import functools
import warnings

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from rftbench.attacks import apgd
from rftbench.backbones import build_backbone
from rftbench.config import RunConfig
from rftbench.data import ImageTensorDataset, make_loader, train_transform
from rftbench.metrics import AUTOCAST
from rftbench.trainer import train_one_epoch, warmup_cosine

PAPER = ["ViT", "SWIN", "CNX", "R50", "ClipViT", "ClipCNX"]
PEAK_TFLOPS = {"bf16": 989.0, "fp32": 67.0}
CARS_TRAIN, CARS_VAL, EPOCHS = 6922, 1222, 50


def step(model, optimizer, x, y, eps, attack_steps, amp):
    if eps > 0:
        x = apgd(model, x, y, eps, attack_steps, autocast_dtype=amp)
    with torch.autocast("cuda", dtype=amp, enabled=amp is not None):
        loss = F.cross_entropy(model(x).float(), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def timed(fn, repeats: int) -> float:
    """Seconds per call: CUDA events around `repeats` calls after two warm-up calls."""
    for _ in range(2):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1000 / repeats


def flops(fn) -> float:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def adversarial_step_flops(model, x, y, attack_steps: int, amp) -> float:
    """FLOPs of one training step with APGD-`attack_steps`: `attack_steps` forward + input-gradient passes
    (the first at the clean point), one forward without gradient (the last iterate), then the training
    forward + backward. Counted per pass with FlopCounterMode (which cannot follow autograd.grad)."""

    def forward(grad_of: str | None) -> None:
        z = x.detach().requires_grad_(grad_of == "input")
        with (
            torch.autocast("cuda", dtype=amp, enabled=amp is not None),
            torch.set_grad_enabled(bool(grad_of)),
        ):
            loss = F.cross_entropy(model(z).float(), y)
        if grad_of == "input":
            loss.backward(inputs=[z])
        elif grad_of == "weights":
            loss.backward()

    attack = flops(functools.partial(forward, "input"))
    model.zero_grad(set_to_none=True)
    total = (
        attack_steps * attack
        + flops(functools.partial(forward, None))
        + flops(functools.partial(forward, "weights"))
    )
    model.zero_grad(set_to_none=True)
    return total


def sync_audit(device: str, batch_size: int) -> int:
    """Host syncs raised by CUDA's sync debug mode during one training epoch of the real trainer."""
    config = RunConfig(backbone="R50", dataset="synthetic", eps="4/255", epochs=1, batch_size=batch_size,
                       resolution=64, train_attack_steps=3)  # fmt: skip
    model = build_backbone("R50", 10, pretrained=False).to(device)
    data = ImageTensorDataset(torch.randint(0, 255, (4 * batch_size, 3, 64, 64), dtype=torch.uint8),
                              torch.randint(0, 10, (4 * batch_size,)), train_transform())  # fmt: skip
    loader = make_loader(data, batch_size, shuffle=True, num_workers=2, device=device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(1, 4, 0.0))
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    eps_at = functools.partial(config.schedule.epsilon, 0, 1, steps_per_epoch=len(loader))
    args = (model, loader, optimizer, scheduler, scaler, eps_at, config, torch.device(device), None,
            torch.contiguous_format)  # fmt: skip
    train_one_epoch(*args)  # warm-up: cuDNN autotuning and lazy inits may sync once
    torch.cuda.set_sync_debug_mode("warn")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train_one_epoch(*args)
    torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    for w in syncs[:5]:
        print(f"  sync: {w.filename}:{w.lineno}: {str(w.message)[:100]}")
    return len(syncs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--attack-steps", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--backbones", nargs="*", default=PAPER)
    args = parser.parse_args()
    print(f"{torch.cuda.get_device_name(args.device)}, torch {torch.__version__}, batch {args.batch_size}, "
          f"224 px, APGD-{args.attack_steps} training attack")  # fmt: skip
    print(f"host syncs in one training epoch of the trainer (4 steps, sync debug mode): "
          f"{sync_audit(args.device, args.batch_size)}")  # fmt: skip
    x = torch.rand(args.batch_size, 3, 224, 224, device=args.device)
    y = torch.randint(0, 196, (args.batch_size,), device=args.device)
    header = ("backbone", "prec", "clean img/s", "adv img/s", "adv/clean", "adv TFLOP/s", "MFU", "Cars run h")
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for name in args.backbones:
        model = build_backbone(name, 196, pretrained=False).to(args.device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
        for precision in ("fp32", "bf16"):
            amp = AUTOCAST[precision]
            clean = functools.partial(step, model, optimizer, x, y, 0.0, args.attack_steps, amp)
            adv = functools.partial(step, model, optimizer, x, y, 4 / 255, args.attack_steps, amp)
            t_clean, t_adv = timed(clean, args.repeats), timed(adv, args.repeats)
            tflops = adversarial_step_flops(model, x, y, args.attack_steps, amp) / t_adv / 1e12
            # a paper run: 50 epochs of Cars training at t_adv per batch, plus clean validation each epoch
            seconds = EPOCHS * (
                CARS_TRAIN / args.batch_size * t_adv + CARS_VAL / args.batch_size * t_clean / 3
            )
            row = (name, precision, f"{args.batch_size / t_clean:.0f}", f"{args.batch_size / t_adv:.0f}",
                   f"{t_adv / t_clean:.2f}", f"{tflops:.1f}", f"{tflops / PEAK_TFLOPS[precision]:.1%}",
                   f"{seconds / 3600:.2f}")  # fmt: skip
            print("| " + " | ".join(row) + " |", flush=True)
        del model, optimizer
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
