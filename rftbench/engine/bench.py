"""How fast one backbone adversarially fine-tunes and is evaluated here, and what a grid would cost: the
engine behind `rftbench bench`.

    row = measure(BenchCase("ViT", resolution=224, batch_size=64, precision="bf16"), device="cuda")
    hours = grid_hours(configs, row)   # the grid's runs on that backbone, projected from the row

Random-init weights (speed does not depend on them) and random uint8 images, through the trainer's own
epoch loop (`train_one_epoch`: loader, device-side augmentation, APGD, fused step) and the evaluation's
own `evaluate_budgets`. Timings are wall-clock over whole epochs after a warm-up epoch (compilation,
cuDNN autotuning), closed by the epoch's one host sync. FLOPs are counted per pass with FlopCounterMode
(which cannot follow `autograd.grad`): an APGD-k training step is k forward + input-gradient passes, one
forward without gradient (the last iterate) and the training step; their ratio to the clean step is the
gradient-count limit of the APGD/clean time ratio. Benchmarks, not tests: nothing here asserts a speed.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from rftbench.attacks.apgd import apgd
from rftbench.core.config import RunConfig, RuntimeOptions, parse_eps
from rftbench.core.metrics import EvalProtocol, eps_grid
from rftbench.data.loading import ImageTensorDataset, make_loader
from rftbench.data.registry import DATASETS
from rftbench.engine.evaluation import AUTOCAST, evaluate_budgets
from rftbench.engine.trainer import (
    DynamicBatch,
    configure_device,
    memory_format,
    param_groups,
    train_one_epoch,
)
from rftbench.models.build import build_backbone

# Dense peak TFLOP/s per device name fragment and math mode (vendor data sheets, SXM parts).
PEAK_TFLOPS = {
    "H200": {"bf16": 989.0, "fp16": 989.0, "tf32": 494.5, "fp32": 67.0},
    "H100": {"bf16": 989.0, "fp16": 989.0, "tf32": 494.5, "fp32": 67.0},
    "A100": {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5},
}
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune")


@dataclass(frozen=True)
class BenchCase:
    backbone: str
    resolution: int = 224
    batch_size: int = 64
    precision: str = "bf16"
    compile: str = "off"  # or a torch.compile mode (COMPILE_MODES)
    attack_steps: int = 7  # APGD steps of the training attack
    eval_steps: int = 10  # APGD steps of validation and the final evaluation
    eps: str = "4/255"
    batches: int = 8  # timed batches per measurement
    num_classes: int = 100


def peak_tflops(device: torch.device, precision: str, tf32: bool) -> float | None:
    """The device's dense peak for the math that `precision` runs in; None where unknown (CPUs)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    mode = "tf32" if precision == "fp32" and tf32 else precision
    return next((peaks[mode] for part, peaks in PEAK_TFLOPS.items() if part in name), None)


def flops_of(fn: Callable[[], None]) -> float:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return float(counter.get_total_flops())


