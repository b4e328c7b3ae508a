"""Which of a run's weights a report's numbers describe (STYLE.md 20), and the note line that says so.

    policies = {policy_label(config): described(config)}    # "ema(0.999)" -> "an exponential moving ..."
    weights_note(policies, shown="... sched+ema(0.999) ...")

Every run scores its last epoch's weights (the paper's); a run with a weights policy (`RunConfig.
weights_policy` "best" or "ema") also scores the weights it kept, under the same protocol, and is reported by
those alone: its label names the policy (`sched+ema(0.999)`, `RunConfig.variant`), so its cell is never
averaged with the plain run's, and its last-epoch rows (the plain run's numbers again) enter no table but
`evaluations`, where a column says which weights each row scored.
"""

from __future__ import annotations

from rftbench.core.config import RunConfig

LAST = "the last epoch's (the paper's)"


def policy_label(config: RunConfig) -> str:
    """The part of a run's label that names its weights policy: "best(adv)", "ema(0.999)"; "" for "last"
    (the policy is the last part of `RunConfig.variant`)."""
    return "" if config.weights_policy == "last" else config.variant.rpartition("+")[2]


def described(config: RunConfig) -> str:
    """What the weights a run's policy keeps are, in words."""
    if config.weights_policy == "best":
        return f"the epoch with the best validation {config.best_metric} accuracy"
    if config.weights_policy == "ema":
        return f"an exponential moving average of the weights (decay {config.ema_decay:g} per step)"
    return LAST


def weights_note(policies: dict[str, str], shown: str, per_row: bool = False) -> str:
    """The note line: which weights a table's numbers are. `policies`: each policy label a report may show
    -> its description; those named in `shown` (the table's text) are explained. `per_row`: a table of
    evaluation rows, where a column names the weights each row scored."""
    named = "; ".join(
        f"+{label}: {text}"
        for label, text in sorted(policies.items())
        if label in shown  # "(...)" ends each: none is inside another
    )
    if per_row:
        kept = "; best, ema = the weights the run's policy kept" if named else ""
        return "; ".join(n for n in (f"weights column: last = {LAST}{kept}", named) if n)
    if not named:
        return f"weights: {LAST}"
    return f"weights: {LAST} where the setting names no policy; {named}"
