"""Score library programs on environments at a trainer preset, several seeds, in parallel.

    python bench/library_scores.py --programs dqn ddqn dqn_reg dqn_clipped \\
        --envs CartPole-v1 MiniGrid-Dynamic-Obstacles-6x6-v0 --preset quick --seeds 3 \\
        --workers 2 --out docs/results/library_quick

writes OUT.json (every run, with its learning curve) and OUT.md (a table of
normalized score mean and spread per program and env, and when DQN first
reached a return threshold), and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np


def run_one(program: str, env_id: str, preset: str, seed: int) -> dict:
    """Train one agent and return a JSON-ready summary with its learning curve."""
    from evorl_nb import library
    from evorl_nb.dqn import train
    from evorl_nb.envs import get_spec
    from evorl_nb.evaluate import env_seed

    result = train(library.get(program), env_id, preset, seed=env_seed(seed, env_id))
    spec = get_spec(env_id)
    return {"program": program, "env": env_id, "seed": seed, "preset": preset,
            "score_all": result.score(spec, "all"), "score_last50": result.score(spec, "last50"),
            "steps": result.steps, "episodes": len(result.episodes), "failed": result.failed,
            "reason": result.reason, "wall_time": result.wall_time,
            "curve": [[e.step, e.ret] for e in result.episodes],
            "q_initial": [e.q_initial for e in result.episodes],
            "discounted_return": [e.discounted_return for e in result.episodes]}


def first_step_reaching(curve: list, threshold: float, window: int = 20) -> int | None:
    """The step at which the mean return of the last ``window`` episodes first reached threshold."""
    returns = [r for _, r in curve]
    for i in range(window, len(curve) + 1):
        if np.mean(returns[i - window:i]) >= threshold:
            return int(curve[i - 1][0])
    return None


def table(runs: list[dict]) -> str:
    """Markdown table: per program and env, mean +- std of both score windows over seeds."""
    lines = ["| program | env | seeds | score (all episodes) | score (last 50) | failed |",
             "|---|---|---|---|---|---|"]
    keys = sorted({(r["program"], r["env"]) for r in runs}, key=lambda k: (k[1], k[0]))
    for prog, env in keys:
        rs = [r for r in runs if r["program"] == prog and r["env"] == env]
        a = np.array([r["score_all"] for r in rs])
        b = np.array([r["score_last50"] for r in rs])
        lines.append(f"| {prog} | {env} | {len(rs)} | {a.mean():.3f} +- {a.std():.3f} | "
                     f"{b.mean():.3f} +- {b.std():.3f} | {sum(r['failed'] for r in rs)} |")
    return "\n".join(lines)


def main() -> None:
    """Run the grid of (program, env, seed) and write the results."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--programs", nargs="+", default=["dqn", "ddqn", "dqn_reg", "dqn_clipped"])
    ap.add_argument("--envs", nargs="+", default=["CartPole-v1", "MiniGrid-Dynamic-Obstacles-6x6-v0"])
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", default="docs/results/library_quick")
    args = ap.parse_args()
    jobs = [(p, e, args.preset, s) for e in args.envs for p in args.programs
            for s in range(args.seeds)]
    start, runs = time.time(), []
    with ProcessPoolExecutor(args.workers) as pool:
        futures = [pool.submit(run_one, *job) for job in jobs]
        for fut in as_completed(futures):
            r = fut.result()
            runs.append(r)
            print(f"[{len(runs)}/{len(jobs)}] {r['program']:<12} {r['env']:<34} seed {r['seed']} "
                  f"score {r['score_all']:.3f} last50 {r['score_last50']:.3f} "
                  f"({r['steps']} steps, {r['wall_time']:.0f}s)", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"command": "python bench/library_scores.py " + " ".join(
        f"--{k} {' '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in vars(args).items()),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "wall_time_s": round(time.time() - start)}
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "runs": runs}))
    md = [table(runs), ""]
    for r in sorted(runs, key=lambda r: (r["env"], r["program"], r["seed"])):
        if r["env"].startswith("CartPole"):
            hit = first_step_reaching(r["curve"], 475 if r["env"] == "CartPole-v1" else 195)
            md.append(f"- {r['program']} seed {r['seed']}: mean return of 20 episodes first >= "
                      f"{475 if r['env'] == 'CartPole-v1' else 195} at step {hit}")
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print(table(runs))
    print(json.dumps(meta, indent=2))


if __name__ == "__main__":
    main()
