"""Which experiments file a command reads, and how to name it: the paper's grids ship with the package
(`BUNDLED`, rftbench/experiments.toml); an edited copy in the working folder (`rftbench init`) wins over
it, and --experiments (or RFTBENCH_EXPERIMENTS) over both.

    path = find_experiments(None)    # ./experiments.toml if there, else the bundled file
    print(describe_experiments(path))

Kept apart from `experiments.grids`, which validates the file against the registries, so that `status` can
say which file it would read without loading them.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

BUNDLED = Path(str(files("rftbench") / "experiments.toml"))
LOCAL = Path("experiments.toml")


def find_experiments(given: str | Path | None) -> Path:
    """The experiments file a command reads: the one given (--experiments, RFTBENCH_EXPERIMENTS), else
    ./experiments.toml where it exists, else the file bundled with rftbench."""
    if given is not None:
        return Path(given)
    return LOCAL if LOCAL.is_file() else BUNDLED


def source_label(source: str) -> str:
    """A grid's recorded experiments file, short: "bundled" for the package's own."""
    if source and Path(source).resolve() == BUNDLED.resolve():
        return "bundled"
    return source


def describe_experiments(path: Path) -> str:
    """Which experiments file that is, in words, for `status` and `run-grid`."""
    from rftbench.version import __version__

    if path.resolve() == BUNDLED.resolve():
        return f"{path} (bundled with rftbench {__version__}; `rftbench init` writes a copy to edit)"
    return str(path.resolve())
