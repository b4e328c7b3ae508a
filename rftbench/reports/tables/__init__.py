"""The paper's tables, statistics and delay correlations, one builder per table (`BUILDERS`), each giving
its numbers as long frames (`Section`) that `render` turns into Markdown, CSV or LaTeX.

    results = Results.from_store(Store.open("rftbench.db"))    # or Results.paper("main")
    sections = build("main", results, eps=["4/255"])
    print(render(sections, "md"))

Seeds are an axis: a cell with several seeds shows their mean ± their standard deviation, or the half-width
of the 95% confidence interval of the mean (`spread`, SPREADS); paired tests pair by (backbone, dataset,
seed); delay correlations take every seed's run as a point. One seed, and the paper's numbers, show as is.
"""

from __future__ import annotations

from rftbench.core.config import TABLES, budget_value
from rftbench.reports.render import Section
from rftbench.reports.results import ReportError, Results
from rftbench.reports.stats import eps_order
from rftbench.reports.tables.baselines import ablation_table, baselines_table
from rftbench.reports.tables.delay import delay_table
from rftbench.reports.tables.evaluations import autoattack_table, evaluations_table
from rftbench.reports.tables.main import averages_table, main_table
from rftbench.reports.tables.paired import effect_table, ttest_table
from rftbench.reports.tables.tuning import tuning_table
from rftbench.reports.weights import weights_note

__all__ = ["BUILDERS", "SPREADS", "build"]

SPREADS = ("sd", "ci", "none")  # what ± shows over seeds: standard deviation, 95% CI, nothing

# each table's builder, called with (results, budgets, options): the options each one reads by name
BUILDERS = {
    "main": lambda results, eps, o: main_table(results, eps, o["compare"], o["spread"]),
    "averages": lambda results, eps, o: averages_table(results, eps, o["spread"]),
    "ttest": lambda results, eps, o: ttest_table(results, eps, o["pairs"]),
    "effect": lambda results, eps, o: effect_table(results, eps),
    "delay": lambda results, eps, o: delay_table(results, o["include_standard"]),
    "ablation": lambda results, eps, o: ablation_table(results, eps, o["spread"]),
    "baselines": lambda results, eps, o: baselines_table(results, eps, o["spread"]),
    "evaluations": lambda results, eps, o: evaluations_table(results, o["run_id"]),
    "autoattack": lambda results, eps, o: autoattack_table(results),
    "tuning": lambda results, eps, o: tuning_table(results),
}
assert set(BUILDERS) == set(TABLES), "every table the CLI offers has one builder"


def build(
    name: str,
    results: Results,
    *,
    eps: list[str] | None = None,
    compare: Results | None = None,
    include_standard: bool = False,
    run_id: str | None = None,
    spread: str = "sd",
    pairs: list[tuple[str, str]] | None = None,
) -> list[Section]:
    """The sections of report `name` (one of TABLES); `spread` is what ± shows over seeds (SPREADS),
    `pairs` the (a, b) settings the t-test table compares (`paired.resolve_pairs`: plain settings within
    each variant, full labels as named; default: `default_pairs`)."""
    if name not in TABLES:
        raise ReportError(f"unknown table {name!r}: choose one of {', '.join(TABLES)}")
    if spread not in SPREADS:
        raise ReportError(f"--spread {spread!r}: choose one of {', '.join(SPREADS)}")
    budgets = eps or eps_order(v for v in results.values.eps if budget_value(v) > 0)
    if compare is not None and name != "main":
        raise ReportError("--compare paper is available for the main table")
    options = {"compare": compare, "spread": spread, "pairs": pairs, "include_standard": include_standard,
               "run_id": run_id}  # fmt: skip
    sections = BUILDERS[name](results, budgets, options)
    if name == "tuning":  # validation accuracies of trials: no test protocol, no kept weights to name
        return sections
    # every table says which weights its numbers describe, how they were measured and what it leaves out
    # (evaluations and autoattack say how in notes of their own)
    measured = name not in ("evaluations", "autoattack")
    for section in sections:
        said = f"test accuracies: {results.protocol}" if measured else ""
        shown = f"{section.title}\n{section.table.to_csv(index=False)}"
        weights = weights_note(results.policies, shown, per_row=name == "evaluations")
        notes = (section.note, said, weights, results.missing if measured else "")
        section.note = "; ".join(n for n in notes if n)
    return sections
