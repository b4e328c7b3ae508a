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
  [slurm]                  what a SLURM job array of workers asks for (core.config.SlurmOptions)
More specific values win: defaults, then the grid, then the overrides of a backbone, a dataset and a
pair (file-wide first, then the grid's own). Paths are relative to the TOML file; command-line flags
and RFTBENCH_DATA_* / RFTBENCH_WEIGHTS_* variables take precedence over them (execution.runner). Every
problem is reported as one line naming the file, the key and the fix (`GridError`). The tables, their keys
and types are the models of `experiments.schema`; `experiments_schema()` is their JSON schema, for editors.
"""

from __future__ import annotations

import dataclasses
import itertools
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pydantic

from rftbench.core.config import TRAINED_VARIANT_FIELDS, RunConfig, SlurmOptions, budget_value
from rftbench.core.tuning import TUNED, Search, SearchError, study_key
from rftbench.errors import RftbenchError
from rftbench.experiments.schema import (
    DEFAULT_THRESHOLD,
    RUN_KEYS,
    Defaults,
    ExperimentsFile,
    GridBlock,
    TuneTable,
    problems,
)
from rftbench.experiments.splits import choose_splits, split_notes
from rftbench.models.registry import check_finetune

VALIDATING = "validating"  # Experiments.tuned while the file is checked: "tuned" knobs at their defaults


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
    search: Search = field(default_factory=Search)  # how `rftbench tune` tunes its configurations


@dataclass(frozen=True)
class StudyPlan:
    """One configuration of a grid to tune: its study's key, the run config its trials start from (the
    knobs to tune at their defaults) and how it is searched."""

    key: str
    job: Job  # the trial template as a job (its paths and evaluation protocol)
    search: Search


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
    roots: dict[str, str] = field(default_factory=dict)  # dataset -> root from --root flags (beat the file)
    # grid -> dataset -> the `splits` its runs were recorded with (from the database): "auto" keeps it, so a
    # grid's runs do not change identity when split lists appear or vanish on a machine
    recorded: dict[str, dict[str, str]] = field(default_factory=dict)
    # run id -> (dataset, how "auto" decided, splits, the folder looked in): what the notes say
    split_choices: dict[str, tuple[str, str, str, Path]] = field(default_factory=dict)
    # study key -> (its best knob values or None, its unfinished trials), from the database: a grid's "tuned"
    # values once no trial is left to end. None: not read (a "tuned" value is then an error)
    tuned: dict[str, tuple[dict | None, int]] | str | None = None

    def grid(self, name: str) -> list[Grid]:
        if name not in self.grids:
            raise GridError(f"{self.path}: no grid {name!r}; the file defines {', '.join(self.grids)}")
        return self.grids[name]

    def threshold(self, name: str) -> float:
        return self.grid(name)[0].adaptation_threshold

    def description(self, name: str) -> str:
        return next((block.description for block in self.grid(name) if block.description), "")

    def jobs(self, grid_name: str, *, backbones: list[str] | None = None, datasets: list[str] | None = None,
             settings: list[str] | None = None, eps: list[str] | None = None,
             seeds: list[int] | None = None) -> list[Job]:  # fmt: skip
        """The grid's distinct runs in order, narrowed by the filters (None: no filter); a job listed twice
        (ε_g = 0 under several budgets, a setting that canonicalises to another) appears once."""
        budgets = {budget_value(e) for e in eps} if eps else None
        jobs: dict[str, Job] = {}
        blocks = self.grid(grid_name)
        for block in blocks:
            for (backbone, dataset), setting, budget, seed in itertools.product(
                block.pairs, block.settings, block.eps, block.seeds
            ):
                # filtered with "tuned" knobs at defaults: no untuned cell outside the filters is an error
                config = self.config(block, backbone, dataset, setting, budget, seed, resolve=False)
                if (
                    (backbones and backbone not in backbones)
                    or (datasets and dataset not in datasets)
                    or (settings and config.setting not in settings)
                    or (budgets is not None and budget_value(config.eps) not in budgets)
                    or (seeds and seed not in seeds)
                ):
                    continue
                if TUNED in self.values(block, backbone, dataset).values():  # now with the studies' values
                    config = self.config(block, backbone, dataset, setting, budget, seed)
                if config.run_id in jobs:
                    continue
                paths = {**self.paths.get(backbone, {}), **self.paths.get(dataset, {})}
                jobs[config.run_id] = Job(config, grid_name, len(jobs), paths, **block.evaluation)
        return list(jobs.values())

    def single(self, backbone: str, dataset: str, setting: dict, eps: str, seed: int | None,
               grid: str | None = None, fields: dict | None = None) -> Job:  # fmt: skip
        """One job outside the grid's axes, with grid `grid`'s values (its first block), else [defaults],
        and `fields` over them."""
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
        cell = f"{backbone}/{dataset}"  # `fields` win over every override, the most specific one included
        overrides = block.overrides | {cell: block.overrides.get(cell, {}) | (fields or {})}
        block = dataclasses.replace(block, overrides=overrides)
        config = self.config(block, backbone, dataset, setting, eps, block.seeds[0] if seed is None else seed)
        paths = {**self.paths.get(backbone, {}), **self.paths.get(dataset, {})}
        return Job(config, grid or "", 0, paths, **block.evaluation)

    def values(self, grid: Grid, backbone: str, dataset: str) -> dict:
        """The run-config fields of one (backbone, dataset) of a block: defaults, grid, overrides."""
        values = dict(self.defaults)
        values.update(grid.fields)
        for scope in (self.overrides, grid.overrides):
            for key in (backbone, dataset, f"{backbone}/{dataset}"):
                values.update(scope.get(key, {}))
        return values

    def config(
        self,
        grid: Grid,
        backbone: str,
        dataset: str,
        setting: dict,
        eps: str,
        seed: int,
        resolve: bool = True,
    ) -> RunConfig:
        """One run's config; `resolve=False`: its "tuned" knobs at their defaults (to filter or check)."""
        values = self.values(grid, backbone, dataset)
        if TUNED in values.values():
            values |= self.tuned_values(grid, backbone, dataset, setting, eps, values, resolve)
        standard = budget_value(eps) == 0 or setting["setting"] == "standard"
        if standard and "eval_budgets" not in values and grid.standard_eval_budgets:
            values["eval_budgets"] = grid.standard_eval_budgets
        return self.build(grid, backbone, dataset, setting, eps, seed, values)

    def build(
        self, grid: Grid, backbone: str, dataset: str, setting: dict, eps: str, seed: int, values: dict
    ) -> RunConfig:
        values = values | {"eval_budgets": tuple(values.get("eval_budgets", ()))}
        grid_name = grid.name.split("[")[0]
        values["splits"], decided = self.splits(grid_name, dataset, values.get("splits", "auto"))
        try:
            config = RunConfig(backbone=backbone, dataset=dataset, eps=eps, seed=seed, **(values | setting))
            check_finetune(backbone, config.finetune)
        except ValueError as exc:
            raise GridError(
                f"{self.path}: grids.{grid.name}: {backbone}/{dataset} {setting} at {eps}: {exc}"
            ) from None
        if decided is not None:
            self.split_choices[config.run_id] = (dataset, *decided)
        return config

    def study(
        self, grid: Grid, backbone: str, dataset: str, setting: dict, eps: str, values: dict | None = None
    ) -> StudyPlan:
        """The study of one cell (backbone, dataset, ε_g) and settings entry of a block: trials train the
        search's setting at ε_g with the block's values, its seed, tuned knobs at their defaults, and the
        entry's objective and mode (a probe wants its own lr; a weights policy trains alike)."""
        values = self.values(grid, backbone, dataset) if values is None else values
        search = grid.search
        untuned = [k for k, v in values.items() if v == TUNED and k not in search.knobs]
        if untuned:
            raise GridError(
                f'{self.path}: grids.{grid.name}: {", ".join(untuned)} = "tuned", but the grid\'s [tune] '
                f"space has only {', '.join(search.knobs)}; add [tune.space.{untuned[0]}] or give a value"
            )
        base = {k: v for k, v in values.items() if k not in search.knobs}
        trains = {"setting": search.setting} | {k: setting[k] for k in TRAINED_VARIANT_FIELDS if k in setting}
        config = self.build(grid, backbone, dataset, trains, eps, search.seed, base)
        paths = {**self.paths.get(backbone, {}), **self.paths.get(dataset, {})}
        key = study_key(config, search)
        return StudyPlan(key, Job(config, grid.name.split("[")[0], 0, paths, **grid.evaluation), search)

    def tuned_values(
        self, grid: Grid, backbone: str, dataset: str, setting: dict, eps: str, values: dict, resolve=True
    ) -> dict:
        """The knobs a block sets to "tuned", from the best trial of their cell's study. Every searched knob
        must be "tuned": a value won beside a drawn weight decay is not that value beside another one."""
        wanted = [k for k, v in values.items() if v == TUNED]
        plan = self.study(grid, backbone, dataset, setting, eps, values)
        fixed = [k for k in plan.search.knobs if k not in wanted]
        if fixed:
            raise GridError(
                f'{self.path}: grids.{grid.name}: {", ".join(wanted)} = "tuned" but its [tune] space also '
                f'searches {", ".join(fixed)}, which the grid fixes: set {fixed[0]} = "tuned" too, or name '
                f"only the tuned knobs in [tune.space]"
            )
        if self.tuned == VALIDATING or not resolve:
            return {k: getattr(plan.job.config, k) for k in wanted}
        best, unfinished = (self.tuned or {}).get(plan.key, (None, 0))
        if best is None or unfinished:
            c, name = plan.job.config, grid.name.split("[")[0]
            why = f"has {unfinished} unfinished trial(s)" if unfinished else "has no completed trial yet"
            why = why if plan.key in (self.tuned or {}) else "was never tuned"  # a best is final once all end
            raise GridError(
                f'grids.{name}: {backbone}/{dataset} at {c.eps} takes {" and ".join(wanted)} = "tuned" '
                f"but its study {plan.key} {why}: run `rftbench tune --grid {name} --backbone {backbone} "
                f"--dataset {dataset} --eps {c.eps}` first"
            )
        return {k: best[k] for k in wanted}

    def studies(
        self,
        grid_name: str,
        *,
        backbones: list[str] | None = None,
        datasets: list[str] | None = None,
        eps: list[str] | None = None,
    ) -> list[StudyPlan]:
        """The distinct studies of a grid's cells (backbone × dataset × ε_g × settings entry), filtered."""
        budgets = {budget_value(e) for e in eps} if eps else None
        plans: dict[str, StudyPlan] = {}
        for block in self.grid(grid_name):
            cells = itertools.product(block.pairs, block.eps, block.settings)
            for (backbone, dataset), budget, setting in cells:
                if (
                    (backbones and backbone not in backbones)
                    or (datasets and dataset not in datasets)
                    or (budgets is not None and budget_value(budget) not in budgets)
                ):
                    continue
                plan = self.study(block, backbone, dataset, setting, budget)
                plans.setdefault(plan.key, plan)
        return list(plans.values())

    def splits(self, grid: str, dataset: str, choice: str) -> tuple[str, tuple[str, str, Path] | None]:
        """A run's `splits` from the grid's choice, and how "auto" decided it (`splits.choose_splits`)."""
        paths = self.paths.get(dataset, {})
        root = self.roots.get(dataset)
        return choose_splits(dataset, choice, paths, root, self.recorded.get(grid, {}).get(dataset))

    def split_notes(self, jobs: list[Job]) -> list[str]:
        """What "auto" chose for the datasets of `jobs`, and where it looked: one line per dataset."""
        return split_notes(self.split_choices, [job.run_id for job in jobs])


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
    try:
        spec = ExperimentsFile.model_validate(data)
    except pydantic.ValidationError as exc:
        raise GridError(problems(exc, path, data)[0]) from None
    paths: dict[str, dict[str, str]] = {}
    for name, table in (*spec.backbones.items(), *spec.datasets.items()):
        for key, value in table.model_dump(exclude_unset=True).items():
            resolved = (path.parent / Path(value).expanduser()).resolve()
            paths.setdefault(name, {})["data_root" if key == "root" else key] = str(resolved)
    defaults = spec.defaults
    experiments = Experiments(
        path,
        _run_fields(defaults),
        {key: _run_fields(table) for key, table in spec.overrides.items()},
        paths,
        default_seed=defaults.seed,
        standard_eval_budgets=defaults.standard_eval_budgets,
        evaluation={"eval_protocol": defaults.eval_protocol, "eval_precision": defaults.eval_precision},
        slurm=spec.slurm,
        roots=dict(roots or {}),
    )
    for name, blocks in spec.grids.items():
        experiments.grids[name] = [
            _grid(name if len(blocks) == 1 else f"{name}[{i}]", block, defaults, spec.tune, path)
            for i, block in enumerate(blocks)
        ]
        if len({block.adaptation_threshold for block in experiments.grids[name]}) > 1:
            raise GridError(
                f"{path}: grids.{name}: its blocks set different adaptation_threshold values; "
                f"a grid has one threshold"
            )
    if not experiments.grids:
        raise GridError(f"{path}: no [grids.NAME] table; define at least one grid")
    experiments.tuned = VALIDATING  # "tuned" values stand at their defaults while every job is checked
    for name in experiments.grids:  # every job builds: bad ε, T2 > epochs and the like surface now
        experiments.jobs(name)
    experiments.tuned = None
    return experiments