def step_flops(model, x, y, attack_steps: int) -> tuple[float, float]:
    """FLOPs of one clean training step and of one APGD-`attack_steps` training step (module docstring)."""

    def forward(grad_of: str | None) -> None:
        z = x.detach().requires_grad_(grad_of == "input")
        with torch.set_grad_enabled(bool(grad_of)):
            loss = F.cross_entropy(model(z).float(), y)
        if grad_of == "input":
            loss.backward(inputs=[z])
        elif grad_of == "weights":
            loss.backward()

    clean = flops_of(functools.partial(forward, "weights"))
    attack = attack_steps * flops_of(functools.partial(forward, "input")) + flops_of(
        functools.partial(forward, None)
    )
    model.zero_grad(set_to_none=True)
    return clean, clean + attack


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds of one call, after the device finished everything queued before and inside it."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(case: BenchCase, device: str = "cpu", *, num_workers: int = 0, tf32: bool = True,
            torchattacks: bool = True) -> dict:  # fmt: skip
    """One row of `rftbench bench`: training and evaluation throughput of `case` on `device`."""
    mode = None if case.compile in ("off", "default") else case.compile
    runtime = RuntimeOptions(device=device, compile=case.compile != "off", compile_mode=mode,
                             num_workers=num_workers, tf32=tf32)  # fmt: skip
    dev = torch.device(device)
    configure_device(dev, runtime)
    config = RunConfig(backbone=case.backbone, dataset="synthetic", pretrained=False, eps=case.eps, epochs=1,
                       batch_size=case.batch_size, resolution=case.resolution, precision=case.precision,
                       train_attack_steps=case.attack_steps, eval_attack_steps=case.eval_steps,
                       augmentation="device")  # fmt: skip
    torch.manual_seed(0)
    model = build_backbone(case.backbone, case.num_classes, pretrained=False, size=case.resolution)
    fmt = memory_format(config, runtime)
    model.to(device=dev, memory_format=fmt)
    amp = AUTOCAST[case.precision]
    n = case.batch_size * case.batches
    images = torch.randint(0, 256, (n, 3, case.resolution, case.resolution), dtype=torch.uint8)
    labels = torch.randint(0, case.num_classes, (n,))
    loader = make_loader(ImageTensorDataset(images, labels, None), case.batch_size, shuffle=True,
                         num_workers=num_workers, device=device)  # fmt: skip
    resident = [(x.to(dev), y.to(dev)) for x, y in loader]  # the same batches, already on the device
    optimizer = torch.optim.AdamW(param_groups(model, config), config.lr, fused=dev.type == "cuda")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    scaler = torch.amp.GradScaler(dev.type, enabled=case.precision == "fp16")
    net = DynamicBatch(model, runtime.compile_mode) if runtime.compile else model
    generator = torch.Generator().manual_seed(0)
    eps = float(parse_eps(case.eps))

    def epoch(batches, eps_value: float) -> float:
        eps_at = lambda step: eps_value  # noqa: E731
        args = (net, batches, optimizer, scheduler, scaler, eps_at, config, dev, amp, fmt, generator)
        return train_one_epoch(*args)["images_per_second"]

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    for eps_value in (0.0, eps):  # warm-up: compilation, autotuning, the loader's workers
        epoch(resident[:2], eps_value)
    clean = epoch(loader, 0.0)
    clean_resident = epoch(resident, 0.0)
    adversarial = epoch(loader, eps)
    peak_memory = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None

    x, y = resident[0][0].float().div(255).contiguous(memory_format=fmt), resident[0][1]
    flop_clean, flop_adv = step_flops(model, x, y, case.attack_steps)
    limit = flop_adv / flop_clean
    tflops = flop_adv / case.batch_size * adversarial / 1e12
    peak = peak_tflops(dev, case.precision, tf32)

    model.eval()
    with torch.no_grad():  # labels the model gets right: every image is attacked, as for a trained model
        targets = [(x, net(x.float().div(255).contiguous(memory_format=fmt)).argmax(1)) for x, _ in resident]
    attack = attack_throughput(net, targets, eps, case.eval_steps, dev, fmt)
    forward = lambda: [net(x.float().div(255).contiguous(memory_format=fmt)) for x, _ in targets]  # noqa: E731
    with torch.no_grad():
        forward()
        clean_eval = n / timed(forward, dev)
    evaluation = {
        protocol: eval_throughput(net, targets, case.eps, EvalProtocol(protocol, steps=case.eval_steps), dev)
        for protocol in ("paper", "monotone")
    }
    row = {
        **asdict(case),
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else dev.type,
        "torch": torch.__version__,
        "clean_img_s": clean,
        "apgd_img_s": adversarial,
        "ratio": clean / adversarial,
        "gradient_limit": limit,
        "overhead": clean / adversarial / limit,
        "tflops": tflops,
        "mfu": tflops / peak if peak else None,
        "peak_memory_gib": peak_memory,
        "data_stall": max(0.0, 1 - clean / clean_resident),
        "eval_clean_img_s": clean_eval,
        "eval_attack_img_s": attack["ours"],
        "eval_paper_img_s": evaluation["paper"],
        "eval_monotone_img_s": evaluation["monotone"],
    }
    frozen = attack_throughput(net, targets, eps, case.eval_steps, dev, fmt, freeze=True)
    row["frozen_speedup"] = frozen["ours"] / attack["ours"]  # APGD with parameters frozen vs not
    if torchattacks:  # both eager, fp32, same ε and steps
        ours = (
            attack_throughput(model, targets, eps, case.eval_steps, dev, fmt) if runtime.compile else attack
        )
        theirs = torchattacks_throughput(model, targets, eps, case.eval_steps, dev, fmt)
        row |= {"torchattacks_img_s": theirs["img_s"], "robust_ours": ours["robust"],
                "speedup_vs_torchattacks": ours["ours"] / theirs["img_s"],
                "robust_torchattacks": theirs["robust"]}  # fmt: skip
    model.train()
    return row


