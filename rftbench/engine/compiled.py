"""`torch.compile` for one run: a dynamic batch dimension, a fresh Dynamo cache, and what compiling cost.

    net = CompiledModel(model, mode=None)   # resets Dynamo: this run's backbone gets its own cache
    ...train and evaluate through `net`...
    net.stats()                            # {"graphs": 4, "compile_seconds": 71.3}

Every backbone sits behind the same `nn.Sequential(Normalize, backbone)` frame, so Dynamo's cache for it is
shared by every model a process compiles, and its recompile limit (8 per frame) would silently send a
worker's later backbones back to eager. One `CompiledModel` per run resets Dynamo first.

The run keeps its graphs few (at most four per backbone with the trainer's defaults): the training step
(parameters trainable), the attack at the training precision (parameters frozen, input gradient; also its
last, gradient-free iterate, whose forward runs with gradients enabled so it reuses the graph), the clean
validation pass (no gradient, parameters frozen), and the fp32 final evaluation's attack (its clean
predictions come from the attack's first forward). The batch dimension is dynamic from the first call, so
ragged batches and APGD's shrinking batches reuse one graph; a batch of one, which Dynamo would specialise,
is padded to two in eval mode (rows are independent there) and the extra row dropped.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class CompiledModel(nn.Module):
    """`torch.compile(model, mode=mode, backend=backend)` after a Dynamo reset, counting its graphs and the
    seconds spent compiling them."""

    def __init__(self, model: nn.Module, mode: str | None = None, backend: str = "inductor") -> None:
        super().__init__()
        torch._dynamo.reset()  # a fresh cache and recompile budget for this run's backbone
        self.compiled = torch.compile(model, mode=mode, backend=backend)
        self._start = (_unique_graphs(), _compile_seconds())

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[0] == 1 and not self.training:  # Dynamo specialises size 1: pad instead of recompiling
            return self.forward(torch.cat([x, x]))[:1]
        torch._dynamo.maybe_mark_dynamic(x, 0)
        return self.compiled(x)

    def stats(self) -> dict:
        """Graphs compiled for this model so far, and the process's compile seconds since it was made."""
        graphs, seconds = _unique_graphs() - self._start[0], _compile_seconds() - self._start[1]
        return {"graphs": graphs, "compile_seconds": round(seconds, 3)}


def _unique_graphs() -> int:
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


def _compile_seconds() -> float:
    """Seconds Dynamo has spent compiling frames (the backend's forward included) and lazily compiled
    backward graphs, in this process."""
    metrics = torch._dynamo.utils.compilation_time_metrics
    keys = [k for k in metrics if k == "_compile.compile_inner" or "bw_compiler" in k]
    return float(sum(sum(metrics[k]) for k in keys))
