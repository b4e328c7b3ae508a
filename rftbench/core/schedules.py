"""Per-epoch ε schedules, one registry entry per setting of CONVENTIONS.md.

    spec = ScheduleSpec("sched", eps=4 / 255, t1=12, t2=37)
    spec.validate(epochs=50)
    spec.epsilon(epoch=20, epochs=50)  # (20 - 12) / (37 - 12) * 4/255
    ScheduleSpec("piecewise", 4 / 255, points=((0, 0), (5, 0.5), (30, 1))).canonical()

Epochs are 0-based: the paper's α(t) is applied to the 0-based index t. With granularity "step", hinge,
linear and piecewise schedules see the fractional epoch t = epoch + step / steps_per_epoch instead.

`piecewise` is any piecewise-linear α(t) through `points` = ((epoch, fraction of ε_g), …), constant
before the first point and after the last, with a jump where two points share an epoch (the later one
holds from that epoch on, as the hinge's T1 = T2). The hinge, linear warm-up, fix and standard are the
special cases ((T1, 0), (T2, 1)), ((0, 0), (T2, 1)), ((0, 1),) and ((0, 0),): `canonical()` turns them into
those settings, so one schedule has one run id whichever way it is written.

`adaptive` needs no T1/T2 and has no per-task constant; it reads only the clean validation accuracies
a_0 … a_{e-1} of the epochs before e (a run's stored history, so a resumed run replays it exactly):
- T1 is found, not set: standard fine-tuning (α = 0) until the first epoch k >= 1 whose gain a_k - a_{k-1}
  is below ADAPT_GAIN (10%) of a_k, where the fast part of task adaptation is over; at the latest
  ADAPT_BY (25%) of training, the paper's T1 = 12 of 50. A relative gain needs no chance level, so it
  reads the same on 10 classes as on 257; training at ε = 0 adapts quickly, so easy tasks start early and
  hard ones wait as long as the paper's hinge. α(T1) = 0, as the hinge's.
- The pace follows the model: each later epoch raises α by 1 / round(RAMP · epochs) (RAMP = 25%: ε_g in a
  quarter of training) while the last clean validation accuracy is within DROP (5%) of its best so far,
  and by SLOW (half) of that otherwise, which is the paper's 25-of-50-epoch ramp: a model that keeps its
  clean accuracy ramps twice as fast as the hinge, one that loses it ramps as the hinge does.
- ε_g is reached by RAMP_BY (75%) of training, the paper's T2 = 37 of 50, whatever happened: each step is
  at least what is left of the ramp divided by the epochs left, so the last quarter trains at ε_g.
So a task that adapts late and keeps losing clean accuracy gets the paper's hinge, T1 = 12 and the ramp
done by epoch 36-37 of 50. Its constants are that calibrated hinge read as fractions of training plus two
feedback constants (DROP, SLOW); none depends on the backbone, the dataset or the number of classes.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

AUTO_PATIENCE = 5  # paper defaults for the `auto` baseline
AUTO_TOLERANCE = 0.02  # absolute difference of validation accuracy (a fraction)
Granularity = Literal["epoch", "step"]  # "step": hinge, linear and piecewise per optimisation step
GRANULARITIES = typing.get_args(Granularity)
# `adaptive` (module docstring): the same for every backbone and dataset
ADAPT_GAIN = 0.1  # adapted once one epoch raises clean validation accuracy by less than 10% of itself
ADAPT_BY = 0.25  # ... or at 25% of training at the latest (the paper's T1 = 12 of 50 epochs)
RAMP = 0.25  # nominal pace: 0 to ε_g in a quarter of training (twice the paper's 25 of 50 epochs)
DROP = 0.05  # slow down after an epoch whose clean validation accuracy is > 5% below its best so far
SLOW = 0.5  # ... to half the nominal pace: the paper's ramp
RAMP_BY = 0.75  # ε_g reached by 75% of training whatever happened (the paper's T2 = 37 of 50)
Points = tuple[tuple[float, float], ...]


def hinge_alpha(t: float, t1: float, t2: float) -> float:
    """The paper's α(t): 0 before T1, linear from 0 at T1 to 1 at T2, 1 from T2 on."""
    if t < t1:
        return 0.0
    if t < t2:
        return (t - t1) / (t2 - t1)
    return 1.0


