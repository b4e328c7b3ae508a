"""Named experiment grids from `experiments.toml`, validated on load and expanded into jobs.

    experiments = load_experiments("experiments.toml")
    jobs = experiments.jobs("paper", backbones=["SWIN"], eps=["4/255"])  # one Job per distinct run id

The grids of the paper ship with the package (rftbench/experiments.toml; `experiments.files` says which
file a command reads); `rftbench init` writes a copy to edit, which commands run in its folder then read.

The file's tables (see experiments.toml for a commented example of each):
  [defaults]               run-config fields for every grid (`splits = "auto"`: the paper's split lists of
                           Caltech/Cub/Dogs where they are in the data root, else the rules; recorded
                           in each run's config as "paper" or "rules"), plus `seed`, `adaptation_threshold`,
                           `standard_eval_budgets` (the budgets an ε_g = 0 run is scored at) and how
                           the final evaluation is measured: `eval_protocol` ("paper" or "monotone")
                           and `eval_precision` ("fp32"; not part of a run's id)
  [overrides.NAME]         run-config fields for one backbone, one dataset, or one "Backbone/Dataset" pair
  [backbones.NAME]         `weights`: a local weights file
  [datasets.NAME]          `root`, `split_file`: where the data is
  [grids.NAME]             `backbones` × `datasets` (or `pairs`) × `settings` × `eps` × `seeds`, plus any
                           [defaults] key and its own [grids.NAME.overrides.*]
More specific values win: defaults, then the grid, then the overrides of a backbone, a dataset and a
pair (file-wide first, then the grid's own). Paths are relative to the TOML file; command-line flags
and RFTBENCH_DATA_* / RFTBENCH_WEIGHTS_* variables take precedence over them (execution.runner). Every
problem is reported as one line naming the file, the key and the fix (`GridError`).
"""

from __future__ import annotations

import dataclasses
import itertools
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path

import pydantic

from rftbench.core.config import (
    PRECISIONS,
    PROTOCOLS,
    SPLIT_SOURCES,
    RunConfig,
    SlurmOptions,
    budget_value,
    eps_text,
)
from rftbench.core.schedules import SCHEDULES, check_points
from rftbench.data.datasets import (
    DATASETS,
    PAPER_SPLITS,
    SPLIT_FOLDER,
    data_root,
    paper_split_dir,
    resolve_root,
)
from rftbench.errors import RftbenchError
from rftbench.models.registry import BACKBONES

SETTING_KEYS = ("setting", "t1", "t2", "patience", "tolerance", "schedule_granularity", "points")
AXIS_KEYS = ("backbone", "dataset", "eps", "seed")
# Run-config fields a [defaults], grid or override table may set: everything but the grid's axes.
_TOML_TYPES = {
    "str": str,
    "bool": bool,
    "int": int,
    "float": float,
    "float | None": float,
    "int | None": int,
    "tuple[str, ...]": list,
}
FIELD_TYPES = {
    f.name: _TOML_TYPES[f.type]
    for f in dataclasses.fields(RunConfig)
    if f.name not in SETTING_KEYS + AXIS_KEYS
}
ANALYSIS_KEYS = {
    "adaptation_threshold": float,
    "standard_eval_budgets": list,
    "seed": int,
    "eval_protocol": str,
    "eval_precision": str,
}
CHOICES = {"eval_protocol": PROTOCOLS, "eval_precision": PRECISIONS, "splits": ("auto", *SPLIT_SOURCES)}
GRID_KEYS = {"description", "backbones", "datasets", "pairs", "settings", "eps", "seeds", "overrides"}
PATH_KEYS = {"backbones": ("weights",), "datasets": ("root", "split_file")}
TOP_KEYS = {"defaults", "overrides", "backbones", "datasets", "grids", "slurm"}
DEFAULT_THRESHOLD = 0.05  # the paper's 5% (CONVENTIONS.md)


class GridError(RftbenchError, ValueError):
    """One line: the file, the key and what to change."""


@dataclass(frozen=True)
class Job:
    config: RunConfig
    grid: str
    position: int  # order within the grid, for running in order
    paths: dict[str, str]  # data_root / split_file / weights from the TOML, absolute; not in the run id
    eval_protocol: str = "paper"  # how the final evaluation is measured (core.metrics); not in the id
    eval_precision: str = "fp32"

    @property
    def run_id(self) -> str:
        return self.config.run_id


