"""Eval(L, E): score a program by training DQN agents with its loss.

Each environment gets a normalized training score (facts.md §3): the mean over
all training episodes of (clip(R, Rmin, Rmax) - Rmin) / (Rmax - Rmin) (the
paper's; ``window="last50"`` takes the authors' code's last 50 episodes). The
hurdle environment (CartPole by default) runs first; a score below the
threshold stops the evaluation there, and the fitness is that score alone.
Otherwise the fitness is the sum of the per-environment scores (at most the
number of environments).

>>> from evorl_nb import library
>>> r = evaluate(library.get("dqn"), ["CartPole-v0", "Acrobot-v1"], "ci", hurdle=None)
>>> sorted(r.scores)
['Acrobot-v1', 'CartPole-v0']
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from evorl_nb.dqn import DQNConfig, EpisodeRecord, TrainResult, get_config, train
from evorl_nb.envs import get_spec

__all__ = ["evaluate", "evaluate_batch", "EvalResult", "EnvScore", "HURDLE", "TRAINING_ENVS", "env_seed"]

HURDLE = ("CartPole-v0", 0.6)
"""The paper's hurdle: CartPole first, and stop if its normalized score is below 0.6."""
TRAINING_ENVS = ("CartPole-v0", "MiniGrid-KeyCorridorS3R1-v0",
                 "MiniGrid-Dynamic-Obstacles-6x6-v0", "MiniGrid-DoorKey-5x5-v0")
"""The environments DQNReg was evolved on (CartPole is the hurdle)."""


@dataclass
class EnvScore:
    """One environment's outcome."""

    env_id: str
    score: float
    """The normalized score under the chosen window (0 for a failed run)."""
    score_all: float
    """Mean normalized return over all training episodes (the paper's)."""
    score_last50: float
    """Mean normalized return over the last 50 episodes (the authors' code)."""
    run: TrainResult = field(repr=False)
    """The full training record (episodes, Q tracking, failure reason)."""


@dataclass
class EvalResult:
    """The outcome of Eval(program, envs)."""

    scores: dict[str, EnvScore]
    """Per-environment scores, in evaluation order."""
    fitness: float
    """Sum of the scores of the environments evaluated."""
    hurdle_passed: bool | None
    """None without a hurdle; False if the hurdle stopped the evaluation."""
    stopped: str | None
    """Why the evaluation ended before every environment, if it did."""
    steps: int
    """Environment steps over all runs."""
    wall_time: float
    """Seconds taken."""

    @property
    def failed(self) -> bool:
        """True if any training run failed (NaN, explosion, an exception)."""
        return any(s.run.failed for s in self.scores.values())

    @property
    def reasons(self) -> dict[str, str]:
        """Failure reasons by environment."""
        return {k: s.run.reason for k, s in self.scores.items() if s.run.reason}


def env_seed(seed: int, env_id: str) -> int:
    """The training seed for one env of an evaluation: independent of the envs' order."""
    state = np.random.SeedSequence([seed, zlib.crc32(env_id.encode())]).generate_state(1)
    return int(state[0])


def _order(envs: Sequence[str], hurdle_env: str | None) -> list[str]:
    ids = [get_spec(e).env_id for e in envs]
    if len(set(ids)) != len(ids):
        raise ValueError(f"environments listed twice: {ids}")
    if hurdle_env is None:
        return ids
    hurdle_env = get_spec(hurdle_env).env_id
    if hurdle_env not in ids:
        raise ValueError(f"the hurdle env {hurdle_env} must be one of the evaluated envs {ids} "
                         "(its score counts toward the fitness); pass hurdle=None for none")
    return [hurdle_env] + [e for e in ids if e != hurdle_env]


