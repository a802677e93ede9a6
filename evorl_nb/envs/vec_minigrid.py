"""Batched MiniGrid: N copies of one MiniGrid env stepped with numpy, bit-exact with minigrid.

:class:`MiniGridVec` keeps the state of ``num_envs`` episodes as numpy arrays and applies
minigrid's step rules to all of them at once:

* the grid as its own encoding, ``grid[n, (x * H + y) * 3 + c]`` (object, colour, state codes
  of ``Grid.encode()``: an empty cell is ``(1, 0, 0)``), so the observation is a copy of it
  with the agent's cell overwritten by ``(agent, red, direction)``, exactly what
  ``FullyObsWrapper`` -> ``ImgObsWrapper`` give, flattened C-order over ``(x, y, channel)``;
* agent position and direction, the carried object (type and colour codes), step counts and
  ``max_steps``, and what the env's own success rule needs (the cell of ``UnlockEnv.door``,
  of the object ``UnlockPickupEnv`` / ``KeyCorridorEnv`` ask for, the obstacles of
  ``DynamicObstaclesEnv``).

Observations come back raw (uint8 codes); :meth:`MiniGridVec.decode` divides by the
``(10, 5, 3)`` channel divisors of :func:`evorl_nb.envs.wrappers.grid_channel_divisors`,
giving what ``make_env(env_id)`` returns bit for bit.

Layouts.  Every slot owns one minigrid env.  Its first episode is ``env.reset(seed=s)``;
later ones run the env's own ``_gen_grid`` (what ``env.reset()`` does, without building
the partial view it would throw away), which continues the env's own random stream, and
the generated grid is copied into the arrays.  So episode layouts are minigrid's own.

Random streams.  Dynamic-Obstacles moves its balls on every step by rejection sampling from
the env's ``np_random`` (``place_obj`` in the 3x3 square around each ball, at most 101
tries), so the stream must be consumed exactly as minigrid does.  For it (and for the
layouts generated here, below) each slot's stream lives in a
:class:`~evorl_nb.envs.pcg64_streams.PCGStreams` (numpy's ``Generator(PCG64)`` reproduced
in uint64 arrays, read ahead), and :class:`~evorl_nb.envs.minigrid_sampling.SlotSampling`
runs the rejection-sampling loops for all slots at once, advancing each slot by exactly
what numpy would have drawn (a word numpy would redraw goes to numpy's own generator).

Generated layouts.  ``DynamicObstaclesEnv`` (fixed start), ``DoorKeyEnv`` and
KeyCorridorS3R1 layouts are generated here (:mod:`evorl_nb.envs.minigrid_layouts`), drawing
from the streams in ``_gen_grid``'s order: for all ended slots at once, or, when only a few
episodes end in a step, per slot in Python (the same generator, reading the same
precomputed words), which is cheaper then.  Anything unusual (a Lemire redraw, a block
running out) hands that slot to the env's own ``_gen_grid`` with the stream passed over
both ways.  Other envs (RoomGrid-based, crossings, rooms) always use the env's
``_gen_grid``.

Step rules reproduced (``MiniGridEnv.step`` and the subclasses'): left/right turn, forward
onto empty/goal/lava/floor/open door (goal: terminated with ``1 - 0.9 * step_count /
max_steps``; lava: terminated with 0), pickup of a key/ball/box when carrying nothing,
drop onto an empty cell, toggle (locked door opens with a key of its colour, an unlocked
door opens/closes, a box is replaced by its contents), done (nothing), truncation at
``step_count >= max_steps``; ``UnlockEnv`` succeeds when a toggle leaves its door open,
``UnlockPickupEnv`` / ``KeyCorridorEnv`` when a pickup puts their object in hand;
``DynamicObstaclesEnv`` maps actions ``>= 3`` to ``left``, moves its balls before the agent
and ends with -1 when ``forward`` was taken with a wall or ball in front *before* they moved.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence

import numpy as np

from evorl_nb.envs.minigrid_codes import (
    AGENT,
    BOX,
    DONE,
    DOOR,
    DROP,
    DX,
    DY,
    DYNOBS,
    EMPTY,
    ENTER,
    FORWARD,
    GOAL,
    KEY,
    LAVA,
    LEFT,
    LOCKED,
    OPEN,
    PICK,
    PICKUP,
    PICKUP_TARGET,
    RED,
    RIGHT,
    TOGGLE,
    UNLOCK,
    UnsupportedEnv,
    check_constants,
    kind_of,
)

# re-exported (defined here before the split; this module does not use them itself)
from evorl_nb.envs.minigrid_codes import BALL as BALL
from evorl_nb.envs.minigrid_codes import CLOSED as CLOSED
from evorl_nb.envs.minigrid_codes import FLOOR as FLOOR
from evorl_nb.envs.minigrid_codes import WALL as WALL
from evorl_nb.envs.minigrid_codes import own_step as own_step
from evorl_nb.envs.minigrid_layouts import generated_layouts
from evorl_nb.envs.minigrid_sampling import SlotSampling
from evorl_nb.envs.pcg64_streams import SlotDraws, StreamFallback
from evorl_nb.envs.vector import VecStep, VectorEnv, _check_slots

__all__ = ["MiniGridVec", "VECTORIZED", "MINIGRID_IDS", "UnsupportedEnv"]

# The registered MiniGrid ids this module reproduces exactly (checked by
# tests/test_vec_minigrid.py against the minigrid package).
MINIGRID_IDS = (
    "MiniGrid-Dynamic-Obstacles-5x5-v0",
    "MiniGrid-Dynamic-Obstacles-6x6-v0",
    "MiniGrid-Dynamic-Obstacles-8x8-v0",
    "MiniGrid-KeyCorridorS3R1-v0",
    "MiniGrid-DoorKey-5x5-v0",
    "MiniGrid-DoorKey-6x6-v0",
    "MiniGrid-Unlock-v0",
    "MiniGrid-UnlockPickup-v0",
    "MiniGrid-SimpleCrossingS9N1-v0",
    "MiniGrid-FourRooms-v0",
    "MiniGrid-MultiRoom-N2-S4-v0",
    "MiniGrid-Empty-5x5-v0",
    "MiniGrid-Empty-6x6-v0",
    "MiniGrid-LavaGapS5-v0",
    "MiniGrid-LavaCrossingS9N1-v0",
)


class MiniGridVec(SlotSampling, VectorEnv):
    """``num_envs`` copies of one MiniGrid env as numpy arrays (see the module docs)."""

    obs_dtype = np.dtype(np.uint8)

    def __init__(self, env_id: str, num_envs: int, *, tries_per_round: int | None = None):
        import gymnasium as gym

        from evorl_nb.envs import get_spec, make_env
        from evorl_nb.envs.wrappers import grid_channel_divisors

        check_constants()
        canonical = get_spec(env_id).env_id
        if canonical not in VECTORIZED:
            raise ValueError(f"MiniGridVec does not cover {canonical!r}; "
                             f"covered ids: {', '.join(sorted(VECTORIZED))}")
        if int(num_envs) < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.env_id = canonical
        self.num_envs = n = int(num_envs)
        first = make_env(canonical)  # the real thing: spaces and the registry's kwargs
        self.n_actions = int(first.action_space.n)
        self.obs_dim = int(np.prod(first.observation_space.shape))
        self.envs = [first.unwrapped] + [
            gym.make(canonical, disable_env_checker=True).unwrapped for _ in range(n - 1)]
        self._wrapped_first = first
        u = self.envs[0]
        self.kind = kind_of(u)
        self.width, self.height = W, H = int(u.width), int(u.height)
        self.cells = W * H
        if self.obs_dim != self.cells * 3:
            raise ValueError(f"{canonical}: observation size {self.obs_dim} != {W}x{H}x3")
        self.obs_divisor = np.tile(grid_channel_divisors(), self.cells).astype(np.float32)
        self.tries_per_round = tries_per_round

        D = self.obs_dim
        self.grid = np.zeros((n, D), dtype=np.uint8)
        self._gflat = self.grid.reshape(-1)
        self._rowbase = np.arange(n, dtype=np.int64) * D
        self.agent_x = np.zeros(n, np.int64)
        self.agent_y = np.zeros(n, np.int64)
        self.agent_dir = np.zeros(n, np.int64)
        self.carry_type = np.zeros(n, np.uint8)   # 0: carrying nothing
        self.carry_color = np.zeros(n, np.uint8)
        self.step_count = np.zeros(n, np.int64)
        self.max_steps = np.full(n, int(u.max_steps), np.int64)
        self.target_cell = np.zeros(n, np.int64)   # UnlockEnv.door / the object to pick up
        self.target_alive = np.zeros(n, bool)      # False once a target box was opened
        self._seeded = False
        self.profile: dict[str, float] | None = None  # set to {} to accumulate phase times

        # Layouts generated here rather than by the env (the env's stream then lives in
        # self._rng), for many slots at once or per slot in Python; None: the env's own
        # _gen_grid.
        if self.kind == DYNOBS:
            self.n_obstacles = int(u.n_obstacles)
            self.obstacles = np.zeros((n, self.n_obstacles), np.int64)  # flat cell indices
        self._layouts = generated_layouts(u, self.kind)
        self._streams = self.kind == DYNOBS or self._layouts is not None
        # How ended episodes get their layouts: "auto" (the Python per-slot version for up
        # to ``python_layouts_upto`` slots, whose cost is per slot, else the vectorized one,
        # whose cost is mostly per call), "vector", "python" or "env" (the env's _gen_grid).
        # All give the same episodes; tests pin each.
        self.layout_path = "auto"
        self.python_layouts_upto = 16
        if self._streams:
            self._init_streams(n)

    # ---------------------------------------------------------------- profiling helper
    def _tick(self, name: str, t0: float) -> float:
        t1 = time.perf_counter()
        if self.profile is not None:
            self.profile[name] = self.profile.get(name, 0.0) + (t1 - t0)
        return t1

    # ---------------------------------------------------------------- loading from an env
    def _load(self, i: int) -> None:
        """Copy slot ``i``'s env (grid, agent, carried object, targets) into the arrays."""
        u = self.envs[i]
        W, H = self.width, self.height
        lst = u.grid.grid
        where, codes = [], []
        for k, v in enumerate(lst):
            if v is None:
                continue
            where.append(k)
            if v.type == "door":
                if v.is_open and v.is_locked:
                    raise NotImplementedError("an open locked door behaves unlike its encoding")
            elif v.type == "box" and v.contains is not None:
                raise NotImplementedError("boxes with contents are not reproduced")
            codes.append(v.encode())
        # grid.grid is row-major (index y * W + x); the encoding is (x, y, channel)
        cells = self.grid[i].reshape(self.cells, 3)
        cells[:] = (EMPTY, 0, 0)
        if codes:
            flat = np.array(where)
            cells[(flat % W) * H + flat // W] = codes
        self.agent_x[i], self.agent_y[i] = int(u.agent_pos[0]), int(u.agent_pos[1])
        self.agent_dir[i] = int(u.agent_dir)
        self.step_count[i] = int(u.step_count)
        self.max_steps[i] = int(u.max_steps)
        carrying = u.carrying
        if carrying is None:
            self.carry_type[i] = self.carry_color[i] = 0
        else:
            if carrying.type == "box" and carrying.contains is not None:
                raise NotImplementedError("boxes with contents are not reproduced")
            self.carry_type[i], self.carry_color[i], _ = carrying.encode()

        def cell_of(obj) -> int:
            for k, v in enumerate(lst):
                if v is obj:
                    return (k % W) * H + k // W
            return -1

        if self.kind == UNLOCK:
            self.target_cell[i] = cell_of(u.door)
            self.target_alive[i] = self.target_cell[i] >= 0
        elif self.kind == PICKUP_TARGET:
            self.target_cell[i] = cell_of(u.obj)
            self.target_alive[i] = self.target_cell[i] >= 0
        elif self.kind == DYNOBS:
            for k, ob in enumerate(u.obstacles):
                self.obstacles[i, k] = int(ob.cur_pos[0]) * H + int(ob.cur_pos[1])

    # ---------------------------------------------------------------- observations
    def _observe(self, rows: np.ndarray | None = None) -> np.ndarray:
        """Raw observations of all slots (or of ``rows``): the grid plus the agent."""
        if rows is None:
            obs = self.grid.copy()
            x, y, d = self.agent_x, self.agent_y, self.agent_dir
        else:
            obs = self.grid[rows]
            x, y, d = self.agent_x[rows], self.agent_y[rows], self.agent_dir[rows]
        r = np.arange(len(obs))
        at = (x * self.height + y) * 3
        obs[r, at] = AGENT
        obs[r, at + 1] = RED
        obs[r, at + 2] = d
        return obs

    # ---------------------------------------------------------------- reset
    def reset(self, seeds: Sequence[int]) -> np.ndarray:
        """Seed slot ``i`` with ``seeds[i]`` (``env.reset(seed=...)``), return raw obs."""
        seeds = list(seeds)
        if len(seeds) != self.num_envs:
            raise ValueError(f"need {self.num_envs} seeds, got {len(seeds)}")
        for i, s in enumerate(seeds):
            self.envs[i].reset(seed=int(s))
            self._load(i)
            if self._streams:
                self._pull_rng(i)
        self._seeded = True
        return self._observe()

    def reset_at(self, slots: Sequence[int], seeds: Sequence[int]) -> np.ndarray:
        """Re-seed slots ``slots`` with ``seeds`` (``env.reset(seed=...)``), return raw obs."""
        if not self._seeded:
            raise RuntimeError("call reset(seeds) before reset_at()")
        slots, seeds = _check_slots(self.num_envs, slots, seeds)
        for i, s in zip(slots, seeds):
            self.envs[i].reset(seed=s)
            self._load(i)
            if self._streams:
                self._pull_rng(i)
        return self._observe(np.asarray(slots, np.int64))

    def _reset_slots(self, idx: np.ndarray) -> None:
        """Start a new episode in slots ``idx`` (continuing each slot's random stream)."""
        path = self.layout_path if self._layouts is not None else "env"
        if path == "auto":
            path = "vector" if len(idx) > self.python_layouts_upto else "python"
        if path == "vector":
            self._layouts.batch(self, idx)
            self._new_episode(idx)
            return
        rest = idx.tolist()
        if path == "python":
            rng = self._rng
            rng.refill(idx[rng.pos[idx] > rng.width // 2])
            rest = []
            for i in idx.tolist():
                draws = SlotDraws(rng.words[i], int(rng.pos[i]))
                try:
                    self._layouts.one(self, i, draws)
                except StreamFallback:
                    rest.append(i)
                    continue
                rng.pos[i] = draws.pos
                self._new_episode(i)
        for i in rest:
            u = self.envs[i]
            if self._streams:
                self._push_rng(i)
            # MiniGridEnv.reset() without a seed, minus the partial view it would build
            u.agent_pos = (-1, -1)
            u.agent_dir = -1
            u._gen_grid(u.width, u.height)
            u.carrying = None
            u.step_count = 0
            self._load(i)
            if self._streams:
                self._pull_rng(i)

    # ---------------------------------------------------------------- step
    def step(self, actions: np.ndarray) -> VecStep:
        """Apply one action per slot; ended episodes restart in the same call."""
        if not self._seeded:
            raise RuntimeError("call reset(seeds) before step()")
        t0 = time.perf_counter()
        a = np.asarray(actions)
        if a.shape != (self.num_envs,):
            raise ValueError(f"need actions of shape ({self.num_envs},), got {a.shape}")
        a = a.astype(np.int64, copy=False)
        if self.kind == DYNOBS:
            if (a < 0).any():
                raise ValueError(f"unknown action in {a.tolist()}")
            a = np.where(a >= self.n_actions, LEFT, a)  # DynamicObstaclesEnv.step
        elif ((a < 0) | (a > DONE)).any():
            raise ValueError(f"unknown action in {a.tolist()}")

        H = self.height
        g = self._gflat
        self.step_count += 1
        sc = self.step_count

        if self.kind == DYNOBS:
            fcell = (self.agent_x + DX[self.agent_dir]) * H + self.agent_y + DY[self.agent_dir]
            t_before = g[self._rowbase + fcell * 3]
            not_clear = (t_before != EMPTY) & (t_before != GOAL)
            t0 = self._tick("dynamics", t0)
            self._move_obstacles()
            t0 = self._tick("obstacles", t0)

        # MiniGridEnv.step
        d = self.agent_dir
        fx = self.agent_x + DX[d]
        fy = self.agent_y + DY[d]
        cell = fx * H + fy
        fb = self._rowbase + cell * 3
        t = g[fb]
        c = g[fb + 1]
        s = g[fb + 2]

        fwd = a == FORWARD
        self.agent_dir = (d + 3 * (a == LEFT) + (a == RIGHT)) & 3
        move = fwd & ENTER[t.astype(np.int64) * 4 + s]
        self.agent_x = np.where(move, fx, self.agent_x)
        self.agent_y = np.where(move, fy, self.agent_y)
        goal = fwd & (t == GOAL)
        terminated = goal | (fwd & (t == LAVA))

        ct, cc = self.carry_type, self.carry_color
        pick = (a == PICKUP) & PICK[t] & (ct == 0)
        drop = (a == DROP) & (t == EMPTY) & (ct != 0)
        tog = a == TOGGLE
        door = tog & (t == DOOR)
        unlock = door & (s == LOCKED) & (ct == KEY) & (cc == c)
        flip = door & (s != LOCKED)
        box_open = tog & (t == BOX)  # Box.toggle: the cell becomes its contents (None)
        clear = pick | box_open
        g[fb] = np.where(clear, EMPTY, np.where(drop, ct, t))
        g[fb + 1] = np.where(clear, 0, np.where(drop, cc, c))
        g[fb + 2] = np.where(clear | drop | unlock, OPEN, np.where(flip, 1 - s, s))
        self.carry_type = np.where(pick, t, np.where(drop, 0, ct)).astype(np.uint8)
        self.carry_color = np.where(pick, c, np.where(drop, 0, cc)).astype(np.uint8)

        win = 1.0 - 0.9 * (sc / self.max_steps)
        reward = np.where(goal, win, 0.0)
        if self.kind == UNLOCK:
            tb = self._rowbase + self.target_cell * 3
            success = tog & self.target_alive & (g[tb] == DOOR) & (g[tb + 2] == OPEN)
            reward = np.where(success, win, reward)
            terminated |= success
        elif self.kind == PICKUP_TARGET:
            on_target = self.target_alive & (cell == self.target_cell)
            success = pick & on_target
            self.target_alive &= ~(box_open & on_target)
            reward = np.where(success, win, reward)
            terminated |= success
        elif self.kind == DYNOBS:
            collided = fwd & not_clear
            reward = np.where(collided, -1.0, reward)
            terminated |= collided
        truncated = sc >= self.max_steps
        t0 = self._tick("dynamics", t0)

        next_obs = self._observe()
        t0 = self._tick("observation", t0)
        ended = np.flatnonzero(terminated | truncated)
        if ended.size:
            self._reset_slots(ended)
            t0 = self._tick("reset", t0)
            obs = next_obs.copy()
            obs[ended] = self._observe(ended)
            t0 = self._tick("observation", t0)
        else:
            obs = next_obs.copy()
        return VecStep(next_obs, reward.astype(np.float64, copy=False), terminated, truncated,
                       obs)

    def _new_episode(self, idx) -> None:
        self.step_count[idx] = 0
        self.carry_type[idx] = 0
        self.carry_color[idx] = 0

    def close(self) -> None:
        """Close the slot envs."""
        for env in self.envs:
            env.close()


def _factory(env_id: str, num_envs: int) -> VectorEnv:
    """MiniGridVec, or GymVectorEnv (with a warning) if the installed minigrid's rules or
    codes are not the ones reproduced here."""
    try:
        return MiniGridVec(env_id, num_envs)
    except UnsupportedEnv as exc:
        from evorl_nb.envs.vector import GymVectorEnv

        warnings.warn(f"{env_id}: {exc}; using GymVectorEnv", RuntimeWarning, stacklevel=3)
        return GymVectorEnv(env_id, num_envs)


VECTORIZED = {env_id: _factory for env_id in MINIGRID_IDS}
