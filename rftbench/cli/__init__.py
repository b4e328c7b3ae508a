"""The `rftbench` command line: thin Typer commands that parse, call one function of the layer below
(rftbench.execution, rftbench.reports) and print what it returns.

    rftbench schedule sched --eps 4/255 --t1 12 --t2 37 --epochs 50
"""

from rftbench.cli import info, runs, tune, reports, bench, starter, data  # noqa: F401, I001  (each registers its commands, in this order)
from rftbench.cli.app import app

__all__ = ["app"]