def piecewise_alpha(t: float, points: Points) -> float:
    """α(t) through `points` (epoch, fraction), sorted by epoch: linear between points, constant outside
    them, right-continuous at a jump (two points at one epoch)."""
    last = next((i for i in range(len(points) - 1, -1, -1) if points[i][0] <= t), None)
    if last is None:
        return float(points[0][1])
    if last == len(points) - 1:
        return float(points[-1][1])
    (e0, f0), (e1, f1) = points[last], points[last + 1]
    return f0 + (f1 - f0) * (t - e0) / (e1 - e0)


def simplify_points(points) -> Points:
    """The shortest list of points with the same α(t): repeats, flat ends and interior points on a straight
    line dropped (a jump's two points stay)."""
    out: list[tuple[float, float]] = []
    for e, f in ((float(e), float(f)) for e, f in points):
        if out and out[-1] == (e, f):
            continue
        if len(out) >= 2 and _on_segment(out[-2], out[-1], (e, f)):
            out.pop()
        out.append((e, f))
    while len(out) >= 2 and math.isclose(out[0][1], out[1][1], abs_tol=1e-12):  # flat before: constant
        out.pop(0)
    while len(out) >= 2 and math.isclose(out[-1][1], out[-2][1], abs_tol=1e-12):  # flat after: constant
        out.pop()
    return tuple(out)


def _on_segment(a, b, c) -> bool:
    """b lies on the straight line from a to c, strictly between them in epoch (not a jump)."""
    if not a[0] < b[0] < c[0]:
        return False
    return math.isclose(a[1] + (c[1] - a[1]) * (b[0] - a[0]) / (c[0] - a[0]), b[1], abs_tol=1e-12)


def adaptive_alphas(val_accuracies: Sequence[float], epochs: int) -> list[float]:
    """α of `adaptive` (module docstring) for epochs 0 … len(val_accuracies), where val_accuracies[e] is
    the clean validation accuracy measured after epoch e: the last value is the next epoch's α."""
    start_by = max(0, min(max(1, math.floor(ADAPT_BY * epochs)), epochs - 2))  # α(T1) = 0: room for one step
    deadline = max(start_by + 1, min(epochs - 1, math.floor(RAMP_BY * epochs)))
    pace = 1 / max(1, round(RAMP * epochs))
    alphas, start = [0.0], None
    for e in range(1, min(len(val_accuracies), epochs - 1) + 1):
        a = val_accuracies[:e]  # measured after epochs 0 … e-1
        k = e - 1  # the newest measured epoch: the ramp's T1 if adaptation shows there
        if start is None and (k >= start_by or (k >= 1 and 0 < a[k] and a[k] - a[k - 1] < ADAPT_GAIN * a[k])):
            start = k
        if start is None:
            alphas.append(0.0)
            continue
        step = pace * (SLOW if a[k] < (1 - DROP) * max(a) else 1.0)
        if e <= deadline:
            step = max(step, (1 - alphas[-1]) / (deadline - e + 1))
        alphas.append(min(1.0, alphas[-1] + step))
    return alphas


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


def _piecewise(spec: ScheduleSpec, t: float, epochs: int, seed: int, history: Sequence[float]) -> float:
    return piecewise_alpha(t, spec.points) * spec.eps


def _adaptive(spec: ScheduleSpec, t: float, epochs: int, seed: int, history: Sequence[float]) -> float:
    epoch = int(t)
    if len(history) < min(epoch, epochs - 1):
        raise ValueError(
            f"adaptive needs the validation accuracy of epochs 0-{epoch - 1}, got {len(history)}"
        )
    return spec.eps * adaptive_alphas(history[:epoch], epochs)[min(epoch, epochs - 1)]


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


