"""What an experiments file may say: pydantic models of its tables, the JSON schema editors read, and one
line per problem.

    spec = ExperimentsFile.model_validate(tomllib.loads(Path("experiments.toml").read_text()))
    json.dumps(experiments_schema(), indent=2)  # for an editor: taplo / Even Better TOML's `#:schema FILE`

Every table forbids unknown keys and takes TOML's own types (no "5" for 5). The keys of a [defaults], grid
or override table are RunConfig's fields with RunConfig's types and defaults, and the keys of a grid's
`settings` are the schedule's parameters (`core.config.SCHEDULE_FIELDS`, from `ScheduleSpec`): a field added
there is a key here. `problems` turns pydantic's errors into `FILE: KEY: problem; fix` lines.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic
from pydantic import AfterValidator, BeforeValidator, Field

from rftbench.core.config import (
    SCHEDULE_FIELDS,
    VARIANT_FIELDS,
    Precision,
    Protocol,
    RunConfig,
    SlurmOptions,
    SplitSource,
    budget_value,
    eps_text,
)
from rftbench.core.schedules import SCHEDULES, Points, check_points
from rftbench.core.tuning import PAPER_SPACE, TUNABLE, TUNED, Knob, Objective, Pruner, Sampler, Search
from rftbench.data.registry import DATASETS
from rftbench.models.registry import BACKBONES

AXIS_KEYS = ("backbone", "dataset", "eps", "seed")  # a grid's axes: its own keys, not a run-config key
SETTING_KEYS = tuple(SCHEDULE_FIELDS.values())  # the keys of one entry of a grid's `settings`
# …and may name its objective and fine-tuning mode (over the grid's): {setting = "fix", finetune = "lora"}
VARIANT_KEYS = VARIANT_FIELDS
RUN_KEYS = tuple(f.name for f in dataclasses.fields(RunConfig) if f.name not in SETTING_KEYS + AXIS_KEYS)
DEFAULT_THRESHOLD = 0.05  # the paper's 5% (CONVENTIONS.md)


def _known(kind: str, registry: typing.Collection[str]) -> typing.Callable[[str], str]:
    def check(name: str) -> str:
        if name not in registry:
            raise ValueError(f"unknown {kind} {name!r}; valid ones: {', '.join(registry)}")
        return name

    return check


def _name(kind: str, registry: typing.Collection[str]) -> Any:
    """A registry name: checked when read, offered to editors as an enum."""
    return Annotated[
        str, AfterValidator(_known(kind, registry)), Field(json_schema_extra={"enum": [*registry]})
    ]


def _names(kind: str, registry: typing.Collection[str]) -> Any:
    """A list of names, checked as one value (the problem names the list, as `grids.g.backbones`)."""
    check = _known(kind, registry)
    item = Annotated[str, Field(json_schema_extra={"enum": [*registry]})]
    return Annotated[list[item], AfterValidator(lambda names: [check(name) for name in names])]


def _budget(text: str) -> str:
    text = text.strip()
    budget_value(text)  # either form ('4/255' or, for ℓ2, '0.5'); the run's norm reads it
    return eps_text(text) if "/" in text else text


def _threshold(value: float) -> float:
    if not 0 <= value < 1:
        raise ValueError(f"{value:g} is not a validation accuracy in [0, 1)")
    return value


def _override_key(key: str) -> str:
    backbone, _, dataset = key.partition("/")
    if dataset:
        _known("backbone", BACKBONES)(backbone)
        _known("dataset", DATASETS)(dataset)
    elif key not in BACKBONES and key not in DATASETS:
        raise ValueError(
            f'{key!r} is neither a backbone nor a dataset; write a backbone, a dataset or "Backbone/Dataset"'
        )
    return key


def _pair(value: Any) -> Any:
    if not (isinstance(value, list) and len(value) == 2):
        raise ValueError(f'expected ["Backbone", "Dataset"], got {value!r}')
    return tuple(value)


def _tunable(value: Any) -> Any:
    """A number, or "tuned": the best value of its configuration's study (rftbench.core.tuning)."""
    if value == TUNED or (isinstance(value, int | float) and not isinstance(value, bool)):
        return value
    raise ValueError(f'expected float, got {type(value).__name__} {value!r} (or "tuned": its study\'s best)')