def evaluate(program: Any, envs: Sequence[str] = TRAINING_ENVS,
             config: DQNConfig | str = "quick", *, seed: int = 0,
             hurdle: tuple[str, float] | None = HURDLE, window: str = "all",
             callback: Callable[[str, EpisodeRecord], None] | None = None,
             progress: bool = False) -> EvalResult:
    """Eval(L, E): train on each env (hurdle first) and return the normalized scores.

    ``config`` is a :class:`DQNConfig` or a preset name (paper, quick, ci).
    ``callback(env_id, record)`` sees every finished episode.
    """
    if window not in ("all", "last50"):
        raise ValueError(f"window must be 'all' or 'last50', got {window!r}")
    config = get_config(config) if isinstance(config, str) else config
    order = _order(envs, hurdle[0] if hurdle else None)
    start = time.perf_counter()
    scores: dict[str, EnvScore] = {}
    passed, stopped = (None if hurdle is None else True), None
    for k, env_id in enumerate(order):
        spec = get_spec(env_id)
        cb = None if callback is None else (lambda rec, e=env_id: callback(e, rec))
        run = train(program, env_id, config, seed=env_seed(seed, env_id), callback=cb,
                    progress=progress)
        fs = config.failure_score
        scores[env_id] = EnvScore(env_id, run.score(spec, window, fs), run.score(spec, "all", fs),
                                  run.score(spec, "last50", fs), run)
        if hurdle is not None and k == 0 and scores[env_id].score < hurdle[1]:
            passed = False
            stopped = f"below the hurdle on {env_id}: {scores[env_id].score:.3f} < {hurdle[1]}"
            break
    return EvalResult(scores, sum(s.score for s in scores.values()), passed, stopped,
                      sum(s.run.steps for s in scores.values()), time.perf_counter() - start)


def evaluate_batch(programs: Sequence[Any], envs: Sequence[str] = TRAINING_ENVS,
                   config: DQNConfig | str = "quick", *, seeds: Sequence[int] | int = 0,
                   hurdle: tuple[str, float] | None = HURDLE, window: str = "all",
                   progress: bool = False) -> list[EvalResult]:
    """Eval(L, E) for many programs at once with the population trainer.

    Each env trains every program still in play as one batch (the hurdle env first; the
    programs below the hurdle stop there). ``seeds`` is one seed for all programs (as a
    search uses) or one per program. The results are in program order and mean what
    :func:`evaluate` returns; at one program they are its results.
    """
    from evorl_nb.population import train_population

    if window not in ("all", "last50"):
        raise ValueError(f"window must be 'all' or 'last50', got {window!r}")
    config = get_config(config) if isinstance(config, str) else config
    programs = list(programs)
    seeds = [int(seeds)] * len(programs) if isinstance(seeds, (int, np.integer)) else list(seeds)
    if len(seeds) != len(programs):
        raise ValueError(f"need one seed per program: {len(programs)} programs, {len(seeds)} seeds")
    order = _order(envs, hurdle[0] if hurdle else None)
    start = time.perf_counter()
    scores: list[dict[str, EnvScore]] = [{} for _ in programs]
    passed: list[bool | None] = [None if hurdle is None else True for _ in programs]
    stopped: list[str | None] = [None for _ in programs]
    for k_env, env_id in enumerate(order):
        spec = get_spec(env_id)
        playing = [i for i in range(len(programs)) if passed[i] is not False]
        if not playing:
            break
        runs = train_population([programs[i] for i in playing], env_id, config,
                                seeds=[env_seed(seeds[i], env_id) for i in playing],
                                progress=progress)
        fs = config.failure_score
        for i, run in zip(playing, runs):
            s = EnvScore(env_id, run.score(spec, window, fs), run.score(spec, "all", fs),
                         run.score(spec, "last50", fs), run)
            scores[i][env_id] = s
            if hurdle is not None and k_env == 0 and s.score < hurdle[1]:
                passed[i] = False
                stopped[i] = f"below the hurdle on {env_id}: {s.score:.3f} < {hurdle[1]}"
    wall = time.perf_counter() - start
    return [EvalResult(sc, sum(s.score for s in sc.values()), passed[i], stopped[i],
                       sum(s.run.steps for s in sc.values()), wall)
            for i, sc in enumerate(scores)]
