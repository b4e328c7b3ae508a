"""`rftbench data fetch`: the paper's datasets and split lists from their sources
(rftbench.execution.fetch fetches; this parses and shows the progress).

    rftbench data fetch Cub Dogs --root /data
"""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape

from rftbench.cli.app import app, fail, finish
from rftbench.cli.options import complete_fetchable, parse_roots
from rftbench.cli.progress import RichFetchProgress

data_app = typer.Typer(
    help="The paper's datasets and split lists, fetched from their sources.", no_args_is_help=True
)
app.add_typer(data_app, name="data")


def error_line(line: str) -> None:
    Console(stderr=True).print(f"[bold red]error:[/] {escape(line)}", soft_wrap=True, highlight=False)


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
        help="DIR: each dataset into DIR/\\<its folder>; NAME=PATH: that dataset's root "
        "[default: where run-grid reads it: $RFTBENCH_DATA_\\<NAME>, else the registry's root]",
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
    from rftbench.execution.fetch import fetch_datasets

    parents = [item for item in root if "=" not in item]
    if len(parents) > 1:
        fail(f"--root {parents[1]}: give one DIR for all datasets (and NAME=PATH for single ones)")
    own = parse_roots([item for item in root if "=" in item])
    with RichFetchProgress() as progress:
        outcome = fetch_datasets(
            names,
            progress,
            own=own,
            parent=next(iter(parents), None),
            splits_only=splits_only,
            keep_archives=keep_archives,
            error=error_line,
        )
    finish(outcome)
