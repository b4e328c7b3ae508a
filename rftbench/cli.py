"""The `rftbench` command line: thin Typer commands that parse, delegate and print.

rftbench schedule sched --eps 4/255 --t1 12 --t2 37 --epochs 50
"""

from __future__ import annotations

import contextlib
import itertools
import os
from dataclasses import dataclass, field
from pathlib import Path

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.core import TyperGroup

from rftbench.core.config import (
    PLOTS,
    TABLES,
    RunConfig,
    RuntimeOptions,
    budget_text,
    budget_value,
    eps_text,
    parse_eps,
)
from rftbench.core.schedules import SCHEDULES, ScheduleSpec, points_text
from rftbench.version import __version__

console = Console(soft_wrap=True)  # log lines stay whole in files and narrow terminals
# Errors that are the user's input or environment, not our bug: one line each (`expected_error`).
EXPECTED = {
    "rftbench.results.store": ("StoreError",),
    "rftbench.experiments.grids": ("GridError",),
    "rftbench.reports.tables": ("ReportError",),
    "rftbench.data.datasets": ("DataNotFound",),
    "rftbench.models.registry": ("WeightsUnavailable",),
    "rftbench.engine.checkpoint": ("CheckpointError",),
    "rftbench.core.config": ("ConfigError",),
    "rftbench.data.fetch": ("FetchError",),
    "rftbench.engine.evaluation": ("EvaluationError",),
}


def budget_arg(text: str) -> str:
    """A budget flag as rows store it: '4/255' canonical (ℓ∞), a plain number as given (ℓ2 runs' form)."""
    budget_value(text)  # ValueError: one line
    return eps_text(text) if "/" in text else text.strip()


def fail(message: str) -> None:
    """One clear line on stderr and a non-zero exit, instead of a traceback."""
    Console(stderr=True).print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


def expected_error(exc: Exception) -> str | None:
    """The one line for an error a user can fix (bad input, a database that fails, a file that cannot be
    written), or None for a bug, which keeps its traceback."""
    module = type(exc).__module__
    if type(exc).__name__ in EXPECTED.get(module, ()):
        return str(exc).strip().splitlines()[0]
    if module.startswith("sqlalchemy"):
        from rftbench.results.store import first_line

        return f"the database failed: {first_line(exc)}; nothing was changed by this command's failed step"
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.strerror or type(exc).__name__}: {exc.filename}"
    return None


class OneLineErrors(TyperGroup):
    """Every command answers an expected error, or an option Click rejects, with one line and exit code 2
    (`expected_error`), instead of a traceback or a usage box."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except Exception as exc:
            # Click's usage errors (typer vendors its own Click, so matched by name, not class)
            if any(c.__name__ == "UsageError" for c in type(exc).__mro__):
                where = exc.ctx.command_path if exc.ctx else ctx.command_path
                fail(f"{where}: {exc.format_message()} (see {where} --help)")
            line = expected_error(exc)
            if line is None:
                raise
            fail(line)


app = typer.Typer(
    cls=OneLineErrors,
    help="Robust fine-tuning of non-robust pretrained models, with ε-scheduling.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,  # an unexpected error is a bug report: a plain traceback serves it best
)


# -- shell completion (`rftbench --install-completion`): names from the registries, the experiments file and
# the database; fast (no torch) and silent: a completion never prints an error --------------------------
def matching(values, incomplete: str) -> list[str]:
    return [str(v) for v in values if str(v).startswith(incomplete)]


def complete_backbone(incomplete: str) -> list[str]:
    from rftbench.models.registry import BACKBONES

    return matching(BACKBONES, incomplete)


def complete_dataset(incomplete: str) -> list[str]:
    from rftbench.data.datasets import DATASETS

    return matching(DATASETS, incomplete)


def complete_fetchable(incomplete: str) -> list[str]:
    from rftbench.data.fetch import SOURCES

    return matching(SOURCES, incomplete)


def complete_setting(incomplete: str) -> list[str]:
    return matching(SCHEDULES, incomplete)


def complete_table(incomplete: str) -> list[str]:
    return matching(TABLES, incomplete)


def complete_plot(incomplete: str) -> list[str]:
    return matching(PLOTS, incomplete)


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


def print_notes(configs) -> None:
    """What a user should know about valid but perhaps unintended schedules (T2 at the last epoch, …)."""
    notes = dict.fromkeys(note for c in configs for note in c.schedule.notes(c.epochs))
    for note in notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)


@app.callback()
def main() -> None:
    """rftbench: adversarial fine-tuning runs, metrics and reports."""


@app.command()
def version() -> None:
    """Print the package version."""
    console.print(f"rftbench {__version__}")


@app.command()
def schedule(
    setting: str = typer.Argument(
        ..., help=f"one of: {', '.join(SCHEDULES)}", autocompletion=complete_setting
    ),
    eps: str = typer.Option("4/255", help="ε_g, written as k/255"),
    epochs: int = typer.Option(50, min=1),
    t1: float | None = typer.Option(None, help="sched: first epoch of the ramp (0-based)"),
    t2: float | None = typer.Option(None, help="sched/linear: epoch at which ε reaches ε_g"),
    points: str | None = typer.Option(
        None, "--points", help="piecewise: EPOCH:FRACTION of ε_g pairs, e.g. 0:0,5:0.5,30:1"
    ),
    val_acc: str | None = typer.Option(
        None, "--val-acc", help="auto/adaptive: the clean validation accuracies per epoch, e.g. 0.2,0.5,0.6"
    ),
    seed: int = typer.Option(0, help="uniform: the run's seed"),
    plot: Path | None = typer.Option(None, "--plot", help="also draw ε(t) to this PNG"),
) -> None:
    """Print ε(t) per 0-based epoch for any schedule (auto and adaptive: for a given validation history)."""
    from rftbench.core.schedules import HISTORY_SETTINGS, parse_points

    try:
        history = [float(v) for v in val_acc.split(",")] if val_acc else []
    except ValueError:
        fail(f"--val-acc {val_acc!r}: write fractions separated by commas, e.g. 0.2,0.5,0.6")
    try:
        shape = parse_points(points) if points else ()
        spec = ScheduleSpec(setting, float(parse_eps(eps)), t1=t1, t2=t2, points=shape).canonical()
        spec.validate(epochs)
    except ValueError as exc:
        fail(str(exc))
    if spec.setting in HISTORY_SETTINGS and len(history) < epochs - 1:
        fail(
            f"{spec.setting} depends on a run's validation accuracy: give the {epochs - 1} accuracies of "
            f"epochs 0-{epochs - 2} with --val-acc (got {len(history)})"
        )
    if any(not 0 <= v <= 1 for v in history):
        fail("--val-acc: accuracies are fractions in [0, 1], e.g. 0.2,0.5,0.6")
    for note in spec.notes(epochs):
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    values = spec.values(epochs, seed=seed, val_accuracies=history)
    table = Table(title=f"{spec.label}: ε_g = {eps_text(eps)}, {epochs} epochs")
    for column in ("epoch", "α(t)", "ε(t) × 255", "ε(t)"):
        table.add_column(column, justify="right")
    for epoch, value in enumerate(values):
        alpha = value / spec.eps if spec.eps else 0.0
        table.add_row(str(epoch), f"{alpha:.4f}", f"{value * 255:.4f}", f"{value:.6f}")
    console.print(table)
    if plot is not None:
        from rftbench.reports.plots import plot_schedule

        check_out(plot)
        console.print(f"wrote {plot_schedule(spec.label, values, eps_text(eps), plot)}")


def parse_pairs(flag: str, items: list[str], example: str, valid: dict, kind: str) -> dict[str, str]:
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


@app.command()
def backbones(
    weights: list[str] = typer.Option(
        [],
        "--weights",
        help="NAME=FILE: check a local weights file (repeatable)",
        autocompletion=complete_backbone,
    ),
) -> None:
    """List the backbone registry and whether each backbone's weights are available locally."""
    from rftbench.models.registry import BACKBONES, WeightsUnavailable, check_weights_file, weights_available

    files = parse_pairs("--weights", weights, "SWIN=swin.safetensors", BACKBONES, "backbone")
    table = Table(title="backbones")
    for column in ("name", "source", "model", "pretrained tag", "size", "mean / std", "head", "weights here"):
        table.add_column(column, overflow="fold")
    for spec in BACKBONES.values():
        try:
            where = str(check_weights_file(spec.name, files[spec.name])) if spec.name in files else ""
        except (WeightsUnavailable, ValueError) as exc:
            fail(str(exc))
        where = where or weights_available(spec.name)
        mean, std = spec.normalization
        table.add_row(
            spec.name,
            spec.source,
            spec.model,
            spec.tag,
            str(spec.size),
            f"{'/'.join(f'{v:.3g}' for v in mean)} / {'/'.join(f'{v:.3g}' for v in std)}",
            spec.head,
            f"[green]yes[/] {where}" if where else f"[red]no[/] (set {spec.env_var})",
        )
    console.print(table)


