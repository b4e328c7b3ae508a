"""One frozen, hashable run config: its canonical JSON is stored in the database and every checkpoint.

    cfg = RunConfig(backbone="SWIN", dataset="Cars", setting="sched", eps="4/255", t1=12, t2=37)
    cfg.run_id  # sha256 of its identity (see below), 16 hex digits

Everything that changes a run's result is a field here and is hashed (CONVENTIONS.md, "Identity and
storage"); paths, device, worker counts and torch.compile live in `RuntimeOptions` and are not hashed.

The id must survive the next release, because databases and checkpoints outlive the code that wrote them:
- the fields of `IDENTITY_V1` (every field of release 0.1) are hashed always, at any value, under those
  names, exactly as that release hashed them;
- a field added later is hashed only when it differs from its default, so adding one keeps every stored
  id (its default must compute what earlier releases computed);
- removing or renaming a field is an explicit migration: `RETIRED` pins a removed field to the value every
  stored config had, `RENAMED` maps an old key to its new field. A stored config with a key neither knows is
  refused with one line instead of being read under another meaning.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import typing
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

import pydantic

from rftbench.core import schedules, variants
from rftbench.errors import RftbenchError

# Choices as Literal types, so the experiments file's schema (rftbench.experiments.schema) offers them
Precision = Literal["fp32", "bf16", "fp16"]
Norm = Literal["Linf", "L2"]  # threat models: ℓ∞ (the paper's, the default) and ℓ2
Protocol = Literal["paper", "monotone"]  # per-ε evaluation protocols (rftbench.core.metrics)
AttackMode = Literal["eval", "train"]
Augmentation = Literal["loader", "device"]  # where the training augmentation runs (rftbench.data.loading)
# The registry's seeded rules, or the paper's split lists (rftbench.data.registry)
SplitSource = Literal["rules", "paper"]
# The training loss (rftbench.attacks.objectives): cross-entropy AT, TRADES, MART
RobustObjective = Literal["at", "trades", "mart"]
# Which parameters train (rftbench.models.finetune): all, the head, the head then all, biases, LoRA adapters
Finetune = Literal["full", "linear", "lp_ft", "bitfit", "lora"]
# Which weights a run scores (rftbench.engine.policy): the last epoch's, the best epoch's by a validation
# metric (clean, adv or E.adv accuracy on the adversarial-validation subset), an exponential moving average
WeightsPolicy, BestMetric = Literal["last", "best", "ema"], Literal["clean", "adv", "eadv"]
PRECISIONS, NORMS, PROTOCOLS = typing.get_args(Precision), typing.get_args(Norm), typing.get_args(Protocol)
ATTACK_MODES, AUGMENTATIONS = typing.get_args(AttackMode), typing.get_args(Augmentation)
SPLIT_SOURCES = typing.get_args(SplitSource)
OBJECTIVES, FINETUNES = typing.get_args(RobustObjective), typing.get_args(Finetune)
WEIGHTS_POLICIES, BEST_METRICS = typing.get_args(WeightsPolicy), typing.get_args(BestMetric)
# The fields of a run's variant (`RunConfig.variant`): its objective and fine-tuning mode (what it trains),
# and its weights policy (which copy of the weights it keeps: the training is the same)
TRAINED_VARIANT_FIELDS = ("objective", "beta", "finetune", "lp_ft_epochs", "lora_r", "lora_alpha")
VARIANT_FIELDS = (*TRAINED_VARIANT_FIELDS, "weights_policy", "best_metric", "ema_decay")
TABLES = ("main", "averages", "ttest", "delay", "effect", "ablation", "baselines", "evaluations",
          "autoattack", "tuning")  # rftbench.reports.tables  # fmt: skip
PLOTS = ("curves", "robustness", "sweep", "schedule", "tuning")  # rftbench.reports.plots
# Every field of release 0.1 (database schema v1), hashed always and in this form: stored ids depend on it.
IDENTITY_V1 = (
    "backbone", "dataset", "pretrained", "setting", "eps", "t1", "t2", "patience", "tolerance",
    "schedule_granularity", "epochs", "batch_size", "lr", "weight_decay", "warmup_epochs", "min_lr",
    "resolution", "train_attack_steps", "eval_attack_steps", "attack_random_start", "attack_mode",
    "precision", "seed", "split_seed", "train_subset", "val_subset", "test_subset", "eval_budgets",
    "val_adv_samples",
)  # fmt: skip
RENAMED: dict[str, str] = {}  # stored key -> the field that replaced it (same meaning, new name)
RETIRED: dict[str, object] = {}  # removed field -> the only value a stored config may hold for it
# The schedule's parameters, declared once by `ScheduleSpec`: its field -> the RunConfig field holding it
SCHEDULE_FIELDS = {
    f.name: "schedule_granularity" if f.name == "granularity" else f.name
    for f in dataclasses.fields(schedules.ScheduleSpec)
    if f.name != "eps"  # ε_g is the run's `eps`, a budget in text form
}


class ConfigError(RftbenchError, ValueError):
    """A stored run config this release cannot read (a newer release's key, a retired value): one line."""


def parse_eps(value: str | float | int | Fraction) -> Fraction:
    """Parse a budget written as "4/255", "0.5/255", "0" or a float fraction of the pixel range."""
    if isinstance(value, Fraction):
        eps = value
    elif isinstance(value, str):
        text = value.strip()
        try:
            if "/" in text:
                num, den = text.split("/")
                eps = Fraction(num.strip()) / Fraction(den.strip())
            else:
                eps = Fraction(text)
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"cannot read budget {value!r}: write it as 'k/255', e.g. '4/255'") from None
    else:
        eps = Fraction(str(value))
    if eps < 0 or eps > 1:
        raise ValueError(f"budget {value!r} is outside [0, 1]: write it as 'k/255' with 0 <= k <= 255")
    return eps


