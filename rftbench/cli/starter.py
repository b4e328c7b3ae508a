"""`rftbench init`: a copy of the bundled grids to edit (rftbench.experiments.starter writes it).

rftbench init mystudy
"""

from __future__ import annotations

from pathlib import Path

import typer

from rftbench.cli.app import app, console


@app.command()
def init(
    directory: Path = typer.Argument(Path("."), help="the folder to write experiments.toml into"),
    force: bool = typer.Option(False, "--force", help="replace an experiments.toml already there"),
) -> None:
    """Write a commented copy of the bundled grids, to edit (commands run in that folder read it), and its
    JSON schema beside it for editors."""
    from rftbench.experiments.starter import write_experiments

    target, grids = write_experiments(directory, force)
    console.print(
        f"wrote {target} with the grids {', '.join(grids)}, and its schema for editors", highlight=False
    )
