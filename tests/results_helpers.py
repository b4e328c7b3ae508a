"""How tests put rows into a results database the way the runner does: through the job queue's owner check.

from results_helpers import write_epoch
write_epoch(store, run_id, {"epoch": 0, "val_acc": 0.5, ...})   # claims the run first if nobody holds it
"""

from __future__ import annotations

from rftbench.results.queue import JobQueue, Worker
from rftbench.results.store import Store

LEASE_SECONDS = 3600.0  # longer than any test: a helper's claim never expires under it


def holder(store: Store, run_id: str) -> Worker:
    """The worker that holds `run_id`: its lease owner if it is running (so a test that claimed it keeps
    writing as itself), else a test worker that claims it now, as a worker does before its first epoch."""
    run = store.run(run_id)
    if run is not None and run.status == "running" and run.lease_owner:
        return Worker(run.worker or "tests", owner=run.lease_owner)
    worker = Worker("tests")
    claimed = JobQueue(store).claim(worker, [run_id], LEASE_SECONDS)
    assert claimed is not None, f"run {run_id} is not stored, or neither pending nor interrupted"
    return worker


def write_epoch(store: Store, run_id: str, metrics: dict) -> None:
    """Store one epoch's metrics row as the runner does (`JobQueue.record_epoch`, owner-checked)."""
    JobQueue(store).record_epoch(run_id, holder(store, run_id), metrics)
