"""What `rftbench bench` measures, below the command line: each (backbone, precision, compile mode) case
on this device, and a grid's projected hours from the measurements.

    for row in bench_rows(BenchRequest(backbones=["ViT"]), RunnerOptions(device="cuda"), say=print):
        print(row)   # each case as soon as it is measured, then a grid's totals
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

from rftbench.core.config import eps_text
from rftbench.execution.launch import runtime_options
from rftbench.execution.options import BenchRequest, LaunchError, RunnerOptions


def check_request(request: BenchRequest) -> None:
    from rftbench.engine.bench import COMPILE_MODES
    from rftbench.models.registry import BACKBONES

    unknown = sorted(set(request.backbones) - set(BACKBONES))
    if unknown:
        raise LaunchError(f"--backbone {', '.join(unknown)}: unknown; valid ones are {', '.join(BACKBONES)}")
    for mode in request.compile_modes:
        if mode not in COMPILE_MODES:
            raise LaunchError(f"--compile {mode!r}: choose one of {', '.join(COMPILE_MODES)}")


def bench_rows(
    request: BenchRequest, options: RunnerOptions, say: Callable[[str], None] | None = None
) -> Iterator[dict]:
    """Each measured case's row as soon as it is measured (with a grid: its backbone's share of the grid's
    hours), then with a grid one total per (precision, compile mode). A run cut short keeps its rows."""
    from rftbench.engine.bench import BenchCase, grid_hours, measure
    from rftbench.experiments.files import find_experiments
    from rftbench.experiments.grids import load_experiments

    r = request
    check_request(r)
    try:
        eps = eps_text(r.eps)
    except ValueError as exc:
        raise LaunchError(str(exc)) from None
    configs = []
    if r.grid is not None:
        from rftbench.experiments.grids import VALIDATING

        spec = load_experiments(find_experiments(r.experiments))
        spec.tuned = VALIDATING  # "tuned" knobs at their defaults: the learning rate does not change speed
        configs = [job.config for job in spec.jobs(r.grid)]
    runtime = runtime_options(options)
    precisions = r.precisions or (["bf16"] if runtime.device.startswith("cuda") else ["fp32"])
    rows = []
    for name, precision, mode in itertools.product(r.backbones, precisions, r.compile_modes):
        case = BenchCase(
            name, r.resolution, r.batch_size, precision, mode, r.attack_steps, r.eval_steps, eps, r.batches
        )
        if say is not None:
            say(f"measuring {name} {precision} compile={mode} on {runtime.device} …")
        row = measure(
            case,
            runtime.device,
            num_workers=runtime.num_workers,
            tf32=options.tf32,
            torchattacks=r.torchattacks,
        )
        if r.grid is not None:
            projected = grid_hours(configs, {name: row})
            row[f"{r.grid}_hours"] = projected["hours"].get(name)
            row[f"{r.grid}_runs"] = projected["runs"].get(name, 0)
        rows.append(row)
        yield row
    if r.grid is None:
        return
    for precision, mode in itertools.product(precisions, r.compile_modes):
        chosen = {x["backbone"]: x for x in rows if (x["precision"], x["compile"]) == (precision, mode)}
        total = grid_hours(configs, chosen)
        yield {
            "grid": r.grid,
            "precision": precision,
            "compile": mode,
            "hours": total["total"],
            "runs": sum(total["runs"].values()),
            "unprojected": total["unprojected"],
        }
