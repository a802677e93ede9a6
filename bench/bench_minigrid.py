"""Env steps per second: the minigrid package vs GymVectorEnv vs the batched MiniGridVec.

    python bench/bench_minigrid.py            # ~3 s per measurement, ~2 minutes in all
    python bench/bench_minigrid.py --quick    # a few seconds
    python bench/bench_minigrid.py --envs DoorKey-5x5 --sizes 256 1024 --procs 2

For each env (default: DoorKey-5x5, Dynamic-Obstacles-6x6, KeyCorridorS3R1) it times, in
the same run and with uniformly random actions (auto-resets included):

(a) ``package``: one ``make_env`` env stepped in a Python loop (``env.reset()`` on episode end);
(b) ``GymVectorEnv``: N = 256 of those behind the VectorEnv interface;
(c) ``MiniGridVec``: the numpy implementation at N = 1, 64, 256, 1024;

and prints env steps/s with the ratio to (a), a per-phase profile of MiniGridVec (step
dynamics, Dynamic-Obstacles' ball moves, resets, observation building, the rest), and with
``--procs P`` the whole-machine figure: P processes (one per core) stepping MiniGridVec at
the same time, summed.  Everything runs single-threaded numpy; on a shared machine the
wall-clock numbers move with the load, so the load average is printed with them, and
``per CPU-s`` gives steps per second of this process's own CPU time (less sensitive to
other processes; with ``--procs`` summed over the processes).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEFAULT_ENVS = ["MiniGrid-DoorKey-5x5-v0", "MiniGrid-Dynamic-Obstacles-6x6-v0",
                "MiniGrid-KeyCorridorS3R1-v0"]
PHASES = ("dynamics", "obstacles", "reset", "observation")


def _actions(n_actions: int, n: int, seed: int, batches: int = 512) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n_actions, (batches, n))


def bench_package(env_id: str, seconds: float, seed: int = 0) -> dict:
    """(a): one make_env env, random actions, ``env.reset()`` when an episode ends."""
    from evorl_nb.envs import make_env

    env = make_env(env_id)
    env.reset(seed=seed)
    acts = _actions(int(env.action_space.n), 4096, seed, batches=1)[0].tolist()
    steps, episodes = 0, 0
    cpu = time.process_time()
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for a in acts[(steps % 4096):(steps % 4096) + 256]:
            _, _, te, tr, _ = env.step(a)
            if te or tr:
                env.reset()
                episodes += 1
        steps += 256
        if time.perf_counter() >= deadline:
            break
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu
    return {"impl": "package", "n": 1, "steps": steps, "seconds": elapsed,
            "rate": steps / elapsed, "cpu_rate": steps / cpu, "episodes": episodes}


def bench_vector(env_id: str, n: int, seconds: float, *, impl: str = "MiniGridVec",
                 seed: int = 0, profile: bool = True, barrier=None) -> dict:
    """(b)/(c): a VectorEnv of ``n`` copies stepped with random actions for ``seconds``."""
    from evorl_nb.envs.vec_minigrid import MiniGridVec
    from evorl_nb.envs.vector import GymVectorEnv

    cls = MiniGridVec if impl == "MiniGridVec" else GymVectorEnv
    vec = cls(env_id, n)
    vec.reset([seed * 100_003 + i for i in range(n)])
    acts = _actions(vec.n_actions, n, seed + 1)
    for k in range(3):  # warm-up
        vec.step(acts[k])
    if profile and impl == "MiniGridVec":
        vec.profile = {}
    if barrier is not None:
        barrier.wait()
    calls, episodes = 0, 0
    cpu = time.process_time()
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(8):
            out = vec.step(acts[calls % len(acts)])
            episodes += int(np.count_nonzero(out.terminated | out.truncated))
            calls += 1
        if time.perf_counter() >= deadline:
            break
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu
    prof = dict(getattr(vec, "profile", None) or {})
    vec.close()
    return {"impl": impl, "n": n, "steps": calls * n, "seconds": elapsed,
            "rate": calls * n / elapsed, "cpu_rate": calls * n / cpu, "episodes": episodes,
            "profile": prof}


def _worker(env_id, n, seconds, seed, barrier, queue):
    queue.put(bench_vector(env_id, n, seconds, seed=seed, profile=False, barrier=barrier))


def bench_processes(env_id: str, n: int, seconds: float, procs: int) -> dict:
    """Whole machine: ``procs`` processes stepping MiniGridVec(n) at the same time."""
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(procs), ctx.Queue()
    workers = [ctx.Process(target=_worker, args=(env_id, n, seconds, 17 + p, barrier, queue))
               for p in range(procs)]
    for w in workers:
        w.start()
    results = []
    try:
        for _ in workers:
            results.append(queue.get(timeout=seconds * 5 + 120))
    except Exception as exc:  # a worker died (it printed its traceback) or hung
        raise RuntimeError(f"a benchmark process gave no result ({exc!r})") from None
    finally:
        for w in workers:
            w.join(timeout=10)
            if w.is_alive():
                w.terminate()
    return {"impl": f"MiniGridVec x{procs} procs", "n": n,
            "steps": sum(r["steps"] for r in results),
            "rate": sum(r["rate"] for r in results),
            "cpu_rate": sum(r["cpu_rate"] for r in results),
            "per_process": [r["rate"] for r in results]}


def _fmt_rate(rate: float) -> str:
    return f"{rate:,.0f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="short measurements (a few seconds in all)")
    parser.add_argument("--envs", nargs="+", default=DEFAULT_ENVS,
                        help="env ids or aliases (default: %(default)s)")
    parser.add_argument("--sizes", nargs="+", type=int, default=None,
                        help="MiniGridVec batch sizes (default: 1 64 256 1024; --quick: 64 256)")
    parser.add_argument("--gym-n", type=int, default=256,
                        help="GymVectorEnv batch size (default: %(default)s; 0 skips it)")
    parser.add_argument("--seconds", type=float, default=None,
                        help="time per measurement (default 3, --quick 0.3)")
    parser.add_argument("--procs", type=int, default=0,
                        help="also run P processes at once (one per core) at the largest "
                             "two sizes and report the summed rate")
    parser.add_argument("--json", type=Path, default=None, help="write all results here")
    args = parser.parse_args(argv)

    from evorl_nb.envs import get_spec

    seconds = args.seconds if args.seconds is not None else (0.3 if args.quick else 3.0)
    sizes = sorted(set(args.sizes or ([64, 256] if args.quick else [1, 64, 256, 1024])))
    gym_n = min(args.gym_n, 64) if args.quick else args.gym_n
    print(f"python {platform.python_version()}, numpy {np.__version__}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} "
          f"({platform.processor() or platform.machine()}); {seconds:g} s per measurement")
    everything = []
    for name in args.envs:
        env_id = get_spec(name).env_id
        rows = [bench_package(env_id, seconds)]
        base = rows[0]["rate"]
        if gym_n:
            rows.append(bench_vector(env_id, gym_n, seconds, impl="GymVectorEnv"))
        for n in sizes:
            rows.append(bench_vector(env_id, n, seconds))
        if args.procs > 1:
            for n in [s for s in sizes if s >= 64][-2:]:
                rows.append(bench_processes(env_id, n, seconds, args.procs))
        print(f"\n{env_id}  (load average {os.getloadavg()[0]:.2f})")
        print(f"  {'implementation':<26} {'N':>5} {'env steps/s':>13} {'x package':>10} "
              f"{'per CPU-s':>11}  {'episodes':>8}  profile (share of step time)")
        for r in rows:
            prof = r.get("profile") or {}
            total = r.get("seconds", 0.0)
            parts = [f"{k} {prof[k] / total:4.0%}" for k in PHASES if k in prof]
            if prof:
                parts.append(f"other {1 - sum(prof.values()) / total:4.0%}")
            extra = ""
            if "per_process" in r:
                extra = "per process: " + ", ".join(_fmt_rate(x) for x in r["per_process"])
            print(f"  {r['impl']:<26} {r['n']:>5} {_fmt_rate(r['rate']):>13} "
                  f"{r['rate'] / base:>9.1f}x {_fmt_rate(r['cpu_rate']):>11}  "
                  f"{r.get('episodes', ''):>8}  {', '.join(parts) or extra}")
        everything.append({"env": env_id, "rows": rows})
    if args.json:
        args.json.write_text(json.dumps(everything, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