def eps_text(eps: str | float | Fraction) -> str:
    """Canonical text form of a budget, as stored and shown: '4/255', '0.25/255', '0/255'."""
    k = parse_eps(eps) * 255
    return f"{k.numerator}/255" if k.denominator == 1 else f"{float(k):g}/255"


def parse_budget(value: str | float | int | Fraction, norm: str = "Linf") -> Fraction:
    """A budget under `norm`: ℓ∞ budgets are pixel levels ('4/255', `parse_eps`); ℓ2 budgets are plain
    non-negative numbers ('0.5', 1.0), the norm of the perturbation of an image in [0, 1]."""
    if norm == "Linf":
        return parse_eps(value)
    if norm not in NORMS:
        raise ValueError(f"norm {norm!r} unknown: choose one of {', '.join(NORMS)}")
    try:
        if isinstance(value, str) and "/" in value:
            raise ValueError
        eps = value if isinstance(value, Fraction) else Fraction(str(value).strip())
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"cannot read the ℓ2 budget {value!r}: write it as a number, e.g. '0.5'") from None
    if eps < 0:
        raise ValueError(f"the ℓ2 budget {value!r} is negative: write it as a number >= 0, e.g. '0.5'")
    return eps


def budget_value(text: str | float | Fraction) -> Fraction:
    """A budget's value whatever its norm: 'k/255' as a pixel level, a plain number as itself (for ordering
    and filtering rows of several norms; `parse_budget` checks one norm's form)."""
    return parse_eps(text) if isinstance(text, str) and "/" in text else parse_budget(text, "L2")


def budget_arg(text: str) -> str:
    """A budget flag as rows store it: '4/255' canonical (ℓ∞), a plain number as given (ℓ2 runs' form)."""
    budget_value(text)  # ValueError: one line
    return eps_text(text) if "/" in text else text.strip()


def budget_text(value: str | float | Fraction, norm: str = "Linf") -> str:
    """Canonical text of a budget under `norm`: '4/255' (ℓ∞, `eps_text`), '0.5' (ℓ2)."""
    return eps_text(value) if norm == "Linf" else f"{float(parse_budget(value, norm)):.15g}"


