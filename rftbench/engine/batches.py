"""The batch machinery every evaluation shares: per-sample flags as text, resumable batches, accuracies.

Every evaluation goes batch by batch over a loader in a fixed order, and each batch yields per-sample
robust flags: a text of '0'/'1' per sample for every ε of the grid ("flags"), and for AutoAttack, the flags
after each of its attacks in turn ("stages", cumulative: robust to every attack so far). The accuracies
are their means. With a `BatchLog` (the results database keeps one per run and evaluation), a batch already
logged is read back instead of measured, and each new one is logged as soon as it is measured: a killed
evaluation continues at its first missing batch and ends with the numbers an uninterrupted one gives (every
batch's randomness is drawn from (seed, batch index), never from what ran before).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

import torch
from torch import Tensor, nn

from rftbench.core.config import PRECISIONS
from rftbench.data.loading import to_device, to_unit_float
from rftbench.errors import RftbenchError

AUTOCAST = dict(zip(PRECISIONS, (None, torch.bfloat16, torch.float16)))  # precision -> autocast dtype


class BatchLog(Protocol):
    """Where an evaluation keeps its per-batch results (`results.store.EvalLog`): read back on resume."""

    key: str  # which evaluation of which weights (`evaluation_key`), as stored with its rows

    def done(self) -> dict[int, dict]: ...

    def save(self, index: int, payload: dict) -> None: ...


class EvaluationError(RftbenchError, RuntimeError):
    pass


def bits(flags: Tensor) -> str:
    """Per-sample booleans as a text of '0' and '1' (one host copy)."""
    return (flags.to(torch.uint8).cpu().numpy() + ord("0")).tobytes().decode()


def rows_bits(flags: Tensor) -> list[str]:
    """`bits` of each row of a 2-D tensor of flags, with one host copy for all of them."""
    table = (flags.to(torch.uint8).cpu().numpy() + ord("0")).tobytes().decode()
    width = flags.shape[1]
    return [table[i * width : (i + 1) * width] for i in range(flags.shape[0])]


def accuracies(payloads: list[dict], texts: Sequence[str]) -> list[float]:
    """The share of robust samples over all batches for each of `texts` (ε, or attack), from their flags."""
    n = max(sum(p["n"] for p in payloads), 1)
    return [sum(p["flags"][t].count("1") for p in payloads) / n for t in texts]


def run_batches(
    batches: Iterable[tuple[Tensor, Tensor]],
    measure: Callable[[int, Tensor, Tensor], dict],
    device: str | torch.device,
    log: BatchLog | None,
) -> list[dict]:
    """`measure(index, x, y)` on every batch not in `log`, each result logged at once; the logged ones read
    back. A logged batch of another size means the test split changed since: refused."""
    done = log.done() if log is not None else {}
    payloads, first = [], 0
    for index, (x, y) in enumerate(batches):
        if index in done:
            payload = done[index]
            if payload["n"] != len(y) or payload["start"] != first:
                raise EvaluationError(
                    f"batch {index} was logged with {payload['n']} samples from sample {payload['start']}, "
                    f"the test split now gives {len(y)} from {first}: the data changed since that evaluation "
                    f"began; restore it, or evaluate under another protocol"
                )
        else:
            start = time.perf_counter()
            x, y = to_unit_float(to_device(x, device)), to_device(y, device)
            payload = measure(index, x, y) | {"n": len(y), "start": first}
            payload["seconds"] = time.perf_counter() - start
            if log is not None:
                log.save(index, payload)
        payloads.append(payload)
        first += len(y)
    return payloads


def predictor(model: nn.Module, autocast_dtype: torch.dtype | None) -> Callable[[Tensor], Tensor]:
    @torch.no_grad()
    def predict(inputs: Tensor) -> Tensor:
        with torch.autocast(inputs.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            return model(inputs).argmax(1)

    return predict
