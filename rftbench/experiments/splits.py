"""What `splits = "auto"` chooses for a dataset's runs, and the notes `run-grid` prints about it
(rftbench.experiments.grids records each choice per run).

    splits, decided = choose_splits("Cub", "auto", paths={}, root=None, recorded=None)
    for line in split_notes(experiments.split_choices, [job.run_id for job in jobs]): print(line)
"""

from __future__ import annotations

from pathlib import Path

from rftbench.data.lists import paper_split_dir
from rftbench.data.registry import PAPER_SPLITS, SPLIT_FOLDER, data_root, resolve_root


def choose_splits(
    dataset: str, choice: str, paths: dict, root: str | None, recorded: str | None
) -> tuple[str, tuple[str, str, Path] | None]:
    """A run's `splits` from the grid's choice, and how "auto" decided it (None: it did not). "auto"
    keeps what the grid's runs of this dataset were `recorded` with; for a grid new to the database it is
    "paper" where the dataset has paper split lists in its data root (`root` from a flag, else its
    `paths`' `data_root`, or its `split_file` folder), else "rules". A grid that names a split file of its
    own keeps it ("rules")."""
    if choice != "auto" or dataset not in PAPER_SPLITS:
        return (choice if choice != "auto" else "rules"), None
    split_file = paths.get("split_file")
    if split_file is not None and not Path(split_file).expanduser().is_dir():
        return "rules", None
    root = data_root(dataset, root, paths.get("data_root"))
    folder = paper_split_dir(dataset, root, split_file)
    where = folder or (
        Path(split_file).expanduser() if split_file else resolve_root(dataset, root) / SPLIT_FOLDER
    )
    present = "paper" if folder is not None else "rules"
    if recorded is not None and recorded != present:
        return recorded, ("recorded", recorded, where)
    return present, ("found", present, where)


def split_notes(choices: dict[str, tuple[str, str, str, Path]], run_ids: list[str]) -> list[str]:
    """One line per dataset of `run_ids` whose `splits` "auto" decided, from `choices` (run id -> dataset,
    how it decided, what it chose, the folder it looked in)."""
    notes = {}
    for run_id in run_ids:
        if run_id not in choices:
            continue
        dataset, how, chosen, folder = choices[run_id]
        if how == "recorded" and chosen == "rules":
            text = (
                f"{dataset}: this grid's runs were recorded with the seeded split rules and keep them, "
                f'though the paper\'s lists are now in {folder}; set splits = "paper" in the grid to '
                f"train new runs on them"
            )
        elif how == "recorded":
            text = (
                f"{dataset}: this grid's runs were recorded with the paper's split lists, which are "
                f"not in {folder} here; give the data root that holds them (--root {dataset}=PATH)"
            )
        elif chosen == "paper":
            text = f"{dataset}: the paper's split lists from {folder}"
        else:
            text = (
                f"{dataset}: the paper's split lists are not in {folder}, so its runs use the seeded "
                f'split rules (recorded as splits = "rules"); `rftbench data fetch {dataset} '
                f"--splits-only` downloads them"
            )
        notes.setdefault(dataset, text)
    return list(notes.values())
