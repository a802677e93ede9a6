"""Env steps per second: one gymnasium env in a Python loop vs the batched classic-control envs.

    python bench/bench_classic.py            # ~1 s per measurement
    python bench/bench_classic.py --quick    # ~0.2 s per measurement

The gymnasium side is ``make_env(env_id)`` (with its TimeLimit) stepped with random
actions and ``reset()`` after each episode; the batched side is
``make_vector_env(env_id, N)`` (auto-reset included). Actions are drawn before timing.
Steps/s counts env steps (N per batched call); ratio = batched / gymnasium.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

ENV_IDS = ("CartPole-v0", "CartPole-v1", "Acrobot-v1", "MountainCar-v0")
SIZES = (1, 64, 256, 1024)


def _gym_rate(env_id: str, seconds: float) -> float:
    from evorl_nb.envs import make_env

    env = make_env(env_id)
    env.reset(seed=0)
    actions = np.random.default_rng(0).integers(0, env.action_space.n, 4096).tolist()
    steps, start = 0, time.perf_counter()
    while True:
        for a in actions[:256]:
            _, _, te, tr, _ = env.step(a)
            if te or tr:
                env.reset()
        steps += 256
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return steps / elapsed


def _vec_rate(env_id: str, n: int, seconds: float) -> float:
    from evorl_nb.envs.vector import make_vector_env

    vec = make_vector_env(env_id, n)
    vec.reset(list(range(n)))
    actions = np.random.default_rng(0).integers(0, vec.n_actions, (64, n))
    vec.step(actions[0])  # warm-up (kernel probe, first allocations)
    calls, start = 0, time.perf_counter()
    while True:
        for a in actions:
            vec.step(a)
        calls += len(actions)
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return calls * n / elapsed


def main() -> None:
    """Print a table of steps/s for each env id and batch size."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="~0.2 s per measurement")
    ap.add_argument("--seconds", type=float, default=None, help="time per measurement")
    ap.add_argument("--envs", nargs="*", default=list(ENV_IDS))
    ap.add_argument("--sizes", nargs="*", type=int, default=list(SIZES))
    args = ap.parse_args()
    seconds = args.seconds if args.seconds is not None else (0.2 if args.quick else 1.0)

    from evorl_nb.envs.vec_classic import kernel_report

    print(f"kernels: {kernel_report()}")
    print(f"{'env':<16}{'N':>6}{'gym steps/s':>14}{'vec steps/s':>14}{'ratio':>9}")
    for env_id in args.envs:
        gym = _gym_rate(env_id, seconds)
        for n in args.sizes:
            vec = _vec_rate(env_id, n, seconds)
            print(f"{env_id:<16}{n:>6}{gym:>14,.0f}{vec:>14,.0f}{vec / gym:>9.1f}", flush=True)


if __name__ == "__main__":
    main()