@dataclass
class Grid:
    name: str
    description: str
    pairs: list[tuple[str, str]]
    settings: list[dict]
    eps: list[str]
    seeds: list[int]
    fields: dict  # run-config fields set by the grid itself
    overrides: dict[str, dict]
    adaptation_threshold: float
    standard_eval_budgets: list[str]
    evaluation: dict[str, str] = field(default_factory=dict)  # eval_protocol, eval_precision


@dataclass
class Experiments:
    path: Path
    defaults: dict
    overrides: dict[str, dict]
    paths: dict[str, dict[str, str]]  # backbone or dataset name -> its path keys, absolute
    grids: dict[str, list[Grid]] = field(default_factory=dict)  # a grid is one block or a union of blocks
    default_seed: int = 0
    standard_eval_budgets: list[str] = field(default_factory=list)
    evaluation: dict[str, str] = field(default_factory=dict)  # the file's eval_protocol, eval_precision
    slurm: SlurmOptions = field(default_factory=SlurmOptions)  # the [slurm] table
    roots: dict[str, str] = field(
        default_factory=dict
    )  # dataset -> root from --root flags (win over the file)
    # grid -> dataset -> the `splits` its runs were recorded with (from the database): "auto" keeps it, so a
    # grid's runs do not change identity when split lists appear or vanish on a machine
    recorded: dict[str, dict[str, str]] = field(default_factory=dict)
    # run id -> (dataset, how "auto" decided, splits, the folder looked in): what the notes say
    split_choices: dict[str, tuple[str, str, str, Path]] = field(default_factory=dict)

    def grid(self, name: str) -> list[Grid]:
        if name not in self.grids:
            raise GridError(f"{self.path}: no grid {name!r}; the file defines {', '.join(self.grids)}")
        return self.grids[name]

    def threshold(self, name: str) -> float:
        return self.grid(name)[0].adaptation_threshold

    def description(self, name: str) -> str:
        return next((block.description for block in self.grid(name) if block.description), "")

    def jobs(
        self,
        grid_name: str,
        *,
        backbones: list[str] | None = None,
        datasets: list[str] | None = None,
        settings: list[str] | None = None,
        eps: list[str] | None = None,
        seeds: list[int] | None = None,
    ) -> list[Job]:
        """The grid's distinct runs in order, narrowed by the filters (None: no filter); a job listed twice
        (ε_g = 0 under several budgets, a setting that canonicalises to another) appears once."""
        budgets = {budget_value(e) for e in eps} if eps else None
        jobs: dict[str, Job] = {}
        blocks = self.grid(grid_name)
        for block in blocks:
            for (backbone, dataset), setting, budget, seed in itertools.product(
                block.pairs, block.settings, block.eps, block.seeds
            ):
                config = self.config(block, backbone, dataset, setting, budget, seed)
                if (
                    (backbones and backbone not in backbones)
                    or (datasets and dataset not in datasets)
                    or (settings and config.setting not in settings)
                    or (budgets is not None and budget_value(config.eps) not in budgets)
                    or (seeds and seed not in seeds)
                    or config.run_id in jobs
                ):
                    continue
                paths = {**self.paths.get(backbone, {}), **self.paths.get(dataset, {})}
                jobs[config.run_id] = Job(config, grid_name, len(jobs), paths, **block.evaluation)
        return list(jobs.values())

    def single(
        self, backbone: str, dataset: str, setting: dict, eps: str, seed: int | None, grid: str | None = None
    ) -> Job:
        """One job outside the grid's axes, with grid `grid`'s values (its first block), else [defaults]."""
        block = (
            self.grid(grid)[0]
            if grid is not None
            else Grid(
                name="defaults",
                description="",
                pairs=[],
                settings=[],
                eps=[],
                seeds=[self.default_seed],
                fields={},
                overrides={},
                adaptation_threshold=DEFAULT_THRESHOLD,
                standard_eval_budgets=self.standard_eval_budgets,
                evaluation=self.evaluation,
            )
        )
        config = self.config(block, backbone, dataset, setting, eps, block.seeds[0] if seed is None else seed)
        paths = {**self.paths.get(backbone, {}), **self.paths.get(dataset, {})}
        return Job(config, grid or "", 0, paths, **block.evaluation)

    def config(
        self, grid: Grid, backbone: str, dataset: str, setting: dict, eps: str, seed: int
    ) -> RunConfig:
        values = dict(self.defaults)
        values.update(grid.fields)
        for scope in (self.overrides, grid.overrides):
            for key in (backbone, dataset, f"{backbone}/{dataset}"):
                values.update(scope.get(key, {}))
        standard = budget_value(eps) == 0 or setting["setting"] == "standard"
        if standard and "eval_budgets" not in values and grid.standard_eval_budgets:
            values["eval_budgets"] = grid.standard_eval_budgets
        values["eval_budgets"] = tuple(values.get("eval_budgets", ()))
        grid_name = grid.name.split("[")[0]
        values["splits"], decided = self.splits(grid_name, dataset, values.get("splits", "auto"))
        try:
            config = RunConfig(backbone=backbone, dataset=dataset, eps=eps, seed=seed, **setting, **values)
        except ValueError as exc:
            raise GridError(
                f"{self.path}: grids.{grid.name}: {backbone}/{dataset} {setting} at {eps}: {exc}"
            ) from None
        if decided is not None:
            self.split_choices[config.run_id] = (dataset, *decided)
        return config

    def splits(self, grid: str, dataset: str, choice: str) -> tuple[str, tuple[str, str, Path] | None]:
        """A run's `splits` from the grid's choice, and how "auto" decided it (None: it did not). "auto"
        keeps what the grid's runs of this dataset were recorded with; for a grid new to the database it is
        "paper" where the dataset has paper split lists in its data root (or its `split_file` folder), else
        "rules". A grid that names a split file of its own keeps it ("rules")."""
        if choice != "auto" or dataset not in PAPER_SPLITS:
            return (choice if choice != "auto" else "rules"), None
        paths = self.paths.get(dataset, {})
        split_file = paths.get("split_file")
        if split_file is not None and not Path(split_file).expanduser().is_dir():
            return "rules", None
        root = data_root(dataset, self.roots.get(dataset), paths.get("data_root"))
        folder = paper_split_dir(dataset, root, split_file)
        where = folder or (
            Path(split_file).expanduser() if split_file else resolve_root(dataset, root) / SPLIT_FOLDER
        )
        present = "paper" if folder is not None else "rules"
        recorded = self.recorded.get(grid, {}).get(dataset)
        if recorded is not None and recorded != present:
            return recorded, ("recorded", recorded, where)
        return present, ("found", present, where)

    def split_notes(self, jobs: list[Job]) -> list[str]:
        """What "auto" chose for the datasets of `jobs`, and where it looked: one line per dataset."""
        notes = {}
        for job in jobs:
            if job.run_id not in self.split_choices:
                continue
            dataset, how, chosen, folder = self.split_choices[job.run_id]
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


