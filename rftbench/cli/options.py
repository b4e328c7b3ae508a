"""Options declared once, and the builders that turn the runtime and executor flags into the one options
object each the application layer takes (rftbench.execution.options).

    @app.command("run-grid")
    @with_options(options=runner_flags, launch=launch_flags)
    def run_grid(grid: str = GRID, options: RunnerOptions = None, launch: LaunchOptions = None): ...
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import typing
from pathlib import Path
from typing import Literal

import typer

from rftbench.cli.app import fail
from rftbench.core.config import (
    BEST_METRICS,
    FINETUNES,
    OBJECTIVES,
    PRECISIONS,
    PROTOCOLS,
    WEIGHTS_POLICIES,
    budget_arg,
)
from rftbench.core.schedules import SCHEDULES
from rftbench.execution.options import EXECUTOR_NAMES, LaunchOptions, RunnerOptions

Executor = Literal[EXECUTOR_NAMES]
Precision = Literal[PRECISIONS]
Protocol = Literal[PROTOCOLS]
Objective = Literal[OBJECTIVES]
Finetune = Literal[FINETUNES]
WeightsPolicy, BestMetric = Literal[WEIGHTS_POLICIES], Literal[BEST_METRICS]


# -- shell completion (`rftbench --install-completion`): names from the registries, the experiments file and
# the database; fast (no torch) and silent: a completion never prints an error --------------------------
def matching(values, incomplete: str) -> list[str]:
    return [str(v) for v in values if str(v).startswith(incomplete)]


def complete_backbone(incomplete: str) -> list[str]:
    from rftbench.models.registry import BACKBONES

    return matching(BACKBONES, incomplete)


def complete_dataset(incomplete: str) -> list[str]:
    from rftbench.data.registry import DATASETS

    return matching(DATASETS, incomplete)


def complete_fetchable(incomplete: str) -> list[str]:
    from rftbench.data.sources import SOURCES

    return matching(SOURCES, incomplete)


def complete_setting(incomplete: str) -> list[str]:
    return matching(SCHEDULES, incomplete)


def completion_store(ctx: typer.Context):
    from rftbench.results.store import Store

    return Store.open(ctx.params.get("db"), create=False, write=False)


def complete_grid(ctx: typer.Context, incomplete: str) -> list[str]:
    """The grids of the experiments file a command would read, then those of its database."""
    names = []
    with contextlib.suppress(Exception):
        from rftbench.experiments.files import find_experiments
        from rftbench.experiments.grids import load_experiments

        names += list(load_experiments(find_experiments(ctx.params.get("experiments"))).grids)
    with contextlib.suppress(Exception):
        names += [g.name for g in completion_store(ctx).grids()]
    return matching(dict.fromkeys(names), incomplete)


def complete_run_id(ctx: typer.Context, incomplete: str) -> list[str]:
    with contextlib.suppress(Exception):
        return matching((r.id for r in completion_store(ctx).runs()), incomplete)
    return []


# -- options several commands share ------------------------------------------------------------------------
EXPERIMENTS = typer.Option(
    None,
    "--experiments",
    envvar="RFTBENCH_EXPERIMENTS",
    help="the grids file [default: ./experiments.toml if there, else the one bundled with rftbench]",
)
DB = typer.Option(None, "--db", help="SQLite file or SQLAlchemy URL [env RFTBENCH_DB; default rftbench.db]")
RUNS_DIR = typer.Option(
    Path("runs"), "--runs-dir", envvar="RFTBENCH_RUNS", help="checkpoints, one folder per run"
)
DEVICE = typer.Option(None, "--device", help="cuda, cuda:1, mps, cpu [default: cuda if available]")
WORKERS = typer.Option(None, "--workers", min=0, help="data-loader workers [default: 4 on a GPU, 0 on CPU]")
TF32 = typer.Option(True, "--tf32/--no-tf32", help="let fp32 use TF32 on CUDA (recorded with each run)")
ROOTS = typer.Option([], "--root", help="NAME=PATH: a dataset's data root (repeatable)")
BACKBONE = typer.Option(..., "--backbone", autocompletion=complete_backbone)
DATASET = typer.Option(..., "--dataset", autocompletion=complete_dataset)
SETTING = typer.Option(
    "fix", "--setting", help=f"one of: {', '.join(SCHEDULES)}", autocompletion=complete_setting
)
GRID_FILTER = typer.Option(None, "--grid", help="only this grid's runs", autocompletion=complete_grid)
RUN_ID = typer.Option(
    None, "--run", help="evaluations: only this run (id prefix)", autocompletion=complete_run_id
)
T1 = typer.Option(None, "--t1", help="sched: first epoch of the ramp (0-based)")
T2 = typer.Option(None, "--t2", help="sched/linear: epoch at which ε reaches ε_g")
POINTS = typer.Option(None, "--points", help="piecewise: EPOCH:FRACTION of ε_g pairs, e.g. 0:0,5:0.5,30:1")
PROTOCOL = typer.Option("paper", "--protocol", help="which evaluations: paper (one APGD per ε) or monotone")
PRECISION = typer.Option("fp32", "--precision", help="which evaluations: their precision (fp32, bf16, fp16)")
STEPS = typer.Option(None, "--steps", min=1, help="which evaluations: APGD steps [default: each run's own]")


def parse_pairs(flag: str, items: list[str], example: str, valid, kind: str) -> dict[str, str]:
    """Repeatable NAME=PATH options (--weights, --root) whose NAMEs must be keys of the registry `valid`."""
    pairs = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            fail(f"{flag} {item!r}: write it as NAME=PATH, e.g. {flag} {example}")
        pairs[name] = path
    unknown = sorted(set(pairs) - set(valid))
    if unknown:
        fail(f"{flag} for unknown {kind}(s) {', '.join(unknown)}: valid ones are {', '.join(valid)}")
    return pairs


def parse_roots(items: list[str]) -> dict[str, str]:
    from rftbench.data.registry import DATASETS

    return parse_pairs("--root", items, "Cub=/data/CUB", DATASETS, "dataset")


def parse_weights(items: list[str]) -> dict[str, str]:
    from rftbench.models.registry import BACKBONES

    return parse_pairs("--weights", items, "SWIN=swin.safetensors", BACKBONES, "backbone")


TRACK = typer.Option(
    [],
    "--track",
    metavar="NAME[=WHERE]",
    help="mirror runs to tensorboard (=FOLDER), mlflow (=URI) or wandb (=PROJECT); repeatable",
)


def parse_tracks(items: list[str]) -> tuple[str, ...]:
    """--track values checked (one line if a name is unknown or its library missing), a folder made
    absolute: workers in other processes and on other nodes write to the same place."""
    from rftbench.execution.tracking import TrackingError, is_uri, parse_track

    try:
        specs = parse_track(items)
    except TrackingError as exc:
        fail(str(exc))
    folder = lambda s: s.where and s.name != "wandb" and not is_uri(s.where)  # noqa: E731
    return tuple(
        f"{s.name}={Path(s.where).resolve()}" if folder(s) else f"{s.name}={s.where or ''}" for s in specs
    )


def parse_budgets(eps: list[str], flag: str = "--eps") -> list[str]:
    try:
        return [budget_arg(e) for e in eps]
    except ValueError as exc:
        fail(f"{flag}: {exc}")


# -- option groups: declared once, each given to a command as one object ---------------------------------
def runner_flags(
    runs_dir: Path = RUNS_DIR,
    device: str | None = DEVICE,
    workers: int | None = WORKERS,
    channels_last: bool | None = typer.Option(
        None,
        "--channels-last/--no-channels-last",
        help="channels-last memory format (default: convnets on CUDA)",
    ),
    compile_: bool = typer.Option(
        False, "--compile", help="torch.compile the model (never part of a run's id)"
    ),
    tf32: bool = TF32,
    root: list[str] = ROOTS,
    weights: list[str] = typer.Option(
        [], "--weights", help="NAME=FILE: a backbone's weights file (repeatable)"
    ),
    prune_checkpoints: bool = typer.Option(
        False, "--prune-checkpoints", help="delete a finished run's last.pt (final.pt stays)"
    ),
    lease_seconds: float = typer.Option(
        120.0, "--lease-seconds", min=5, help="a claimed run's lease, renewed by a heartbeat"
    ),
    checkpoint_every: int = typer.Option(
        1, "--checkpoint-every", min=1, help="write last.pt after every N-th epoch (and the last)"
    ),
    checkpoint_minutes: float | None = typer.Option(
        None, "--checkpoint-minutes", help="write last.pt at most every N minutes (the last epoch always)"
    ),
    track: list[str] = TRACK,
) -> RunnerOptions:
    return RunnerOptions(
        runs_dir,
        device,
        workers,
        channels_last,
        compile_,
        tf32,
        parse_roots(root),
        parse_weights(weights),
        prune_checkpoints,
        lease_seconds,
        checkpoint_every,
        checkpoint_minutes,
        parse_tracks(track),
    )


def variant_flags(
    objective: Objective | None = typer.Option(None, "--objective", help="at, trades or mart [the grid's]"),
    beta: float | None = typer.Option(None, "--beta", help="trades/mart: weight of the robust term [6]"),
    finetune: Finetune | None = typer.Option(
        None, "--finetune", help="which parameters train: full, linear, lp_ft, bitfit, lora [the grid's]"
    ),
    lp_ft_epochs: int | None = typer.Option(None, "--lp-ft-epochs", help="lp_ft: epochs of the head alone"),
    lora_r: int | None = typer.Option(None, "--lora-r", help="lora: the adapters' rank [8]"),
    lora_alpha: float | None = typer.Option(None, "--lora-alpha", help="lora: their scale is alpha/r [16]"),
    weights_policy: WeightsPolicy | None = typer.Option(
        None, "--weights-policy", help="weights scored besides the last epoch's: last, best or ema [last]"
    ),
    best_metric: BestMetric | None = typer.Option(
        None, "--best-metric", help="best: by validation clean, adv or eadv accuracy [adv]"
    ),
    ema_decay: float | None = typer.Option(None, "--ema-decay", help="ema: decay per step [0.999]"),
) -> dict:
    """Run-config fields of the objective, fine-tuning mode and weights policy given as flags (over the
    grid's)."""
    given = {"objective": objective, "beta": beta, "finetune": finetune, "lp_ft_epochs": lp_ft_epochs,
             "lora_r": lora_r, "lora_alpha": lora_alpha, "weights_policy": weights_policy,
             "best_metric": best_metric, "ema_decay": ema_decay}  # fmt: skip
    return {k: v for k, v in given.items() if v is not None}


def launch_flags(
    executor: Executor = typer.Option(
        "inline",
        "--executor",
        help="inline: this process; local: one process per --gpus/--processes; "
        "slurm: a SLURM job array through submitit",
    ),
    gpus: str | None = typer.Option(None, "--gpus", help="local: one worker per GPU, e.g. 0,1,2,3"),
    processes: int | None = typer.Option(None, "--processes", min=1, help="local: N CPU worker processes"),
    slurm_partition: str | None = typer.Option(
        None, "--slurm-partition", help="slurm: partition [experiments' [slurm]]"
    ),
    slurm_time: int | None = typer.Option(None, "--slurm-time", min=1, help="slurm: minutes per job [1440]"),
    slurm_gpus: int | None = typer.Option(None, "--slurm-gpus", min=0, help="slurm: GPUs per job [1]"),
    slurm_cpus: int | None = typer.Option(None, "--slurm-cpus", min=1, help="slurm: CPUs per job [8]"),
    slurm_mem: float | None = typer.Option(
        None, "--slurm-mem", min=0.1, help="slurm: memory per job in GB [partition's]"
    ),
    slurm_jobs: int | None = typer.Option(
        None, "--slurm-jobs", min=1, help="slurm: worker jobs [runs to do, at most --slurm-parallelism]"
    ),
    slurm_parallelism: int | None = typer.Option(
        None, "--slurm-parallelism", min=1, help="slurm: jobs running at once [8]"
    ),
    slurm_folder: Path | None = typer.Option(
        None, "--slurm-folder", help="slurm: submitit's logs and pickles [RUNS_DIR/slurm]"
    ),
    wait: bool = typer.Option(False, "--wait", help="slurm: wait until the jobs end"),
) -> LaunchOptions:
    slurm = {
        "partition": slurm_partition,
        "time_min": slurm_time,
        "gpus_per_task": slurm_gpus,
        "cpus_per_task": slurm_cpus,
        "mem_gb": slurm_mem,
        "jobs": slurm_jobs,
        "array_parallelism": slurm_parallelism,
    }
    given = {k: v for k, v in slurm.items() if v is not None}
    return LaunchOptions(executor, gpus, processes, given, slurm_folder, wait)


def check_out(path: Path | None, flag: str = "--out") -> None:
    """Refuse a folder where a command writes a file, before it works."""
    if path is not None and path.is_dir():
        fail(f"{flag} {path} is a directory: give the file to write")


def with_options(**builders):
    """Each builder's parameters (their typer.Option defaults) become the command's options in place of the
    command's parameter of the builder's name, which receives what the builder returns. Typer reads a
    command's options from its signature, so a group is declared once and shared by every command."""

    def decorate(command):
        signature, hints = inspect.signature(command), typing.get_type_hints(command)
        params = []
        for param in signature.parameters.values():
            if param.name not in builders:
                params.append(param.replace(annotation=hints[param.name]))
                continue
            build = builders[param.name]
            built = typing.get_type_hints(build)
            params += [
                p.replace(annotation=built[p.name]) for p in inspect.signature(build).parameters.values()
            ]

        @functools.wraps(command)
        def wrapper(**values):
            for name, build in builders.items():
                values[name] = build(**{p: values.pop(p) for p in inspect.signature(build).parameters})
            return command(**values)

        wrapper.__signature__ = signature.replace(parameters=params, return_annotation=None)
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        return wrapper

    return decorate
