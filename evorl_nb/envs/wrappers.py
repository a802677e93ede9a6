"""Observation wrappers that give every environment a flat float32 ``Box`` observation.

Classic control
---------------
:class:`Float32FlatObservation` passes the observation through unchanged apart from
``astype(float32)`` and a reshape to 1-D (no scaling, no clipping).

MiniGrid: the authors' observation
----------------------------------
Co-Reyes et al. (2021) fed the DQN the *fully observed* grid encoding: a ``W x H x 3``
array (object index, colour index, state index) for every cell, with the agent's cell
overwritten by ``(agent, red, direction)``, scaled per channel and flattened.  Here the
grid comes from minigrid's own ``FullyObsWrapper`` followed by ``ImgObsWrapper`` and
:class:`ScaledGridObservation` scales and flattens it.

Scaling (the decision, and what the authors did).  The authors' training loop
(``google/brain_autorl``, ``evolving_rl/env_utils.py``: ``run_train_loop`` defaults to
``wrapper_version='v3'``, i.e. ``FullyObsWrapperV3``) divides

* the object channel by ``len(OBJECT_TO_IDX) - 1`` (= 10, the index of ``agent``),
* the colour channel by ``len(COLOR_TO_IDX) - 1`` (= 5, the index of ``grey``),
* the state channel by ``3`` -- not by the maximum state index (``locked`` = 2): the
  agent's cell stores its direction (0..3) in that channel, so 3 is the largest value
  that channel can hold.

We do exactly the same: divisors ``(10, 5, 3)``, computed from minigrid's constants as
``max(OBJECT_TO_IDX)``, ``max(COLOR_TO_IDX)`` and ``max(max(STATE_TO_IDX), 3)``.  Every
value therefore lies in ``[0, 1]`` without clipping (door states 0..2 map to 0, 1/3, 2/3;
directions 0..3 to 0, 1/3, 2/3, 1), and the numbers match the authors' inputs.  (Their
``observation_space`` declared ``[0, 255]``; ours declares the true ``[0, 1]``.)  The
flattening is C order over ``(x, y, channel)``, as ``grid.encode()`` lays it out:
``flat[(x * H + y) * 3 + c]``.  Like the authors', the encoding does not show an object
the agent is carrying (``grid.encode()`` has no carrying slot).
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces

__all__ = ["Float32FlatObservation", "ScaledGridObservation", "grid_channel_divisors",
           "wrap_minigrid"]


class Float32FlatObservation(gym.ObservationWrapper):
    """Cast a ``Box`` observation to float32 and flatten it to 1-D (values unchanged)."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        space = env.observation_space
        if not isinstance(space, spaces.Box):
            raise TypeError(
                f"Float32FlatObservation needs a Box observation space, got {space!r}"
            )
        low = np.asarray(space.low, dtype=np.float32).reshape(-1)
        high = np.asarray(space.high, dtype=np.float32).reshape(-1)
        self.observation_space = spaces.Box(low=low, high=high, dtype=np.float32)

    def observation(self, observation):
        return np.asarray(observation, dtype=np.float32).reshape(-1)


def grid_channel_divisors() -> np.ndarray:
    """Per-channel divisors (object, colour, state) that map the grid encoding into [0, 1].

    ``(max OBJECT_TO_IDX, max COLOR_TO_IDX, max(max STATE_TO_IDX, 3))`` = ``(10, 5, 3)``
    for minigrid 2.x/3.x, the same numbers as the authors' ``FullyObsWrapperV3``.
    """
    from minigrid.core.constants import COLOR_TO_IDX, OBJECT_TO_IDX, STATE_TO_IDX

    max_direction = 3  # agent_dir is 0..3 and is stored in the state channel
    return np.array(
        [
            max(OBJECT_TO_IDX.values()),
            max(COLOR_TO_IDX.values()),
            max(max(STATE_TO_IDX.values()), max_direction),
        ],
        dtype=np.float32,
    )


class ScaledGridObservation(gym.ObservationWrapper):
    """Scale a ``W x H x 3`` MiniGrid encoding per channel to [0, 1] and flatten to float32.

    Expects the output of ``ImgObsWrapper(FullyObsWrapper(env))``; see the module
    docstring for the divisors and why.
    """

    def __init__(self, env: gym.Env):
        super().__init__(env)
        space = env.observation_space
        if not (isinstance(space, spaces.Box) and len(space.shape) == 3 and space.shape[-1] == 3):
            raise TypeError(
                "ScaledGridObservation needs a W x H x 3 Box (ImgObsWrapper(FullyObsWrapper"
                f"(env))), got {space!r}"
            )
        self._divisors = grid_channel_divisors()
        self.observation_space = spaces.Box(
            low=0.0, high=1.0, shape=(int(np.prod(space.shape)),), dtype=np.float32
        )

    def observation(self, observation):
        grid = np.asarray(observation, dtype=np.float32)
        return (grid / self._divisors).reshape(-1)


def wrap_minigrid(env: gym.Env) -> gym.Env:
    """``FullyObsWrapper`` -> ``ImgObsWrapper`` -> :class:`ScaledGridObservation`."""
    from minigrid.wrappers import FullyObsWrapper, ImgObsWrapper

    return ScaledGridObservation(ImgObsWrapper(FullyObsWrapper(env)))
