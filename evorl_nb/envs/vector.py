"""Vectorized environments: N copies of one environment stepped as a batch.

The population trainer (:mod:`evorl_nb.batched`) steps one environment per agent.
:func:`make_vector_env` returns a fast batched implementation when the env has one
(:mod:`evorl_nb.envs.vec_classic`, :mod:`evorl_nb.envs.vec_minigrid`) and otherwise
:class:`GymVectorEnv`, a plain loop over ``make_env`` instances that works for any
registered environment.

Semantics (every implementation, tested for parity against the single environment):

* ``reset(seeds)`` seeds env ``i`` with ``seeds[i]`` exactly as
  ``make_env(env_id).reset(seed=seeds[i])`` would, and returns the first observations;
  later episodes continue env ``i``'s own random stream, as ``env.reset()`` does.
* ``step(actions)`` returns a :class:`VecStep`. An env whose episode ended
  (terminated or truncated) is reset in the same call: ``next_obs`` holds the episode's
  final observation (what a replay buffer stores), ``obs`` the first observation of
  the new episode (what the agent acts on next). For the others ``obs`` equals ``next_obs``.
* Observations come back *raw* (``obs_dtype``, e.g. uint8 grid codes for MiniGrid, which
  keeps replay buffers 4x smaller); :meth:`VectorEnv.decode` turns raw observations into
  the float32 values ``make_env`` would have returned, bit for bit.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

__all__ = ["VecStep", "VectorEnv", "GymVectorEnv", "make_vector_env", "vectorized_ids"]


class VecStep(NamedTuple):
    """What one batched step returns (arrays with a leading axis of ``num_envs``)."""

    next_obs: np.ndarray
    """The observation each step led to (the final one when the episode ended), raw."""
    reward: np.ndarray
    """float64 rewards."""
    terminated: np.ndarray
    """bool: the episode reached a terminal state (no bootstrap)."""
    truncated: np.ndarray
    """bool: the episode hit its time limit (still bootstraps)."""
    obs: np.ndarray
    """The observation to act on next: ``next_obs``, or the new episode's first one."""


