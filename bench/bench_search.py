"""Search width: a real search at several candidates-in-flight per worker, same run.

    .venv/bin/python bench/bench_search.py                      # widths 1, 8, 64; 400 cand.
    .venv/bin/python bench/bench_search.py --widths 1,8,32,64,128 --json out.json
    .venv/bin/python bench/bench_search.py --selection-seeds 3  # also best-vs-candidates
    .venv/bin/python bench/bench_search.py --quick              # a smoke run

Each width runs the same search: the ``quick`` evolution preset (bootstrapped from DQN,
CartPole-v0, the quick trainer capped at 15,000 steps) on 2 local worker processes, with
``batch`` = the width (1: one candidate at a time through ``dqn.train``). Reported per
width: wall seconds, trained candidates (duplicates cost nothing and are not counted),
trained candidates per CPU-minute (wall x workers), agent-steps/s (the steps of the
trained candidates over the wall time), the ratio against width 1, and the ratio of the
agent-steps/s against ``bench_population``'s whole-machine rate at the same K (the width
per worker, one process per core, measured in the same run): how much of the population
trainer's speed the search keeps, after proposals, hurdles, refills and the drain at the
end of the budget.

``--selection-seeds N`` runs the search at width 8 and at the widest width for search
seeds 0..N-1 and prints the best fitness after every 100 candidates: width lets more
children be proposed from an older population, which may delay selection.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def one_search(width: int, candidates: int, seed: int, workers: int, max_steps: int) -> dict:
    """Run the quick search at ``width`` into a temporary folder; its figures."""
    from evorl_nb.evolve import get_preset
    from evorl_nb.runner import start
    from evorl_nb.store import load_run

    config = get_preset("quick", candidates=candidates, width=width,
                        trainer={"preset": "quick", "max_steps": max_steps})
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        path = start(Path(tmp) / "run", config, seed=seed, backend="local", workers=workers,
                     progress=False, verbose=False)
        wall = time.perf_counter() - t0
        df = load_run(path).candidates
    trained = df[df["status"].isin(["trained", "below_hurdle"])]
    best = np.maximum.accumulate(df["fitness"].fillna(0.0).to_numpy())
    return {"width": width, "seed": seed, "wall_s": wall, "candidates": len(df),
            "trained": len(trained), "agent_steps": int(trained["steps"].sum()),
            "failed": int((df["status"] == "failed").sum()),
            "best_fitness": float(best[-1]), "best_curve": best.tolist()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--widths", default="1,8,64", help="candidates in flight per worker")
    ap.add_argument("--candidates", type=int, default=400, help="candidates per search")
    ap.add_argument("--workers", type=int, default=2, help="local worker processes")
    ap.add_argument("--max-steps", type=int, default=15_000, help="step cap per training run")
    ap.add_argument("--population-steps", type=int, default=600,
                    help="batched steps per bench_population timing")
    ap.add_argument("--selection-seeds", type=int, default=0,
                    help="also run width 8 and the widest width at seeds 0..N-1")
    ap.add_argument("--quick", action="store_true", help="a smoke run (seconds)")
    ap.add_argument("--json", help="write the results to this JSON file")
    args = ap.parse_args()
    widths = [int(w) for w in args.widths.split(",")]
    if args.quick:
        args.candidates, args.max_steps, args.population_steps = 40, 1500, 150
    from bench_population import population_per_core

    runs = [one_search(w, args.candidates, 0, args.workers, args.max_steps) for w in widths]
    pop_rates = {w: population_per_core(w * args.workers, args.population_steps, args.workers)
                 for w in widths}
    base = runs[0]
    base_rate = base["trained"] / base["wall_s"]
    print(f"quick search, {args.candidates} candidates, {args.workers} local workers, "
          f"steps capped at {args.max_steps}; population rates at K = width x workers\n")
    print(f"{'width':>5} {'secs':>7} {'trained':>7} {'cand/CPU-min':>12} {'agent-steps/s':>13} "
          f"{'x width ' + str(base['width']):>10} {'population':>10} {'% of pop':>8} "
          f"{'best':>6}")
    for r in runs:
        r["cand_per_cpu_min"] = 60 * r["trained"] / (r["wall_s"] * args.workers)
        r["agent_steps_per_s"] = r["agent_steps"] / r["wall_s"]
        r["x_base"] = (r["trained"] / r["wall_s"]) / base_rate
        r["population_rate"] = pop_rates[r["width"]]
        r["of_population"] = r["agent_steps_per_s"] / pop_rates[r["width"]]
        print(f"{r['width']:>5} {r['wall_s']:>7.1f} {r['trained']:>7} "
              f"{r['cand_per_cpu_min']:>12.1f} {r['agent_steps_per_s']:>13,.0f} "
              f"{r['x_base']:>10.2f} {r['population_rate']:>10,.0f} {r['of_population']:>8.0%} "
              f"{r['best_fitness']:>6.3f}")

    selection = []
    if args.selection_seeds:
        pair = sorted({8, max(widths)})
        print(f"\nbest fitness after every 100 candidates, widths {pair}:")
        for seed in range(args.selection_seeds):
            for w in pair:
                done = next((r for r in runs if r["width"] == w and r["seed"] == seed), None)
                r = done or one_search(w, args.candidates, seed, args.workers, args.max_steps)
                selection.append(r)
                marks = r["best_curve"][99::100]
                print(f"seed {seed} width {w:>3}: " + " ".join(f"{b:.3f}" for b in marks)
                      + f"  ({r['wall_s']:.0f} s)")
        for w in pair:
            finals = [r["best_fitness"] for r in selection if r["width"] == w]
            print(f"width {w:>3}: final best {np.mean(finals):.3f} (seeds: "
                  + ", ".join(f"{f:.3f}" for f in finals) + ")")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"candidates": args.candidates, "workers": args.workers,
                       "max_steps": args.max_steps, "runs": runs, "selection": selection},
                      f, indent=1)


if __name__ == "__main__":
    main()
