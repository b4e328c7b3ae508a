"""What `rftbench evaluate` does below the command line: score finished runs' final weights under a
protocol, one run at a time, each result yielded as soon as it is stored.

    for item in evaluate_runs(EvaluateRequest(grid="paper", eps=["8/255"]), RunnerOptions(device="cuda")):
        print(item)   # Evaluated(run_id, label, result, added) or Skipped(line)
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from rftbench.core.config import RunConfig, budget_text, budget_value
from rftbench.execution.launch import make_runner
from rftbench.execution.options import EvaluateRequest, LaunchError, RunnerOptions


@dataclass
class Evaluated:
    run_id: str
    label: str  # the protocol's label
    result: dict  # `evaluate_budgets`' form
    added: int  # rows stored now (0: shown from the store, or stored first by another process)


@dataclass
class Skipped:
    line: str  # a run of a grid that could not be evaluated, and why


def protocol_options(request: EvaluateRequest) -> dict:
    """EvalProtocol's arguments from the request, checked (one line if they do not go together)."""
    from rftbench.core.metrics import EvalProtocol

    r = request
    attack = "apgd-ce" if r.attack == "apgd" else f"autoattack-{r.version}"
    options = dict(
        attack=attack, protocol=r.protocol, precision=r.precision, random_start=r.random_start, seed=r.seed
    )
    if attack != "apgd-ce":
        options |= {"steps": r.steps or 100}
    try:
        EvalProtocol(**options, norm=r.norm or "Linf")
        if r.norm is not None:
            [budget_text(e, r.norm) for e in r.eps]
    except ValueError as exc:
        raise LaunchError(str(exc)) from None
    return options


def run_budgets(run, request: EvaluateRequest) -> tuple[str, list[str], RunConfig]:
    """The threat model and budgets to evaluate `run` at, or one line saying why they do not fit it."""
    config = RunConfig.from_json(run.config)
    threat, eps = request.norm or config.norm, request.eps
    if threat != config.norm and not eps:
        raise LaunchError(
            f"run {run.id} was trained under {config.norm}: pass --eps for an {threat} evaluation"
        )
    plain = [e for e in eps if threat == "Linf" and "/" not in e and budget_value(e) != 0]
    if plain:
        raise LaunchError(
            f"--eps {plain[0]}: run {run.id} is ℓ∞, whose budgets are written k/255; for an ℓ2 "
            f"evaluation pass --norm L2"
        )
    try:
        return threat, [budget_text(e, threat) for e in eps] or list(config.scored_budgets), config
    except ValueError as exc:
        raise LaunchError(f"run {run.id}: {exc}") from None


def evaluate_runs(request: EvaluateRequest, options: RunnerOptions) -> Iterator[Evaluated | Skipped]:
    """Each run's evaluation, stored beside its final one (never replacing it) and yielded; a run of a
    grid that cannot be evaluated is skipped with its reason, a run named alone raises it."""
    from rftbench.core.metrics import EvalProtocol
    from rftbench.engine.batches import EvaluationError
    from rftbench.engine.checkpoint import CheckpointError
    from rftbench.results.store import Store

    if (request.run_id is None) == (request.grid is None):
        raise LaunchError("name one run (RUN_ID) or one grid (--grid NAME) to evaluate")
    chosen_options = protocol_options(request)
    runner = make_runner(options)
    runner.store = Store.open(request.db, create=False)
    runner.store.check_grid(request.grid)
    if request.run_id is not None:
        runs = [runner.store.find_run(request.run_id)]
    else:
        runs = runner.store.runs(grid=request.grid, states=("completed",))
    for run in runs:
        threat, budgets, config = run_budgets(run, request)
        steps = {"steps": request.steps or config.eval_attack_steps}
        chosen = EvalProtocol(**(steps | chosen_options), norm=threat)
        try:
            result, added = runner.evaluate(run.id, budgets, chosen)
        except (CheckpointError, EvaluationError) as exc:
            if request.run_id is not None:
                raise
            yield Skipped(f"{run.id}: {exc}")
            continue
        yield Evaluated(run.id, chosen.label(), result, added)
