"""Continuous batching vs fixed batches vs one at a time, on a search-like workload.

    .venv/bin/python bench/bench_stream.py                 # 48 candidates, slots 8
    .venv/bin/python bench/bench_stream.py --quick         # a smoke run

The workload is what a quick search trains: distinct DQN mutants (as a bootstrapped
search proposes them) on CartPole-v0 with the ``quick`` trainer (400 episodes, capped
here at ``--max-steps``), so some candidates end after a few thousand steps (short failed
episodes) and others run to the cap. Timed in the same run, one core:

* ``one at a time``: :func:`evorl_nb.dqn.train` per candidate (``--width 1``);
* ``fixed batches``: :func:`evorl_nb.batched.train_population` on consecutive groups
  of ``slots`` candidates (the search before continuous batching: a batch lives until its
  slowest member);
* ``continuous``: one :class:`evorl_nb.batched.Population` with ``slots`` slots, a
  finished candidate's slot given to the next one at once (what search workers do now).

Every candidate's score is the same in the three (the runs are the same runs, to float
rounding), which the bench checks; it prints candidates per minute and the ratios.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_population import distinct_losses  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--candidates", type=int, default=48, help="distinct losses to train")
    ap.add_argument("--slots", type=int, default=8, help="agents trained at once")
    ap.add_argument("--max-steps", type=int, default=15000, help="step cap per candidate")
    ap.add_argument("--quick", action="store_true", help="8 candidates, 2,000 steps")
    ap.add_argument("--json", help="write the results to this JSON file")
    args = ap.parse_args()
    if args.quick:
        args.candidates, args.slots, args.max_steps = 8, 4, 2000
    from evorl_nb.dqn import get_config, train
    from evorl_nb.batched import Population, train_population

    torch.set_num_threads(1)
    cfg = get_config("quick", max_steps=args.max_steps)
    progs = distinct_losses(args.candidates, seed=1)
    env, seed = "CartPole-v0", 0
    times, scores = {}, {}

    start = time.perf_counter()
    scores["one at a time"] = [train(p, env, cfg, seed=seed).score() for p in progs]
    times["one at a time"] = time.perf_counter() - start

    start = time.perf_counter()
    fixed = []
    for i in range(0, len(progs), args.slots):
        group = progs[i:i + args.slots]
        runs = train_population(group, env, cfg, seeds=[seed] * len(group))
        fixed += [r.score() for r in runs]
    times["fixed batches"], scores["fixed batches"] = time.perf_counter() - start, fixed

    start = time.perf_counter()
    pop = Population(env, cfg, slots=args.slots)
    for k, p in enumerate(progs):
        pop.add(p, seed, key=k)
    done = dict(pop.advance())
    pop.close()
    times["continuous"] = time.perf_counter() - start
    scores["continuous"] = [done[k].score() for k in range(len(progs))]

    episodes = [len(r.episodes) for r in done.values()]
    agent_steps = sum(r.steps for r in done.values())
    print(f"{len(progs)} distinct losses on {env}, quick trainer capped at {args.max_steps} "
          f"steps, slots {args.slots}; steps per candidate {min(r.steps for r in done.values())}"
          f"-{max(r.steps for r in done.values())} (episodes {min(episodes)}-{max(episodes)})\n")
    base = times["one at a time"]
    print(f"{'what':16} {'seconds':>8} {'cand/min':>9} {'agent-steps/s':>14} "
          f"{'x one at a time':>16}")
    for name, t in times.items():
        print(f"{name:16} {t:>8.1f} {60 * len(progs) / t:>9.1f} {agent_steps / t:>14,.0f} "
              f"{base / t:>16.2f}")
    same = {name: float(np.max(np.abs(np.subtract(s, scores["one at a time"]))))
            for name, s in scores.items()}
    print(f"\nlargest score difference to one at a time: {same}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"candidates": len(progs), "slots": args.slots,
                       "max_steps": args.max_steps, "seconds": times,
                       "agent_steps": agent_steps, "max_score_diff": same}, f, indent=1)


if __name__ == "__main__":
    main()
