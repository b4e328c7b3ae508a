"""rftbench: adversarial fine-tuning of non-robust pretrained image models, with ε-scheduling
(Ngnawé et al., ICLR 2026, arXiv 2509.23325).

    import rftbench
    model = rftbench.build_backbone("cifar_resnet20", num_classes=10, pretrained=False)
    x_adv = rftbench.apgd(model, x, y, eps=4 / 255, steps=10)

The public API, by task (each name is imported on first use, so `import rftbench` and the command line
start without torch):
- Models and data: `build_backbone`, `BACKBONES` (the registry), `build_dataset`, `DATASETS`,
  `fetch_dataset` (download a paper dataset with its split lists).
- The attack and the schedules: `apgd` (APGD-CE, ℓ∞; `step_size_checkpoints`), `ScheduleSpec`,
  `SCHEDULES`, `get_schedule`, `hinge_alpha`.
- The metrics: `eps_grid`, `expected_robustness`, `adaptation_start_epoch`, `EvalProtocol`, and measuring
  them: `robustness_curve` (a `RobustnessCurve`), `evaluate_budgets`.
- Runs: `RunConfig` (one frozen config; its hash is the run id), `RuntimeOptions`, `train`,
  `load_experiments` (the named grids of an experiments file), `parse_eps`, `eps_text`.

The command line (`rftbench --help`) runs grids of such runs into a results database and reports them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from rftbench.version import __version__ as __version__

_EXPORTS = {  # public name -> the module that defines it
    "build_backbone": "rftbench.models.build",
    "BACKBONES": "rftbench.models.registry",
    "build_dataset": "rftbench.data.build",
    "DATASETS": "rftbench.data.registry",
    "fetch_dataset": "rftbench.data.fetch",
    "apgd": "rftbench.attacks.apgd",
    "step_size_checkpoints": "rftbench.attacks.apgd",
    "ScheduleSpec": "rftbench.core.schedules",
    "SCHEDULES": "rftbench.core.schedules",
    "get_schedule": "rftbench.core.schedules",
    "hinge_alpha": "rftbench.core.schedules",
    "eps_grid": "rftbench.core.metrics",
    "expected_robustness": "rftbench.core.metrics",
    "adaptation_start_epoch": "rftbench.core.metrics",
    "EvalProtocol": "rftbench.core.metrics",
    "RobustnessCurve": "rftbench.core.metrics",
    "robustness_curve": "rftbench.engine.evaluation",
    "evaluate_budgets": "rftbench.engine.evaluation",
    "RunConfig": "rftbench.core.config",
    "RuntimeOptions": "rftbench.core.config",
    "parse_eps": "rftbench.core.config",
    "eps_text": "rftbench.core.config",
    "train": "rftbench.engine.trainer",
    "load_experiments": "rftbench.experiments.grids",
}
_RENAMED = {"fetch_dataset": "fetch"}  # exported under a clearer name than its module's

__all__ = [  # the keys of _EXPORTS (a literal, for linters and `from rftbench import *`)
    "BACKBONES",
    "DATASETS",
    "EvalProtocol",
    "RobustnessCurve",
    "RunConfig",
    "RuntimeOptions",
    "SCHEDULES",
    "ScheduleSpec",
    "adaptation_start_epoch",
    "apgd",
    "build_backbone",
    "build_dataset",
    "eps_grid",
    "eps_text",
    "evaluate_budgets",
    "expected_robustness",
    "fetch_dataset",
    "get_schedule",
    "hinge_alpha",
    "load_experiments",
    "parse_eps",
    "robustness_curve",
    "step_size_checkpoints",
    "train",
]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'rftbench' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), _RENAMED.get(name, name))
    globals()[name] = value  # once imported, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # what type checkers and editors see
    from rftbench.attacks.apgd import apgd, step_size_checkpoints
    from rftbench.core.config import RunConfig, RuntimeOptions, eps_text, parse_eps
    from rftbench.core.metrics import (
        EvalProtocol,
        RobustnessCurve,
        adaptation_start_epoch,
        eps_grid,
        expected_robustness,
    )
    from rftbench.core.schedules import SCHEDULES, ScheduleSpec, get_schedule, hinge_alpha
    from rftbench.data.build import build_dataset
    from rftbench.data.fetch import fetch as fetch_dataset
    from rftbench.data.registry import DATASETS
    from rftbench.engine.evaluation import evaluate_budgets, robustness_curve
    from rftbench.engine.trainer import train
    from rftbench.experiments.grids import load_experiments
    from rftbench.models.build import build_backbone
    from rftbench.models.registry import BACKBONES
