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
from evorl_nb.presets import HURDLE, TRAINING_ENVS

__all__ = ["evaluate", "evaluate_batch", "StreamingEvaluation", "EvalResult", "EnvScore",
           "HURDLE", "TRAINING_ENVS", "env_seed"]

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

    @classmethod
    def of(cls, run: TrainResult, window: str, failure_score: float) -> EnvScore:
        """The scores of one training run (``failure_score`` for a failed run)."""
        spec = get_spec(run.env_id)
        return cls(spec.env_id, run.score(spec, window, failure_score),
                   run.score(spec, "all", failure_score), run.score(spec, "last50", failure_score),
                   run)


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


def _below_hurdle(hurdle: tuple[str, float] | None, s: EnvScore) -> str | None:
    """Why the evaluation stops after the hurdle env's score ``s``, or None if it goes on."""
    if hurdle is not None and s.score < hurdle[1]:
        return f"below the hurdle on {s.env_id}: {s.score:.3f} < {hurdle[1]}"
    return None


def _result(scores: dict[str, EnvScore], passed: bool | None, stopped: str | None,
            wall: float) -> EvalResult:
    return EvalResult(scores, sum(v.score for v in scores.values()), passed, stopped,
                      sum(v.run.steps for v in scores.values()), wall)


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
        cb = None if callback is None else (lambda rec, e=env_id: callback(e, rec))
        run = train(program, env_id, config, seed=env_seed(seed, env_id), callback=cb,
                    progress=progress)
        scores[env_id] = EnvScore.of(run, window, config.failure_score)
        stopped = _below_hurdle(hurdle, scores[env_id]) if k == 0 else None
        if stopped:
            passed = False
            break
    return _result(scores, passed, stopped, time.perf_counter() - start)


def evaluate_batch(programs: Sequence[Any], envs: Sequence[str] = TRAINING_ENVS,
                   config: DQNConfig | str = "quick", *, seeds: Sequence[int] | int = 0,
                   hurdle: tuple[str, float] | None = HURDLE, window: str = "all",
                   progress: bool = False, slots: int | None = None) -> list[EvalResult]:
    """Eval(L, E) for many programs at once with the population trainer.

    Each env trains the programs still in play together (the hurdle env first; the
    programs below the hurdle stop there), ``slots`` at a time (default: all). ``seeds``
    is one seed for all programs (as a search uses) or one per program. The results are
    in program order and mean what :func:`evaluate` returns: each agent's run is the one
    :func:`evaluate` would train (up to float rounding), whatever the batch.
    """
    programs = list(programs)
    seeds = [int(seeds)] * len(programs) if isinstance(seeds, (int, np.integer)) else list(seeds)
    if len(seeds) != len(programs):
        raise ValueError(f"need one seed per program: {len(programs)} programs, {len(seeds)} seeds")
    from evorl_nb.batched import run_in_order

    stream = StreamingEvaluation(envs, config, hurdle=hurdle, window=window,
                                 slots=slots or max(1, len(programs)))
    return run_in_order(stream, programs, seeds, progress)


class StreamingEvaluation:
    """Eval(L, E) for a stream of candidates, with continuous batching.

    ``add(program, seed, key)`` queues a candidate; ``advance()`` trains and returns the
    ``(key, EvalResult)`` of the candidates that finished. Each env has its own
    :class:`evorl_nb.batched.Population` of ``slots`` agents; a candidate enters the
    first env (the hurdle) and moves to the next one as soon as its run there ends, so
    every env's batch stays full while candidates come and go. A search worker keeps one
    of these and feeds it new candidates as slots free up.

    >>> from evorl_nb import library
    >>> ev = StreamingEvaluation(["CartPole-v0"], "ci", hurdle=None, slots=2)
    >>> for name in ["dqn", "ddqn", "dqn_reg"]:
    ...     _ = ev.add(library.get(name), seed=0, key=name)
    >>> sorted(key for key, _ in ev.advance())
    ['ddqn', 'dqn', 'dqn_reg']
    """

    def __init__(self, envs: Sequence[str] = TRAINING_ENVS, config: DQNConfig | str = "quick",
                 *, hurdle: tuple[str, float] | None = HURDLE, window: str = "all",
                 slots: int = 8):
        if window not in ("all", "last50"):
            raise ValueError(f"window must be 'all' or 'last50', got {window!r}")
        self.config = get_config(config) if isinstance(config, str) else config
        self.order = _order(envs, hurdle[0] if hurdle else None)
        self.hurdle, self.window, self.slots = hurdle, window, int(slots)
        self._pops: dict[str, Any] = {}
        self._cands: dict[Any, dict] = {}
        self._added = 0

    @property
    def in_flight(self) -> int:
        """Candidates added and not yet returned."""
        return len(self._cands)

    @property
    def idle(self) -> bool:
        """True when no candidate is training or queued."""
        return not self._cands

    def add(self, program: Any, seed: int = 0, key: Any = None) -> Any:
        """Queue a candidate; returns its key (by default the count of earlier adds)."""
        key = self._added if key is None else key
        if key in self._cands:
            raise ValueError(f"candidate key {key!r} is already in flight")
        self._added += 1
        self._cands[key] = {"program": program, "seed": int(seed), "scores": {}, "stage": 0,
                            "start": time.perf_counter()}
        self._enter(key)
        return key

    def _enter(self, key: Any) -> None:
        from evorl_nb.batched import Population

        c = self._cands[key]
        env_id = self.order[c["stage"]]
        pop = self._pops.get(env_id)
        if pop is None:
            pop = self._pops[env_id] = Population(env_id, self.config, self.slots)
        pop.add(c["program"], env_seed(c["seed"], env_id), key=key)

    def advance(self, max_steps: int | None = None, *,
                progress: bool = False) -> list[tuple[Any, EvalResult]]:
        """Train every env's population (all the way, or ``max_steps`` batched steps each)
        and return the candidates whose evaluation ended."""
        out: list[tuple[Any, EvalResult]] = []
        while True:
            for env_id in self.order:
                pop = self._pops.get(env_id)
                if pop is None or pop.idle:
                    continue
                for key, run in pop.advance(max_steps, progress=progress):
                    done = self._finished_run(key, env_id, run)
                    if done is not None:
                        out.append((key, done))
            if max_steps is not None or self.idle:
                return out

    def _finished_run(self, key: Any, env_id: str, run: TrainResult) -> EvalResult | None:
        c = self._cands[key]
        s = c["scores"][env_id] = EnvScore.of(run, self.window, self.config.failure_score)
        passed = None if self.hurdle is None else True
        stopped = _below_hurdle(self.hurdle, s) if c["stage"] == 0 else None
        if stopped:
            passed = False
        elif c["stage"] + 1 < len(self.order):
            c["stage"] += 1
            self._enter(key)
            return None
        del self._cands[key]
        return _result(c["scores"], passed, stopped, time.perf_counter() - c["start"])

    def close(self) -> None:
        """Release every env's population."""
        for pop in self._pops.values():
            pop.close()
