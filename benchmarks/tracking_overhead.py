"""What `--track` costs a grid: the smoke grid (3 runs, 3 epochs, CPU) run plain and under each sink, in
alternation (plain, tensorboard, mlflow, wandb, plain, ...), each in a fresh folder; median seconds and the
ratio to the plain runs of the same rounds. W&B runs offline.

    python benchmarks/tracking_overhead.py [--rounds 3]

A measurement for closing notes, not a test: on a GPU the epochs are shorter and the sinks' fixed costs
(imports, MLflow's table creation, W&B's service) weigh more; per epoch each sink writes one row of scalars.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

SINKS = {"plain": [], "tensorboard": ["--track", "tensorboard"], "mlflow": ["--track", "mlflow"],
         "wandb": ["--track", "wandb"], "all three": ["--track", "tensorboard", "--track", "mlflow",
                                                      "--track", "wandb"]}  # fmt: skip


def one(flags: list[str]) -> float:
    with tempfile.TemporaryDirectory() as folder:
        env = os.environ | {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "2"}
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "rftbench.cli", "run-grid", "--grid", "smoke", *flags],
                       cwd=folder, env=env, check=True, capture_output=True)  # fmt: skip
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    seconds: dict[str, list[float]] = {name: [] for name in SINKS}
    for _ in range(args.rounds):
        for name, flags in SINKS.items():
            seconds[name].append(one(flags))
    plain = seconds["plain"]
    print(f"{'sinks':<12} {'s (median)':>10} {'× plain (median of rounds)':>28}")
    for name, values in seconds.items():
        ratio = statistics.median(v / p for v, p in zip(values, plain))
        print(f"{name:<12} {statistics.median(values):>10.2f} {ratio:>28.2f}")


if __name__ == "__main__":
    main()