@dataclass(frozen=True)
class RunConfig:
    backbone: str
    dataset: str
    pretrained: bool = True  # False: random init (smoke tests, baselines), no weights needed
    setting: str = "fix"
    eps: str = "4/255"  # ε_g as text; `eps_value` is the float
    t1: float | None = None  # sched / linear only (0-based epochs)
    t2: float | None = None
    patience: int | None = None  # auto only
    tolerance: float | None = None  # auto only
    schedule_granularity: schedules.Granularity = "epoch"  # "step": hinge/linear ramp per optimisation step
    epochs: int = 50
    batch_size: int = 64
    lr: float = 1e-4
    weight_decay: float = 0.05
    warmup_epochs: float = 5.0
    min_lr: float = 0.0
    resolution: int = 224
    train_attack_steps: int = 7
    eval_attack_steps: int = 10
    attack_random_start: bool = False
    attack_mode: AttackMode = "eval"  # the model's mode while the training attack runs
    precision: Precision = "fp32"
    seed: int = 0
    split_seed: int = 0  # seeds the dataset's split rules and test subsample (rftbench.data.registry)
    train_subset: int = 0  # > 0: a stratified subsample of this many training images (seeded by split_seed)
    val_subset: int = 0  # > 0: the same for the validation split
    test_subset: int = 0  # > 0: the same for the scored test split
    eval_budgets: tuple[str, ...] = ()  # empty: (eps,) for adversarial runs
    val_adv_samples: int = 500  # per-epoch validation APGD: a fixed subset covering every class (split_seed)
    # Added after release 0.1, hashed only off their defaults (which compute what 0.1 computed):
    # "device": the same augmentation on the whole batch, on the run's device
    augmentation: Augmentation = "loader"
    decay_norm_and_bias: bool = True  # False: no weight decay on normalisation weights, biases, embeddings
    head_lr_scale: float = 1.0  # the fresh head's learning rate is lr × this
    # "paper": the paper's split lists (Caltech, Cub, Dogs); "rules": the registry's seeded rules, or the
    # grid's own split file (a path, not hashed, as before). Grids choose "auto": paper where present.
    splits: SplitSource = "rules"
    # The threat model of training, validation and the final evaluation: "Linf" (budgets 'k/255') or "L2"
    # (budgets as numbers, '0.5'; the E.adv grid ε_g·k/8, rftbench.core.metrics)
    norm: Norm = "Linf"
    # The piecewise schedule's ((epoch, fraction of ε_g), …) (rftbench.core.schedules); () for every other one
    points: schedules.Points = ()
    # The robust objective and its trade-off β (TRADES' and MART's weight of the robust term; both papers'
    # CIFAR value is 6). `at` ignores β, and `trades` at ε_g = 0 is standard fine-tuning: both canonical.
    objective: RobustObjective = "at"
    beta: float = 6.0
    # Which parameters train: `lp_ft` trains the head alone for `lp_ft_epochs` epochs, then every parameter;
    # `lora` the head and rank-`lora_r` adapters scaled by lora_alpha / lora_r (ignored by other modes)
    finetune: Finetune = "full"
    lp_ft_epochs: int = 0
    lora_r: int = 8
    lora_alpha: float = 16.0
    # Which weights its final evaluation scores besides the last epoch's (always scored): "best" keeps the
    # epoch with the highest validation `best_metric`, "ema" timm's ModelEmaV3 at `ema_decay` per step
    weights_policy: WeightsPolicy = "last"
    best_metric: BestMetric = "adv"
    ema_decay: float = 0.999

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ValueError(f"norm {self.norm!r} unknown: choose one of {', '.join(NORMS)}")
        spec = self.schedule.canonical()
        spec.validate(self.epochs)
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen dataclass)
        # `standard` at ε_g > 0 is ε = 0 training scored at that budget: one run, one hash
        text = functools.partial(budget_text, norm=self.norm)
        budgets = tuple(text(b) for b in self.eval_budgets) or (
            (text(self.eps),) if parse_budget(self.eps, self.norm) > 0 else ()
        )
        set_("eps", text(self.eps) if spec.eps else text(0))
        for name, field in SCHEDULE_FIELDS.items():
            set_(field, getattr(spec, name))
        set_("eval_budgets", tuple(sorted(set(budgets), key=lambda b: parse_budget(b, self.norm))))
        choices = {"precision": PRECISIONS, "augmentation": AUGMENTATIONS, "splits": SPLIT_SOURCES,
                   "attack_mode": ATTACK_MODES, "objective": OBJECTIVES, "finetune": FINETUNES,
                   "weights_policy": WEIGHTS_POLICIES, "best_metric": BEST_METRICS}  # fmt: skip
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"{name} {getattr(self, name)!r} unknown: choose one of {', '.join(allowed)}"
                )
        self._canonical_variant(spec.eps > 0)
        for name in ("epochs", "batch_size", "train_attack_steps", "eval_attack_steps", "resolution"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        for name in ("train_subset", "val_subset", "test_subset"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0: the whole split), got {getattr(self, name)}")
        if self.val_adv_samples < 0:
            raise ValueError(
                f"val_adv_samples must be >= 0 (0: no adversarial validation), got {self.val_adv_samples}"
            )
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if not (math.isfinite(self.head_lr_scale) and self.head_lr_scale > 0):
            raise ValueError(f"head_lr_scale must be a positive number, got {self.head_lr_scale}")
        for name in ("weight_decay", "warmup_epochs", "min_lr"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a number >= 0, got {value}")

    def _canonical_variant(self, adversarial: bool) -> None:
        variants.canonical(self, adversarial)

    @property
    def variant(self) -> str:
        """Objective, fine-tuning mode and weights policy off their defaults, as reports label them: ""
        (AT, full, last), "trades", "lora", "trades+lp_ft(k=2)", "mart(β=3)+lora(r=4,α=8)", "ema(0.999)"."""
        return variants.name(self)

    @property
    def label(self) -> str:
        """Its setting and variant, as reports and progress lines name a run: `fix`, `sched+trades`."""
        return "+".join(part for part in (self.setting, self.variant) if part)

    @property
    def eps_value(self) -> float:
        return float(parse_budget(self.eps, self.norm))

    @property
    def scored_budgets(self) -> tuple[str, ...]:
        """The ε_g its evaluations are at: `eval_budgets`, else its own ε_g ("0/255" for a standard run)."""
        return self.eval_budgets or (self.eps,)

    @property
    def schedule(self) -> schedules.ScheduleSpec:
        parameters = {name: getattr(self, field) for name, field in SCHEDULE_FIELDS.items()}
        return schedules.ScheduleSpec(eps=self.eps_value, **parameters)

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["eval_budgets"] = list(self.eval_budgets)
        out["points"] = [list(point) for point in self.points]
        return out

    def canonical_json(self) -> str:
        """Every field, as stored in the database and checkpoints (the full record, not the identity)."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def identity(self) -> dict:
        """What the run id hashes (module docstring): release 0.1's fields always, later ones off default."""
        values = self.to_dict()
        out = {key: RETIRED[key] if key in RETIRED else values[RENAMED.get(key, key)] for key in IDENTITY_V1}
        for f in dataclasses.fields(self):
            if (
                f.name not in IDENTITY_V1
                and f.name not in RENAMED.values()
                and getattr(self, f.name) != f.default
            ):
                out[f.name] = values[f.name]
        return out

    @property
    def run_id(self) -> str:
        identity = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(identity.encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, data: dict) -> RunConfig:
        """A config as stored by this or an earlier release, through the RENAMED / RETIRED migrations."""
        data = {RENAMED.get(key, key): value for key, value in data.items()}
        for key, value in RETIRED.items():
            if key in data and data.pop(key) != value:
                raise ConfigError(
                    f"run config sets {key}={value!r}, which this rftbench no longer supports; "
                    f"use the release that wrote it"
                )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"run config has unknown keys {', '.join(unknown)}: a newer rftbench wrote it, or a field "
                f"was removed without a migration (rftbench.core.config.RETIRED); upgrade rftbench"
            )
        if "eval_budgets" in data:
            data["eval_budgets"] = tuple(data["eval_budgets"])
        if "points" in data:
            data["points"] = tuple(tuple(point) for point in data["points"])
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> RunConfig:
        return cls.from_dict(json.loads(text))


def template_variant(template: str) -> str:
    """The variant a stored run config trains (`RunConfig.variant`; a tuning study's template), "" where a
    later release wrote what this one cannot read."""
    try:
        return RunConfig.from_json(template).variant
    except (ValueError, TypeError):
        return ""


class RuntimeOptionsError(RftbenchError, ValueError):
    """A runtime option out of its range (a library caller's, or a flag the CLI did not check): one line."""


@dataclass(frozen=True)
class RuntimeOptions:
    """How a run executes, not what it computes: never part of the run id."""

    device: str = "cpu"
    channels_last: bool | None = None  # None: for convnets on CUDA
    compile: bool = False
    compile_mode: str | None = None  # torch.compile's mode ("reduce-overhead": CUDA graphs)
    compile_backend: str = "inductor"  # torch.compile's backend ("aot_eager": traced, run eagerly; for tests)
    num_workers: int = 0
    tf32: bool = True  # fp32 matmuls and convolutions may use TF32 on CUDA
    # when `last.pt` is written (rftbench.engine.checkpoint.checkpoint_due): at the ends of epochs that are
    # a multiple of `checkpoint_every`, and there only once `checkpoint_minutes` passed since the last write;
    # always after the last epoch. A skipped checkpoint costs an interrupted run those epochs again.
    checkpoint_every: int = 1
    checkpoint_minutes: float | None = None

    def __post_init__(self) -> None:
        every, minutes = self.checkpoint_every, self.checkpoint_minutes
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise RuntimeOptionsError(f"--checkpoint-every {every!r}: write a whole number of epochs >= 1")
        positive = isinstance(minutes, int | float) and math.isfinite(minutes) and minutes > 0
        if minutes is not None and not positive:
            raise RuntimeOptionsError(f"--checkpoint-minutes {minutes!r}: write a number of minutes > 0")


class SlurmOptions(pydantic.BaseModel):
    """What a SLURM job array of rftbench workers asks for: the `[slurm]` table of an experiments file,
    overridden by `run-grid --slurm-*` flags. Never part of a run's id."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time_min: int = pydantic.Field(24 * 60, ge=1)  # per job; a job that runs out is requeued
    gpus_per_task: int = pydantic.Field(1, ge=0)
    cpus_per_task: int = pydantic.Field(8, ge=1)
    mem_gb: float | None = pydantic.Field(None, gt=0)  # None: the partition's default
    jobs: int | None = pydantic.Field(None, ge=1)  # array size; None: runs to do, at most array_parallelism
    array_parallelism: int = pydantic.Field(8, ge=1)  # how many run at once
    max_requeues: int = pydantic.Field(100, ge=0)  # time-outs one job may survive (preemption: always)
    additional: dict[str, str | int] = {}  # any other sbatch option, e.g. {constraint = "h100"}