Backbone, Dataset = _name("backbone", BACKBONES), _name("dataset", DATASETS)
Budget = Annotated[str, AfterValidator(_budget)]
Threshold = Annotated[float, AfterValidator(_threshold)]
# Keys whose TOML value is checked otherwise than RunConfig's annotation says
TOML_TYPES: dict[str, Any] = {
    "setting": _name("schedule", SCHEDULES),
    "points": Annotated[Points, BeforeValidator(check_points)],
    "eval_budgets": list[Budget],
    "splits": Literal["auto", SplitSource],  # "auto": the paper's split lists where they are
} | {knob: Annotated[float | Literal[TUNED], BeforeValidator(_tunable)] for knob in TUNABLE}


class Table(pydantic.BaseModel):
    """A TOML table: unknown keys are errors, values keep their TOML types."""

    model_config = pydantic.ConfigDict(extra="forbid", strict=True)

    @pydantic.model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        # before pydantic's own extra="forbid", to list the valid keys in the same line
        unknown = sorted(set(data) - set(cls.model_fields)) if isinstance(data, dict) else []
        if unknown:
            valid = ", ".join(sorted(cls.model_fields))
            raise ValueError(f"unknown key(s) {', '.join(unknown)}; valid keys: {valid}")
        return data


def _run_fields(names: tuple[str, ...]) -> dict[str, Any]:
    """RunConfig's fields as model fields: its types (or TOML_TYPES) and its defaults."""
    hints = typing.get_type_hints(RunConfig)
    defaults = {f.name: f.default for f in dataclasses.fields(RunConfig)}
    fields = {}
    for name in names:
        kind = TOML_TYPES.get(name, hints[name])
        lax = {"strict": False} if typing.get_origin(kind) is tuple else {}  # a TOML array for a tuple
        default = list(defaults[name]) if typing.get_origin(kind) is list else defaults[name]
        fields[name] = (kind, Field(default, **lax))
    return fields


class _Ramp(Table):
    @pydantic.model_validator(mode="after")
    def _ramp_order(self) -> _Ramp:
        t1, t2 = getattr(self, "t1", None), getattr(self, "t2", None)
        if t1 is not None and t2 is not None and t1 > t2:
            raise ValueError(
                f"T1 ({t1:g}) > T2 ({t2:g}): the ramp must start before it ends; swap them or set t1 <= t2"
            )
        return self


RunFields: type[Table] = pydantic.create_model("RunFields", __base__=Table, **_run_fields(RUN_KEYS))
Setting: type[Table] = pydantic.create_model(
    "Setting",
    __base__=_Ramp,
    **(_run_fields(SETTING_KEYS + VARIANT_KEYS) | {"setting": (TOML_TYPES["setting"], ...)}),
)
OverrideKey = Annotated[str, AfterValidator(_override_key)]
Overrides = dict[OverrideKey, RunFields]  # type: ignore[valid-type]


class KnobRange(Table):
    low: float
    high: float
    log: bool = True


class TuneTable(Table):
    """A `[tune]` table (rftbench.core.tuning.Search; its defaults are the paper's search)."""

    space: dict[str, KnobRange] = {k.name: KnobRange(low=k.low, high=k.high, log=k.log) for k in PAPER_SPACE}
    setting: _name("schedule", SCHEDULES) = "fix"  # type: ignore[valid-type]
    objective: Objective = "val_acc"
    sampler: Sampler = "random"
    seed: int = 0
    pruner: Pruner = "asha"
    min_epochs: int = 1
    reduction_factor: int = 3
    trials: int | None = 16
    minutes: float | None = None

    @pydantic.model_validator(mode="after")
    def _search(self) -> TuneTable:
        self.search()  # an empty space, a range backwards, an unknown knob, a budget of 0: one line now
        return self

    def search(self, over: TuneTable | None = None) -> Search:
        """This table's search, or `over`'s keys (a grid's own table) over this one's."""
        values = self.model_dump() | (over.model_dump(exclude_unset=True) if over is not None else {})
        space = tuple(Knob(name, **knob) for name, knob in values.pop("space").items())
        return Search(space=space, **values)


class Scored(RunFields):  # type: ignore[valid-type, misc]
    """Run-config fields, and how a grid's runs are scored and analysed (the latter not in a run's id)."""

    adaptation_threshold: Threshold = DEFAULT_THRESHOLD
    standard_eval_budgets: list[Budget] = []  # the budgets an ε_g = 0 run is scored at
    eval_protocol: Protocol = "paper"
    eval_precision: Precision = "fp32"


