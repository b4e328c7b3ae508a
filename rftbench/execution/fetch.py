"""What `rftbench data fetch` does below the command line: fetch each dataset where `run-grid` reads it,
one line per dataset, a failed one not stopping the others.

    outcome = fetch_datasets(["Cub"], progress, error=print)   # Outcome: exit 2 if one failed
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from rich.markup import escape  # lines are console markup: paths may hold [brackets]

from rftbench.execution.options import LaunchError
from rftbench.execution.workers import Outcome


def check_names(names: list[str], own: dict[str, str]) -> None:
    from rftbench.data.sources import SOURCES

    unknown = [n for n in names if n not in SOURCES]
    if unknown:
        raise LaunchError(f"no source for {', '.join(unknown)}: fetchable datasets are {', '.join(SOURCES)}")
    if stray := sorted(set(own) - set(names)):
        raise LaunchError(
            f"--root {stray[0]}=…: {stray[0]} is not among the datasets to fetch ({', '.join(names)})"
        )


def fetch_datasets(
    names: list[str],
    progress,
    *,
    own: dict[str, str] | None = None,
    parent: str | None = None,
    splits_only: bool = False,
    keep_archives: bool = False,
    error: Callable[[str], None] = print,
) -> Outcome:
    """Fetch `names` into their own root (`own`), else PARENT/<folder>, else where run-grid reads them;
    `progress` (data.fetch.Progress) shows the downloads and a line per dataset, `error` each failure."""
    from rftbench.data.download import FetchError
    from rftbench.data.errors import DataNotFound
    from rftbench.data.fetch import fetch
    from rftbench.data.registry import DATASETS, env_var, resolve_root

    own = own or {}
    check_names(names, own)
    failed = []
    for name in dict.fromkeys(names):
        folder = Path(DATASETS[name].default_root).name
        target = Path(own[name]) if name in own else Path(parent) / folder if parent else resolve_root(name)
        try:
            done = fetch(
                name, target, splits_only=splits_only, keep_archives=keep_archives, progress=progress
            )
        except (FetchError, DataNotFound) as exc:
            error(f"{name}: {str(exc).splitlines()[0]}")
            failed.append(name)
            continue
        except KeyboardInterrupt:
            progress.note(f"stopped during {name}: the same command resumes its download")
            return Outcome(exit_code=130)
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
    return Outcome(exit_code=2 if failed else 0)
