"""What makes the host wait for an accelerator, found while code runs, on any device.

    with UnpinnedCopies() as audit:
        train_one_epoch(...)
    audit.found   # ["rftbench/engine/trainer.py:142 Tensor.to", ...]: where each such copy was asked for

- `UnpinnedCopies`: a copy from pageable (unpinned) host memory to an accelerator is synchronous whatever
  `non_blocking` says, and CUDA's sync debug mode does not see it. `benchmarks/sync_audit.py` runs it over
  the trainer's epoch on a GPU.
- `SyncingOps`: the operators whose result size or value the host must read (a scalar's value, `nonzero`,
  indexing by a boolean mask): on a GPU each waits for the device. Seen on the CPU too, so a test can hold
  the hot loop to none.
"""

from __future__ import annotations

import traceback

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
SYNCING = {aten._local_scalar_dense, aten.nonzero, aten.masked_select, aten.unique_consecutive, aten._unique2}


def _target(func, args, kwargs) -> tuple[Tensor, torch.device] | None:
    """The host tensor and the device of a copy that `func(*args, **kwargs)` asks for; None if none."""
    if func is Tensor.to:
        device = torch._C._nn._parse_to(*args[1:], **kwargs)[0]
        return (args[0], device) if device is not None else None
    if func is Tensor.cuda:
        return args[0], torch.device("cuda")
    if func is Tensor.copy_:
        return args[1], args[0].device
    return None


class UnpinnedCopies(TorchFunctionMode):
    """Records, with the caller's file and line, every copy from unpinned host memory to another device."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        copy = _target(func, args, kwargs)
        if copy is not None:
            source, device = copy
            if source.device.type == "cpu" and device.type != "cpu" and not source.is_pinned():
                caller = next(
                    (f for f in reversed(traceback.extract_stack()[:-1]) if "/torch/" not in f.filename), None
                )
                where = f"{caller.filename}:{caller.lineno}" if caller else "?"
                self.found.append(f"{where} {func.__qualname__}")
        return func(*args, **kwargs)


class SyncingOps(TorchDispatchMode):
    """Records every operator inside that reads a device value back to the host (`SYNCING`, and indexing
    by a boolean mask, which runs `nonzero`)."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        masked = func is aten.index.Tensor and any(i is not None and i.dtype == torch.bool for i in args[1])
        if func.overloadpacket in SYNCING or masked:
            self.found.append(str(func))
        return func(*args, **(kwargs or {}))
