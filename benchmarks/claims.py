"""Claim latency and throughput under contention, SQLite against PostgreSQL, side by side in one run.

    python benchmarks/claims.py --postgres postgresql://postgres@127.0.0.1:5433 [--runs 400] [--workers 1 4 8]

For each backend and worker count, `workers` processes claim from one table of `runs` pending runs until
none is left (each claim is `JobQueue.claimable` + `JobQueue.claim`, as a worker's loop does), then every run
must have been claimed exactly once. Prints claims/s and the median and 95th-percentile claim latency.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rftbench.core.config import RunConfig  # noqa: E402
from rftbench.experiments.grids import Job  # noqa: E402
from rftbench.results.queue import JobQueue, Worker  # noqa: E402
from rftbench.results.store import Store  # noqa: E402


def claim_all(url: str, ids: list[str], start, out) -> None:
    queue, me = JobQueue(Store.open(url, create=False)), Worker(f"bench {uuid.uuid4().hex[:4]}")
    start.wait()
    mine, latencies = [], []
    while True:
        t = time.perf_counter()
        run = queue.claim(me, queue.claimable(ids), 600)
        latencies.append(time.perf_counter() - t)
        if run is None and not queue.claimable(ids):
            break
        if run is not None:
            mine.append(run.id)
    out.put((mine, latencies))


def measure(url: str, runs: int, workers: int) -> dict:
    configs = [RunConfig(backbone="cifar_resnet20", dataset="synthetic", seed=s) for s in range(runs)]
    store = Store.open(url)
    store.record_grid(
        "bench", [Job(c, "bench", i, {}) for i, c in enumerate(configs)], adaptation_threshold=0.05
    )
    ids = [c.run_id for c in configs]
    ctx = mp.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=claim_all, args=(url, ids, start, out)) for _ in range(workers)]
    for p in procs:
        p.start()
    time.sleep(3)  # let every process import and connect
    t = time.perf_counter()
    start.set()
    results = [out.get() for _ in procs]
    seconds = time.perf_counter() - t
    for p in procs:
        p.join()
    claimed = [r for mine, _ in results for r in mine]
    assert sorted(claimed) == sorted(ids), "a run was claimed twice or never"
    latencies = sorted(x for _, lat in results for x in lat)
    return {"claims/s": runs / seconds, "p50 ms": 1e3 * statistics.median(latencies),
            "p95 ms": 1e3 * latencies[int(0.95 * (len(latencies) - 1))]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--postgres", required=True, help="a server URL without database, e.g. postgresql://u@h:p"
    )
    parser.add_argument("--runs", type=int, default=400)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 4, 8])
    args = parser.parse_args()
    import psycopg

    print(f"{'workers':>7} {'backend':>10} {'claims/s':>9} {'p50 ms':>8} {'p95 ms':>8}")
    for workers in args.workers:
        rows = {}
        for backend in ("sqlite", "postgresql"):
            if backend == "sqlite":
                url = str(Path(tempfile.mkdtemp()) / "bench.db")
            else:
                name = f"bench_{uuid.uuid4().hex[:8]}"
                with psycopg.connect(f"{args.postgres}/postgres", autocommit=True) as connection:
                    connection.execute(f"CREATE DATABASE {name}")
                url = f"{args.postgres}/{name}"
            rows[backend] = measure(url, args.runs, workers)
            r = rows[backend]
            print(f"{workers:>7} {backend:>10} {r['claims/s']:>9.0f} {r['p50 ms']:>8.2f} {r['p95 ms']:>8.2f}")
        ratio = rows["postgresql"]["claims/s"] / rows["sqlite"]["claims/s"]
        print(f"{workers:>7} {'pg/sqlite':>10} {ratio:>9.2f}")


if __name__ == "__main__":
    main()
