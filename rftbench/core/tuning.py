"""What a hyperparameter search is, as plain values: the knobs and their ranges, what is tuned on, the
sampler, the pruner and the budget; which configuration a study tunes (its key), and which trial is best.

    search = Search(space=(Knob("lr", 1e-5, 1e-1), Knob("weight_decay", 1e-5, 1e-1)))
    key = study_key(template, search)          # the study of one configuration (backbone, dataset, ε_g, …)
    best = best_trial([(0, "completed", 0.41, {"lr": 3e-4}), (1, "pruned", 0.05, {"lr": 0.08})])

The paper tuned the learning rate and weight decay of every configuration, log-uniform in [1e-5, 1e-1], on
`fix`'s clean validation accuracy, with ASHA (PROTOCOL.md); `Search()` is that search. A study's key hashes
the configuration it tunes (the run config with the tuned knobs at their defaults, the training seed at 0
and the tuned setting's schedule) and everything that decides which trials it runs except its budget, so a
second `rftbench tune` with a larger budget adds trials to the same study, and a changed range or pruner is
another study. Budgets are totals per configuration: `trials` trials in all, and no new trial once `minutes`
have passed since the study's first one began.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import typing
from dataclasses import dataclass
from typing import Literal

from rftbench.core.config import RunConfig

Sampler = Literal["random", "tpe"]  # random: the paper's Ray Tune default; tpe: Optuna's default
Pruner = Literal["asha", "hyperband", "none"]
Objective = Literal["val_acc"]  # the last epoch's clean validation accuracy (the paper's)
SAMPLERS, PRUNERS = typing.get_args(Sampler), typing.get_args(Pruner)
# RunConfig's real-valued optimisation fields: what a search may tune (and a grid may set to "tuned")
TUNABLE = ("lr", "weight_decay", "warmup_epochs", "min_lr", "head_lr_scale")
TUNED = "tuned"  # a grid's value for a knob it takes from the study of its configuration


class SearchError(ValueError):
    """A search that cannot run (an empty space, a range backwards, an unknown knob, a budget of 0)."""


@dataclass(frozen=True)
class Knob:
    """One knob's range; `log`: sampled uniformly in log space (both bounds > 0)."""

    name: str
    low: float
    high: float
    log: bool = True

    def __post_init__(self) -> None:
        if self.name not in TUNABLE:
            raise SearchError(f"unknown knob {self.name!r}; tunable ones: {', '.join(TUNABLE)}")
        if not (math.isfinite(self.low) and math.isfinite(self.high) and self.low < self.high):
            raise SearchError(
                f"{self.name}: low ({self.low:g}) must be below high ({self.high:g}); swap or widen them"
            )
        if self.log and self.low <= 0:
            raise SearchError(
                f"{self.name}: a log range needs low > 0 (got {self.low:g}); or set log = false"
            )


PAPER_SPACE = (Knob("lr", 1e-5, 1e-1), Knob("weight_decay", 1e-5, 1e-1))


@dataclass(frozen=True)
class Search:
    """A search per configuration of a grid (the `[tune]` table); the defaults are the paper's."""

    space: tuple[Knob, ...] = PAPER_SPACE
    setting: str = "fix"  # the setting trials train (sched reuses fix's values, as the paper did)
    objective: Objective = "val_acc"
    sampler: Sampler = "random"
    # the trials' training seed, and the sampler's (trial k's draw depends on (seed, k) alone for `random`):
    # a grid's runs of other seeds confirm the tuned values on seeds the search never trained
    seed: int = 0
    pruner: Pruner = "asha"
    min_epochs: int = 1  # ASHA's grace period: the first rung is after this many epochs
    reduction_factor: int = 3  # ASHA keeps the best 1/reduction_factor of each rung
    trials: int | None = 16  # per configuration, in all
    minutes: float | None = None  # per configuration: no new trial after this long since its first

    def __post_init__(self) -> None:
        if not self.space:
            raise SearchError("the search space is empty; name at least one knob, e.g. [tune.space.lr]")
        names = [knob.name for knob in self.space]
        if len(set(names)) != len(names):
            raise SearchError(f"a knob is named twice in the search space: {', '.join(names)}")
        if self.trials is None and self.minutes is None:
            raise SearchError("a search needs a budget: set trials or minutes (or both)")
        if self.trials is not None and self.trials < 1:
            raise SearchError(f"a budget of {self.trials} trials runs nothing; give trials >= 1")
        if self.minutes is not None and not (math.isfinite(self.minutes) and self.minutes > 0):
            raise SearchError(f"a budget of {self.minutes:g} minutes runs nothing; give minutes > 0")
        if self.min_epochs < 1 or self.reduction_factor < 2:
            raise SearchError("ASHA needs min_epochs >= 1 and reduction_factor >= 2")
        if self.sampler not in SAMPLERS or self.pruner not in PRUNERS:
            raise SearchError(f"sampler: one of {', '.join(SAMPLERS)}; pruner: one of {', '.join(PRUNERS)}")

    @property
    def knobs(self) -> tuple[str, ...]:
        return tuple(knob.name for knob in self.space)

    def definition(self) -> dict:
        """What decides which trials run: everything but the budget (part of a study's key)."""
        out = dataclasses.asdict(self)
        for budget in ("trials", "minutes"):
            out.pop(budget)
        out["space"] = [dataclasses.asdict(knob) for knob in self.space]
        return out

    @classmethod
    def from_definition(cls, data: dict, **budget) -> Search:
        space = tuple(Knob(**knob) for knob in data["space"])
        return cls(**(data | {"space": space} | budget))


def template(config: RunConfig, search: Search) -> RunConfig:
    """The configuration a study tunes: `config` (a run of the search's setting at its ε_g) with the tuned
    knobs at their defaults and seed 0, so that one study serves every seed."""
    defaults = {f.name: f.default for f in dataclasses.fields(RunConfig)}
    return dataclasses.replace(config, seed=0, **{knob: defaults[knob] for knob in search.knobs})


def study_key(config: RunConfig, search: Search) -> str:
    """The study that tunes `config` under `search`: 16 hex digits of its template's id and definition."""
    text = json.dumps(
        {"template": template(config, search).identity(), "search": search.definition()}, sort_keys=True
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def best_trial(trials: list[tuple[int, str, float | None, dict]]) -> tuple[int, float, dict] | None:
    """The best of (number, state, value, params) rows: the completed trial of the highest objective,
    the lowest number among equals; pruned, failed and running trials never are. None if none completed."""
    done = [(n, v, p) for n, state, v, p in trials if state == "completed" and v is not None]
    return min(done, key=lambda t: (-t[1], t[0])) if done else None