@app.command()
def datasets(
    root: list[str] = typer.Option([], "--root", help="NAME=PATH: a dataset's data root (repeatable)"),
) -> None:
    """List the dataset registry, whether each dataset's layout is found locally, and whether the paper's
    split lists are there (`rftbench data fetch` gets both)."""
    from rftbench.data.datasets import (
        DATASETS,
        LAYOUTS,
        PAPER_SPLITS,
        SPLIT_FOLDER,
        check_layout,
        env_var,
        paper_split_dir,
        resolve_root,
    )

    roots = parse_pairs("--root", root, "Cub=/data/CUB", DATASETS, "dataset")
    table = Table(title="datasets")
    columns = ("name", "classes", "train / val / test (protocol)", "root", "found", "paper splits", "layout")
    for column in columns:
        table.add_column(column, overflow="fold")
    for spec in DATASETS.values():
        path = resolve_root(spec.name, roots.get(spec.name))
        splits = "-"
        if spec.name in PAPER_SPLITS:
            splits = (
                "[green]yes[/]"
                if paper_split_dir(spec.name, path)
                else f"[red]no[/] (not in {escape(str(path / SPLIT_FOLDER))}: `rftbench data fetch "
                f"{spec.name} --splits-only`)"
            )
        try:
            check_layout(spec.name, path)
            found = "[green]yes[/]"
        except (OSError, ValueError, RuntimeError) as exc:
            reason = escape(str(exc).split(";")[0].removeprefix(f"dataset {spec.name}: "))
            found = f"[red]no[/]: {reason}" + (
                "" if spec.name in roots else f" (or set {env_var(spec.name)})"
            )
        where = str(path) if spec.default_root else "-"
        table.add_row(
            spec.name, str(spec.classes or "any"), spec.sizes, where, found, splits, LAYOUTS[spec.name]
        )
    console.print(table)


# -- grids, runs and the results database ---------------------------------------------------------------
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
CHANNELS_LAST = typer.Option(
    None, "--channels-last/--no-channels-last", help="channels-last memory format (default: convnets on CUDA)"
)
COMPILE = typer.Option(False, "--compile", help="torch.compile the model (never part of a run's id)")
TF32 = typer.Option(True, "--tf32/--no-tf32", help="let fp32 use TF32 on CUDA (recorded with each run)")
ROOTS = typer.Option([], "--root", help="NAME=PATH: a dataset's data root (repeatable)")
WEIGHTS = typer.Option([], "--weights", help="NAME=FILE: a backbone's weights file (repeatable)")
PRUNE = typer.Option(False, "--prune-checkpoints", help="delete a finished run's last.pt (final.pt stays)")
LEASE = typer.Option(120.0, "--lease-seconds", min=5, help="a claimed run's lease, renewed by a heartbeat")


def open_store(db: str | None, *, create: bool = True, write: bool = True):
    from rftbench.results.store import Store, StoreError

    try:
        return Store.open(db, create=create, write=write)
    except StoreError as exc:
        fail(str(exc))


def check_grid(store, grid: str | None) -> None:
    """A --grid that names no grid of this database is a typo: say so instead of showing nothing."""
    names = [g.name for g in store.grids()]
    if grid is not None and grid not in names:
        fail(f"no grid {grid!r} in this database; it has {', '.join(names) or 'none'}")


def read_experiments(path: Path | None, roots: dict[str, str] | None = None):
    """The experiments file a command reads (`find_experiments`), loaded, or one line and exit 2."""
    from rftbench.experiments.files import find_experiments
    from rftbench.experiments.grids import GridError, load_experiments

    try:
        return load_experiments(find_experiments(path), roots)
    except GridError as exc:
        fail(str(exc))


def runtime_options(
    device: str | None, workers: int | None, channels_last: bool | None, compile_: bool, tf32: bool = True
):
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        if torch.device(device).type not in ("cpu", "cuda", "mps", "xpu"):
            raise RuntimeError("rftbench trains on cpu, cuda, mps or xpu devices")
        torch.empty(1, device=device)
    except (RuntimeError, AssertionError) as exc:
        fail(
            f"device {device!r} is not usable here ({str(exc).splitlines()[0][:100]}); pick another --device"
        )
    workers = workers if workers is not None else (0 if device == "cpu" else min(4, os.cpu_count() or 1))
    return RuntimeOptions(
        device=device, channels_last=channels_last, compile=compile_, num_workers=workers, tf32=tf32
    )


def make_runner(runs_dir, device, workers, channels_last, compile_tf32, roots, weights, prune, lease):
    """A runner without its store: flags are checked first, and the database is opened only once the jobs
    passed their preflight (bad input leaves the database untouched)."""
    from rftbench.data.datasets import DATASETS
    from rftbench.execution.runner import Runner
    from rftbench.models.registry import BACKBONES

    return Runner(
        store=None,
        runtime=runtime_options(device, workers, channels_last, *compile_tf32),
        runs_dir=runs_dir,
        roots=parse_pairs("--root", roots, "Cub=/data/CUB", DATASETS, "dataset"),
        weights=parse_pairs("--weights", weights, "SWIN=swin.safetensors", BACKBONES, "backbone"),
        lease_seconds=lease,
        prune=prune,
        progress=RichProgress(),
    )


