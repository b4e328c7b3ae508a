"""What `rftbench evaluate` does below the command line: score finished runs' final weights (the last
epoch's, `final.pt`, and those their weights policy kept, `best.pt` / `ema.pt`) under a protocol, one run
at a time, each result yielded as soon as it is stored.

    for item in evaluate_runs(EvaluateRequest(grid="paper", eps=["8/255"]), RunnerOptions(device="cuda")):
        print(item)   # Evaluated(run_id, label, result, added) or Skipped(line)
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

from rftbench.core.config import RunConfig, budget_text, budget_value
from rftbench.execution.launch import make_runner
from rftbench.execution.options import EvaluateRequest, LaunchError, RunnerOptions
from rftbench.results.schema import Run


@dataclass
class Evaluated:
    run_id: str
    label: str  # the protocol's label (and the weights, where not the last epoch's)
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
        before = {e.id for e in runner.store.evaluations(run.id)}
        for weights in dict.fromkeys(("last", config.weights_policy)):  # the last, and the kept ones
            try:
                result, added = evaluate_run(runner, run.id, budgets, chosen, weights)
            except (CheckpointError, EvaluationError) as exc:
                if request.run_id is not None:
                    raise
                yield Skipped(f"{run.id}: {exc}")
                break
            label = chosen.label() + ("" if weights == "last" else f", {weights} weights")
            yield Evaluated(run.id, label, result, added)
        mirror_evaluations(runner, run, before)


def mirror_evaluations(runner, run: Run, before: set[int]) -> None:
    """The rows stored now (ids not in `before`) into the --track sinks, in the run's own sink runs."""
    if not runner.track:
        return
    from rftbench.execution.tracking import run_tags

    fresh = [e for e in runner.store.evaluations(run.id) if e.id not in before]
    if fresh:  # the runner's one tracker: a sink that failed for one run sits out the others, as in training
        tags = run_tags(run, runner.store.grids_of(run.id))
        runner.tracker.start(run.id, json.loads(run.config), run.provenance or {}, tags, replay=False)
        runner.tracker.evaluations(fresh)
        runner.tracker.end(run.status)


def evaluate_run(
    runner, run_id: str, budgets: list[str], protocol, weights: str = "last"
) -> tuple[dict, int]:
    """Evaluate a completed run's `weights` ("last": `runs/<id>/final.pt`; its policy's: `best.pt`,
    `ema.pt`) at `budgets` under `protocol`, stored as `extra` rows beside the final ones; no retraining.
    Idempotent: budgets already stored under this protocol for these weights are not measured again.
    Returns (the evaluation, rows added)."""
    from rftbench.engine.evaluation import evaluate_budgets, evaluation_key
    from rftbench.results.batches import EvalLog

    store = runner.store
    run = store.find_run(run_id)
    rows = store.evaluations(run.id)
    stored = {e.budget: e for e in rows if e.eval_protocol() == protocol and e.weights == weights}
    if run.status == "completed" and all(b in stored for b in budgets):
        return stored_evaluation([stored[b] for b in budgets], protocol) | {"weights": weights}, 0
    model, loader = final_model(runner, run, weights)
    todo = [b for b in budgets if b not in stored]
    key = evaluation_key(protocol, todo, model)  # a killed evaluation continues at its first missing batch
    log, n_classes = EvalLog(store, run.id, key), len(loader.dataset.classes)
    result = evaluate_budgets(
        model, loader, todo, protocol, device=runner.runtime.device, n_classes=n_classes, log=log
    )
    result |= {"batches": log.key, "weights": weights} | kept_details(rows, weights)
    added = store.add_evaluation(run.id, result, kind="extra")
    fresh = {row["budget"]: row for row in result["budgets"]}
    result["budgets"] = [
        fresh.get(b) or stored_evaluation([stored[b]], protocol)["budgets"][0] for b in budgets
    ]
    return result, added


def kept_details(rows: list, weights: str) -> dict:
    """What the run's final rows of kept weights record about them (best: its epoch, metric and value;
    ema: its decay), for the rows `evaluate` adds; {} for the last weights."""
    kept = [e.details or {} for e in rows if e.kind == "final" and e.weights == weights != "last"]
    details = {k: v for k, v in (kept[0] if kept else {}).items() if k != "per_attack"}
    return {"details": details} if details else {}


def final_model(runner, run: Run, weights: str = "last"):
    """A completed run's final weights (`runs/<id>/final.pt`, or the `weights` its policy kept: `best.pt`,
    `ema.pt`) on the runner's device, in eval mode, and its test loader; the data is checked first. One line
    (`CheckpointError`, `DataNotFound`) if not."""
    import torch

    from rftbench.data.checks import check_data
    from rftbench.engine.checkpoint import CheckpointError, load_checkpoint
    from rftbench.engine.trainer import configure_device
    from rftbench.execution.runner import build_data, build_model

    final = runner.runs_dir / run.id / ("final.pt" if weights == "last" else f"{weights}.pt")
    if run.status != "completed":
        fix = "finish it with `rftbench resume`"
        if run.status == "failed":
            fix = "rerun it with `rftbench run` or `run-grid --retry-failed`"
        raise CheckpointError(f"run {run.id} is {run.status}, not completed: {fix}, then evaluate it")
    if not final.exists():
        raise CheckpointError(
            f"run {run.id} has no final weights at {final}: pass the --runs-dir it ran with, or put its "
            f"{final.name} back (--prune-checkpoints keeps it); its stored evaluations stay as they are"
        )
    try:
        state = load_checkpoint(final)
    except CheckpointError as exc:  # the general advice (delete it, rerun) cannot apply to a finished run
        reason = str(exc).split("(", 1)[-1].split(")")[0]
        raise CheckpointError(
            f"the final weights {final} cannot be read ({reason}): restore them from a copy; "
            f"run {run.id}'s stored evaluations stay as they are"
        ) from None
    if RunConfig.from_json(state["config"]).run_id != run.id:
        raise CheckpointError(f"{final} holds another run's weights ({state['run_id']}); it is not {run.id}")
    config, paths = RunConfig.from_json(run.config), runner.paths(run)
    check_data(config.dataset, paths["data_root"], paths["split_file"], config.splits)
    test_set = build_data(config, paths, "test", None)
    model = build_model(config, paths, len(test_set.classes), pretrained=False)
    model.load_state_dict(state["model"])
    configure_device(torch.device(runner.runtime.device), runner.runtime)  # the math of training's own
    device = torch.device(runner.runtime.device)
    return model.to(device).eval(), runner.loader(test_set, config, shuffle=False)


def stored_evaluation(rows: list, protocol) -> dict:
    """Stored evaluation rows in `evaluate_budgets`' form."""
    return {
        "n": rows[0].n,
        "clean": rows[0].clean,
        "budgets": [
            {
                "budget": r.budget,
                "clean": r.clean,
                "adv": r.adv,
                "eadv": r.eadv,
                "eps": r.eps_grid,
                "accuracies": r.accuracies,
            }
            for r in rows
        ],
        "attacks_run": sum(r.attacks_run for r in rows),
        "protocol": protocol.as_dict(),
        **({"per_attack": {r.budget: r.details["per_attack"] for r in rows}} if protocol.autoattack else {}),
    }
