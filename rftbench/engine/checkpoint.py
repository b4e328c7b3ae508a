"""Boring, atomic checkpoints that load with `torch.load(weights_only=True)`.

    save_checkpoint("runs/abc/last.pt", {"epoch": 3, "model": model.state_dict(), "rng": rng_state()})
    state = load_checkpoint("runs/abc/last.pt")

    with CheckpointWriter() as writer:   # the same write, off the training loop's critical path
        writer.submit("runs/abc/last.pt", training_state(...))

Only tensors and plain Python values go in (CONVENTIONS.md): RNG states are tensors or lists. torch is
imported by the functions that need it.
"""

from __future__ import annotations

import copy
import random
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from rftbench.core.files import atomic_write
from rftbench.errors import RftbenchError

if TYPE_CHECKING:
    import torch


class CheckpointError(RftbenchError, RuntimeError):
    pass


def rng_state(device: str | torch.device = "cpu") -> dict:
    """Every generator a run draws from. Of CUDA's, only the run's own device: a checkpoint must not depend
    on how many GPUs were visible when it was written."""
    import numpy as np
    import torch

    np_state = np.random.get_state()
    device = torch.device(device)
    return {
        "torch": torch.get_rng_state(),
        "cuda": [torch.cuda.get_rng_state(device)] if device.type == "cuda" else [],
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
    }


def set_rng_state(state: dict, device: str | torch.device = "cpu") -> None:
    """Restore `rng_state`'s generators; CUDA's goes to `device`, whichever index it has now. A release-0.1
    checkpoint holds every visible GPU's state: its first (where that release trained) is used."""
    import numpy as np
    import torch

    torch.set_rng_state(state["torch"])
    device = torch.device(device)
    if state["cuda"] and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"][0], device)
    random.setstate(state["python"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))


def save_checkpoint(path: str | Path, payload: dict) -> None:
    import torch

    atomic_write(path, lambda f: torch.save(payload, f))


def checkpoint_due(
    epoch: int, epochs: int, since_last_write_s: float, every: int = 1, minutes: float | None = None
) -> bool:
    """Whether to write the checkpoint after 0-based `epoch` of `epochs` (RuntimeOptions' policy): always
    after the last epoch; otherwise after every `every`-th epoch (epochs every-1, 2*every-1, ...), and
    with `minutes` there only once `since_last_write_s` (seconds since the last write, or since training
    started) reached that many minutes. `minutes` limits how often, so that fast epochs do not each pay a
    write: with the default `every` = 1, `minutes` = 10 writes at the first epoch end 10 minutes after the
    last write."""
    if epoch >= epochs - 1:
        return True
    if (epoch + 1) % every:
        return False
    return minutes is None or since_last_write_s >= minutes * 60


def host_snapshot(state, devices: set | None = None, memo: dict | None = None):
    """A copy of `state` (dicts, lists, tuples of tensors and plain values) whose tensors live in host
    memory of their own: state_dict tensors share storage with the live parameters, so the optimiser's next
    step would change a write still reading them. CPU tensors are cloned; CUDA tensors are copied into
    pinned memory without waiting, and `devices` collects their devices for the caller's one
    synchronisation. A tensor met twice is copied once (`memo`)."""
    import torch

    devices = set() if devices is None else devices
    memo = {} if memo is None else memo
    if isinstance(state, torch.Tensor):
        if id(state) not in memo:
            tensor = state.detach()
            if tensor.device.type == "cuda":
                host = torch.empty_like(tensor, device="cpu", pin_memory=True)
                memo[id(state)] = host.copy_(tensor, non_blocking=True)
                devices.add(tensor.device)
            else:  # a copy off another device (mps, xpu) is a copy of its own already
                memo[id(state)] = tensor.clone() if tensor.device.type == "cpu" else tensor.to("cpu")
        return memo[id(state)]
    if isinstance(state, dict):
        copied = type(state)((key, host_snapshot(value, devices, memo)) for key, value in state.items())
        if hasattr(state, "__dict__"):  # a state_dict's `_metadata` (module versions) travels with it
            copied.__dict__.update(copy.deepcopy(vars(state)))
        return copied
    if isinstance(state, list | tuple):
        return type(state)(host_snapshot(value, devices, memo) for value in state)
    return state  # plain values (numbers, strings, None) are immutable