def load_experiments(path: str | Path, roots: dict[str, str] | None = None) -> Experiments:
    """Read and validate an experiments file; raises `GridError` (one line) on the first problem."""
    path = Path(path)
    if not path.is_file():
        problem = "is a directory, not a file" if path.is_dir() else "experiments file not found"
        raise GridError(
            f"{path}: {problem}; pass --experiments FILE or run from the folder that holds experiments.toml"
        )
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise GridError(f"{path}: not valid TOML ({exc}); fix the syntax there") from None
    except OSError as exc:
        raise GridError(f"{path}: cannot be read ({exc.strerror}); check its permissions") from None
    check = _Checker(path)
    check.keys("", data, TOP_KEYS)
    defaults = check.fields("defaults", data.get("defaults", {}), analysis=True)
    default_seed = defaults.pop("seed", 0)
    threshold = defaults.pop("adaptation_threshold", DEFAULT_THRESHOLD)
    standard_budgets = defaults.pop("standard_eval_budgets", [])
    evaluation = {"eval_protocol": "paper", "eval_precision": "fp32"}
    evaluation |= {key: defaults.pop(key) for key in ("eval_protocol", "eval_precision") if key in defaults}
    overrides = check.overrides("overrides", data.get("overrides", {}))
    paths: dict[str, dict[str, str]] = {}
    for kind, registry in (("backbones", BACKBONES), ("datasets", DATASETS)):
        for name, table in check.table(kind, data.get(kind, {})).items():
            check.name(f"{kind}.{name}", name, registry, kind[:-1])
            check.keys(f"{kind}.{name}", check.table(f"{kind}.{name}", table), set(PATH_KEYS[kind]))
            for key, value in table.items():
                check.type(f"{kind}.{name}.{key}", value, str)
                resolved = (path.parent / Path(value).expanduser()).resolve()
                paths.setdefault(name, {})["data_root" if key == "root" else key] = str(resolved)
    try:
        slurm = SlurmOptions(**check.table("slurm", data.get("slurm", {})))
    except pydantic.ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in ("slurm", *error["loc"]))
        raise GridError(f"{path}: {where}: {error['msg']} (got {error.get('input')!r})") from None
    experiments = Experiments(
        path,
        defaults,
        overrides,
        paths,
        default_seed=default_seed,
        standard_eval_budgets=standard_budgets,
        evaluation=evaluation,
        slurm=slurm,
        roots=dict(roots or {}),
    )
    for name, table in check.table("grids", data.get("grids", {})).items():
        blocks = table if isinstance(table, list) else [table]  # [[grids.NAME]]: a union of blocks
        experiments.grids[name] = [
            check.grid(
                name if len(blocks) == 1 else f"{name}[{i}]",
                block,
                default_seed,
                threshold,
                standard_budgets,
                evaluation,
            )
            for i, block in enumerate(blocks)
        ]
        if len({block.adaptation_threshold for block in experiments.grids[name]}) > 1:
            raise GridError(
                f"{path}: grids.{name}: its blocks set different adaptation_threshold values; "
                f"a grid has one threshold"
            )
    if not experiments.grids:
        raise GridError(f"{path}: no [grids.NAME] table; define at least one grid")
    for name in experiments.grids:  # every job builds: bad ε, T1 > T2 and the like surface now
        experiments.jobs(name)
    return experiments