def attack_throughput(net, batches, eps: float, steps: int, dev, fmt, freeze: bool = False) -> dict:
    """Images/s of one evaluation APGD (fp32, returns misclassified iterates) and the accuracy it leaves."""
    robust, seen = torch.zeros((), device=dev), 0

    def run() -> None:
        nonlocal robust, seen
        for x, y in batches:
            x = x.float().div(255).contiguous(memory_format=fmt)
            x_adv = apgd(net, x, y, eps, steps, returned="misclassified", freeze_parameters=freeze)
            with torch.no_grad():
                robust += (net(x_adv).argmax(1) == y).sum()
            seen += len(y)

    run()  # warm-up
    robust, seen = torch.zeros((), device=dev), 0
    seconds = timed(run, dev)
    return {"ours": seen / seconds, "robust": robust.item() / seen}


def eval_throughput(net, batches, budget: str, protocol: EvalProtocol, dev) -> float:
    """Images/s of the final evaluation at `budget` (every ε of its grid) under `protocol`."""
    evaluate_budgets(net, batches[:1], [budget], protocol, device=dev)  # warm-up
    seconds = timed(lambda: evaluate_budgets(net, batches, [budget], protocol, device=dev), dev)
    return sum(len(y) for _, y in batches) / seconds


def torchattacks_throughput(model, batches, eps: float, steps: int, dev, fmt) -> dict:
    """torchattacks' APGD-CE ℓ∞ at the same ε and steps (one restart, no random start difference: theirs
    starts randomly, as auto-attack does), fp32: images/s and the accuracy it leaves."""
    import torchattacks

    attack = torchattacks.APGD(model, norm="Linf", eps=eps, steps=steps, n_restarts=1, loss="ce", seed=0)
    robust, seen = 0, 0

    def run() -> None:
        nonlocal robust, seen
        for x, y in batches:
            x_adv = attack(x.float().div(255).contiguous(memory_format=fmt), y)
            with torch.no_grad():
                robust += int((model(x_adv).argmax(1) == y).sum())
            seen += len(y)

    run()
    robust, seen = 0, 0
    seconds = timed(run, dev)
    return {"img_s": seen / seconds, "robust": robust / seen}


def run_hours(config: RunConfig, row: dict) -> float | None:
    """Projected hours of one run from a bench row of its backbone: every epoch's training at ε(t)
    (clean or APGD), its clean validation and adversarial validation subset, then the final paper-protocol
    evaluation with every test image attacked at every ε of each budget's grid (a trained model's upper
    bound). None for a dataset of unknown size. `auto` runs are costed as `fix` (their ramp depends on
    their validation curve)."""
    spec = DATASETS.get(config.dataset)
    if spec is None or None in (spec.train_images, spec.val_images, spec.test_images):
        return None
    train_n = min(spec.train_images, config.train_subset or spec.train_images)
    val_n = min(spec.val_images, config.val_subset or spec.val_images)
    test_n = min(spec.test_images, config.test_subset or spec.test_images)
    schedule = config.schedule
    try:
        eps_per_epoch = schedule.values(config.epochs, seed=config.seed)
    except (ValueError, TypeError, IndexError):
        eps_per_epoch = [config.eps_value] * config.epochs
    scale = row["eval_steps"] / config.eval_attack_steps if config.eval_attack_steps else 1.0
    attack_s = 1 / (row["eval_attack_img_s"] * scale)
    clean_eval_s = 1 / row["eval_clean_img_s"]
    seconds = 0.0
    for eps in eps_per_epoch:
        seconds += train_n / (row["apgd_img_s"] if eps > 0 else row["clean_img_s"])
        seconds += val_n * clean_eval_s
        if config.val_adv_samples and (config.eps_value > 0 or config.eval_budgets):
            seconds += min(config.val_adv_samples, val_n) * attack_s
    points = sorted({e for budget in config.scored_budgets for e in eps_grid(budget)} - {0})
    seconds += test_n * (clean_eval_s + len(points) * attack_s)
    return seconds / 3600


def grid_hours(configs: Iterable[RunConfig], rows: dict[str, dict]) -> dict:
    """Projected hours of a grid's runs per measured backbone (`rows`: backbone -> bench row), with the
    runs that could not be projected (unmeasured backbone, dataset of unknown size) counted."""
    hours: dict[str, float] = {}
    runs: dict[str, int] = {}
    unprojected = 0
    for config in configs:
        row = rows.get(config.backbone)
        h = run_hours(config, row) if row else None
        if h is None:
            unprojected += 1
            continue
        hours[config.backbone] = hours.get(config.backbone, 0.0) + h
        runs[config.backbone] = runs.get(config.backbone, 0) + 1
    return {"hours": hours, "runs": runs, "total": sum(hours.values()), "unprojected": unprojected}