class CheckpointWriter:
    """Checkpoints written by a background thread, so that the next epoch trains while the last one's state
    goes to disk. `submit` returns once the state is copied to host memory (what it writes is the state at
    that moment, whatever training does next); one write at a time. A failed write (a full disk) is raised
    by the next `submit`, `join`, or the end of the `with` block, as the exception it was.

        with CheckpointWriter() as writer:
            for epoch in ...:
                callback(metrics)                                # the metrics row first (CONVENTIONS.md)
                writer.submit(run_dir / "last.pt", training_state(...))

    `blocking_seconds` totals the time the caller spent (copying, waiting for a write in flight),
    `write_seconds` that of the writes themselves, `writes` their number. The thread is not a daemon: a
    process on its way out finishes the write in flight (atomic either way) instead of abandoning it."""

    def __init__(self) -> None:
        self.blocking_seconds = 0.0
        self.write_seconds = 0.0
        self.writes = 0
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, path: str | Path, state: dict) -> None:
        """Wait for the write in flight, copy `state` to host memory, and start writing it to `path`."""
        import torch

        self.join()
        start = time.perf_counter()
        devices: set = set()
        snapshot = host_snapshot(state, devices)
        for device in devices:  # one wait for all the copies, not one per tensor
            torch.cuda.synchronize(device)
        self._thread = threading.Thread(
            target=self._write, args=(path, snapshot), name="rftbench-checkpoint", daemon=False
        )
        self._thread.start()
        self.blocking_seconds += time.perf_counter() - start

    def _write(self, path: str | Path, snapshot: dict) -> None:
        start = time.perf_counter()
        try:
            save_checkpoint(path, snapshot)
            self.writes += 1
        except BaseException as exc:  # handed to the caller by `join`
            self._error = exc
        finally:
            self.write_seconds += time.perf_counter() - start

    def join(self) -> None:
        """Wait for the write in flight, if any; raise the exception it failed with."""
        if self._thread is not None:
            start = time.perf_counter()
            self._thread.join()
            self._thread = None
            self.blocking_seconds += time.perf_counter() - start
        error, self._error = self._error, None
        if error is not None:
            raise error

    def __enter__(self) -> CheckpointWriter:
        return self

    def __exit__(self, kind, exc, traceback) -> None:
        if exc is None:
            self.join()
            return
        try:  # the body's exception is the one to raise; a failed write is noted on it
            self.join()
        except BaseException as write_error:
            exc.add_note(
                f"the checkpoint write in flight failed too: {type(write_error).__name__}: {write_error}"
            )


def load_checkpoint(path: str | Path) -> dict:
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # truncated zip, pickled objects, bit rot: one clear line, not a traceback
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({type(exc).__name__}: {str(exc).splitlines()[0][:120]}); "
            f"delete it to rerun that run from scratch"
        ) from exc


def training_state(config, history: list[dict], model, optimizer, scheduler, scaler, device="cpu",
                   kept: dict | None = None) -> dict:  # fmt: skip
    """A resumable checkpoint after the last epoch of `history`: the run's canonical config JSON, its
    metrics so far, and every state a resumed run needs (`kept`: the weights its policy keeps,
    `engine.policy.KeptWeights.state`). `model` must be the unwrapped module (no `_orig_mod.` prefixes
    from torch.compile)."""
    return {
        "run_id": config.run_id,
        "config": config.canonical_json(),
        "epoch": history[-1]["epoch"],
        "history": history,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": rng_state(device),
        **({"kept": kept} if kept else {}),
    }


def resume_training(
    path: str | Path, config, model, optimizer, scheduler, scaler, device="cpu", kept=None
) -> list[dict]:
    """Restore every state from the checkpoint at `path` if there is one (`kept`: a KeptWeights, given its
    state); returns its metrics history ([] for a fresh run). Refuses a checkpoint of another run: runs are
    compared by identity (run id), so a checkpoint written before a field was added still resumes."""
    if not Path(path).exists():
        return []
    state = load_checkpoint(path)
    if type(config).from_json(state["config"]).run_id != config.run_id:
        raise ValueError(
            f"{path} holds run {state['run_id']}, not run {config.run_id}: use another run directory"
        )
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"], device)
    if kept is not None:
        kept.load(state.get("kept", {}))
    return state["history"]
