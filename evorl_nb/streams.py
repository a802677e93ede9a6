"""Per-agent random streams that many agents draw from in one vectorized call.

A DQN agent draws random numbers every step (explore or not, which random action) and every
update (which transitions to replay). With one generator object per agent, K agents cost K
small calls per step (docs/performance.md), a host cost that a GPU cannot hide however fast
its own part of the step. Here a stream is
*counter-based*: its i-th number is a hash of (the stream's key, i), SplitMix64's output
function over the sequence ``key + i * gamma``, so a whole population's draws are a few
numpy operations over ``[rows, n]`` arrays, and a stream's numbers do not depend on how
they are drawn (all at once, a few at a time, or batched with other streams).

:func:`evorl_nb.dqn.train` (one agent) and :class:`evorl_nb.batched.Population` (K
agents) use the same streams, so an agent's exploration and replay batches are the same in
both. Keys come from the agent's seed through :class:`numpy.random.SeedSequence`
(:func:`agent_seeds`), whose 64-bit words make distinct streams overlap with negligible
probability.

>>> s = Streams(2)
>>> s.seed(0, 7); s.seed(1, 7)
>>> a = s.uniform(np.array([0]), 5)[0]
>>> b = np.concatenate([s.uniform(np.array([1]), 2)[0], s.uniform(np.array([1]), 3)[0]])
>>> bool((a == b).all())
True
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["Streams", "Stream", "AgentSeeds", "agent_seeds"]

_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S11 = (np.uint64(k) for k in (30, 27, 31, 11))
_TO_UNIT = 2.0 ** -53


def _mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64's output function (uint64 arithmetic wraps modulo 2**64)."""
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


class AgentSeeds(NamedTuple):
    """An agent's seeds, all derived from its one seed."""

    explore: int
    """Key of the exploration stream (two numbers per env step)."""
    sample: int
    """Key of the replay-sampling stream (one number per transition of a batch)."""
    net: int
    """Seed of the torch generator behind the network's init and the loss's random ops."""
    env: int
    """Seed of the environment's first reset."""


def agent_seeds(seed: int) -> AgentSeeds:
    """The seeds one agent's randomness flows from, as both trainers derive them."""
    ss = np.random.SeedSequence(int(seed))
    s32 = ss.generate_state(3)
    keys = ss.generate_state(5, np.uint64)[3:]  # words disjoint from s32's
    return AgentSeeds(int(keys[0]), int(keys[1]), int(s32[1]), int(s32[2] % 2**31))


def _below(u: np.ndarray, high) -> np.ndarray:
    """Uniform numbers ``u`` as integers in ``[0, high)``: ``floor(u * high)``, whose bias
    is below ``high / 2**53``."""
    return np.minimum((u * high).astype(np.int64), high - 1)


class Streams:
    """``n`` independent uniform streams, one per row, each with its key and position."""

    def __init__(self, n: int):
        self.key = np.zeros(n, np.uint64)
        self.count = np.zeros(n, np.uint64)

    def seed(self, row: int, key: int) -> None:
        """Restart ``row`` as the stream of ``key`` (a 64-bit integer), at its start."""
        self.key[row] = np.uint64(int(key) % 2**64)
        self.count[row] = 0

    def uniform(self, rows: np.ndarray, n: int) -> np.ndarray:
        """The next ``n`` numbers in [0, 1) of each of ``rows``: ``[len(rows), n]`` float64."""
        rows = np.asarray(rows, np.int64)
        i = self.count[rows, None] + np.arange(1, n + 1, dtype=np.uint64)
        self.count[rows] += np.uint64(n)
        z = _mix(self.key[rows, None] + i * _GAMMA)
        return (z >> _S11).astype(np.float64) * _TO_UNIT

    def integers(self, rows: np.ndarray, highs: np.ndarray, n: int) -> np.ndarray:
        """The next ``n`` numbers of each of ``rows`` as integers in ``[0, highs[row])``:
        ``[len(rows), n]`` int64."""
        return _below(self.uniform(rows, n), np.asarray(highs, np.int64)[:, None])


class Stream:
    """One stream for one agent (:func:`evorl_nb.dqn.train`): the numbers of
    :class:`Streams`, computed in blocks so that a draw costs no hashing."""

    def __init__(self, key: int, block: int = 1024):
        self._streams, self._block = Streams(1), block
        self._streams.seed(0, key)
        self._buf = np.zeros(0)
        self._at = 0

    def uniform(self, n: int) -> np.ndarray:
        """The next ``n`` numbers in [0, 1)."""
        if self._at + n > len(self._buf):
            more = self._streams.uniform(np.zeros(1, np.int64), max(self._block, n))[0]
            self._buf = np.concatenate([self._buf[self._at:], more])
            self._at = 0
        self._at += n
        return self._buf[self._at - n:self._at]

    def integers(self, high: int, n: int) -> np.ndarray:
        """The next ``n`` numbers as integers in ``[0, high)``, as :meth:`Streams.integers`."""
        return _below(self.uniform(n), high)
