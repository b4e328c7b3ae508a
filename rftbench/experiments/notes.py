"""The notes `run-grid` prints about a grid's split lists: what `splits = "auto"` chose for each dataset
and where it looked (rftbench.experiments.grids records the choices).

    for line in split_notes(experiments.split_choices, [job.run_id for job in jobs]): print(line)
"""

from __future__ import annotations

from pathlib import Path


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