class Defaults(Scored):
    seed: int = 0


class GridBlock(Scored):
    description: str = ""
    backbones: _names("backbone", BACKBONES) = []  # type: ignore[valid-type]
    datasets: _names("dataset", DATASETS) = []  # type: ignore[valid-type]
    pairs: list[Annotated[tuple[Backbone, Dataset], BeforeValidator(_pair)]] = []  # type: ignore[valid-type]
    settings: list[Setting] = [Setting(setting="fix")]  # type: ignore[valid-type]
    eps: list[Budget]
    seeds: list[int] = [0]  # unset: [defaults] seed
    overrides: Overrides = {}
    tune: TuneTable | None = None  # its keys over the file's [tune]

    @pydantic.model_validator(mode="before")
    @classmethod
    def _axes(cls, table: Any) -> Any:
        if not isinstance(table, dict):
            return table
        if "pairs" in table and ("backbones" in table or "datasets" in table):
            raise ValueError("give either `pairs` or `backbones` and `datasets`, not both")
        for key in () if "pairs" in table else ("backbones", "datasets"):
            if key not in table:
                raise ValueError(f"missing `{key}` (or give `pairs`)")
        if "eps" not in table:
            raise ValueError('missing `eps` (a list of budgets such as ["4/255", "8/255"])')
        return table


class BackbonePaths(Table):
    weights: str | None = None  # a local weights file


class DatasetPaths(Table):
    root: str | None = None
    split_file: str | None = None


def _blocks(value):
    """[grids.NAME] is one table, [[grids.NAME]] a union of blocks; anything else is not a grid."""
    if isinstance(value, dict):
        return [value]
    if not isinstance(value, list):
        raise ValueError(f"expected a table, got {type(value).__name__}")
    return value


Blocks = Annotated[
    list[GridBlock], BeforeValidator(_blocks, json_schema_input_type=GridBlock | list[GridBlock])
]


class ExperimentsFile(Table):
    """An experiments file (rftbench/experiments.toml has a commented example of each table)."""

    defaults: Defaults = Defaults()
    overrides: Overrides = {}
    backbones: dict[Backbone, BackbonePaths] = {}  # type: ignore[valid-type]
    datasets: dict[Dataset, DatasetPaths] = {}  # type: ignore[valid-type]
    grids: dict[str, Blocks] = {}
    tune: TuneTable = TuneTable()
    slurm: SlurmOptions = SlurmOptions()


def experiments_schema() -> dict:
    """The JSON schema of an experiments file, for editors."""
    return ExperimentsFile.model_json_schema()


TYPE_NAMES = {"float_type": "float", "int_type": "int", "string_type": "str", "bool_type": "bool"}
TYPE_NAMES |= {"list_type": "list", "tuple_type": "list", "model_type": "table", "dict_type": "table"}


def problems(error: pydantic.ValidationError, path: Path, data: dict) -> list[str]:
    """One line per problem, `FILE: KEY: problem; fix`, in our checks' own words where they raised."""
    lines = []
    for problem in error.errors():
        loc, kind, value = problem["loc"], problem["type"], problem.get("input")
        text = f"{problem['msg']} (got {value!r})"  # pydantic's words where no rule below has ours
        if kind == "missing":
            loc, text = loc[:-1], f"missing `{loc[-1]}`"
        elif kind == "value_error":
            text = str(problem["ctx"]["error"])
        elif kind == "literal_error":  # expected: "'a', 'b' or 'c'"
            choices = ", ".join(re.findall(r"'([^']*)'", problem["ctx"]["expected"]))
            text = f"{value!r} unknown; choose one of {choices}"
        elif kind in TYPE_NAMES:
            text = f"expected {TYPE_NAMES[kind]}, got {type(value).__name__} {value!r}"
        lines.append(f"{path}: {_where(loc, data)}: {text}")
    return lines


def _where(loc: tuple, data: dict) -> str:
    """`grids.g.settings[0].t1` from pydantic's loc; a grid of one table has no block index."""
    grids = data.get("grids")
    text = ""
    for i, part in enumerate(loc):
        one_block = (
            i == 2 and loc[0] == "grids" and isinstance(grids, dict) and isinstance(grids[loc[1]], dict)
        )
        if part == "[key]" or one_block:
            continue
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text or "top level"
