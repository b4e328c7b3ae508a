"""How fast one backbone adversarially fine-tunes and is evaluated here, and what a grid would cost: the
engine behind `rftbench bench` and `benchmarks/gpu_matrix.py`.

    row = measure(BenchCase("ViT", resolution=224, batch_size=64, precision="bf16"), device="cuda")
    hours = grid_hours(configs, {"ViT": row})   # the grid's runs on that backbone, projected from the row

    r = rig(BenchCase("R50", compile="default"), "cuda")    # or one measurement at a time
    train = training(r)
    row = train | flop_row(r, train) | compile_row(r) | evaluation(r, ["budget"])

Random-init weights (speed does not depend on them) and random uint8 images, through the trainer's own
epoch loop (`train_one_epoch`: loader, device-side augmentation, APGD, fused step) and the evaluation's
own `evaluate_budgets`. Timings are wall-clock over whole epochs after a warm-up epoch (compilation,
cuDNN autotuning), closed by the epoch's one host sync. Compiled cases run through `CompiledModel`, whose
graphs and compile seconds the row reports. FLOPs and MFU: `rftbench.engine.flops`. Benchmarks, not
tests: nothing here asserts a speed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from rftbench.attacks.apgd import apgd
from rftbench.core.config import RunConfig, RuntimeOptions, parse_eps
from rftbench.core.metrics import EvalProtocol, eps_grid
from rftbench.data.loading import ImageTensorDataset, make_loader
from rftbench.data.registry import DATASETS
from rftbench.engine.batches import AUTOCAST
from rftbench.engine.compiled import CompiledModel
from rftbench.engine.evaluation import evaluate_budgets
from rftbench.engine.flops import device_name, peak_tflops, step_flops
from rftbench.engine.trainer import configure_device, memory_format, param_groups, train_one_epoch
from rftbench.models.build import build_backbone

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


@dataclass
class Rig:
    """One case set up on its device: the model, the module the loops call (`net`: compiled or the model),
    the same batches through the loader and already resident, and the trainer's optimizer state."""

    case: BenchCase
    dev: torch.device
    config: RunConfig
    tf32: bool
    model: nn.Module
    net: nn.Module
    fmt: torch.memory_format
    loader: object
    resident: list
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: torch.amp.GradScaler
    generator: torch.Generator

    @property
    def eps(self) -> float:
        return float(parse_eps(self.case.eps))

    def unit(self, x: torch.Tensor) -> torch.Tensor:
        return x.float().div(255).contiguous(memory_format=self.fmt)


def rig(case: BenchCase, device: str = "cpu", *, num_workers: int = 0, tf32: bool = True,
        model: nn.Module | None = None) -> Rig:  # fmt: skip
    """Build `case` on `device` (`model`: another module than the registry's backbone, e.g. a tiny one)."""
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
    if model is None:
        model = build_backbone(case.backbone, case.num_classes, pretrained=False, size=case.resolution)
    fmt = memory_format(config, runtime)
    model.to(device=dev, memory_format=fmt)
    n = case.batch_size * case.batches
    images = torch.randint(0, 256, (n, 3, case.resolution, case.resolution), dtype=torch.uint8)
    labels = torch.randint(0, case.num_classes, (n,))
    loader = make_loader(ImageTensorDataset(images, labels, None), case.batch_size, shuffle=True,
                         num_workers=num_workers, device=device)  # fmt: skip
    optimizer = torch.optim.AdamW(param_groups(model, config), config.lr, fused=dev.type == "cuda")
    return Rig(
        case, dev, config, tf32, model,
        CompiledModel(model, mode=runtime.compile_mode) if runtime.compile else model, fmt, loader,
        [(x.to(dev), y.to(dev)) for x, y in loader],  # the same batches, already on the device
        optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0),
        torch.amp.GradScaler(dev.type, enabled=case.precision == "fp16"), torch.Generator().manual_seed(0),
    )  # fmt: skip


def training(r: Rig) -> dict:
    """Clean and APGD training img/s through `train_one_epoch` after a warm-up, peak memory, data stall."""

    def epoch(batches, eps_value: float) -> float:
        eps_at = lambda step: eps_value  # noqa: E731
        amp = AUTOCAST[r.case.precision]
        args = (r.net, batches, r.optimizer, r.scheduler, r.scaler, eps_at, r.config, r.dev, amp, r.fmt)
        return train_one_epoch(*args, r.generator)["images_per_second"]

    if r.dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(r.dev)
    for eps_value in (0.0, r.eps):  # warm-up: compilation, autotuning, the loader's workers
        epoch(r.resident[:2], eps_value)
    clean = epoch(r.loader, 0.0)
    clean_resident = epoch(r.resident, 0.0)
    adversarial = epoch(r.loader, r.eps)
    peak_memory = torch.cuda.max_memory_allocated(r.dev) / 2**30 if r.dev.type == "cuda" else None
    return {"clean_img_s": clean, "apgd_img_s": adversarial, "ratio": clean / adversarial,
            "peak_memory_gib": peak_memory, "data_stall": max(0.0, 1 - clean / clean_resident)}  # fmt: skip


