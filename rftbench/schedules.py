"""Per-epoch ε schedules, one registry entry per setting of CONVENTIONS.md.

    spec = ScheduleSpec("sched", eps=4 / 255, t1=12, t2=37)
    spec.validate(epochs=50)
    spec.epsilon(epoch=20, epochs=50)  # (20 - 12) / (37 - 12) * 4/255

Epochs are 0-based: the paper's α(t) is applied to the 0-based index t. With granularity "step", hinge
and linear schedules see the fractional epoch t = epoch + step / steps_per_epoch instead.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

AUTO_PATIENCE = 5  # paper defaults for the `auto` baseline
AUTO_TOLERANCE = 0.02  # absolute difference of validation accuracy (a fraction)
GRANULARITIES = ("epoch", "step")


def hinge_alpha(t: float, t1: float, t2: float) -> float:
    """The paper's α(t): 0 before T1, linear from 0 at T1 to 1 at T2, 1 from T2 on."""
    if t < t1:
        return 0.0
    if t < t2:
        return (t - t1) / (t2 - t1)
    return 1.0


def auto_plateau_epoch(val_accuracies: Sequence[float], patience: int, tolerance: float) -> int | None:
    """The epoch at which validation accuracy has not improved on its best by more than `tolerance`
    for `patience` consecutive epochs (early-stopping rule); None while it is still improving."""
    best, waited = float("-inf"), 0
    for epoch, acc in enumerate(val_accuracies):
        if acc > best + tolerance:
            best, waited = acc, 0
        else:
            waited += 1
            if waited >= patience:
                return epoch
    return None


def _standard(spec: ScheduleSpec, t: float, epochs: int, seed: int, history: Sequence[float]) -> float:
    return 0.0


def _fix(spec: ScheduleSpec, t: float, epochs: int, seed: int, history: Sequence[float]) -> float:
    return spec.eps


def _hinge(spec: ScheduleSpec, t: float, epochs: int, seed: int, history: Sequence[float]) -> float:
    return hinge_alpha(t, spec.t1 or 0.0, spec.t2) * spec.eps


def _uniform(spec: ScheduleSpec, t: float, epochs: int, seed: int, history: Sequence[float]) -> float:
    # Drawn from (seed, epoch) alone, so a resumed run redraws exactly the same budgets.
    import numpy as np  # here: the CLI imports this module and needs no numpy to start

    return float(np.random.default_rng([seed, int(t)]).uniform(0.0, spec.eps))


def _auto(spec: ScheduleSpec, t: float, epochs: int, seed: int, history: Sequence[float]) -> float:
    epoch = int(t)
    plateau = auto_plateau_epoch(history[:epoch], spec.patience, spec.tolerance)
    if plateau is None or epoch <= plateau:
        return 0.0
    return spec.eps * min(1.0, (epoch - plateau) / max(epochs - 1 - plateau, 1))


ScheduleFn = Callable[["ScheduleSpec", float, int, int, Sequence[float]], float]
SCHEDULES: dict[str, ScheduleFn] = {
    "standard": _standard,
    "fix": _fix,
    "sched": _hinge,
    "linear": _hinge,
    "uniform": _uniform,
    "auto": _auto,
}


def get_schedule(name: str) -> ScheduleFn:
    try:
        return SCHEDULES[name]
    except KeyError:
        raise ValueError(f"unknown schedule {name!r}: valid ones are {', '.join(SCHEDULES)}") from None


