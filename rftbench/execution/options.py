"""The flags of the commands that run jobs, as plain values the application layer takes (one object each,
not nine positional values), and the one error type of that layer.

    options = RunnerOptions(runs_dir=Path("runs"), device="cuda", roots={"Cub": "/data/CUB"})
    launch = LaunchOptions(executor="local", gpus="0,1")   # raises LaunchError on a bad combination
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rftbench.errors import RftbenchError

EXECUTOR_NAMES = ("inline", "local", "slurm")


class LaunchError(RftbenchError):
    """Flags that do not go together, a device that is not usable here, a refused SLURM submission."""


@dataclass(frozen=True)
class RunnerOptions:
    """How runs execute (never part of a run's id): where checkpoints go, the device, the data roots and
    weights files given as flags, the lease."""

    runs_dir: Path = Path("runs")
    device: str | None = None  # None: cuda if available, else cpu
    workers: int | None = None  # data-loader workers; None: 4 on a GPU, 0 on CPU
    channels_last: bool | None = None
    compile: bool = False
    tf32: bool = True
    roots: dict = field(default_factory=dict)  # dataset -> data root
    weights: dict = field(default_factory=dict)  # backbone -> weights file
    prune: bool = False
    lease_seconds: float = 120.0
    checkpoint_every: int = 1  # epochs (RuntimeOptions' checkpoint policy)
    checkpoint_minutes: float | None = None
    # tracking sinks mirroring the database, as NAME or NAME=WHERE (rftbench.execution.tracking)
    track: tuple[str, ...] = ()


@dataclass(frozen=True)
class LaunchOptions:
    """Which executor runs the workers (rftbench.execution.executors), checked on construction."""

    executor: str = "inline"
    gpus: str | None = None
    processes: int | None = None
    slurm: dict = field(default_factory=dict)  # the --slurm-* values that were given (SlurmOptions' names)
    slurm_folder: Path | None = None
    wait: bool = False

    def __post_init__(self) -> None:
        if self.executor not in EXECUTOR_NAMES:  # the CLI's choice refuses it first; scripts meet this
            raise LaunchError(f"--executor {self.executor}: unknown; choose inline, local or slurm")
        if self.executor == "local" and (self.gpus is None) == (self.processes is None):
            raise LaunchError(
                "--executor local needs --gpus LIST (one worker per GPU) or --processes N (CPU workers)"
            )
        if self.executor != "local" and (self.gpus or self.processes):
            raise LaunchError("--gpus and --processes choose local workers: add --executor local")
        if self.executor != "slurm" and (self.slurm or self.wait or self.slurm_folder):
            raise LaunchError("--slurm-* and --wait configure SLURM jobs: add --executor slurm")
        if self.gpus is not None and not all(g.strip().isdigit() for g in self.gpus.split(",")):
            raise LaunchError(f"--gpus {self.gpus}: write GPU indices separated by commas, e.g. 0,1,2,3")


@dataclass(frozen=True)
class EvaluateRequest:
    run_id: str | None = None  # one run (a unique id prefix) ...
    grid: str | None = None  # ... or every completed run of a grid
    eps: list[str] = field(default_factory=list)  # [] : each run's own budgets
    attack: str = "apgd"  # apgd or autoattack
    version: str = "standard"  # AutoAttack's: standard or plus
    norm: str | None = None  # None: each run's own
    protocol: str = "paper"
    steps: int | None = None
    precision: str = "fp32"
    random_start: bool = False
    seed: int = 0
    db: str | None = None


@dataclass(frozen=True)
class BenchRequest:
    backbones: list[str]
    resolution: int = 224
    batch_size: int = 64
    precisions: list[str] = field(default_factory=list)  # []: bf16 on CUDA, fp32 elsewhere
    compile_modes: list[str] = field(default_factory=lambda: ["off"])
    attack_steps: int = 7
    eval_steps: int = 10
    eps: str = "4/255"
    batches: int = 8
    grid: str | None = None  # project this grid's hours
    experiments: Path | None = None
    torchattacks: bool = True
