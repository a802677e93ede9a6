"""Same-run A/B of the population trainer between two checkouts of evorl_nb.

    git worktree add /tmp/before <commit>          # the code before a change
    .venv/bin/python bench/bench_ab.py /tmp/before . --ks 8,64,256 --rounds 6

Each round runs, for each K, one process per checkout in turn (A then B), each timing
``bench_population``'s ``population(K, steps)`` (agent-steps/s, one core, K distinct losses)
and ``update_only`` (agent-updates/s) with *its own* checkout's code and bench file.
Interleaving spreads the machine's drift over both sides; the report gives each side's
median and the paired B/A ratios per round, so a difference inside the paired range is
noise. Results as JSON lines with ``--json FILE``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

_ONE = """
import json, os, sys
tree, k, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
sys.path[:0] = [tree, os.path.join(tree, "bench")]
import torch
torch.set_num_threads(1)
import evorl_nb
assert os.path.realpath(evorl_nb.__file__).startswith(os.path.realpath(tree)), evorl_nb.__file__
import bench_population as bp
bp.warm_up()
print(json.dumps({"population": bp.population(k, steps),
                  "update_only": bp.update_only(k, max(20, steps // 10))}))
"""


def time_tree(tree: Path, k: int, steps: int) -> dict:
    """One timing of ``tree``'s population trainer at ``k`` agents, in a fresh process."""
    done = subprocess.run([sys.executable, "-c", _ONE, str(tree), str(k), str(steps)],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("a", type=Path, help="checkout A (before)")
    ap.add_argument("b", type=Path, help="checkout B (after)")
    ap.add_argument("--ks", default="8,64,256", help="population sizes")
    ap.add_argument("--steps", type=int, default=400, help="env steps per agent per timing")
    ap.add_argument("--rounds", type=int, default=6, help="interleaved rounds")
    ap.add_argument("--json", help="append every timing to this JSON-lines file")
    args = ap.parse_args()
    ks = [int(k) for k in args.ks.split(",")]
    rows = []
    for r in range(args.rounds):
        for k in ks:
            for side, tree in (("a", args.a), ("b", args.b)):
                row = {"round": r, "k": k, "side": side, **time_tree(tree.resolve(), k,
                                                                     args.steps)}
                rows.append(row)
                if args.json:
                    with open(args.json, "a") as f:
                        f.write(json.dumps(row) + "\n")
    print(f"A = {args.a}, B = {args.b}; {args.rounds} interleaved rounds, {args.steps} steps")
    for k in ks:
        for what in ("population", "update_only"):
            a = [x[what] for x in rows if x["k"] == k and x["side"] == "a"]
            b = [x[what] for x in rows if x["k"] == k and x["side"] == "b"]
            paired = [y / x for x, y in zip(a, b, strict=True)]
            ma, mb = statistics.median(a), statistics.median(b)
            print(f"K={k:<5} {what:12} A {ma:9,.0f}  B {mb:9,.0f}  B/A {mb / ma:.3f}"
                  f"  paired {min(paired):.3f}..{max(paired):.3f}")


if __name__ == "__main__":
    main()
