"""One presentation step for every report: a section's numbers become Markdown, CSV or LaTeX (and, in
`commands.rich_tables`, the terminal's table) through the same shown table, so every format shows the
same numbers.

    print(render(sections, "md"))    # "csv": the long-format numbers; "latex": one table per section

Numbers are percent with two decimals in every output (CONVENTIONS.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import pandas as pd

from rftbench.reports.results import ReportError

LABEL_COLUMNS = ("Backbone", "Setting", "Dataset", "Run", "Finding")  # left-justified in the terminal


@dataclass
class Section:
    """One table of a report: its numbers in long format (`frame`: one row per number, with the labels it
    belongs to), how a table shows them (`view`: rows and columns of text, for Markdown, LaTeX and the
    terminal), what the CSV writes (`csv`: by default the frame itself), a title and a note."""

    title: str
    frame: pd.DataFrame
    view: Callable[[pd.DataFrame], pd.DataFrame] | None = None
    note: str = ""
    csv: Callable[[pd.DataFrame], pd.DataFrame] | None = None

    @property
    def table(self) -> pd.DataFrame:
        """What is shown: one string (or count) per cell."""
        return self.view(self.frame) if self.view and not self.frame.empty else self.frame

    @property
    def long(self) -> pd.DataFrame:
        """The machine-readable rows (values in percent)."""
        return self.csv(self.frame) if self.csv and not self.frame.empty else self.frame


def fmt(value: float | None) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"


def cell(stat: Mapping, spread: str) -> str:
    """`53.60 ± 1.20`: the mean over seeds (`value`) ± their standard deviation (spread "sd") or the
    half-width of the 95% confidence interval ("ci"); one seed, or spread "none", shows the value alone."""
    if stat["n"] < 2 or spread == "none":
        return fmt(stat["value"])
    half = stat["sd"] if spread == "sd" else stat["ci_high"] - stat["value"]
    return f"{stat['value']:.2f} ± {half:.2f}"


def stat_columns(stat: Mapping) -> dict:
    """n, sd and the 95% CI of a cell over several seeds, for the CSV (nothing for one seed)."""
    if stat["n"] < 2:
        return {}
    return {"n": stat["n"], **{k: round(stat[k], 2) for k in ("sd", "ci_low", "ci_high")}}


def spread_note(seeds: int, spread: str) -> str:
    """What ± means in a table whose cells pool up to `seeds` seeds (empty for single-seed tables)."""
    if seeds < 2 or spread == "none":
        return f"means over up to {seeds} seeds" if seeds > 1 else ""
    what = "standard deviation" if spread == "sd" else "half-width of the 95% confidence interval (Student t)"
    return f"mean ± {what} over up to {seeds} seeds (n per cell in the CSV)"


def to_markdown(sections: list[Section]) -> str:
    out = []
    for section in sections:
        out.append(f"### {section.title}\n")
        table = section.table
        if table.empty:
            out.append("(no rows)\n")
        else:
            cells = [[str(c) for c in table.columns]] + [
                [str(v) for v in row] for row in table.itertuples(index=False)
            ]
            out.append("| " + " | ".join(cells[0]) + " |")
            out.append("|" + "|".join("---" for _ in cells[0]) + "|")
            out += ["| " + " | ".join(row) + " |" for row in cells[1:]]
            out.append("")
        if section.note:
            out.append(f"_{section.note}_\n")
    return "\n".join(out)


def to_csv(sections: list[Section]) -> str:
    frames = [long.assign(table=s.title) for s in sections if not (long := s.long).empty]
    return pd.concat(frames, ignore_index=True).to_csv(index=False) if frames else ""


def to_latex(sections: list[Section]) -> str:
    out = []
    for section in sections:
        table = section.table
        if table.empty:
            continue
        styler = table.style.hide(axis="index").format(escape="latex")
        caption = section.title.replace("%", r"\%").replace("_", r"\_")
        out.append(styler.to_latex(hrules=True, caption=caption, position_float="centering"))
    return "\n".join(out)


def render(sections: list[Section], format_: str) -> str:
    """`sections` as Markdown ("md"), long-format CSV ("csv") or LaTeX ("latex")."""
    writers = {"md": to_markdown, "csv": to_csv, "latex": to_latex}
    if format_ not in writers:
        raise ReportError(f"unknown format {format_!r}: choose md, csv or latex")
    return writers[format_](sections)