class RichProgress:
    """The live display: grid progress, the current run, its epoch, ε(t), last validation accuracy, ETA."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self.grid = self.bar.add_task("runs", total=None)
        self.job = None

    def __enter__(self) -> RichProgress:
        self.bar.start()
        return self

    def __exit__(self, *exc) -> None:
        self.bar.stop()

    def start_run(self, run, config, index, total) -> None:
        self.bar.update(self.grid, total=total, completed=index, description=f"runs ({total} to do)")
        if self.job is not None:
            self.bar.remove_task(self.job)
        self.name = f"{run.id[:8]} {config.backbone}/{config.dataset} {config.setting} {config.eps}"
        self.job = self.bar.add_task(f"{self.name} · building", total=config.epochs)

    def epoch(self, run, config, metrics) -> None:
        done = metrics["epoch"] + 1
        text = (
            f"{self.name} · epoch {metrics['epoch']} · ε(t) {metrics['eps'] * 255:.2f}/255 · "
            f"val {metrics['val_acc']:.1%}"
        )
        if metrics.get("val_adv_acc") is not None:
            text += f" · adv {metrics['val_adv_acc']:.1%}"
        self.bar.update(self.job, completed=done, description=text)

    def end_run(self, run, status, detail="") -> None:
        colour = {"completed": "green", "failed": "red"}.get(status, "yellow")
        self.bar.console.print(f"[{colour}]{status}[/] {self.name} {detail}", highlight=False)
        self.bar.advance(self.grid)


def preflight(runner, items) -> None:
    """Data roots and weights of every (config, stored paths) about to run, or one line and exit 2."""
    from rftbench.data.datasets import DataNotFound
    from rftbench.models.registry import WeightsUnavailable

    try:
        runner.preflight(items)
    except (DataNotFound, WeightsUnavailable, ValueError) as exc:
        fail(str(exc))


def existing_store(db: str | None):
    """The database opened to read, or None (and no file created) where there is none yet."""
    from rftbench.results.store import database_url

    url = database_url(db)
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        return None
    return open_store(db, create=False, write=False)


def existing_statuses(db: str | None, run_ids: list[str]) -> dict[str, str]:
    """Run id -> state for the runs already in the database; {} if there is none."""
    store = existing_store(db)
    return {} if store is None else store.status_of(run_ids)


def recorded_splits(db: str | None, grid: str | None) -> dict[str, str]:
    """Dataset -> the `splits` the grid's newest run of it was recorded with, so that `splits = "auto"`
    expands the grid to the runs it already has (rftbench.experiments.grids)."""
    import json

    store = existing_store(db)
    if store is None or grid is None or grid not in {g.name for g in store.grids()}:
        return {}
    runs = sorted(store.runs(grid=grid), key=lambda r: r.created_at)
    return {run.dataset: json.loads(run.config).get("splits", "rules") for run in runs}


@dataclass
class Launch:
    """Which executor runs the workers, from the flags (rftbench.execution.executors)."""

    executor: str = "inline"
    gpus: str | None = None
    processes: int | None = None
    slurm: dict = field(default_factory=dict)  # --slurm-* flags that were given
    slurm_folder: Path | None = None
    wait: bool = False


EXECUTOR = typer.Option(
    "inline",
    "--executor",
    help="inline: this process; local: one process per --gpus/--processes; "
    "slurm: a SLURM job array through submitit",
)
GPUS = typer.Option(None, "--gpus", help="local: one worker per GPU, e.g. 0,1,2,3")
PROCESSES = typer.Option(None, "--processes", min=1, help="local: N CPU worker processes")
SLURM_PARTITION = typer.Option(None, "--slurm-partition", help="slurm: partition [experiments' [slurm]]")
SLURM_TIME = typer.Option(None, "--slurm-time", min=1, help="slurm: minutes per job [1440]")
SLURM_GPUS = typer.Option(None, "--slurm-gpus", min=0, help="slurm: GPUs per job [1]")
SLURM_CPUS = typer.Option(None, "--slurm-cpus", min=1, help="slurm: CPUs per job [8]")
SLURM_MEM = typer.Option(None, "--slurm-mem", min=0.1, help="slurm: memory per job in GB [partition's]")
SLURM_JOBS = typer.Option(
    None, "--slurm-jobs", min=1, help="slurm: worker jobs [runs to do, at most --slurm-parallelism]"
)
SLURM_PARALLELISM = typer.Option(None, "--slurm-parallelism", min=1, help="slurm: jobs running at once [8]")
SLURM_FOLDER = typer.Option(
    None, "--slurm-folder", help="slurm: submitit's logs and pickles [RUNS_DIR/slurm]"
)
WAIT = typer.Option(False, "--wait", help="slurm: wait until the jobs end")


def make_launch(executor, gpus, processes, partition, time_min, gpus_per_task, cpus, mem, jobs, parallelism,
                folder, wait) -> Launch:  # fmt: skip
    slurm = {"partition": partition, "time_min": time_min, "gpus_per_task": gpus_per_task,
             "cpus_per_task": cpus, "mem_gb": mem, "jobs": jobs,
             "array_parallelism": parallelism}  # fmt: skip
    launch = Launch(
        executor, gpus, processes, {k: v for k, v in slurm.items() if v is not None}, folder, wait
    )
    check_launch(launch)
    return launch


def check_launch(launch: Launch) -> None:
    if launch.executor not in ("inline", "local", "slurm"):
        fail(f"--executor {launch.executor}: unknown; choose inline, local or slurm")
    if launch.executor == "local" and (launch.gpus is None) == (launch.processes is None):
        fail("--executor local needs --gpus LIST (one worker per GPU) or --processes N (CPU workers)")
    if launch.executor != "local" and (launch.gpus or launch.processes):
        fail("--gpus and --processes choose local workers: add --executor local")
    if launch.executor != "slurm" and (launch.slurm or launch.wait or launch.slurm_folder):
        fail("--slurm-* and --wait configure SLURM jobs: add --executor slurm")
    if launch.gpus is not None and not all(g.strip().isdigit() for g in launch.gpus.split(",")):
        fail(f"--gpus {launch.gpus}: write GPU indices separated by commas, e.g. 0,1,2,3")


def execute(runner, run_ids: list[str] | None, launch: Launch | None = None, db: str | None = None,
            slurm_defaults=None) -> None:  # fmt: skip
    """Run with the chosen executor, then exit 0 (all done), 1 (some failed) or 130 (interrupted). Ctrl-C
    and a scheduler's SIGTERM both stop a worker's current run as interrupted, whatever it raises."""
    from rftbench.core.config import SlurmOptions
    from rftbench.execution.executors import InlineExecutor, LocalExecutor, SlurmExecutor, WorkerSpec
    from rftbench.results.store import database_url, sqlite_path

    launch = launch or Launch()
    url = database_url(db)
    if (path := sqlite_path(url)) is not None:  # workers may start elsewhere: an absolute path
        url = f"sqlite:///{path.resolve()}"
    spec = WorkerSpec(
        db=url,
        run_ids=run_ids,
        runs_dir=str(Path(runner.runs_dir).resolve()),
        runtime=runner.runtime,
        roots=runner.roots,
        weights=runner.weights,
        prune=runner.prune,
        lease_seconds=runner.lease_seconds,
    )
    if launch.executor == "local":
        gpus = [g.strip() for g in launch.gpus.split(",")] if launch.gpus else []
        local = LocalExecutor(gpus=gpus, processes=launch.processes or 0)
        code = local.launch(spec)
        left = runner.queue.claimable(run_ids) + [r.id for r in runner.queue.held_by_others(run_ids)]
        killed = [f"{i + 1} ({-c})" for i, c in enumerate(local.codes) if c < 0]
        if killed:  # its runs were continued by the others, or wait for `resume`
            console.print(f"[yellow]note:[/] worker(s) {', '.join(killed)} died of a signal", highlight=False)
        if left and code != 130:
            console.print(f"{len(left)} run(s) unfinished: `rftbench resume` continues them")
            code = code or 1
        console.print(
            f"local workers ended: {'all done' if code == 0 else f'exit {code}'} (`rftbench status`)"
        )
        raise typer.Exit(code=code)
    if launch.executor == "slurm":
        options = (slurm_defaults or SlurmOptions()).model_copy(update=launch.slurm)
        if path is not None:
            console.print(
                "[yellow]note:[/] a SQLite file is safe for SLURM workers on one node with local disk only; "
                "across nodes or on a network filesystem use postgresql://… (README: Scale out)",
                highlight=False,
            )
        todo = len(runner.queue.claimable(run_ids))
        if todo == 0:
            console.print("no run left to claim: nothing submitted (`rftbench status`)")
            return
        options = options.model_copy(update={"jobs": options.jobs or min(todo, options.array_parallelism)})
        folder = (launch.slurm_folder or Path(runner.runs_dir) / "slurm").resolve()
        slurm = SlurmExecutor(folder, options, wait=launch.wait)
        try:
            jobs = slurm.submit(spec)
        except Exception as exc:  # no sbatch, a refused submission: one line
            said = "; ".join(line.removeprefix("sbatch: error: ") for line in str(exc).strip().splitlines())
            fail(f"SLURM submission failed ({said or type(exc).__name__}); check the --slurm-* flags")
        ids = sorted({job.job_id.split("_")[0] for job in jobs})
        submitted = f"submitted {len(jobs)} SLURM worker(s) as job {', '.join(ids)}; logs in {folder}"
        console.print(submitted, highlight=False)
        if not launch.wait:
            console.print("`rftbench status` shows which job holds each run; `squeue` the jobs")
            return
        console.print("waiting for the jobs (Ctrl-C stops waiting, not the jobs)")
        try:
            code = slurm.collect()
        except KeyboardInterrupt:
            console.print(f"stopped waiting; the jobs go on: `squeue -j {','.join(ids)}`, `rftbench status`")
            raise typer.Exit(code=130) from None
        for failure in slurm.failures:
            console.print(f"[red]failed:[/] {failure}", highlight=False)
        console.print(f"SLURM workers ended: {'all done' if code == 0 else f'exit {code}'}")
        raise typer.Exit(code=code)
    inline = InlineExecutor(progress=runner.progress)
    code = inline.launch(spec)
    summary = inline.summary
    console.print(
        f"{len(summary['completed'])} completed, {len(summary['failed'])} failed"
        + (
            f", stopped during {summary['interrupted']}: `rftbench resume` continues it"
            if summary["interrupted"]
            else ""
        )
    )
    for run_id, line in summary["failed"].items():
        console.print(f"[red]failed[/] {run_id}: {line}", highlight=False)
    if code:
        raise typer.Exit(code=code)


def estimate_work(configs) -> tuple[float, int]:
    """Training forward-backward passes (images × epochs × (attack steps + 1)); runs of unknown size."""
    from rftbench.data.datasets import DATASETS

    passes, unknown = 0.0, 0
    for config in configs:
        images = DATASETS[config.dataset].train_images
        if images is None:
            unknown += 1
            continue
        images = min(images, config.train_subset or images)
        steps = config.train_attack_steps if config.eps_value > 0 else 0
        passes += images * config.epochs * (steps + 1)
    return passes, unknown


@app.command("run-grid")
def run_grid(
    grid: str = typer.Option(
        "paper", "--grid", help="a grid named in the experiments file", autocompletion=complete_grid
    ),
    backbone: list[str] = typer.Option(
        [], "--backbone", help="only these backbones (repeatable)", autocompletion=complete_backbone
    ),
    dataset: list[str] = typer.Option(
        [], "--dataset", help="only these datasets (repeatable)", autocompletion=complete_dataset
    ),
    setting: list[str] = typer.Option(
        [], "--setting", help="only these settings (repeatable)", autocompletion=complete_setting
    ),
    eps: list[str] = typer.Option([], "--eps", help="only these ε_g, as k/255 (repeatable)"),
    seed: list[int] = typer.Option([], "--seed", help="only these seeds (repeatable)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="list the jobs and the work; run nothing"),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="re-queue this grid's failed runs"),
    experiments: Path | None = EXPERIMENTS,
    db: str | None = DB,
    runs_dir: Path = RUNS_DIR,
    device: str | None = DEVICE,
    workers: int | None = WORKERS,
    channels_last: bool | None = CHANNELS_LAST,
    compile_: bool = COMPILE,
    tf32: bool = TF32,
    root: list[str] = ROOTS,
    weights: list[str] = WEIGHTS,
    prune_checkpoints: bool = PRUNE,
    lease_seconds: float = LEASE,
    executor: str = EXECUTOR,
    gpus: str | None = GPUS,
    processes: int | None = PROCESSES,
    slurm_partition: str | None = SLURM_PARTITION,
    slurm_time: int | None = SLURM_TIME,
    slurm_gpus: int | None = SLURM_GPUS,
    slurm_cpus: int | None = SLURM_CPUS,
    slurm_mem: float | None = SLURM_MEM,
    slurm_jobs: int | None = SLURM_JOBS,
    slurm_parallelism: int | None = SLURM_PARALLELISM,
    slurm_folder: Path | None = SLURM_FOLDER,
    wait: bool = WAIT,
) -> None:
    """Expand a grid into runs, record them, and run every pending or interrupted one in order (in this
    process, or spread over local workers or a SLURM job array: --executor)."""
    from rftbench.data.datasets import DATASETS
    from rftbench.experiments.grids import GridError

    launch = make_launch(executor, gpus, processes, slurm_partition, slurm_time, slurm_gpus, slurm_cpus,
                         slurm_mem, slurm_jobs, slurm_parallelism, slurm_folder, wait)  # fmt: skip
    spec = read_experiments(experiments, parse_pairs("--root", root, "Cub=/data/CUB", DATASETS, "dataset"))
    try:
        budgets = [budget_arg(e) for e in eps]
    except ValueError as exc:
        fail(f"--eps: {exc}")
    spec.recorded[grid] = recorded_splits(db, grid)
    try:
        jobs = spec.jobs(
            grid, backbones=backbone, datasets=dataset, settings=setting, eps=budgets, seeds=seed
        )
    except GridError as exc:
        fail(str(exc))
    check_filters(backbone, dataset, setting)
    if not jobs:
        fail(f"grid {grid!r} has no job matching these filters; drop a filter or check its values")
    print_notes(job.config for job in jobs)
    if dry_run:
        print_source(spec, jobs)
        show_jobs(grid, jobs, db)
        return
    runner = make_runner(
        runs_dir,
        device,
        workers,
        channels_last,
        (compile_, tf32),
        root,
        weights,
        prune_checkpoints,
        lease_seconds,
    )
    ids = [job.run_id for job in jobs]
    statuses = existing_statuses(db, ids)
    preflight(runner, [(j.config, j.paths) for j in jobs if statuses.get(j.run_id) != "completed"])
    runner.store = open_store(db)
    new, known = runner.store.record_grid(
        grid,
        jobs,
        description=spec.description(grid),
        adaptation_threshold=spec.threshold(grid),
        source=str(spec.path.resolve()),
    )
    if retry_failed:
        console.print(f"re-queued {runner.queue.requeue(ids)} failed run(s)")
    done = len(runner.store.completed_ids(ids))
    print_source(spec, jobs)
    console.print(f"grid {grid}: {len(jobs)} runs ({new} new), {done} already completed")
    lacking = runner.store.lacking_evaluation(jobs)
    for protocol, precision in dict.fromkeys((j.eval_protocol, j.eval_precision) for j in lacking):
        count = sum((j.eval_protocol, j.eval_precision) == (protocol, precision) for j in lacking)
        flags = f"--protocol {protocol}" + (f" --precision {precision}" if precision != "fp32" else "")
        console.print(
            f"[yellow]note:[/] {count} completed run(s) have no {protocol} {precision} evaluation (scored by "
            f"an earlier release or another grid): `rftbench evaluate --grid {grid} {flags}` adds it",
            highlight=False,
        )
    if not runner.queue.claimable(ids) and not runner.queue.reap():
        failed = len(runner.store.runs(grid=grid, states=("failed",)))
        console.print(
            "nothing to run" + (f": {failed} failed run(s) wait for --retry-failed" if failed else "")
        )
        return
    execute(runner, ids, launch, db, spec.slurm)


def print_source(spec, jobs) -> None:
    """Which experiments file the jobs came from, and which split lists their datasets use."""
    from rftbench.experiments.files import describe_experiments

    console.print(f"experiments: {escape(describe_experiments(spec.path))}", highlight=False)
    for note in spec.split_notes(jobs):
        console.print(f"[yellow]note:[/] {escape(note)}", highlight=False)


def check_filters(backbone: list[str], dataset: list[str], setting: list[str]) -> None:
    """A filter value that names nothing in the registries is a typo: say so instead of matching nothing."""
    from rftbench.data.datasets import DATASETS
    from rftbench.models.registry import BACKBONES

    for flag, values, valid in (
        ("--backbone", backbone, BACKBONES),
        ("--dataset", dataset, DATASETS),
        ("--setting", setting, SCHEDULES),
    ):
        unknown = [v for v in values if v not in valid]
        if unknown:
            fail(f"{flag} {', '.join(unknown)}: unknown; valid ones are {', '.join(valid)}")


def show_jobs(grid: str, jobs, db: str | None) -> None:
    statuses = existing_statuses(db, [j.run_id for j in jobs])
    table = Table(title=f"grid {grid}: {len(jobs)} jobs", box=box.SIMPLE_HEAD)
    for column in ("#", "run id", "backbone", "dataset", "setting", "ε_g", "T1/T2", "seed", "status"):
        table.add_column(column, no_wrap=True)
    for job in jobs:
        c = job.config
        hinge = f"{c.t1:g}/{c.t2:g}" if c.t2 is not None else points_text(c.points)
        table.add_row(
            str(job.position),
            job.run_id[:8],
            c.backbone,
            c.dataset,
            c.setting,
            c.eps,
            hinge,
            str(c.seed),
            statuses.get(job.run_id, "new"),
        )
    console.print(table)
    passes, unknown = estimate_work([j.config for j in jobs])
    done = sum(s == "completed" for s in statuses.values())
    console.print(f"{len(jobs)} jobs: {done} completed, {len(jobs) - done} to run")
    console.print(
        f"work: {passes:.3g} training forward-backward passes (images × epochs × (attack steps + 1))"
        + (f", plus {unknown} run(s) on data of unknown size" if unknown else "")
    )


@app.command()
def run(
    backbone: str = typer.Option(..., "--backbone", autocompletion=complete_backbone),
    dataset: str = typer.Option(..., "--dataset", autocompletion=complete_dataset),
    setting: str = typer.Option(
        "fix", "--setting", help=f"one of: {', '.join(SCHEDULES)}", autocompletion=complete_setting
    ),
    eps: str = typer.Option("4/255", "--eps", help='ε_g as k/255 (a number in a grid with norm = "L2")'),
    t1: float | None = typer.Option(None, "--t1", help="sched: first epoch of the ramp"),
    t2: float | None = typer.Option(None, "--t2", help="sched/linear: epoch at which ε reaches ε_g"),
    points: str | None = typer.Option(
        None, "--points", help="piecewise: EPOCH:FRACTION of ε_g pairs, e.g. 0:0,5:0.5,30:1"
    ),
    seed: int | None = typer.Option(None, "--seed"),
    grid: str | None = typer.Option(
        None, "--grid", help="take this grid's defaults and overrides", autocompletion=complete_grid
    ),
    experiments: Path | None = EXPERIMENTS,
    db: str | None = DB,
    runs_dir: Path = RUNS_DIR,
    device: str | None = DEVICE,
    workers: int | None = WORKERS,
    channels_last: bool | None = CHANNELS_LAST,
    compile_: bool = COMPILE,
    tf32: bool = TF32,
    root: list[str] = ROOTS,
    weights: list[str] = WEIGHTS,
    prune_checkpoints: bool = PRUNE,
    lease_seconds: float = LEASE,
) -> None:
    """Run one job with a grid's defaults (or the file's [defaults]); a finished identical run is reused."""
    from rftbench.data.datasets import DATASETS
    from rftbench.experiments.grids import GridError

    spec = read_experiments(experiments, parse_pairs("--root", root, "Cub=/data/CUB", DATASETS, "dataset"))
    check_filters([backbone], [dataset], [setting])
    from rftbench.core.schedules import parse_points

    entry = (
        {"setting": setting} | ({"t1": t1} if t1 is not None else {}) | ({"t2": t2} if t2 is not None else {})
    )
    try:
        entry |= {"points": parse_points(points)} if points else {}
    except ValueError as exc:
        fail(str(exc))
    spec.recorded[grid or "defaults"] = recorded_splits(db, grid)
    try:
        job = spec.single(
            backbone, dataset, entry, eps_text(eps) if "/" in eps else eps.strip(), seed, grid=grid
        )
    except (GridError, ValueError) as exc:
        fail(str(exc))
    print_notes([job.config])
    runner = make_runner(
        runs_dir,
        device,
        workers,
        channels_last,
        (compile_, tf32),
        root,
        weights,
        prune_checkpoints,
        lease_seconds,
    )
    if existing_statuses(db, [job.run_id]).get(job.run_id) != "completed":
        preflight(runner, [(job.config, job.paths)])
    runner.store = open_store(db)
    if grid is not None and job.run_id in {j.run_id for j in spec.jobs(grid)}:
        runner.store.record_grid(
            grid,
            [job],
            description=spec.description(grid),
            adaptation_threshold=spec.threshold(grid),
            source=str(spec.path.resolve()),
        )
    else:
        runner.store.record_run(job)
    stored = runner.store.run(job.run_id)
    print_source(spec, [job])
    console.print(
        f"run {job.run_id}: {backbone}/{dataset} {job.config.setting} {job.config.eps} ({stored.status})"
    )
    if stored.status == "completed":
        console.print("nothing to run: it is completed (`rftbench evaluate` scores it again)")
        return
    if stored.status == "failed":  # asked for by name: run it again
        runner.queue.requeue([job.run_id])
        console.print(f"retrying it (it failed with: {stored.error})", highlight=False)
    execute(runner, [job.run_id], db=db)


@app.command()
def resume(
    db: str | None = DB,
    runs_dir: Path = RUNS_DIR,
    device: str | None = DEVICE,
    workers: int | None = WORKERS,
    channels_last: bool | None = CHANNELS_LAST,
    compile_: bool = COMPILE,
    tf32: bool = TF32,
    root: list[str] = ROOTS,
    weights: list[str] = WEIGHTS,
    prune_checkpoints: bool = PRUNE,
    lease_seconds: float = LEASE,
    executor: str = EXECUTOR,
    gpus: str | None = GPUS,
    processes: int | None = PROCESSES,
    slurm_partition: str | None = SLURM_PARTITION,
    slurm_time: int | None = SLURM_TIME,
    slurm_gpus: int | None = SLURM_GPUS,
    slurm_cpus: int | None = SLURM_CPUS,
    slurm_mem: float | None = SLURM_MEM,
    slurm_jobs: int | None = SLURM_JOBS,
    slurm_parallelism: int | None = SLURM_PARALLELISM,
    slurm_folder: Path | None = SLURM_FOLDER,
    wait: bool = WAIT,
) -> None:
    """Continue every pending or interrupted run from its last epoch checkpoint; completed runs are kept
    (--executor as for run-grid)."""
    launch = make_launch(executor, gpus, processes, slurm_partition, slurm_time, slurm_gpus, slurm_cpus,
                         slurm_mem, slurm_jobs, slurm_parallelism, slurm_folder, wait)  # fmt: skip
    runner = make_runner(
        runs_dir,
        device,
        workers,
        channels_last,
        (compile_, tf32),
        root,
        weights,
        prune_checkpoints,
        lease_seconds,
    )
    runner.store = open_store(db, create=False)
    # the data and weights of every unfinished run first: a problem leaves the database as it was
    unfinished = runner.store.runs(states=("pending", "interrupted", "running"))
    preflight(runner, [(RunConfig.from_json(r.config), r.paths) for r in unfinished])
    reaped = runner.queue.reap()
    todo = runner.queue.claimable()
    console.print(f"{len(todo)} run(s) to continue ({reaped} found interrupted now)")
    if todo:
        execute(runner, None, launch, db)


@app.command()
def evaluate(
    run_id: str | None = typer.Argument(
        None, help="a run id or a unique prefix of one", autocompletion=complete_run_id
    ),
    grid: str | None = typer.Option(
        None, "--grid", help="every completed run of this grid instead of one", autocompletion=complete_grid
    ),
    eps: list[str] = typer.Option(
        [], "--eps", help="budgets, k/255 for Linf, a number for L2 (repeatable) [default: the run's]"
    ),
    attack: str = typer.Option(
        "apgd", "--attack", help="apgd: rftbench's APGD-CE; autoattack: AutoAttack (torchattacks)"
    ),
    version: str = typer.Option("standard", "--version", help="with --attack autoattack: standard or plus"),
    norm: str | None = typer.Option(None, "--norm", help="threat model: Linf or L2 [default: the run's]"),
    protocol: str = typer.Option(
        "paper",
        "--protocol",
        help="paper: one attack per ε; monotone: early exit (cheaper, a union); budget: at ε_g only",
    ),
    steps: int | None = typer.Option(
        None, "--steps", min=1, help="APGD steps [default: the run's; AutoAttack: 100, as auto-attack]"
    ),
    precision: str = typer.Option(
        "fp32", "--precision", help="autocast of the attacked model: fp32, bf16, fp16"
    ),
    random_start: bool = typer.Option(False, "--random-start", help="start APGD from a random point"),
    seed: int = typer.Option(0, "--seed", help="the seed of random starts (AutoAttack's own too)"),
    db: str | None = DB,
    runs_dir: Path = RUNS_DIR,
    device: str | None = DEVICE,
    workers: int | None = WORKERS,
    root: list[str] = ROOTS,
) -> None:
    """Evaluate finished runs' final weights under a protocol, at their budgets or others (stored beside the
    final evaluation, never replacing it; an evaluation already stored is shown, not measured again). Each
    batch's result is stored as soon as it is measured: run the same command again after an interruption
    and it continues where it stopped."""
    from rftbench.core.metrics import EvalProtocol
    from rftbench.engine.checkpoint import CheckpointError
    from rftbench.engine.evaluation import EvaluationError

    if (run_id is None) == (grid is None):
        fail("name one run (RUN_ID) or one grid (--grid NAME) to evaluate")
    if attack not in ("apgd", "autoattack"):
        fail(f"--attack {attack!r} unknown: choose apgd or autoattack")
    if version not in ("standard", "plus"):
        fail(f"--version {version!r} unknown: choose standard or plus")
    attack_name = "apgd-ce" if attack == "apgd" else f"autoattack-{version}"
    options = dict(attack=attack_name, protocol=protocol, precision=precision, random_start=random_start,
                   seed=seed)  # fmt: skip
    if attack_name != "apgd-ce":
        options |= {"steps": steps or 100}
    try:
        EvalProtocol(**options, norm=norm or "Linf")
        if norm is not None:
            [budget_text(e, norm) for e in eps]
    except ValueError as exc:
        fail(str(exc))
    runner = make_runner(runs_dir, device, workers, None, (False, True), root, [], False, 120.0)
    runner.store = open_store(db, create=False)
    check_grid(runner.store, grid)
    if run_id is not None:
        runs = [runner.store.find_run(run_id)]
    else:
        runs = runner.store.runs(grid=grid, states=("completed",))
    skipped = []
    for run_ in runs:
        config = RunConfig.from_json(run_.config)
        threat = norm or config.norm
        if threat != config.norm and not eps:
            fail(f"run {run_.id} was trained under {config.norm}: pass --eps for an {threat} evaluation")
        plain = [e for e in eps if threat == "Linf" and "/" not in e and budget_value(e) != 0]
        if plain:
            fail(f"--eps {plain[0]}: run {run_.id} is ℓ∞, whose budgets are written k/255; for an ℓ2 "
                 f"evaluation pass --norm L2")  # fmt: skip
        try:
            budgets = [budget_text(e, threat) for e in eps] or list(config.scored_budgets)
        except ValueError as exc:
            fail(f"run {run_.id}: {exc}")
        chosen = EvalProtocol(**({"steps": steps or config.eval_attack_steps} | options), norm=threat)
        try:
            result, added = runner.evaluate(run_.id, budgets, chosen)
        except (CheckpointError, EvaluationError) as exc:
            if run_id is not None:
                raise
            skipped.append(f"{run_.id}: {exc}")
            continue
        table = Table(
            title=f"run {run_.id}: {chosen.label()}, {result['n']} test images", box=box.SIMPLE_HEAD
        )
        attacks = list(next(iter(result.get("per_attack", {}).values()), {}))
        for column in ("ε_g", "clean", "adv", "E.adv", *attacks):
            table.add_column(column, justify="right")
        for row in result["budgets"]:
            per_attack = result.get("per_attack", {}).get(row["budget"], {})
            cells = [row["clean"], row["adv"], row["eadv"], *(per_attack.get(a) for a in attacks)]
            table.add_row(row["budget"], *("—" if v is None else f"{100 * v:.2f}" for v in cells))
        console.print(table)
        if attacks:
            console.print("per attack: accuracy after it and every attack before it (auto-attack's order)")
        if result.get("outside_ball"):
            console.print(
                f"[yellow]{result['outside_ball']} adversarial point(s) fell outside the ball: not counted "
                f"as fooled[/]"
            )
        if added:
            console.print(f"stored {added} new evaluation row(s)")
        elif "seconds" in result:  # measured, while another process stored the same evaluation
            console.print("measured, but another process stored this evaluation first: its rows are kept")
        else:
            console.print("already stored under this protocol: nothing measured")
    for line in skipped:
        console.print(f"[red]skipped[/] {line}", highlight=False)
    if skipped:
        raise typer.Exit(code=1)


@app.command()
def status(
    db: str | None = DB,
    grid: str | None = typer.Option(None, "--grid", help="only this grid", autocompletion=complete_grid),
    experiments: Path | None = EXPERIMENTS,
) -> None:
    """Runs by state, per-grid progress and the file each grid came from, each failed run's error line,
    and the experiments file `run-grid` reads here."""
    from rftbench.experiments.files import describe_experiments, find_experiments, source_label
    from rftbench.results.queue import JobQueue
    from rftbench.results.store import STATES

    store = open_store(db, create=False, write=False)
    check_grid(store, grid)
    if store.writable:  # a read-only database shows its runs as stored
        JobQueue(store).reap()
    table = Table(title="grids", box=box.SIMPLE_HEAD)
    for column in ("grid", "runs", *STATES, "from"):
        table.add_column(
            column, no_wrap=column != "from", overflow="fold", min_width=7 if column == "from" else None
        )
    for g in store.grids():
        if grid is None or g.name == grid:
            counts = store.counts(g.name)
            table.add_row(
                g.name,
                str(sum(counts.values())),
                *(str(counts[s]) for s in STATES),
                escape(source_label(g.source)),
            )
    console.print(table)
    counts = store.counts()
    console.print("all runs: " + ", ".join(f"{counts[s]} {s}" for s in STATES))
    for run_ in store.runs(grid=grid, states=("running",)):
        console.print(
            f"[yellow]running[/] {run_.id} {run_.backbone}/{run_.dataset} {run_.setting} {run_.eps} "
            f"held by {run_.worker or 'a worker'} on {run_.host} (pid {run_.pid}), "
            f"{len(store.epochs(run_.id))}/{run_.epochs} epochs, lease until "
            f"{run_.lease_expires_at:%H:%M:%S} UTC"
        )
    for run_ in store.runs(grid=grid, states=("failed",)):
        console.print(
            f"[red]failed[/] {run_.id} {run_.backbone}/{run_.dataset} {run_.setting} {run_.eps}: "
            f"{run_.error}",
            highlight=False,
        )
    here = describe_experiments(find_experiments(experiments))
    console.print(f"experiments file here: {escape(here)}", highlight=False)


# -- reports and plots ------------------------------------------------------------------------------------
PROTOCOL = typer.Option("paper", "--protocol", help="which evaluations: paper (one APGD per ε) or monotone")
PRECISION = typer.Option("fp32", "--precision", help="which evaluations: their precision (fp32, bf16, fp16)")
STEPS = typer.Option(None, "--steps", min=1, help="which evaluations: APGD steps [default: each run's own]")


def check_out(out: Path | None) -> None:
    if out is not None and out.is_dir():
        fail(f"--out {out} is a directory: give the file to write")


def load_results(db: str | None, grid: str | None, threshold: float | None, selection=None):
    from rftbench.reports.tables import Results, Selection

    store = open_store(db, create=False, write=False)
    check_grid(store, grid)
    return Results.from_store(store, grid=grid, threshold=threshold, selection=selection or Selection())


@app.command()
def report(
    table: str = typer.Option("main", "--table", help=", ".join(TABLES), autocompletion=complete_table),
    eps: list[str] = typer.Option([], "--eps", help="only these ε_g (repeatable) [default: all present]"),
    format_: str = typer.Option(
        "md", "--format", help="md (terminal + Markdown), csv (long format) or latex"
    ),
    out: Path | None = typer.Option(None, "--out", help="write the table to this file too"),
    results: str = typer.Option(
        "ours", "--results", help="ours (the database) or paper (its published numbers)"
    ),
    compare: str | None = typer.Option(None, "--compare", help="paper: put the paper's value beside ours"),
    grid: str | None = typer.Option(
        None, "--grid", help="only this grid's runs", autocompletion=complete_grid
    ),
    run_id: str | None = typer.Option(
        None, "--run", help="evaluations: only this run (id prefix)", autocompletion=complete_run_id
    ),
    threshold: float | None = typer.Option(None, "--threshold", help="delay: adaptation threshold [grid's]"),
    include_standard: bool = typer.Option(
        False, "--include-standard", help="delay: correlate ε = 0 runs too"
    ),
    spread: str = typer.Option(
        "sd", "--spread", help="over seeds: sd (mean ± standard deviation), ci (± 95% CI half-width), none"
    ),
    pair: list[str] = typer.Option(
        [],
        "--pair",
        help="ttest: compare A:B, e.g. adaptive:sched (repeatable) [default: each vs fix, new vs sched]",
    ),
    protocol: str = PROTOCOL,
    precision: str = PRECISION,
    steps: int | None = STEPS,
    db: str | None = DB,
) -> None:
    """The paper's tables from the database (or from the paper's numbers), in %, two decimals; several
    seeds of a cell show as mean ± spread."""
    from rftbench.reports.tables import ReportError, Results, Selection, build, render

    if results not in ("ours", "paper") or compare not in (None, "paper"):
        fail("--results takes ours or paper; --compare takes paper")
    check_out(out)
    if threshold is not None and not 0 <= threshold < 1:
        fail(f"--threshold {threshold:g}: an adaptation threshold is a validation accuracy in [0, 1)")
    if format_ not in ("md", "csv", "latex"):
        fail(f"--format {format_!r}: choose md, csv or latex")
    pairs = [tuple(p.split(":")) for p in pair]
    if any(len(p) != 2 or not all(p) for p in pairs):
        fail(f"--pair {' '.join(pair)}: write each as A:B, e.g. --pair adaptive:sched")
    try:
        budgets = [budget_arg(e) for e in eps]
        selection = Selection(protocol, precision, steps)
        if compare and protocol != "paper":
            raise ReportError("--compare paper lines up against the paper protocol: drop --protocol monotone")
        data = Results.paper(table) if results == "paper" else load_results(db, grid, threshold, selection)
        sections = build(
            table,
            data,
            eps=budgets or None,
            compare=Results.paper(table) if compare else None,
            include_standard=include_standard,
            run_id=run_id,
            spread=spread,
            pairs=pairs or None,
        )
    except (ReportError, ValueError) as exc:
        fail(str(exc))
    text = render(sections, format_)
    if format_ == "md":
        for section in sections:
            rich_table = Table(title=section.title, box=box.SIMPLE_HEAD, caption=section.note or None)
            for column in section.table.columns:
                rich_table.add_column(
                    str(column),
                    justify="left"
                    if column in ("Backbone", "Setting", "Dataset", "Run", "Finding")
                    else "right",
                )
            for row in section.table.itertuples(index=False):
                rich_table.add_row(*(str(v) for v in row))
            console.print(rich_table)
    else:
        console.out(text, highlight=False)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        console.print(f"wrote {out}")


@app.command()
def plot(
    kind: str = typer.Argument(..., help=", ".join(PLOTS), autocompletion=complete_plot),
    out: Path = typer.Option(..., "--out", help="the PNG to write"),
    backbone: str | None = typer.Option(None, "--backbone", autocompletion=complete_backbone),
    dataset: str | None = typer.Option(None, "--dataset", autocompletion=complete_dataset),
    eps: str | None = typer.Option(None, "--eps", help="ε_g as k/255"),
    grid: str | None = typer.Option(
        None, "--grid", help="only this grid's runs", autocompletion=complete_grid
    ),
    epochs: int = typer.Option(50, "--epochs", help="schedule: number of epochs"),
    t1: float = typer.Option(12, "--t1", help="schedule: sched's T1"),
    t2: float = typer.Option(37, "--t2", help="schedule: sched's and linear's T2"),
    protocol: str = PROTOCOL,
    precision: str = PRECISION,
    steps: int | None = STEPS,
    db: str | None = DB,
) -> None:
    """Figures: validation curves with ε(t) and adaptation starts, robustness curves, ε sweep, schedules."""
    from rftbench.reports import plots
    from rftbench.reports.tables import ReportError, Selection

    check_out(out)
    if kind not in PLOTS:
        fail(f"unknown plot {kind!r}: choose one of {', '.join(PLOTS)}")
    try:
        budget = budget_arg(eps) if eps else None
        if kind == "schedule":
            written = plots.plot_schedules(epochs, budget or "4/255", out, t1=t1, t2=t2)
        else:
            results = load_results(db, grid, None, Selection(protocol, precision, steps))
            if kind == "curves":
                runs = results.runs
                backbone = backbone or (runs.backbone.iloc[0] if len(runs) else "")
                dataset = dataset or (runs.dataset.iloc[0] if len(runs) else "")
                written = plots.plot_curves(results, backbone, dataset, budget, out)
            elif kind == "robustness":
                written = plots.plot_robustness(results, out, backbone, dataset, budget)
            else:
                written = plots.plot_sweep(results, out, backbone)
    except (ReportError, ValueError) as exc:
        fail(str(exc))
    console.print(f"wrote {written}")


@app.command()
def bench(
    backbone: list[str] = typer.Option(
        ..., "--backbone", help="a registry backbone (repeatable)", autocompletion=complete_backbone
    ),
    resolution: int = typer.Option(224, "--resolution", min=8),
    batch_size: int = typer.Option(64, "--batch-size", min=1),
    precision: list[str] = typer.Option(
        [], "--precision", help="fp32, bf16, fp16 (repeatable) [default: bf16 on CUDA, fp32 elsewhere]"
    ),
    compile_: list[str] = typer.Option(
        ["off"], "--compile", help="off, default, reduce-overhead (CUDA graphs), max-autotune (repeatable)"
    ),
    attack_steps: int = typer.Option(7, "--attack-steps", min=1, help="APGD steps of the training attack"),
    eval_steps: int = typer.Option(10, "--eval-steps", min=1, help="APGD steps of the evaluation"),
    eps: str = typer.Option("4/255", "--eps", help="the attack's ε, as k/255"),
    batches: int = typer.Option(8, "--batches", min=1, help="timed batches per measurement"),
    grid: str | None = typer.Option(
        None, "--grid", help="project this grid's hours from the measurements", autocompletion=complete_grid
    ),
    experiments: Path | None = EXPERIMENTS,
    device: str | None = DEVICE,
    workers: int | None = WORKERS,
    tf32: bool = TF32,
    torchattacks: bool = typer.Option(
        True, "--torchattacks/--no-torchattacks", help="time torchattacks' APGD beside ours"
    ),
    as_json: bool = typer.Option(False, "--json", help="print the rows as JSON instead of a table"),
) -> None:
    """Training and evaluation throughput of backbones on this device (random init), MFU, and a grid's
    projected hours. A benchmark: run it on the machine you will train on."""
    import json

    from rftbench.core.config import PRECISIONS
    from rftbench.engine.bench import COMPILE_MODES, BenchCase, grid_hours, measure
    from rftbench.models.registry import BACKBONES

    unknown = sorted(set(backbone) - set(BACKBONES))
    if unknown:
        fail(f"--backbone {', '.join(unknown)}: unknown; valid ones are {', '.join(BACKBONES)}")
    for value, valid, flag in [(p, PRECISIONS, "--precision") for p in precision] + [
        (c, COMPILE_MODES, "--compile") for c in compile_
    ]:
        if value not in valid:
            fail(f"{flag} {value!r}: choose one of {', '.join(valid)}")
    try:
        eps = eps_text(eps)
    except ValueError as exc:
        fail(str(exc))
    configs = []
    if grid is not None:
        from rftbench.experiments.grids import GridError

        try:
            configs = [job.config for job in read_experiments(experiments).jobs(grid)]
        except GridError as exc:
            fail(str(exc))
    runtime = runtime_options(device, workers, None, False, tf32)
    precision = precision or (["bf16"] if runtime.device.startswith("cuda") else ["fp32"])
    rows = []
    for name, prec, mode in itertools.product(backbone, precision, compile_):
        case = BenchCase(name, resolution, batch_size, prec, mode, attack_steps, eval_steps, eps, batches)
        if not as_json:
            console.print(f"measuring {name} {prec} compile={mode} on {runtime.device} …", highlight=False)
        rows.append(measure(case, runtime.device, num_workers=runtime.num_workers, tf32=tf32,
                            torchattacks=torchattacks))  # fmt: skip
    if grid is not None:
        for row in rows:
            projected = grid_hours(configs, {row["backbone"]: row})
            row[f"{grid}_hours"] = projected["hours"].get(row["backbone"])
            row[f"{grid}_runs"] = projected["runs"].get(row["backbone"], 0)
        for prec, mode in itertools.product(precision, compile_):
            chosen = {r["backbone"]: r for r in rows if (r["precision"], r["compile"]) == (prec, mode)}
            total = grid_hours(configs, chosen)
            runs, unprojected = sum(total["runs"].values()), total["unprojected"]
            rows.append({"grid": grid, "precision": prec, "compile": mode, "hours": total["total"],
                         "runs": runs, "unprojected": unprojected})  # fmt: skip
    if as_json:
        print(json.dumps(rows, indent=1))
        return
    print_bench(rows, grid)


BENCH_ROWS = [  # (label, row key, format, scale, suffix): one table row per measurement
    ("clean training img/s", "clean_img_s", ".1f", 1, ""),
    ("APGD training img/s", "apgd_img_s", ".1f", 1, ""),
    ("APGD/clean time", "ratio", ".2f", 1, "×"),
    ("APGD/clean FLOPs (limit)", "gradient_limit", ".2f", 1, "×"),
    ("time over limit", "overhead", ".2f", 1, "×"),
    ("TFLOP/s (APGD training)", "tflops", ".2f", 1, ""),
    ("MFU", "mfu", ".1f", 100, "%"),
    ("peak memory GiB", "peak_memory_gib", ".1f", 1, ""),
    ("data stall (clean epoch)", "data_stall", ".1f", 100, "%"),
    ("eval clean img/s", "eval_clean_img_s", ".1f", 1, ""),
    ("eval APGD img/s (one ε)", "eval_attack_img_s", ".1f", 1, ""),
    ("eval img/s, paper protocol", "eval_paper_img_s", ".1f", 1, ""),
    ("eval img/s, monotone protocol", "eval_monotone_img_s", ".1f", 1, ""),
    ("APGD, parameters frozen", "frozen_speedup", ".2f", 1, "×"),
    ("our APGD over torchattacks'", "speedup_vs_torchattacks", ".2f", 1, "×"),
    ("robust acc. ours / torchattacks", None, "", 1, ""),
]


def print_bench(rows: list[dict], grid: str | None) -> None:
    measured = [r for r in rows if "grid" not in r]
    first = measured[0]
    table = Table(
        title=f"{first['device']}, torch {first['torch']}: {first['resolution']} px, batch "
        f"{first['batch_size']}, APGD-{first['attack_steps']} training, APGD-{first['eval_steps']} "
        f"evaluation at {first['eps']}"
    )
    table.add_column("")
    for r in measured:
        table.add_column(f"{r['backbone']} {r['precision']} compile {r['compile']}", justify="right")
    for label, key, spec, scale, suffix in BENCH_ROWS:
        if key is None:
            cells = [
                f"{100 * r['robust_ours']:.1f}% / {100 * r['robust_torchattacks']:.1f}%"
                if "robust_ours" in r else "—"
                for r in measured
            ]  # fmt: skip
        else:
            cells = ["—" if r.get(key) is None else f"{scale * r[key]:{spec}}{suffix}" for r in measured]
        table.add_row(label, *cells)
    if grid:
        table.add_row(f"{grid} grid hours (its runs)", *[
            "—" if r[f"{grid}_hours"] is None else f"{r[f'{grid}_hours']:.2f} ({r[f'{grid}_runs']})"
            for r in measured
        ])  # fmt: skip
    console.print(table)
    for total in (r for r in rows if "grid" in r):
        unprojected = total["unprojected"]
        note = f", {unprojected} runs not projected (backbone not measured)" * bool(unprojected)
        console.print(
            f"{total['grid']}: {total['hours']:.2f} hours for {total['runs']} runs in {total['precision']}, "
            f"compile {total['compile']}{note}",
            highlight=False,
        )


@app.command()
def init(
    directory: Path = typer.Argument(Path("."), help="the folder to write experiments.toml into"),
    force: bool = typer.Option(False, "--force", help="replace an experiments.toml already there"),
) -> None:
    """Write a commented copy of the bundled grids, to edit: commands run in that folder read it."""
    from rftbench.core.files import atomic_write
    from rftbench.experiments.files import BUNDLED
    from rftbench.experiments.grids import load_experiments

    target = directory / "experiments.toml"
    if target.exists() and not force:
        fail(f"{target} exists: edit it, or add --force to replace it with the bundled grids")
    if directory.exists() and not directory.is_dir():
        fail(f"{directory} is a file, not a folder: give the folder to write experiments.toml into")
    header = (
        f"# Written by `rftbench init` from the grids bundled with rftbench {__version__}.\n"
        f"# rftbench commands run in this folder read this file; elsewhere, pass\n"
        f"# --experiments {target.resolve()}. Edit a grid or add your own [grids.NAME];\n"
        "# `rftbench run-grid --grid NAME --dry-run` shows the runs a grid expands to.\n#\n"
    )
    atomic_write(target, (header + BUNDLED.read_text()).encode())
    grids = ", ".join(load_experiments(target).grids)
    console.print(f"wrote {target} with the grids {grids}", highlight=False)


data_app = typer.Typer(
    help="The paper's datasets and split lists, fetched from their sources.", no_args_is_help=True
)
app.add_typer(data_app, name="data")


class RichFetchProgress:
    """A download bar per file (size, speed, time left) and a line per step (`data.fetch.Progress`)."""

    def __init__(self) -> None:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                   TimeRemainingColumn())  # fmt: skip
        self.bar = Progress(*columns, console=console)
        self.task = None

    def __enter__(self) -> RichFetchProgress:
        self.bar.start()
        return self

    def __exit__(self, *exc) -> None:
        self.bar.stop()

    def start(self, label: str, total: int | None, completed: int) -> None:
        self.task = self.bar.add_task(label, total=total, completed=completed)

    def advance(self, amount: int) -> None:
        self.bar.advance(self.task, amount)

    def note(self, text: str) -> None:
        self.bar.console.print(text, highlight=False, markup=False)  # paths may hold [brackets]

    def say(self, markup: str) -> None:
        self.bar.console.print(markup, highlight=False)


@data_app.command("fetch")
def data_fetch(
    names: list[str] = typer.Argument(
        ...,
        help="datasets to fetch: Aircraft, Cars, Caltech, Cub, Dogs, fashion_mnist, omniglot",
        autocompletion=complete_fetchable,
    ),
    root: list[str] = typer.Option(
        [],
        "--root",
        help="DIR: each dataset into DIR/<its folder>; NAME=PATH: that dataset's root "
        "[default: where run-grid reads it: $RFTBENCH_DATA_<NAME>, else the registry's root]",
    ),
    splits_only: bool = typer.Option(
        False,
        "--splits-only",
        help="only the paper's split lists (Caltech, Cub, Dogs), into the root as it is",
    ),
    keep_archives: bool = typer.Option(False, "--keep-archives", help="keep the downloaded archives"),
) -> None:
    """Download datasets from their sources, check their checksums and unpack them where `run-grid` reads
    them, with the paper's split lists; an interrupted download resumes when run again."""
    from rftbench.data.datasets import DATASETS, DataNotFound, env_var, resolve_root
    from rftbench.data.fetch import SOURCES, FetchError, fetch

    unknown = [n for n in names if n not in SOURCES]
    if unknown:
        fail(f"no source for {', '.join(unknown)}: fetchable datasets are {', '.join(SOURCES)}")
    parents = [item for item in root if "=" not in item]
    if len(parents) > 1:
        fail(f"--root {parents[1]}: give one DIR for all datasets (and NAME=PATH for single ones)")
    own = parse_pairs("--root", [item for item in root if "=" in item], "Cub=/data/CUB", DATASETS, "dataset")
    if stray := sorted(set(own) - set(names)):
        fail(f"--root {stray[0]}=…: {stray[0]} is not among the datasets to fetch ({', '.join(names)})")
    failed, errors = [], Console(stderr=True)
    with RichFetchProgress() as progress:
        for name in dict.fromkeys(names):
            folder = Path(DATASETS[name].default_root).name
            target = (
                Path(own[name])
                if name in own
                else Path(parents[0]) / folder
                if parents
                else resolve_root(name)
            )
            try:
                done = fetch(
                    name, target, splits_only=splits_only, keep_archives=keep_archives, progress=progress
                )
            except (FetchError, DataNotFound) as exc:
                line = escape(str(exc).splitlines()[0])
                errors.print(f"[bold red]error:[/] {name}: {line}", soft_wrap=True, highlight=False)
                failed.append(name)
                continue
            except KeyboardInterrupt:
                progress.note(f"stopped during {name}: the same command resumes its download")
                raise typer.Exit(code=130) from None
            what = "fetched"
            if done.found:
                what = "already there (not fetched by rftbench, left as it is)"
            elif done.already and not done.downloaded:
                what = "already complete"
            splits = f", the paper's split lists in {done.splits}" if done.splits else ""
            progress.say(f"[green]{name}[/]: {escape(what)} in {escape(str(done.root))}{escape(splits)}")
            if done.root.resolve() != resolve_root(name).resolve():
                where = escape(str(done.root))
                progress.say(f"  run-grid reads it with --root {name}={where} or {env_var(name)}={where}")
    if failed:
        raise typer.Exit(code=2)


if __name__ == "__main__":
    app()
