"""rftbench: robust fine-tuning of non-robust pretrained image models, with ε-scheduling.

import rftbench
x_adv = rftbench.apgd(model, x, y, eps=4 / 255, steps=10)
"""

from rftbench.attacks import apgd, step_size_checkpoints
from rftbench.config import RunConfig, RuntimeOptions, eps_text, parse_eps
from rftbench.metrics import (
    RobustnessCurve,
    adaptation_start_epoch,
    eps_grid,
    evaluate_budgets,
    expected_robustness,
    robustness_curve,
)
from rftbench.schedules import SCHEDULES, ScheduleSpec, get_schedule, hinge_alpha
from rftbench.trainer import train

__version__ = "0.1.0"

__all__ = [
    "SCHEDULES",
    "RobustnessCurve",
    "RunConfig",
    "RuntimeOptions",
    "ScheduleSpec",
    "adaptation_start_epoch",
    "apgd",
    "eps_grid",
    "eps_text",
    "evaluate_budgets",
    "expected_robustness",
    "get_schedule",
    "hinge_alpha",
    "parse_eps",
    "robustness_curve",
    "step_size_checkpoints",
    "train",
]