class VectorEnv:
    """Base class: ``num_envs`` copies of ``env_id`` stepped together (see module docs)."""

    env_id: str
    """The canonical id of the environment."""
    num_envs: int
    """How many copies are stepped together."""
    obs_dim: int
    """Length of the flat observation."""
    n_actions: int
    """Number of discrete actions."""
    obs_dtype: np.dtype = np.dtype(np.float32)
    """dtype of the raw observations ``reset``/``step`` return."""
    obs_divisor: np.ndarray | None = None
    """float32 ``[obs_dim]`` divisors: the float observation is ``raw / obs_divisor``
    (None: raw observations already are the float32 values)."""

    def reset(self, seeds: Sequence[int]) -> np.ndarray:
        """Seed env ``i`` with ``seeds[i]``, start an episode everywhere, return raw obs."""
        raise NotImplementedError

    def reset_at(self, slots: Sequence[int], seeds: Sequence[int]) -> np.ndarray:
        """Re-seed envs ``slots`` (``seeds[j]`` for ``slots[j]``) and start a new episode
        there, as a fresh env reset with that seed would; return their raw obs ``[len, D]``.
        The other envs are untouched (a population trainer gives a freed slot to a new agent)."""
        raise NotImplementedError

    def step(self, actions: np.ndarray) -> VecStep:
        """Apply one action per env (int array ``[num_envs]``), auto-resetting ended episodes."""
        raise NotImplementedError

    def decode(self, raw: np.ndarray) -> np.ndarray:
        """The float32 observations ``make_env`` would give for these raw ones."""
        if self.obs_divisor is None:
            return np.asarray(raw, dtype=np.float32)
        return np.asarray(raw, dtype=np.float32) / self.obs_divisor

    def close(self) -> None:
        """Release resources (nothing by default)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class GymVectorEnv(VectorEnv):
    """Any registered env: a Python loop over ``num_envs`` ``make_env`` instances."""

    def __init__(self, env_id: str, num_envs: int):
        from evorl_nb.envs import get_spec, make_env

        self.env_id = get_spec(env_id).env_id
        self.num_envs = int(num_envs)
        self.envs = [make_env(self.env_id) for _ in range(self.num_envs)]
        self.obs_dim = int(np.prod(self.envs[0].observation_space.shape))
        self.n_actions = int(self.envs[0].action_space.n)

    def reset(self, seeds: Sequence[int]) -> np.ndarray:
        """Seed env ``i`` with ``seeds[i]`` and return the first observations."""
        if len(seeds) != self.num_envs:
            raise ValueError(f"need {self.num_envs} seeds, got {len(seeds)}")
        return np.stack([np.asarray(env.reset(seed=int(s))[0], np.float32)
                         for env, s in zip(self.envs, seeds)])

    def reset_at(self, slots: Sequence[int], seeds: Sequence[int]) -> np.ndarray:
        """Re-seed envs ``slots`` with ``seeds`` and return their first observations."""
        slots, seeds = _check_slots(self.num_envs, slots, seeds)
        out = np.empty((len(slots), self.obs_dim), np.float32)
        for j, (i, s) in enumerate(zip(slots, seeds)):
            out[j] = np.asarray(self.envs[i].reset(seed=s)[0], np.float32)
        return out

    def step(self, actions: np.ndarray) -> VecStep:
        """Step every env; ended episodes restart with ``env.reset()``."""
        n = self.num_envs
        next_obs = np.empty((n, self.obs_dim), np.float32)
        reward = np.empty(n, np.float64)
        terminated = np.empty(n, bool)
        truncated = np.empty(n, bool)
        obs = np.empty((n, self.obs_dim), np.float32)
        for i, (env, a) in enumerate(zip(self.envs, np.asarray(actions).tolist())):
            o, r, te, tr, _ = env.step(int(a))
            next_obs[i], reward[i], terminated[i], truncated[i] = o, r, te, tr
            obs[i] = env.reset()[0] if (te or tr) else o
        return VecStep(next_obs, reward, terminated, truncated, obs)

    def close(self) -> None:
        """Close every env."""
        for env in self.envs:
            env.close()


def _check_slots(n: int, slots: Sequence[int], seeds: Sequence[int]) -> tuple[list[int], list[int]]:
    """Validated (slots, seeds) lists for ``reset_at``."""
    slots, seeds = [int(i) for i in slots], [int(s) for s in seeds]
    if len(slots) != len(seeds):
        raise ValueError(f"need one seed per slot: {len(slots)} slots, {len(seeds)} seeds")
    if len(set(slots)) != len(slots) or any(not 0 <= i < n for i in slots):
        raise ValueError(f"slots must be distinct indices in [0, {n}), got {slots}")
    return slots, seeds


# Modules with batched implementations. Each defines ``VECTORIZED``: a dict from canonical
# env id to a factory ``factory(env_id, num_envs) -> VectorEnv``.
_PROVIDERS = ("evorl_nb.envs.vec_classic", "evorl_nb.envs.vec_minigrid")


def _factories() -> dict[str, Callable[[str, int], VectorEnv]]:
    table: dict[str, Callable[[str, int], VectorEnv]] = {}
    for name in _PROVIDERS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:  # a provider that exists but fails to import is a bug
                raise
            continue
        table.update(getattr(module, "VECTORIZED", {}))
    return table


def vectorized_ids() -> list[str]:
    """Env ids that have a batched implementation (others use :class:`GymVectorEnv`)."""
    return sorted(_factories())


def make_vector_env(env_id: str, num_envs: int, *, vectorized: bool = True) -> VectorEnv:
    """``num_envs`` copies of ``env_id``: the batched implementation if there is one and
    ``vectorized`` is True, else :class:`GymVectorEnv`."""
    from evorl_nb.envs import get_spec

    if int(num_envs) < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    canonical = get_spec(env_id).env_id  # unknown ids raise the registry's clear error
    factory = _factories().get(canonical) if vectorized else None
    if factory is None:
        return GymVectorEnv(canonical, int(num_envs))
    return factory(canonical, int(num_envs))
