"""Host syncs in the trainer's hot loop on a GPU: CUDA's sync debug mode over one training epoch of the
real `train_one_epoch` (device-side augmentation, APGD, fused AdamW), after a warm-up epoch. The hot loop
should have one: the epoch's metrics, read once at its end. Copies from unpaged host memory, which make the
host wait without the sync debug mode seeing them, are counted over the same epoch by
`rftbench.engine.audit.UnpinnedCopies`: there should be none.

    python benchmarks/sync_audit.py --device cuda --backbone R50 --precision bf16

Throughput, MFU and grid hours are `rftbench bench`'s (release 0.1 measured them with
benchmarks/gpu_step.py, whose table the README keeps as the "before" numbers).
"""

from __future__ import annotations

import argparse
import functools
import warnings

import torch

from rftbench.core.config import RunConfig, RuntimeOptions
from rftbench.data.loading import ImageTensorDataset, make_loader
from rftbench.engine.audit import UnpinnedCopies
from rftbench.engine.batches import AUTOCAST
from rftbench.engine.trainer import (
    configure_device,
    memory_format,
    param_groups,
    train_one_epoch,
    warmup_cosine,
)
from rftbench.models.build import build_backbone


def sync_audit(
    device: str, backbone: str, precision: str, batch_size: int, resolution: int
) -> tuple[list, list[str]]:
    config = RunConfig(backbone=backbone, dataset="synthetic", eps="4/255", epochs=1, batch_size=batch_size,
                       resolution=resolution, train_attack_steps=3, precision=precision,
                       augmentation="device")  # fmt: skip
    runtime, dev = RuntimeOptions(device=device), torch.device(device)
    configure_device(dev, runtime)
    fmt = memory_format(config, runtime)
    model = build_backbone(backbone, 10, pretrained=False, size=resolution).to(dev, memory_format=fmt)
    images = torch.randint(0, 255, (4 * batch_size, 3, resolution, resolution), dtype=torch.uint8)
    data = ImageTensorDataset(images, torch.randint(0, 10, (4 * batch_size,)), None)
    loader = make_loader(data, batch_size, shuffle=True, num_workers=2, device=device)
    optimizer = torch.optim.AdamW(param_groups(model, config), lr=1e-4, fused=dev.type == "cuda")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(1, 4, 0.0))
    scaler = torch.amp.GradScaler(dev.type, enabled=precision == "fp16")
    eps_at = functools.partial(config.schedule.epsilon, 0, 1, steps_per_epoch=len(loader))
    augment, amp = torch.Generator().manual_seed(0), AUTOCAST[precision]
    args = (model, loader, optimizer, scheduler, scaler, eps_at, config, dev, amp, fmt, augment)
    train_one_epoch(*args)  # warm-up: cuDNN autotuning and lazy initialisations may sync once
    torch.cuda.set_sync_debug_mode("warn")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train_one_epoch(*args)
    torch.cuda.set_sync_debug_mode("default")
    with UnpinnedCopies() as copies:  # an epoch of its own: its frame would own every sync warning
        train_one_epoch(*args)
    return [w for w in caught if "synchroniz" in str(w.message)], copies.found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--backbone", default="R50")
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--resolution", type=int, default=64)
    args = parser.parse_args()
    syncs, unpinned = sync_audit(args.device, args.backbone, args.precision, args.batch_size, args.resolution)
    print(f"host syncs in one training epoch (4 steps): {len(syncs)}")
    for w in syncs[:5]:
        print(f"  {w.filename}:{w.lineno}: {str(w.message)[:100]}")
    print(f"copies from unpinned host memory in that epoch: {len(unpinned)}")
    for where in sorted(set(unpinned))[:5]:
        print(f"  {where} ({unpinned.count(where)}x)")


if __name__ == "__main__":
    main()
