"""The `rftbench` command line: thin Typer commands that parse, delegate and print.

rftbench schedule sched --eps 4/255 --t1 12 --t2 37 --epochs 50
"""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from rftbench import __version__
from rftbench.config import eps_text, parse_eps
from rftbench.schedules import SCHEDULES, ScheduleSpec

app = typer.Typer(
    help="Robust fine-tuning of non-robust pretrained models, with ε-scheduling.", no_args_is_help=True
)
console = Console()


def fail(message: str) -> None:
    """One clear line on stderr and a non-zero exit, instead of a traceback."""
    Console(stderr=True).print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


@app.callback()
def main() -> None:
    """rftbench: adversarial fine-tuning runs, metrics and reports."""


@app.command()
def version() -> None:
    """Print the package version."""
    console.print(f"rftbench {__version__}")


@app.command()
def schedule(
    setting: str = typer.Argument(..., help=f"one of: {', '.join(SCHEDULES)}"),
    eps: str = typer.Option("4/255", help="ε_g, written as k/255"),
    epochs: int = typer.Option(50, min=1),
    t1: float | None = typer.Option(None, help="sched: first epoch of the ramp (0-based)"),
    t2: float | None = typer.Option(None, help="sched/linear: epoch at which ε reaches ε_g"),
    seed: int = typer.Option(0, help="uniform: the run's seed"),
) -> None:
    """Print ε(t) per 0-based epoch for a schedule (auto needs a validation history, so it is not shown)."""
    try:
        spec = ScheduleSpec(setting, float(parse_eps(eps)), t1=t1, t2=t2).canonical()
        spec.validate(epochs)
    except ValueError as exc:
        fail(str(exc))
    if spec.setting == "auto":
        fail("auto depends on the validation accuracy of a run; it has no fixed ε(t) to print")
    table = Table(title=f"{spec.setting}: ε_g = {eps_text(eps)}, {epochs} epochs")
    for column in ("epoch", "α(t)", "ε(t) × 255", "ε(t)"):
        table.add_column(column, justify="right")
    for epoch, value in enumerate(spec.values(epochs, seed=seed)):
        alpha = value / spec.eps if spec.eps else 0.0
        table.add_row(str(epoch), f"{alpha:.4f}", f"{value * 255:.4f}", f"{value:.6f}")
    console.print(table)


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
        [], "--weights", help="NAME=FILE: check a local weights file (repeatable)"
    ),
) -> None:
    """List the backbone registry and whether each backbone's weights are available locally."""
    from rftbench.backbones import BACKBONES, WeightsUnavailable, resolve_weights, weights_available

    files = parse_pairs("--weights", weights, "SWIN=swin.safetensors", BACKBONES, "backbone")
    table = Table(title="backbones")
    for column in ("name", "source", "model", "pretrained tag", "size", "mean / std", "head", "weights here"):
        table.add_column(column, overflow="fold")
    for spec in BACKBONES.values():
        try:
            where = str(resolve_weights(spec.name, files[spec.name])) if spec.name in files else ""
        except (WeightsUnavailable, ValueError) as exc:
            fail(str(exc))
        where = where or weights_available(spec.name)
        mean, std = spec.normalization
        table.add_row(
            spec.name, spec.source, spec.model, spec.tag, str(spec.size),
            f"{'/'.join(f'{v:.3g}' for v in mean)} / {'/'.join(f'{v:.3g}' for v in std)}", spec.head,
            f"[green]yes[/] {where}" if where else f"[red]no[/] (set {spec.env_var})",
        )  # fmt: skip
    console.print(table)


@app.command()
def datasets(
    root: list[str] = typer.Option([], "--root", help="NAME=PATH: a dataset's data root (repeatable)"),
) -> None:
    """List the dataset registry and whether each dataset's data is found locally."""
    from rftbench.datasets import DATASETS, LAYOUTS, env_var, resolve_root, samples

    roots = parse_pairs("--root", root, "Cub=/data/CUB", DATASETS, "dataset")
    table = Table(title="datasets")
    for column in ("name", "classes", "train / val / test (protocol)", "root", "found", "layout"):
        table.add_column(column, overflow="fold")
    for spec in DATASETS.values():
        path = resolve_root(spec.name, roots.get(spec.name))
        try:
            if spec.load is not None:
                samples(spec.name, path, "val")
            elif not any(path.glob("*idx3-ubyte*")):
                raise FileNotFoundError(path)
            found = "[green]yes[/]"
        except (OSError, ValueError, RuntimeError):
            found = f"[red]no[/] (set {env_var(spec.name)})"
        table.add_row(spec.name, str(spec.classes or "any"), spec.sizes, str(path), found, LAYOUTS[spec.name])
    console.print(table)
