"""How long the command line takes to start, against ``python -c pass`` in the same run.

    .venv/bin/python bench/bench_cli.py            # 7 runs of each, median
    .venv/bin/python bench/bench_cli.py --runs 3

Each command runs in a fresh interpreter (as a shell starts it), interleaved with the
baselines so that a busy machine slows them alike: ``python -c pass`` (the floor) and
``python -c "import torch"`` (what every command paid before the command line stopped
importing torch where nothing trains). Prints the median wall time of each and its excess
over the floor; docs/performance.md keeps the figures.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "python -c 'import torch'": [sys.executable, "-c", "import torch"],
    "evorl-nb --help": [sys.executable, "-m", "evorl_nb.cli", "--help"],
    "evorl-nb programs": [sys.executable, "-m", "evorl_nb.cli", "programs"],
    "evorl-nb envs": [sys.executable, "-m", "evorl_nb.cli", "envs"],
    "evorl-nb program dqn_reg": [sys.executable, "-m", "evorl_nb.cli", "program", "dqn_reg"],
}


def main() -> None:
    """Time every command ``--runs`` times, interleaved, and print the medians."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.runs):
        for name, argv in COMMANDS.items():
            t = time.perf_counter()
            subprocess.run(argv, capture_output=True, check=True)
            times[name].append(time.perf_counter() - t)
    floor = statistics.median(times["python -c pass"])
    print(f"{'command':<28} {'median s':>9} {'over floor':>11}")
    for name, ts in times.items():
        m = statistics.median(ts)
        print(f"{name:<28} {m:>9.3f} {m - floor:>+11.3f}")


if __name__ == "__main__":
    main()
