"""Re-score a run's best distinct losses, and reference library losses, on fresh seeds.

A search scores every candidate with one training seed, so its best fitness
is partly luck. This trains the top-k distinct losses of a run and the given
library programs with the run's own evaluator on seeds the search never used.

    python bench/rescore_best.py runs/quick-bootstrap --top 3 --seeds 5 --reference dqn
"""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ProcessPoolExecutor

import numpy as np


def _score(config_dict: dict, program_json: str, seed: int) -> float:
    from evorl_nb.evolve import EvolutionConfig, ProgramEvaluator
    from evorl_nb.program import Program

    evaluator = ProgramEvaluator.from_config(EvolutionConfig.from_dict(config_dict))
    return evaluator(Program.from_json(program_json), seed).fitness


def main() -> None:
    """Print (and optionally save) mean +- std fitness over fresh seeds."""
    from evorl_nb import library
    from evorl_nb.program import Program
    from evorl_nb.runner import store_path
    from evorl_nb.store import load_run

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run")
    ap.add_argument("--top", type=int, default=3)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--first-seed", type=int, default=1000, help="seeds the search did not use")
    ap.add_argument("--reference", nargs="*", default=["dqn"])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default=None, help="write the table as JSON here")
    args = ap.parse_args()
    data = load_run(store_path(args.run))
    best = data.best(args.top, distinct=True)
    entries = [(f"run id {int(r.id)} (search fitness {r.fitness:.3f})", r.program)
               for r in best.itertuples()]
    entries += [(f"library {name}", library.get(name).to_json()) for name in args.reference]
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    with ProcessPoolExecutor(args.workers) as pool:
        futures = {(label, s): pool.submit(_score, data.config, prog, s)
                   for label, prog in entries for s in seeds}
        table = []
        for label, prog in entries:
            scores = np.array([futures[(label, s)].result() for s in seeds])
            eq = Program.from_json(prog).equation()
            table.append({"entry": label, "equation": eq, "mean": float(scores.mean()),
                          "std": float(scores.std()), "scores": scores.tolist()})
            print(f"{label:<42} {scores.mean():.3f} +- {scores.std():.3f}   {eq}", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"run": args.run, "seeds": seeds, "table": table}, f, indent=1)


if __name__ == "__main__":
    main()
