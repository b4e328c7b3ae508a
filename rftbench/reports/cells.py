"""Which table cell a stored run fills: its keys, the variant of the recipe it trained (objective and
fine-tuning mode, `RunConfig.variant`), and one run per cell and seed.

    runs, note = newest_per_cell(store.runs())    # each cell's newest run per seed; what was set aside

Two runs that differ only in their objective or fine-tuning mode are two experiments (STYLE.md 20): they
fill two cells, are never set aside against each other and never averaged into one number.
"""

from __future__ import annotations

import dataclasses
import json

from rftbench.core.config import VARIANT_FIELDS, RunConfig

# The run-config fields a variant is made of, with their defaults: a config stored by a release before them
# lacks the keys, and means these values
VARIANT_DEFAULTS = {f.name: f.default for f in dataclasses.fields(RunConfig) if f.name in VARIANT_FIELDS}


def standard_variant(config: RunConfig) -> str:
    """The variant of `config`'s standard fine-tuning (ε_g = 0) counterpart: the run its clean loss is
    measured against. The config decides (TRADES at ε = 0 is cross-entropy: `trades` falls back to "",
    `trades+lora` to `lora`); a config that cannot be put at ε_g = 0 keeps its own variant."""
    if config.eps_value == 0:
        return config.variant
    try:
        return RunConfig.from_dict({**config.to_dict(), "eps": "0"}).variant
    except (ValueError, TypeError):
        return config.variant


def trainable_params(run) -> int | None:
    """The trainable-parameter count a run recorded in its provenance; None for runs of earlier releases."""
    value = (run.provenance or {}).get("trainable_params")
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def newest_per_cell(runs: list) -> tuple[list, str]:
    """One run per table cell and seed: where a grid holds several (its definition changed, e.g. from
    fp32 to bf16, and both were run), the newest, and a note naming what the others differ in. Averaging
    them would mix two experiments into one number."""
    newest: dict[tuple, object] = {}
    for run in sorted(runs, key=lambda r: r.created_at):
        newest[cell_key(run)] = run
    kept = {run.id for run in newest.values()}
    aside = [run for run in runs if run.id not in kept]
    if not aside:
        return runs, ""
    differ: set[str] = set()
    for run in aside:
        shown = newest[cell_key(run)]
        old, new = json.loads(run.config), json.loads(shown.config)
        differ |= {key for key in old.keys() | new.keys() if old.get(key) != new.get(key)}
    return [run for run in runs if run.id in kept], (
        f"{len(aside)} older run(s) set aside ({', '.join(r.id for r in aside[:5])}"
        f"{', …' if len(aside) > 5 else ''}): a newer run of the same cell differs in "
        f"{', '.join(sorted(differ))}; each cell shows its newest run"
    )


def cell_key(run) -> tuple:
    """The table cell and seed a stored run fills: piecewise runs of different points, and runs of
    different variants (a missing key: its default), are different cells."""
    config = json.loads(run.config)
    points = config.get("points") or []
    variant = tuple(config.get(name, default) for name, default in VARIANT_DEFAULTS.items())
    return (run.backbone, run.dataset, run.setting, run.eps, run.t1, run.t2, str(points), variant, run.seed)