def check_points(points) -> Points:
    """Piecewise points as ((epoch, fraction), …), or one line saying what is wrong with them."""
    example = "e.g. [[0, 0], [5, 0.5], [30, 1]]"
    try:
        pairs = tuple((float(e), float(f)) for e, f in points)
    except (TypeError, ValueError):
        raise ValueError(f"piecewise points must be [epoch, fraction of ε_g] pairs, {example}") from None
    if not pairs:
        raise ValueError(f"the piecewise schedule needs points [[epoch, fraction of ε_g], …], {example}")
    for e, f in pairs:
        if not (math.isfinite(e) and math.isfinite(f)) or e < 0 or not 0 <= f <= 1:
            raise ValueError(
                f"piecewise point [{e:g}, {f:g}]: epochs are >= 0 and fractions of ε_g in [0, 1], {example}"
            )
    epochs = [e for e, _ in pairs]
    if epochs != sorted(epochs):
        raise ValueError(f"piecewise points must be in order of epoch, {example}")
    if any(epochs[i] == epochs[i + 2] for i in range(len(epochs) - 2)):
        raise ValueError("piecewise points: at most two at one epoch (a jump from the first to the second)")
    return pairs


def points_text(points: Points) -> str:
    """`0:0,5:0.5,30:1`: how tables, `rftbench schedule --points` and `rftbench run --points` write them."""
    return ",".join(f"{e:g}:{f:g}" for e, f in points)


def parse_points(text: str) -> Points:
    """The inverse of `points_text`, for command-line flags."""
    try:
        return tuple(tuple(float(v) for v in item.split(":")) for item in text.split(","))  # type: ignore
    except ValueError:
        raise ValueError(f"--points {text!r}: write EPOCH:FRACTION pairs, e.g. 0:0,5:0.5,30:1") from None


ScheduleFn = Callable[["ScheduleSpec", float, int, int, Sequence[float]], float]
SCHEDULES: dict[str, ScheduleFn] = {
    "standard": _standard,
    "fix": _fix,
    "sched": _hinge,
    "linear": _hinge,
    "piecewise": _piecewise,
    "uniform": _uniform,
    "auto": _auto,
    "adaptive": _adaptive,
}
HISTORY_SETTINGS = ("auto", "adaptive")  # ε(t) depends on the run's validation history


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
    granularity: Granularity = "epoch"
    points: Points = ()  # piecewise only: ((epoch, fraction of ε_g), …)

    def canonical(self) -> ScheduleSpec:
        """One schedule, one form (CONVENTIONS.md): ε_g = 0 is `standard`; sched with T1 = T2 = 0 is
        `fix`; sched with T1 = 0 is `linear`; piecewise points that draw one of those are that setting;
        `standard` has ε_g = 0; parameters a setting does not use are cleared."""
        get_schedule(self.setting)
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity {self.granularity!r} unknown: use one of {GRANULARITIES}")
        setting, t1, t2, eps, points = self.setting, self.t1, self.t2, self.eps, ()
        if setting == "piecewise":
            points = simplify_points(check_points(self.points))
            if all(f == 0 for _, f in points):
                setting = "standard"
            elif len(points) == 1 and points[0][1] == 1:
                setting = "fix"
            elif len(points) == 2 and (points[0][1], points[1][1]) == (0, 1):
                setting, t1, t2 = "sched", points[0][0], points[1][0]
        elif self.points:
            raise ValueError(f"points are for the piecewise schedule, not {setting!r}")
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
            granularity=self.granularity if hinge or setting == "piecewise" else "epoch",
            points=points if setting == "piecewise" else (),
        )

    @property
    def label(self) -> str:
        """The setting as tables show it: `piecewise 0:0,5:0.5,30:1` names its points."""
        return f"piecewise {points_text(self.points)}" if self.setting == "piecewise" else self.setting

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
        if self.points and self.points[-1][0] > epochs:
            raise ValueError(
                f"piecewise point at epoch {self.points[-1][0]:g} > epochs ({epochs}): the last epoch is "
                f"{epochs - 1} (0-based); move the point to an epoch <= {epochs}"
            )
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
