"""Which stored results a report shows, read from the results database or the paper's numbers.

    results = Results.from_store(Store.open("rftbench.db"))    # or Results.paper("main")

Reads the store and never trains (STYLE.md 7). Accuracies are stored as fractions and kept here in percent
(CONVENTIONS.md). `Results.paper(table)` reads the paper's published numbers shipped with the package
(`paper_results.csv`); CONVENTIONS.md says which paper table feeds which report.

A run may hold evaluations under several protocols (rftbench.core.metrics). A report shows one: `Selection`
picks, per run, the rows of that protocol (default: the paper's, fp32, each run's own attack steps), so no
cell mixes two protocols; every table says which one it shows, and names the runs that have no row under
it (`rftbench evaluate` adds one). Of those rows, a run is reported by the ones of the weights it keeps
(`RunConfig.weights_policy`: the last epoch's, or its best epoch's or EMA weights; `reports.weights`).

Every row carries its run's `variant` (objective and fine-tuning mode off AT and full fine-tuning,
`RunConfig.variant`; "" for the paper's recipe and for configs stored before the fields existed): tables
label such rows "fix+trades", "sched+lora" (`stats.setting_labels`) and never average two variants.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from importlib.resources import files

import numpy as np
import pandas as pd

from rftbench.core.config import PRECISIONS, PROTOCOLS, RunConfig, template_variant
from rftbench.core.metrics import EvalProtocol
from rftbench.core.tuning import best_trial
from rftbench.errors import RftbenchError
from rftbench.reports.cells import newest_per_cell, standard_variant, trainable_params
from rftbench.reports.weights import described, policy_label
from rftbench.results.studies import Studies

METRICS = {"clean": "Clean", "adv": "Adv.", "eadv": "E. adv."}
PAPER_TABLES = {
    "main": ("1", "2"),
    "averages": ("1", "2"),
    "ttest": ("1", "2"),
    "ablation": ("7",),
    "baselines": ("4", "8"),
    "autoattack": ("6-apgd", "6-autoattack"),
}
BASELINE_SETTINGS = ("fix", "uniform", "auto", "sched", "adaptive")
KEYS = ["backbone", "dataset", "setting", "variant", "eps", "t1", "t2"]  # variant: RunConfig.variant

NORM_SIGNS = {"Linf": "ℓ∞", "L2": "ℓ2"}
PAPER_PROTOCOL = "the paper's published numbers (APGD-CE-10 ℓ∞, one attack per ε)"


class ReportError(RftbenchError, ValueError):
    """One line: what the report cannot show and why."""


def no_results(eps: list[str], results: Results) -> ReportError:
    """What a table says when it has nothing to show: at these budgets, or no scored run at all (a database
    of tuning trials alone: those no grid holds are left out)."""
    if eps:
        return ReportError(f"no results at ε_g = {', '.join(eps)} in the {results.source}")
    trials = " (tuning trials no grid holds are left out: `rftbench report --table tuning`)"
    shown = trials if len(results.tuning) else ""
    return ReportError(
        f"no results at ε_g in the {results.source}: no completed run has an evaluation{shown}"
    )


@dataclass(frozen=True)
class Selection:
    """Which evaluation rows a report shows: per run, those measured under one `EvalProtocol` (a per-ε
    protocol, a precision and `steps`, None meaning each run's own `eval_attack_steps`; APGD-CE ℓ∞ from the
    clean image, one restart), at the run's own ε_g (a standard run: every budget it is scored at), of the
    weights the run keeps (`RunConfig.weights_policy`: a best or EMA run's last-epoch rows are not its)."""

    protocol: str = "paper"
    precision: str = "fp32"
    steps: int | None = None

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ReportError(f"--protocol {self.protocol!r}: choose {' or '.join(PROTOCOLS)}")
        if self.precision not in PRECISIONS:
            raise ReportError(f"--precision {self.precision!r}: choose one of {', '.join(PRECISIONS)}")

    def rows(self, evaluations: list, config: RunConfig) -> list:
        wanted = EvalProtocol(
            self.protocol,
            steps=self.steps or config.eval_attack_steps,
            precision=self.precision,
            norm=config.norm,
        )
        budgets = config.scored_budgets if config.eps_value == 0 else (config.eps,)
        return [
            ev
            for ev in evaluations
            if ev.budget in budgets and ev.eval_protocol() == wanted and ev.weights == config.weights_policy
        ]

    def command(self) -> str:
        """The `rftbench evaluate` that adds this selection's rows to a grid's completed runs."""
        flags = f" --precision {self.precision}" if self.precision != "fp32" else ""
        return f"rftbench evaluate --grid GRID --protocol {self.protocol}{flags}" + (
            f" --steps {self.steps}" if self.steps else ""
        )

    def label(self, steps: set[int], norms: set[str] = frozenset()) -> str:
        per_eps = "one attack per ε" if self.protocol == "paper" else "early exit, a union of attacks"
        shown = ", ".join(str(k) for k in sorted(steps)) or str(self.steps or "the run's")
        signs = "/".join(NORM_SIGNS[n] for n in sorted(norms, reverse=True)) or "ℓ∞"
        return (
            f"APGD-CE {signs} ({shown} steps), "
            f"{self.protocol} protocol ({per_eps}), clean start, {self.precision}"
        )


@dataclass
class Results:
    """Final test metrics in long format (one value per row, percent) plus what reports need besides."""

    values: pd.DataFrame  # KEYS + seed, metric, value, run_id
    pending: pd.DataFrame = field(default_factory=pd.DataFrame)  # KEYS + status, done, epochs
    epochs: pd.DataFrame = field(default_factory=pd.DataFrame)  # run_id, epoch, eps, val_acc, val_adv_acc
    # run_id + KEYS + seed, epochs, status, threshold, trainable_params (<NA>: not recorded)
    runs: pd.DataFrame = field(default_factory=pd.DataFrame)
    evaluations: pd.DataFrame = field(default_factory=pd.DataFrame)  # every row, every protocol
    selected: pd.DataFrame = field(default_factory=pd.DataFrame)  # the rows `values` come from
    source: str = "database"
    protocol: str = PAPER_PROTOCOL  # what `values` were measured with, for titles and notes
    missing: str = ""  # runs left out of `values`, and why, for notes
    # AutoAttack rows at each run's ε_g (KEYS + seed, run_id, version, metric, value) and the worst case
    # per sample over every evaluation stored with per-sample flags at that budget (metric "worst")
    autoattack: pd.DataFrame = field(default_factory=pd.DataFrame)
    tuning: pd.DataFrame = field(default_factory=pd.DataFrame)  # one row per study trial (`tuning_frame`)
    # each variant of a run at ε_g > 0 -> the variant of its standard (ε_g = 0) counterpart, where it differs
    standard_variants: dict = field(default_factory=dict)
    # each weights policy the runs read keep, as labels name it ("ema(0.999)") -> what those weights are
    policies: dict = field(default_factory=dict)

    def standard_variant(self, variant: str) -> str:
        """The variant whose `standard` runs are `variant`'s ε_g = 0 reference (`cells.standard_variant`)."""
        return self.standard_variants.get(variant, variant)

    @classmethod
    def from_store(
        cls,
        store,
        grid: str | None = None,
        threshold: float | None = None,
        selection: Selection = Selection(),
    ) -> Results:
        data = store.everything(grid)
        thresholds = {}
        for row in data["adaptation"]:
            thresholds.setdefault(row.run_id, row.threshold)
        runs, values, pending, selected, unread, autoattack = [], [], [], [], [], []
        standards, policies = {}, {}
        data["runs"], aside = newest_per_cell(data["runs"])
        without: dict[str, tuple] = {}  # completed run id -> (its weights policy, the protocols it has)
        rows: dict[str, list] = {}  # run id -> its evaluation rows
        for ev in data["evaluations"]:
            rows.setdefault(ev.run_id, []).append(ev)
        for run in data["runs"]:
            try:
                config = RunConfig.from_json(run.config)
            except (ValueError, TypeError):  # written by a newer release: shown nowhere, named in a note
                unread.append(run.id)
                continue
            keys = {
                "backbone": run.backbone,
                "dataset": run.dataset,
                "setting": config.schedule.label,  # a piecewise run names its points
                "variant": config.variant,
                "eps": run.eps,
                "t1": run.t1,
                "t2": run.t2,
            }
            runs.append(
                {
                    "run_id": run.id,
                    **keys,
                    "seed": run.seed,
                    "epochs": run.epochs,
                    "status": run.status,
                    "threshold": thresholds.get(run.id, 0.05) if threshold is None else threshold,
                    "trainable_params": trainable_params(run),
                    "finetune": config.finetune,
                }
            )
            if config.weights_policy != "last":
                policies[policy_label(config)] = described(config)
            if config.eps_value > 0 and config.variant not in standards:
                standards[config.variant] = standard_variant(config)
            if run.status != "completed":
                budgets = config.eval_budgets if config.eps_value == 0 else (config.eps,)
                pending += [{**keys, "eps": b, "status": run.status, "run_id": run.id} for b in budgets]
                continue
            chosen = selection.rows(rows.get(run.id, []), config)
            policy = config.weights_policy
            if not chosen:
                of = "" if policy == "last" else " of the {} weights"
                have = {f"{ev.protocol} APGD-{ev.steps} {ev.precision}" + of.format(ev.weights)
                        for ev in rows.get(run.id, [])}  # fmt: skip
                without[run.id] = (policy, have)
            autoattack += [
                (keys, run.seed, ev)
                for ev in rows.get(run.id, [])
                if ev.attack.startswith("autoattack") and ev.budget == config.eps and config.eps_value > 0
                and ev.weights == policy
            ]  # fmt: skip
            for ev in chosen:
                selected.append(ev.model_dump())
                for metric in METRICS:
                    values.append(
                        {
                            **keys,
                            "eps": ev.budget,
                            "seed": run.seed,
                            "metric": metric,
                            "value": 100 * getattr(ev, metric),
                            "run_id": run.id,
                        }
                    )
        epochs = pd.DataFrame(
            [
                {
                    "run_id": e.run_id,
                    "epoch": e.epoch,
                    "eps": e.eps,
                    "val_acc": e.val_acc,
                    "val_adv_acc": e.val_adv_acc,
                    "val_adv_eps": e.val_adv_eps,
                }
                for e in data["epochs"]
            ],
            columns=["run_id", "epoch", "eps", "val_acc", "val_adv_acc", "val_adv_eps"],
        )
        evaluations = pd.DataFrame([e.model_dump() for e in data["evaluations"]])
        done = epochs.groupby("run_id").size().to_dict() if len(epochs) else {}
        pending = pd.DataFrame(pending, columns=[*KEYS, "status", "run_id"])
        pending["done"] = pending["run_id"].map(done).fillna(0).astype(int)
        frame = pd.DataFrame(values, columns=[*KEYS, "seed", "metric", "value", "run_id"])
        selected = pd.DataFrame(selected)
        label = selection.label(*((set(selected.steps), set(selected.norm)) if len(selected) else (set(),)))
        notes = "; ".join(n for n in (missing_note(without, unread, selection), aside) if n)
        runs = pd.DataFrame(runs)
        if len(runs):
            runs["trainable_params"] = runs.trainable_params.astype("Int64")
        standards = {v: s for v, s in standards.items() if v != s}
        return cls(frame, pending, epochs, runs, evaluations, selected, "database", label, notes,
                   autoattack_frame(store, autoattack), tuning_frame(store, grid), standards,
                   policies)  # fmt: skip

    @classmethod
    def studies(cls, store, grid: str | None = None) -> Results:
        """The hyperparameter studies alone (of `grid`: those first tuned for it), for the tuning table and
        plot; a database without one, or without one of that grid, is a ReportError naming the command."""
        grids = sorted({study.grid for study in Studies(store).all()})
        if not grids or (grid is not None and grid not in grids):
            which = "" if grid is None else f" of grid {grid!r}"
            held = f" (it has studies of {', '.join(grids)})" if grids else ""
            raise ReportError(
                f"no hyperparameter study{which} in this database{held}: "
                f"`rftbench tune --grid {grid or 'NAME'}` makes one"
            )
        return cls(pd.DataFrame(columns=[*KEYS, "seed", "metric", "value", "run_id"]),
                   tuning=tuning_frame(store, grid))  # fmt: skip

    @classmethod
    def paper(cls, table: str) -> Results:
        """The paper's published numbers for report `table` (CONVENTIONS.md, "Paper numbers")."""
        if table == "tuning":
            raise ReportError(
                "the paper published no tuned values (PROTOCOL.md: lr and weight decay were tuned per "
                "configuration, the values are unknown); the tuning table reads a database's studies"
            )
        if table not in PAPER_TABLES:
            raise ReportError(f"the paper publishes no numbers for the {table!r} report; it needs a database")
        frame = paper_frame()
        frame = frame[frame["table"].isin(PAPER_TABLES[table])]
        if table == "autoattack":  # Table 6: the same runs under both attacks
            aa = frame[frame.table == "6-autoattack"].drop(columns="table").assign(seed=0, run_id="")
            apgd = frame[frame.table == "6-apgd"].drop(columns="table")
            return cls(
                apgd.assign(seed=0, run_id=""), source="paper", autoattack=aa.assign(version="standard")
            )
        frame = frame.drop(columns="table").drop_duplicates([*KEYS, "metric"])  # Tables 4, 8 repeat runs
        return cls(frame.assign(seed=0, run_id=""), source="paper")


def autoattack_frame(store, measured: list[tuple[dict, int, object]]) -> pd.DataFrame:
    """AutoAttack rows (cell keys, seed, evaluation) in long format, each with the worst case per sample at
    its budget over the evaluations of the same weights, read for every row in one query."""
    keys = {(ev.run_id, ev.budget, ev.weights) for _, _, ev in measured}
    worst = store.worst_cases(keys) if keys else {}
    rows = []
    for keys, seed, ev in measured:
        values = {m: getattr(ev, m) for m in METRICS} | {
            "worst": worst.get((ev.run_id, ev.budget, ev.weights))
        }
        rows += [
            {**keys, "seed": seed, "run_id": ev.run_id, "version": ev.attack.removeprefix("autoattack-"),
             "steps": ev.steps, "protocol": ev.protocol, "precision": ev.precision, "aa_seed": ev.seed,
             "metric": m, "value": 100 * v}
            for m, v in values.items() if v is not None
        ]  # fmt: skip
    return pd.DataFrame(rows)


TRIAL_COLUMNS = ["study", "grid", "backbone", "dataset", "eps", "setting", "variant", "number", "run_id",
                 "state", "value", "epochs_done", "best"]  # fmt: skip


def tuning_frame(store, grid: str | None = None) -> pd.DataFrame:
    """One row per trial of each study (of `grid`: those first tuned for it), in the order the studies were
    made: its run's state, its value (the last stored epoch's clean validation accuracy, in percent), the
    epochs it trained, whether it is its study's best (`core.tuning.best_trial`) and each knob's value as
    `param_<knob>`. A study without a trial yet is one row whose number is missing."""
    studies = Studies(store)
    chosen = [study for study in studies.all() if grid is None or study.grid == grid]
    summaries = studies.summaries([study.key for study in chosen])
    rows = []
    for study in chosen:
        labels = {"study": study.key, "grid": study.grid, "backbone": study.backbone,
                  "dataset": study.dataset, "eps": study.eps, "setting": study.setting,
                  "variant": template_variant(study.template)}  # fmt: skip
        trials = summaries[study.key]
        best = best_trial([(t.number, t.state, t.value, t.params) for t in trials])
        if not trials:
            rows.append(labels | {"best": False})
        for t in trials:
            rows.append(
                labels
                | {
                    "number": t.number,
                    "run_id": t.run_id,
                    "state": t.state,
                    "value": None if t.value is None else 100 * t.value,
                    "epochs_done": t.epochs_done,
                    "best": best is not None and t.number == best[0],
                }
                | {f"param_{knob}": value for knob, value in t.params.items()}
            )
    params = list(dict.fromkeys(c for row in rows for c in row if c.startswith("param_")))
    return pd.DataFrame(rows, columns=[*TRIAL_COLUMNS, *params])


def missing_note(without: dict[str, tuple[str, set]], unread: list[str], selection: Selection) -> str:
    """Runs a report cannot show under `selection` (run id -> its weights policy, the rows it has), and the
    command that fixes it; a run of a weights policy lacks its row until the weights it kept are scored."""
    notes = []
    plain = [have for policy, have in without.values() if policy == "last"]
    if plain:
        have = sorted(set().union(*plain)) or ["none"]
        notes.append(
            f"{len(plain)} completed run(s) have no {selection.protocol} {selection.precision} evaluation "
            f"(they have: {', '.join(have)}): "
            f"`{selection.command()}` adds it, or choose --protocol"
        )
    kept = [(policy, have) for policy, have in without.values() if policy != "last"]
    if kept:
        have = sorted(set().union(*(have for _, have in kept))) or ["none"]
        notes.append(
            f"{len(kept)} completed run(s) have no {selection.protocol} {selection.precision} evaluation of "
            f"the weights their policy kept ({', '.join(sorted({p for p, _ in kept}))}; they have: "
            f"{', '.join(have)}): "
            f"`{selection.command()}` re-scores all kept weights, or choose --protocol"
        )
    if unread:
        notes.append(
            f"{len(unread)} run(s) have a config this rftbench cannot read ({', '.join(unread)}): upgrade"
        )
    return "; ".join(notes)


def paper_frame() -> pd.DataFrame:
    """`paper_results.csv`: table, backbone, dataset, setting, eps, t1, t2, metric, value (percent).
    Hinge settings are put in the engine's canonical form (0/0 is fix, 0/T2 is linear); every row is the
    paper's recipe (AT, full fine-tuning): variant ""."""
    text = files("rftbench").joinpath("paper_results.csv").read_text()
    frame = pd.read_csv(io.StringIO(text), dtype={"table": str, "eps": str}).assign(variant="")
    hinge = frame["setting"] == "sched"
    frame.loc[hinge & (frame.t1 == 0) & (frame.t2 == 0), "setting"] = "fix"
    frame.loc[hinge & (frame.t1 == 0) & (frame.t2 > 0), "setting"] = "linear"
    frame.loc[frame.setting == "fix", ["t1", "t2"]] = np.nan
    frame.loc[(frame.setting == "sched") & frame.t1.isna(), ["t1", "t2"]] = [12.0, 37.0]  # Tables 1-6, 8
    return frame
