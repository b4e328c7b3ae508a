"""Wall time of the commands that should answer at once, the median of several runs each.

    python benchmarks/cli_startup.py --db rftbench.db [--rftbench .venv/bin/rftbench] [--repeat 5]

Run it in a folder with a small database (the smoke grid's). A benchmark, not a test: `tests/test_cli.py`
checks that these commands import no torch; this says how long they take on this machine.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import time

COMMANDS = [
    "--help",
    "status",
    "report --table main",
    "schedule sched --t1 12 --t2 37",
    "datasets",
    "backbones",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rftbench", default=shutil.which("rftbench") or "rftbench")
    parser.add_argument("--db", default="rftbench.db")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    for command in COMMANDS:
        argv = [args.rftbench, *command.split()]
        if command.split()[0] in ("status", "report"):
            argv += ["--db", args.db]
        times = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            subprocess.run(argv, capture_output=True, check=True)
            times.append(time.perf_counter() - start)
        spread = f"min {min(times):.2f}, max {max(times):.2f}"
        print(f"{command:34s} median {statistics.median(times):.2f} s ({spread})")


if __name__ == "__main__":
    main()