def _run_fields(table: pydantic.BaseModel) -> dict:
    """The run-config fields a table sets (what it leaves unset comes from a less specific table)."""
    return table.model_dump(include=set(RUN_KEYS), exclude_unset=True)


def _grid(name: str, block: GridBlock, defaults: Defaults, tune: TuneTable, path: Path) -> Grid:
    """One block of a grid, with what it leaves unset from [defaults] (and [tune])."""
    own = lambda key: getattr(block if key in block.model_fields_set else defaults, key)  # noqa: E731
    try:
        search = tune.search(block.tune)
    except SearchError as exc:
        raise GridError(f"{path}: grids.{name}.tune: {exc}") from None
    return Grid(
        name=name,
        description=block.description,
        pairs=block.pairs or list(itertools.product(block.backbones, block.datasets)),
        settings=[setting.model_dump(exclude_unset=True) for setting in block.settings],
        eps=block.eps,
        seeds=block.seeds if "seeds" in block.model_fields_set else [defaults.seed],
        fields=_run_fields(block),
        overrides={key: _run_fields(table) for key, table in block.overrides.items()},
        adaptation_threshold=own("adaptation_threshold"),
        standard_eval_budgets=own("standard_eval_budgets"),
        evaluation={key: own(key) for key in ("eval_protocol", "eval_precision")},
        search=search,
    )