@dataclass(frozen=True)
class ScheduleSpec:
    setting: str
    eps: float
    t1: float | None = None
    t2: float | None = None
    patience: int | None = None
    tolerance: float | None = None
    granularity: str = "epoch"

    def canonical(self) -> ScheduleSpec:
        """One schedule, one form (CONVENTIONS.md): ε_g = 0 is `standard`; sched with T1 = T2 = 0 is
        `fix`; sched with T1 = 0 is `linear`; `standard` has ε_g = 0; parameters a setting does not use
        are cleared."""
        get_schedule(self.setting)
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity {self.granularity!r} unknown: use one of {GRANULARITIES}")
        setting, t1, t2, eps = self.setting, self.t1, self.t2, self.eps
        if eps == 0 or setting == "standard":
            setting, eps = "standard", 0.0
        elif setting in ("sched", "linear"):
            if t2 is None or (setting == "sched" and t1 is None):
                raise ValueError(f"schedule {setting!r} needs {'T2' if setting == 'linear' else 'T1 and T2'}")
            if setting == "linear" and t1 not in (None, 0):
                raise ValueError(f"linear is the hinge with T1 = 0: for T1 = {t1:g} use sched")
            t1 = 0.0 if setting == "linear" else t1
            if t1 == 0 and t2 == 0:
                setting = "fix"
            elif t1 == 0:
                setting = "linear"
        hinge = setting in ("sched", "linear")
        auto = setting == "auto"
        return dataclasses.replace(
            self,
            setting=setting,
            eps=eps,
            t1=float(t1) if hinge else None,
            t2=float(t2) if hinge else None,
            patience=(AUTO_PATIENCE if self.patience is None else int(self.patience)) if auto else None,
            tolerance=(AUTO_TOLERANCE if self.tolerance is None else float(self.tolerance)) if auto else None,
            granularity=self.granularity if hinge else "epoch",
        )

    def validate(self, epochs: int) -> None:
        for name in ("eps", "t1", "t2", "tolerance"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value}")
        if self.eps < 0:
            raise ValueError(f"ε_g must be non-negative, got {self.eps}")
        if self.t1 is not None and self.t1 < 0:
            raise ValueError(f"T1 must be >= 0, got {self.t1}")
        if self.t1 is not None and self.t2 is not None and self.t1 > self.t2:
            raise ValueError(f"T1 ({self.t1:g}) > T2 ({self.t2:g}): the ramp must start before it ends")
        if self.t2 is not None and self.t2 > epochs:
            raise ValueError(f"T2 ({self.t2:g}) > epochs ({epochs}): {self._ramp_end(epochs)}")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"auto patience must be >= 1 epoch, got {self.patience}")
        if self.tolerance is not None and self.tolerance < 0:
            raise ValueError(f"auto tolerance must be >= 0, got {self.tolerance}")

    def notes(self, epochs: int) -> list[str]:
        """What a user should know before training with this schedule (valid, but perhaps not meant)."""
        if self.t2 is None or self.t2 <= epochs - 1 or self.granularity == "step" and self.t2 < epochs:
            return []
        return [f"{self.setting} T2 = {self.t2:g} with {epochs} epochs: {self._ramp_end(epochs)}"]

    def _ramp_end(self, epochs: int) -> str:
        """The one sentence every entry point prints when the ramp ends at or after the last epoch."""
        last = epochs - 1
        peak = hinge_alpha(last if self.granularity == "epoch" else epochs, self.t1 or 0.0, self.t2)
        where = f"peaks at {peak:.3g}·ε_g in epoch {last}"
        if self.granularity == "step":
            where = f"approaches {peak:.3g}·ε_g by the end of epoch {last}"
        return (
            f"epochs are 0-based, so the last is {last} and ε(t) never reaches ε_g (it {where}); "
            f"set T2 <= {last} to train at ε_g"
        )

    def epsilon(
        self,
        epoch: int,
        epochs: int,
        *,
        step: int = 0,
        steps_per_epoch: int = 1,
        seed: int = 0,
        val_accuracies: Sequence[float] = (),
    ) -> float:
        """ε for 0-based `epoch` (and `step` within it when granularity is "step").

        `val_accuracies` are the clean validation accuracies (fractions) of epochs 0 … epoch-1; only
        `auto` reads them."""
        t = float(epoch)
        if self.granularity == "step":
            t += step / steps_per_epoch
        return get_schedule(self.setting)(self, t, epochs, seed, val_accuracies)

    def values(self, epochs: int, *, seed: int = 0, val_accuracies: Sequence[float] = ()) -> list[float]:
        """ε at the start of every epoch 0 … epochs-1."""
        return [self.epsilon(e, epochs, seed=seed, val_accuracies=val_accuracies) for e in range(epochs)]
