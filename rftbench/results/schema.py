"""The results database's tables (SQLModel), its schema version and the key of a stored evaluation.

    from rftbench.results.schema import Run, EpochMetric, Evaluation, EvalBatch, SCHEMA_VERSION
    select(Run).where(Run.status == "completed")

Accuracies are fractions in [0, 1], epochs 0-based (CONVENTIONS.md). Stored results are permanent: an
evaluation row is keyed by its run, budget and full protocol (`EVALUATION_KEY`), so a new protocol adds a
row, the same protocol again adds nothing, and a run's `final` evaluation is never replaced. Each
evaluation's per-batch results (`EvalBatch`: every sample's robust flag at every ε, and after each attack of
AutoAttack) are kept under the evaluation's `batches` key (`rftbench.results.batches`). A change to a table
is a new SCHEMA_VERSION with its step in `rftbench.results.migrations`.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import JSON, Column, UniqueConstraint
from sqlmodel import Field, SQLModel

from rftbench.core.metrics import EvalProtocol

SCHEMA_VERSION = 6
# "pruned": a tuning trial its study stopped early (rftbench.results.studies); it is never continued
STATES = ("pending", "running", "interrupted", "completed", "failed", "pruned")
# What makes two evaluation rows the same measurement: a row with this key is never replaced.
# (and, from schema v6, which of the run's weights it scored: `weights`)
EVALUATION_KEY = (
    "run_id", "budget", "protocol", "attack", "norm", "steps", "restarts", "random_start", "seed",
    "precision", "weights",
)  # fmt: skip


def now() -> datetime:
    return datetime.now(UTC)


class SchemaVersion(SQLModel, table=True):
    __tablename__ = "schema_version"
    version: int = Field(primary_key=True)


class Run(SQLModel, table=True):
    id: str = Field(primary_key=True)  # RunConfig.run_id
    config: str  # the canonical JSON the id hashes, as in every checkpoint
    backbone: str = Field(index=True)
    dataset: str = Field(index=True)
    setting: str
    eps: str  # "4/255"
    eps_value: float
    t1: float | None = None
    t2: float | None = None
    seed: int = 0
    epochs: int
    status: str = Field(default="pending", index=True)
    paths: dict = Field(default_factory=dict, sa_column=Column(JSON))  # data root, split file, weights
    created_at: datetime = Field(default_factory=now)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    heartbeat_at: datetime | None = None
    lease_owner: str | None = None
    lease_expires_at: datetime | None = None
    host: str | None = None
    pid: int | None = None
    pid_namespace: str | None = None  # the holder's boot and PID namespace: where its pid means something
    worker: str | None = None  # who holds (or last held) it: "inline", "local 2/4 cuda:2", "slurm 4242_3"
    attempts: int = 0
    error: str | None = None
    provenance: dict = Field(default_factory=dict, sa_column=Column(JSON))
    # How its final evaluation is (or was) measured; not part of the id: one training, many evaluations.
    eval_protocol: str = "paper"
    eval_precision: str = "fp32"


class EpochMetric(SQLModel, table=True):
    __tablename__ = "epoch_metric"
    __table_args__ = (UniqueConstraint("run_id", "epoch"),)
    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(foreign_key="run.id", index=True)
    epoch: int
    eps: float  # ε(t) of this epoch
    lr: float
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    val_adv_loss: float | None = None
    val_adv_acc: float | None = None
    val_adv_eps: str | None = None
    val_adv_subset: str | None = None  # "stratified" (every class, seeded); "prefix": schema-v1 rows
    val_eadv: float | None = None  # E.adv on the same subset: measured for weights_policy "best" by eadv
    epoch_seconds: float
    images_per_second: float
    recorded_at: datetime = Field(default_factory=now)


class Evaluation(SQLModel, table=True):
    __table_args__ = (UniqueConstraint(*EVALUATION_KEY, name="uq_evaluation_protocol"),)
    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(foreign_key="run.id", index=True)
    kind: str = "final"  # "final": at the end of training; "extra": `rftbench evaluate`
    budget: str  # ε_g of this row, "8/255" (ℓ∞) or "0.5" (ℓ2)
    budget_value: float
    clean: float
    adv: float
    eadv: float | None = None  # None: measured at ε_g only (AutoAttack)
    eps_grid: list = Field(default_factory=list, sa_column=Column(JSON))  # ["0/255", ..., budget]
    accuracies: list = Field(default_factory=list, sa_column=Column(JSON))  # one per eps_grid point
    n: int
    # the protocol (rftbench.core.metrics.EvalProtocol): together with run and budget, the row's key
    protocol: str = "paper"  # per-ε protocol: "paper" (one attack per ε) or "monotone" (early exit)
    attack: str = "apgd-ce"
    norm: str = "Linf"
    steps: int
    restarts: int = 1
    random_start: bool = False
    seed: int = 0
    precision: str = "fp32"
    attacks_run: int = 0
    seconds: float | None = None  # wall time of the whole evaluation this row came from
    created_at: datetime = Field(default_factory=now)
    implementation: str | None = None  # the package that measured it: "rftbench 0.1.0", "torchattacks 3.5.1"
    batches: str | None = None  # its EvalBatch rows' key (None: measured before schema v4)
    details: dict = Field(default_factory=dict, sa_column=Column(JSON))  # AutoAttack: accuracy per attack
    # which of the run's weights it scored (RunConfig.weights_policy): "last" (the last epoch's, the
    # paper's), "best" (its best epoch by a validation metric) or "ema"; every row before schema v6 is "last"
    weights: str = "last"

    def eval_protocol(self) -> EvalProtocol:
        return EvalProtocol(**{k: getattr(self, k) for k in EvalProtocol.__dataclass_fields__})


class EvalBatch(SQLModel, table=True):
    """One batch of one evaluation: which samples stayed robust at each ε (texts of '0'/'1' in the test
    loader's fixed order), what it cost; written as soon as it is measured, never changed."""

    __tablename__ = "eval_batch"
    __table_args__ = (UniqueConstraint("run_id", "key", "batch", name="uq_eval_batch"),)
    id: int | None = Field(default=None, primary_key=True)
    run_id: str = Field(foreign_key="run.id", index=True)
    key: str  # evaluation_key's hash: protocol and ε grid
    batch: int  # 0-based, in the test loader's order
    start: int  # its first sample's index
    n: int
    result: dict = Field(default_factory=dict, sa_column=Column(JSON))  # flags, stages, attacks_run
    seconds: float | None = None  # what measuring it took
    created_at: datetime = Field(default_factory=now)


class Adaptation(SQLModel, table=True):
    run_id: str = Field(foreign_key="run.id", primary_key=True)
    threshold: float = Field(primary_key=True)
    start_epoch: int  # first epoch with val_acc > threshold; `epochs` if none
    epochs: int


class Grid(SQLModel, table=True):
    name: str = Field(primary_key=True)
    description: str = ""
    adaptation_threshold: float = 0.05
    source: str = ""  # the experiments file it was read from
    recorded_at: datetime = Field(default_factory=now)


class GridRun(SQLModel, table=True):
    __tablename__ = "grid_run"
    grid: str = Field(foreign_key="grid.name", primary_key=True)
    run_id: str = Field(foreign_key="run.id", primary_key=True)
    position: int


class Study(SQLModel, table=True):
    """One configuration's hyperparameter search (`rftbench tune`): what it tunes and how, so that any
    worker (and `report`, `status`) can read it from the database alone. Optuna keeps the sampler's and
    the pruner's state in its own tables of the same database, under `optuna_name`."""

    key: str = Field(primary_key=True)  # rftbench.core.tuning.study_key
    optuna_name: str
    grid: str  # the grid it was first tuned for (another grid of the same configuration reuses it)
    backbone: str
    dataset: str
    eps: str  # the configuration's ε_g, "4/255"
    setting: str  # the setting its trials train
    template: str  # the run config trials start from (tuned knobs at their defaults), canonical JSON
    search: dict = Field(default_factory=dict, sa_column=Column(JSON))  # Search.definition()
    paths: dict = Field(default_factory=dict, sa_column=Column(JSON))
    eval_protocol: str = "paper"
    eval_precision: str = "fp32"
    created_at: datetime = Field(default_factory=now)


class Trial(SQLModel, table=True):
    """A study's trial `number` is run `run_id`: its state is the run's, its value the run's last clean
    validation accuracy. Written once, in the same lock as Optuna's trial (rftbench.results.studies)."""

    study: str = Field(foreign_key="study.key", primary_key=True)
    number: int = Field(primary_key=True)  # Optuna's trial number in the study
    run_id: str = Field(foreign_key="run.id", index=True)
    params: dict = Field(default_factory=dict, sa_column=Column(JSON))  # knob -> value
    created_at: datetime = Field(default_factory=now)


def run_row(config, paths: dict, eval_protocol: str = "paper", eval_precision: str = "fp32") -> Run:
    return Run(
        id=config.run_id,
        config=config.canonical_json(),
        backbone=config.backbone,
        dataset=config.dataset,
        setting=config.setting,
        eps=config.eps,
        eps_value=config.eps_value,
        t1=config.t1,
        t2=config.t2,
        seed=config.seed,
        epochs=config.epochs,
        paths=dict(paths),
        eval_protocol=eval_protocol,
        eval_precision=eval_precision,
    )