def flop_row(r: Rig, train: dict) -> dict:
    """FLOPs per step counted eagerly on one batch; with `training`'s speeds, the APGD step's TFLOP/s and
    MFU against the device's peak (None where the peak is unknown)."""
    x, y = r.unit(r.resident[0][0]), r.resident[0][1]
    clean, adversarial, uncounted = step_flops(r.model, x, y, r.case.attack_steps)
    limit = adversarial / clean
    tflops = adversarial / r.case.batch_size * train["apgd_img_s"] / 1e12
    peak = peak_tflops(r.dev, r.case.precision, r.tf32)
    return {"gradient_limit": limit, "overhead": train["ratio"] / limit, "tflops": tflops,
            "peak_tflops": peak, "mfu": tflops / peak if peak else None,
            "flops_uncounted": uncounted}  # fmt: skip


def compile_row(r: Rig) -> dict:
    """The compiled graphs and compile seconds so far (None for an eager case)."""
    stats = r.net.stats() if isinstance(r.net, CompiledModel) else {}
    return {"graphs": stats.get("graphs"), "compile_seconds": stats.get("compile_seconds")}


def eval_targets(r: Rig) -> list:
    """The resident batches labelled with the model's own predictions: every image is attacked, as for a
    trained model."""
    r.net.eval()
    with torch.no_grad():
        return [(x, r.net(r.unit(x)).argmax(1)) for x, _ in r.resident]


def evaluation(r: Rig, protocols: Iterable[str] = ("paper", "monotone"), targets: list | None = None) -> dict:
    """Evaluation img/s: clean forward passes, then `evaluate_budgets` at the case's ε under each protocol
    (`budget`: that ε alone). Leaves the model in eval mode."""
    targets = eval_targets(r) if targets is None else targets
    n = sum(len(y) for _, y in targets)
    forward = lambda: [r.net(r.unit(x)) for x, _ in targets]  # noqa: E731
    with torch.no_grad():
        forward()
        row = {"eval_clean_img_s": n / timed(forward, r.dev)}
    for protocol in protocols:
        spec = EvalProtocol(protocol, steps=r.case.eval_steps)
        row[f"eval_{protocol}_img_s"] = eval_throughput(r.net, targets, r.case.eps, spec, r.dev)
    return row


def measure(case: BenchCase, device: str = "cpu", *, num_workers: int = 0, tf32: bool = True,
            torchattacks: bool = True) -> dict:  # fmt: skip
    """One row of `rftbench bench`: training and evaluation throughput of `case` on `device`."""
    r = rig(case, device, num_workers=num_workers, tf32=tf32)
    train = training(r)
    row = {**asdict(case), "device": device_name(r.dev), "torch": torch.__version__, "tf32": tf32, **train}
    row |= flop_row(r, train)
    targets = eval_targets(r)
    row |= evaluation(r, ("paper", "monotone"), targets)
    # the attack as every attack runs (parameters frozen: no weight-gradient graph), and as release 0.3 ran it
    unfrozen, ours = (attack_throughput(r.net, targets, r.eps, case.eval_steps, r.dev, r.fmt, freeze=f)
                      for f in (False, True))  # fmt: skip
    row |= {"eval_attack_img_s": ours["ours"], "frozen_speedup": ours["ours"] / unfrozen["ours"]}
    if torchattacks:  # both eager, fp32, same ε and steps
        if r.net is not r.model:
            ours = attack_throughput(r.model, targets, r.eps, case.eval_steps, r.dev, r.fmt, True)
        theirs = torchattacks_throughput(r.model, targets, r.eps, case.eval_steps, r.dev, r.fmt)
        row |= {"torchattacks_img_s": theirs["img_s"], "robust_ours": ours["robust"],
                "speedup_vs_torchattacks": ours["ours"] / theirs["img_s"],
                "robust_torchattacks": theirs["robust"]}  # fmt: skip
    r.net.train()
    return row | compile_row(r)


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


def attack_throughput(net, batches, eps: float, steps: int, dev, fmt, freeze: bool) -> dict:
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
