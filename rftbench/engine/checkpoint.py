"""Boring, atomic checkpoints that load with `torch.load(weights_only=True)`.

    save_checkpoint("runs/abc/last.pt", {"epoch": 3, "model": model.state_dict(), "rng": rng_state()})
    state = load_checkpoint("runs/abc/last.pt")

Only tensors and plain Python values go in (CONVENTIONS.md): RNG states are tensors or lists. torch is
imported by the functions that need it.
"""

from __future__ import annotations

import random
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


def training_state(config, history: list[dict], model, optimizer, scheduler, scaler, device="cpu") -> dict:
    """A resumable checkpoint after the last epoch of `history`: the run's canonical config JSON, its
    metrics so far, and every state a resumed run needs. `model` must be the unwrapped module (no
    `_orig_mod.` prefixes from torch.compile)."""
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
    }


def resume_training(
    path: str | Path, config, model, optimizer, scheduler, scaler, device="cpu"
) -> list[dict]:
    """Restore every state from the checkpoint at `path` if there is one; returns its metrics history
    ([] for a fresh run). Refuses a checkpoint of another run: runs are compared by identity (run id), so a
    checkpoint written before a field was added still resumes."""
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
    return state["history"]
