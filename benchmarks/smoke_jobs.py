"""Time per smoke-grid job and the database's write cost per epoch, measured in one run of the real CLI.

    python benchmarks/smoke_jobs.py [--device cuda]

Runs `rftbench run-grid --grid smoke` in process into a fresh SQLite file, timing every
`JobQueue.record_epoch` call (the per-epoch database write, owner-checked) next to the epochs themselves.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from rftbench.cli import app
from rftbench.results.queue import JobQueue
from rftbench.results.store import Store

EXPERIMENTS = Path(__file__).resolve().parents[1] / "rftbench" / "experiments.toml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    writes: list[float] = []
    record = JobQueue.record_epoch

    def timed_record(self, *args, **kwargs):
        start = time.perf_counter()
        record(self, *args, **kwargs)
        writes.append(time.perf_counter() - start)

    JobQueue.record_epoch = timed_record
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "smoke.db"
        start = time.perf_counter()
        app(["run-grid", "--grid", "smoke", "--experiments", str(EXPERIMENTS), "--db", str(db), "--runs-dir",
             str(Path(tmp) / "runs"), "--device", args.device], standalone_mode=False)  # fmt: skip
        wall = time.perf_counter() - start
        store = Store.open(str(db), create=False)
        runs = store.runs()
        jobs = [(r.finished_at - r.started_at).total_seconds() for r in runs]
        epochs = [e.epoch_seconds for r in runs for e in store.epochs(r.id)]
    print(f"device {args.device}: {len(runs)} smoke jobs in {wall:.1f} s wall (process already started)")
    print(f"time per job (claim to completion): mean {statistics.mean(jobs):.2f} s, "
          f"each {', '.join(f'{j:.2f}' for j in jobs)} s")  # fmt: skip
    print(f"epoch: mean {statistics.mean(epochs):.3f} s over {len(epochs)} epochs")
    print(f"database write per epoch (upsert, SQLite WAL): mean {1000 * statistics.mean(writes):.2f} ms, "
          f"max {1000 * max(writes):.2f} ms = {statistics.mean(writes) / statistics.mean(epochs):.2%} of a "
          f"smoke epoch")  # fmt: skip


if __name__ == "__main__":
    main()
