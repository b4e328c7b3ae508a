"""`rftbench init`: a commented copy of the bundled grids to edit, and the file's JSON schema beside it.

    path, grids = write_experiments(Path("study"))    # study/experiments.toml, study/experiments.schema.json

Editors that read `#:schema` comments (taplo, Even Better TOML) then complete and check the copy's keys.
"""

from __future__ import annotations

import json
from pathlib import Path

from rftbench.core.files import atomic_write
from rftbench.experiments.files import BUNDLED
from rftbench.experiments.grids import GridError, load_experiments
from rftbench.experiments.schema import experiments_schema
from rftbench.version import __version__

SCHEMA_NAME = "experiments.schema.json"


def write_experiments(directory: Path, force: bool = False) -> tuple[Path, list[str]]:
    """Write DIRECTORY/experiments.toml (and its schema); the path written and the grids it names."""
    target = directory / "experiments.toml"
    if target.exists() and not force:
        raise GridError(f"{target} exists: edit it, or add --force to replace it with the bundled grids")
    if directory.exists() and not directory.is_dir():
        raise GridError(
            f"{directory} is a file, not a folder: give the folder to write experiments.toml into"
        )
    header = (
        f"# Written by `rftbench init` from the grids bundled with rftbench {__version__}.\n"
        f"# rftbench commands run in this folder read this file; elsewhere, pass\n"
        f"# --experiments {target.resolve()}. Edit a grid or add your own [grids.NAME];\n"
        "# `rftbench run-grid --grid NAME --dry-run` shows the runs a grid expands to.\n"
        f"#:schema ./{SCHEMA_NAME}\n#\n"
    )
    atomic_write(directory / SCHEMA_NAME, (json.dumps(experiments_schema(), indent=2) + "\n").encode())
    atomic_write(target, (header + BUNDLED.read_text()).encode())
    return target, list(load_experiments(target).grids)