class _Checker:
    """Validation with locations: each method raises GridError naming `file: key: problem; fix`."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, where: str, problem: str) -> typing.NoReturn:
        raise GridError(f"{self.path}: {where}: {problem}")

    def table(self, where: str, value) -> dict:
        if not isinstance(value, dict):
            self.fail(where, f"expected a table, got {type(value).__name__}")
        return value

    def keys(self, where: str, table: dict, valid) -> None:
        unknown = sorted(set(table) - set(valid))
        if unknown:
            self.fail(
                where or "top level",
                f"unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(valid))}",
            )

    def type(self, where: str, value, expected):
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if expected is int and isinstance(value, bool) or not isinstance(value, expected):
            self.fail(where, f"expected {expected.__name__}, got {type(value).__name__} {value!r}")
        return value

    def name(self, where: str, name, registry, kind: str) -> None:
        if name not in registry:
            self.fail(where, f"unknown {kind} {name!r}; valid ones: {', '.join(registry)}")

    def budgets(self, where: str, values) -> list[str]:
        out = []
        for i, value in enumerate(self.type(where, values, list)):
            try:
                text = self.type(f"{where}[{i}]", value, str).strip()
                budget_value(text)  # either form ('4/255' or, for ℓ2, '0.5'); the run's norm reads it
                out.append(eps_text(text) if "/" in text else text)
            except ValueError as exc:
                self.fail(f"{where}[{i}]", str(exc))
        return out

    def fields(self, where: str, table, analysis: bool = False) -> dict:
        """Run-config fields (and the analysis keys where allowed), type-checked."""
        valid = {**FIELD_TYPES, **(ANALYSIS_KEYS if analysis else {})}
        self.keys(where, self.table(where, table), valid)
        out = {}
        for key, value in table.items():
            if key in ("eval_budgets", "standard_eval_budgets"):
                out[key] = self.budgets(f"{where}.{key}", value)
                continue
            out[key] = self.type(f"{where}.{key}", value, valid[key])
            if key in CHOICES and value not in CHOICES[key]:
                self.fail(f"{where}.{key}", f"{value!r} unknown; choose one of {', '.join(CHOICES[key])}")
        return out

    def overrides(self, where: str, table) -> dict[str, dict]:
        out = {}
        for key, fields in self.table(where, table).items():
            backbone, _, dataset = key.partition("/")
            if dataset:
                self.name(f"{where}.{key}", backbone, BACKBONES, "backbone")
                self.name(f"{where}.{key}", dataset, DATASETS, "dataset")
            elif key not in BACKBONES and key not in DATASETS:
                self.fail(
                    f"{where}.{key}",
                    f"{key!r} is neither a backbone nor a dataset; write a backbone, "
                    f'a dataset or "Backbone/Dataset"',
                )
            out[key] = self.fields(f"{where}.{key}", fields)
        return out

    def grid(
        self, name: str, table, default_seed: int, threshold: float, standard_budgets, evaluation: dict
    ) -> Grid:
        where = f"grids.{name}"
        table = self.table(where, table)
        self.keys(where, table, GRID_KEYS | set(FIELD_TYPES) | set(ANALYSIS_KEYS) - {"seed"})
        fields = self.fields(where, {k: v for k, v in table.items() if k not in GRID_KEYS}, analysis=True)
        if "pairs" in table:
            if "backbones" in table or "datasets" in table:
                self.fail(where, "give either `pairs` or `backbones` and `datasets`, not both")
            pairs = []
            for i, pair in enumerate(self.type(f"{where}.pairs", table["pairs"], list)):
                if not (isinstance(pair, list) and len(pair) == 2):
                    self.fail(f"{where}.pairs[{i}]", f'expected ["Backbone", "Dataset"], got {pair!r}')
                pairs.append(tuple(pair))
        else:
            for key in ("backbones", "datasets"):
                if key not in table:
                    self.fail(where, f"missing `{key}` (or give `pairs`)")
            pairs = list(
                itertools.product(
                    self.strings(f"{where}.backbones", table["backbones"]),
                    self.strings(f"{where}.datasets", table["datasets"]),
                )
            )
        for i, (backbone, dataset) in enumerate(pairs):
            self.name(
                f"{where}.pairs[{i}]" if "pairs" in table else f"{where}.backbones",
                backbone,
                BACKBONES,
                "backbone",
            )
            self.name(
                f"{where}.pairs[{i}]" if "pairs" in table else f"{where}.datasets",
                dataset,
                DATASETS,
                "dataset",
            )
        settings = []
        for i, entry in enumerate(
            self.type(f"{where}.settings", table.get("settings", [{"setting": "fix"}]), list)
        ):
            entry = self.table(f"{where}.settings[{i}]", entry)
            self.keys(f"{where}.settings[{i}]", entry, SETTING_KEYS)
            if "setting" not in entry:
                self.fail(f"{where}.settings[{i}]", "missing `setting`")
            if entry["setting"] not in SCHEDULES:
                self.fail(
                    f"{where}.settings[{i}].setting",
                    f"unknown schedule {entry['setting']!r}; valid ones: {', '.join(SCHEDULES)}",
                )
            for key, kind in (
                ("t1", float),
                ("t2", float),
                ("tolerance", float),
                ("patience", int),
                ("schedule_granularity", str),
            ):
                if key in entry:
                    entry[key] = self.type(f"{where}.settings[{i}].{key}", entry[key], kind)
            if "points" in entry:
                try:
                    entry["points"] = check_points(entry["points"])
                except ValueError as exc:
                    self.fail(f"{where}.settings[{i}].points", str(exc))
            t1, t2 = entry.get("t1"), entry.get("t2")
            if t1 is not None and t2 is not None and t1 > t2:
                self.fail(
                    f"{where}.settings[{i}]",
                    f"T1 ({t1:g}) > T2 ({t2:g}): the ramp must start before "
                    f"it ends; swap them or set t1 <= t2",
                )
            settings.append(entry)
        if "eps" not in table:
            self.fail(where, 'missing `eps` (a list of budgets such as ["4/255", "8/255"])')
        seeds = table.get("seeds", [default_seed])
        seeds = [
            self.type(f"{where}.seeds[{i}]", v, int) for i, v in enumerate(self.type(where, seeds, list))
        ]
        return Grid(
            name=name,
            description=self.type(f"{where}.description", table.get("description", ""), str),
            pairs=pairs,
            settings=settings,
            eps=self.budgets(f"{where}.eps", table["eps"]),
            seeds=seeds,
            fields={k: v for k, v in fields.items() if k in FIELD_TYPES},
            overrides=self.overrides(f"{where}.overrides", table.get("overrides", {})),
            adaptation_threshold=self.threshold(where, fields.get("adaptation_threshold", threshold)),
            standard_eval_budgets=fields.get("standard_eval_budgets", standard_budgets),
            evaluation={key: fields.get(key, evaluation[key]) for key in ("eval_protocol", "eval_precision")},
        )

    def threshold(self, where: str, value: float) -> float:
        if not 0 <= value < 1:
            self.fail(f"{where}.adaptation_threshold", f"{value:g} is not a validation accuracy in [0, 1)")
        return value

    def strings(self, where: str, values) -> list[str]:
        return [self.type(f"{where}[{i}]", v, str) for i, v in enumerate(self.type(where, values, list))]
