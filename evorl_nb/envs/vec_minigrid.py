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
layouts generated here, below) each slot's stream lives in :class:`_PCGStreams`: numpy's
``Generator(PCG64)`` (a 128-bit LCG with the XSL-RR output, drawn 32 bits at a time with
the other half buffered, bounded by Lemire's multiply-shift) reproduced in uint64 arrays,
the next 128 outputs of every slot precomputed with jump-ahead constants.  A rejection-
sampling loop then reads a round of tries for all slots at once, takes the first accepted
one and advances each slot by exactly what numpy would have drawn.  A word that numpy
would reject and redraw (Lemire; probability ~2**-31 per draw) sends that slot to a
scalar path running numpy's own ``Generator.integers`` on the same state, so the stream
is exact in every case.

Vectorized layouts.  ``DynamicObstaclesEnv`` (fixed start) and ``DoorKeyEnv`` layouts are
generated here for all ended slots at once, drawing from the streams in ``_gen_grid``'s
order; when only a few episodes end in a step a per-slot Python version of the same
generator (reading the same precomputed words) is cheaper and is used instead.  Anything
unusual (a Lemire redraw, a block running out) hands that slot to the env's own
``_gen_grid`` with the stream passed over both ways.  Other envs (RoomGrid-based,
crossings, rooms) always use the env's ``_gen_grid``.

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

import sys
import time
import warnings
from collections.abc import Sequence

import numpy as np

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

# Object / colour codes (minigrid.core.constants; checked against the package at import).
EMPTY, WALL, FLOOR, DOOR, KEY, BALL, BOX, GOAL, LAVA, AGENT = 1, 2, 3, 4, 5, 6, 7, 8, 9, 10
RED = 0
OPEN, CLOSED, LOCKED = 0, 1, 2
LEFT, RIGHT, FORWARD, PICKUP, DROP, TOGGLE, DONE = range(7)

_DX = np.array([1, 0, -1, 0], dtype=np.int64)
_DY = np.array([0, 1, 0, -1], dtype=np.int64)

# _ENTER[type * 4 + state]: can the agent walk onto the cell (WorldObj.can_overlap, or empty)
_ENTER = np.zeros(11 * 4, dtype=bool)
for _t in (EMPTY, FLOOR, GOAL, LAVA):
    _ENTER[_t * 4:_t * 4 + 4] = True
_ENTER[DOOR * 4 + OPEN] = True
_PICK = np.zeros(11, dtype=bool)  # WorldObj.can_pickup
_PICK[[KEY, BALL, BOX]] = True


class UnsupportedEnv(ValueError):
    """The installed minigrid differs from what this module reproduces (see
    :data:`VECTORIZED`'s factory, which then falls back to ``GymVectorEnv``)."""


def _check_constants() -> None:
    from minigrid.core.actions import Actions
    from minigrid.core.constants import COLOR_TO_IDX, OBJECT_TO_IDX, STATE_TO_IDX

    expected = {"empty": EMPTY, "wall": WALL, "floor": FLOOR, "door": DOOR, "key": KEY,
                "ball": BALL, "box": BOX, "goal": GOAL, "lava": LAVA, "agent": AGENT}
    if any(OBJECT_TO_IDX[k] != v for k, v in expected.items()) or COLOR_TO_IDX["red"] != RED:
        raise UnsupportedEnv("minigrid's object/colour codes changed")
    if (STATE_TO_IDX["open"], STATE_TO_IDX["closed"], STATE_TO_IDX["locked"]) != (0, 1, 2):
        raise UnsupportedEnv("minigrid's door state codes changed")
    if [int(a) for a in (Actions.left, Actions.right, Actions.forward, Actions.pickup,
                         Actions.drop, Actions.toggle, Actions.done)] != list(range(7)):
        raise UnsupportedEnv("minigrid's action numbering changed")


# --------------------------------------------------------------------------------------
# numpy's Generator(PCG64) streams, read ahead for all slots
# --------------------------------------------------------------------------------------
_LO32 = np.uint64(0xFFFFFFFF)
_U32 = np.uint64(32)


def _lemire_threshold(r: np.ndarray) -> np.ndarray:
    """numpy's rejection threshold ``(2**32 - r) % r`` for a bounded draw in [0, r)."""
    r = r.astype(np.uint64)
    return (np.uint64(1 << 32) - r) % r


class _PCGStreams:
    """The 32-bit draw streams of ``n`` numpy ``Generator(PCG64)`` objects, read ahead.

    numpy draws 32 bits at a time as the low then the high half of each 64-bit output,
    keeping the unused half (``has_uint32`` / ``uinteger``).  Each stream has its own
    ``PCG64`` bit generator that produces its next ``k`` outputs at once (``random_raw``),
    laid out as 32-bit words: ``words[i, 2 + 2j]`` / ``words[i, 3 + 2j]`` the low / high
    half of output ``j``, ``words[i, 1]`` the half buffered before the block (if any), and
    ``pos[i]`` the next word to draw.  Drawing is reading words and moving ``pos``;
    :meth:`refill` rewinds the bit generator to the current position (PCG's jump-ahead, by
    a negative amount) and reads the next block.  :meth:`get` gives the state numpy's own
    generator would have after the words read so far.
    """

    def __init__(self, n: int, k: int = 512):
        self.k = k
        self.width = 2 * k + 2
        self.words = np.zeros((n, self.width), np.uint64)
        self.flat_words = self.words.reshape(-1)
        self.pos = np.full(n, self.width, np.int64)
        self.bitgens = [np.random.PCG64(0) for _ in range(n)]  # at the end of each block
        self._scratch = np.random.PCG64(0)
        self._little = sys.byteorder == "little"

    def set(self, i: int, st: dict) -> None:
        """Continue stream ``i`` from a ``bit_generator.state`` dict."""
        if st["bit_generator"] != "PCG64":
            raise NotImplementedError(f"generator is {st['bit_generator']}, not PCG64")
        self.bitgens[i].state = {"bit_generator": "PCG64", "state": dict(st["state"]),
                                 "has_uint32": 0, "uinteger": 0}
        # an empty block (refilled at the next draw), keeping a buffered half if any
        if st["has_uint32"]:
            self.words[i, self.width - 1] = int(st["uinteger"])
            self.pos[i] = self.width - 1
        else:
            self.pos[i] = self.width

    def get(self, i: int) -> dict:
        """Stream ``i``'s current ``bit_generator.state`` dict."""
        q = int(self.pos[i])
        behind = self.k - (q - 1) // 2  # outputs of the block not drawn yet
        st = self.bitgens[i].state
        if behind:
            self._scratch.state = st
            self._scratch.advance((1 << 128) - behind)
            st = self._scratch.state
        has32 = q & 1
        return {"bit_generator": "PCG64", "state": dict(st["state"]), "has_uint32": has32,
                "uinteger": int(self.words[i, q]) if has32 else 0}

    def refill(self, e: np.ndarray) -> None:
        """Start a fresh block for streams ``e`` at their current positions."""
        k, words = self.k, self.words
        for i in e.tolist():
            q = int(self.pos[i])
            bg = self.bitgens[i]
            behind = k - (q - 1) // 2
            if behind:
                bg.advance((1 << 128) - behind)
            row = words[i]
            if q & 1:
                row[1] = row[q]
            raw = bg.random_raw(k)
            if self._little:
                row[2:] = raw.view(np.uint32)
            else:
                row[2::2] = raw & _LO32
                row[3::2] = raw >> _U32
            self.pos[i] = 1 if q & 1 else 2

    def ensure(self, e: np.ndarray, need: int) -> None:
        """Refill the streams in ``e`` that have fewer than ``need`` words left."""
        short = self.pos[e] + need > self.width
        if short.any():
            self.refill(e[short])


class _Fallback(Exception):
    """A per-slot Python layout met a case it leaves to the env (see :class:`_Draws`)."""


class _Draws:
    """``np_random.integers`` for one slot, read from its precomputed stream words.

    Raises :class:`_Fallback` (nothing consumed is committed) where numpy would reject a
    word and redraw (Lemire) or the block runs out; the caller then runs the env's own
    generator from the same state."""

    __slots__ = ("words", "pos", "end")

    def __init__(self, words: np.ndarray, pos: int):
        self.words, self.pos, self.end = words, pos, len(words)

    def integers(self, low: int, high: int) -> int:
        r = high - low
        if r == 1:
            return low  # numpy draws nothing for a single value
        if self.pos >= self.end:
            raise _Fallback
        m = self.words.item(self.pos) * r
        self.pos += 1
        if (m & 0xFFFFFFFF) < (1 << 32) % r:
            raise _Fallback
        return low + (m >> 32)


_DIRS = ((1, 0), (0, 1), (-1, 0), (0, -1))

# --------------------------------------------------------------------------------------
# env kinds
# --------------------------------------------------------------------------------------
_BASE, _UNLOCK, _PICKUP_TARGET, _DYNOBS = "base", "unlock", "pickup_target", "dynamic_obstacles"


def _kind_of(env) -> str:
    """Which step rules ``env`` (an unwrapped minigrid env) follows; ValueError if unknown."""
    from minigrid import envs as mg
    from minigrid.minigrid_env import MiniGridEnv

    cls = type(env)
    own = {mg.UnlockEnv: _UNLOCK, mg.UnlockPickupEnv: _PICKUP_TARGET,
           mg.KeyCorridorEnv: _PICKUP_TARGET, mg.DynamicObstaclesEnv: _DYNOBS}
    base = (mg.DoorKeyEnv, mg.CrossingEnv, mg.FourRoomsEnv, mg.MultiRoomEnv, mg.EmptyEnv,
            mg.LavaGapEnv)
    if cls in own and cls.step is own_step(cls):
        return own[cls]
    if cls in base and cls.step is MiniGridEnv.step:
        return _BASE
    raise UnsupportedEnv(f"vec_minigrid does not reproduce {cls.__name__}'s step rules")


def own_step(cls):
    """The step function defined by ``cls`` itself (None if it inherits it)."""
    return cls.__dict__.get("step")


class MiniGridVec(VectorEnv):
    """``num_envs`` copies of one MiniGrid env as numpy arrays (see the module docs)."""

    obs_dtype = np.dtype(np.uint8)

    def __init__(self, env_id: str, num_envs: int, *, tries_per_round: int | None = None):
        import gymnasium as gym
        from minigrid import envs as mg

        from evorl_nb.envs import get_spec, make_env
        from evorl_nb.envs.wrappers import grid_channel_divisors

        _check_constants()
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
        self.kind = _kind_of(u)
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
        # self._rng): vectorized over slots, and per slot in Python; None: the env's own
        # _gen_grid.
        self._layouts = self._py_layout = None
        if self.kind == _DYNOBS:
            self.n_obstacles = int(u.n_obstacles)
            self.obstacles = np.zeros((n, self.n_obstacles), np.int64)  # flat cell indices
            if u.agent_start_pos is not None:
                self._layouts, self._py_layout = self._dynobs_layouts, self._dynobs_layout_py
        elif type(u) is mg.DoorKeyEnv:
            self._layouts, self._py_layout = self._doorkey_layouts, self._doorkey_layout_py
        elif (type(u) is mg.KeyCorridorEnv
              and (u.num_rows, u.num_cols, u.room_size, u.obj_type) == (1, 3, 3, "ball")):
            self._layouts = self._keycorridor_s3r1_layouts
            self._py_layout = self._keycorridor_s3r1_layout_py
        self._streams = self.kind == _DYNOBS or self._layouts is not None
        if self._layouts is not None:
            self._init_layouts()
        # How ended episodes get their layouts: "auto" (the Python per-slot version for up
        # to ``python_layouts_upto`` slots, whose cost is per slot, else the vectorized one,
        # whose cost is mostly per call), "vector", "python" or "env" (the env's _gen_grid).
        # All give the same episodes; tests pin each.
        self.layout_path = "auto"
        self.python_layouts_upto = 16
        if self._streams:
            self._rng = _PCGStreams(n)
            self._scratch_gen = np.random.Generator(np.random.PCG64(0))
            self._force_scalar = False  # tests: run every draw through numpy's own Generator

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

        if self.kind == _UNLOCK:
            self.target_cell[i] = cell_of(u.door)
            self.target_alive[i] = self.target_cell[i] >= 0
        elif self.kind == _PICKUP_TARGET:
            self.target_cell[i] = cell_of(u.obj)
            self.target_alive[i] = self.target_cell[i] >= 0
        elif self.kind == _DYNOBS:
            for k, ob in enumerate(u.obstacles):
                self.obstacles[i, k] = int(ob.cur_pos[0]) * H + int(ob.cur_pos[1])

    def _pull_rng(self, i: int) -> None:
        """Continue slot ``i``'s stream from its env's generator."""
        self._rng.set(i, self.envs[i].np_random.bit_generator.state)

    def _rng_state(self, i: int) -> dict:
        """Slot ``i``'s stream state, as its env's ``np_random.bit_generator.state``."""
        return self._rng.get(i)

    def _push_rng(self, i: int, gen: np.random.Generator | None = None) -> np.random.Generator:
        """Write slot ``i``'s stream state into ``gen`` (default: its env's generator)."""
        gen = self.envs[i].np_random if gen is None else gen
        gen.bit_generator.state = self._rng.get(i)
        return gen

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
            self._layouts(idx)
            return
        rest = idx.tolist()
        if path == "python":
            rng = self._rng
            rng.refill(idx[rng.pos[idx] > rng.width // 2])
            rest = []
            for i in idx.tolist():
                draws = _Draws(rng.words[i], int(rng.pos[i]))
                try:
                    self._py_layout(i, draws)
                except _Fallback:
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
        if self.kind == _DYNOBS:
            if (a < 0).any():
                raise ValueError(f"unknown action in {a.tolist()}")
            a = np.where(a >= self.n_actions, LEFT, a)  # DynamicObstaclesEnv.step
        elif ((a < 0) | (a > DONE)).any():
            raise ValueError(f"unknown action in {a.tolist()}")

        H = self.height
        g = self._gflat
        self.step_count += 1
        sc = self.step_count

        if self.kind == _DYNOBS:
            fcell = (self.agent_x + _DX[self.agent_dir]) * H + self.agent_y + _DY[self.agent_dir]
            t_before = g[self._rowbase + fcell * 3]
            not_clear = (t_before != EMPTY) & (t_before != GOAL)
            t0 = self._tick("dynamics", t0)
            self._move_obstacles()
            t0 = self._tick("obstacles", t0)

        # MiniGridEnv.step
        d = self.agent_dir
        fx = self.agent_x + _DX[d]
        fy = self.agent_y + _DY[d]
        cell = fx * H + fy
        fb = self._rowbase + cell * 3
        t = g[fb]
        c = g[fb + 1]
        s = g[fb + 2]

        fwd = a == FORWARD
        self.agent_dir = (d + 3 * (a == LEFT) + (a == RIGHT)) & 3
        move = fwd & _ENTER[t.astype(np.int64) * 4 + s]
        self.agent_x = np.where(move, fx, self.agent_x)
        self.agent_y = np.where(move, fy, self.agent_y)
        goal = fwd & (t == GOAL)
        terminated = goal | (fwd & (t == LAVA))

        ct, cc = self.carry_type, self.carry_color
        pick = (a == PICKUP) & _PICK[t] & (ct == 0)
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
        if self.kind == _UNLOCK:
            tb = self._rowbase + self.target_cell * 3
            success = tog & self.target_alive & (g[tb] == DOOR) & (g[tb + 2] == OPEN)
            reward = np.where(success, win, reward)
            terminated |= success
        elif self.kind == _PICKUP_TARGET:
            on_target = self.target_alive & (cell == self.target_cell)
            success = pick & on_target
            self.target_alive &= ~(box_open & on_target)
            reward = np.where(success, win, reward)
            terminated |= success
        elif self.kind == _DYNOBS:
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

    # ---------------------------------------------------------------- Dynamic-Obstacles
    def _move_obstacles(self) -> None:
        """DynamicObstaclesEnv.step: each ball tries ``place_obj`` in its 3x3 square.

        Balls never stand on the border walls, so every square is whole (x and y both
        drawn from 3 values, one word each).  Rounds of tries for all slots still looking
        settle them (8 tries, then 32, then the rest of the 101); a ball with no free cell
        around it spends all 101 tries (202 words) and stays; a word numpy would redraw
        (Lemire) sends that slot to numpy's own generator."""
        n, H = self.num_envs, self.height
        rng = self._rng
        rng.refill(np.flatnonzero(rng.pos > rng.width // 2))  # refill in batches
        grid3 = self.grid.reshape(n, self.cells, 3)
        rows = np.arange(n)
        agent = self.agent_x * H + self.agent_y
        if not hasattr(self, "_nbr"):
            self._nbr = np.array([(dx - 1) * H + dy - 1 for dx in range(3) for dy in range(3)])
        tries = 101  # place_obj(max_tries=100)
        for k in range(self.n_obstacles):
            old = self.obstacles[:, k]
            cand = old[:, None] + self._nbr  # [n, 9]: the square, x-major
            free = (grid3[rows[:, None], cand, 0] == EMPTY) & (cand != agent[:, None])
            new = np.full(n, -1, np.int64)
            trapped = ~free.any(1)
            active = rows[~trapped] if trapped.any() else rows
            left = np.full(n, tries, np.int64)
            T = min(self.tries_per_round or 8, rng.k // 2)
            while active.size:
                rng.ensure(active, 2 * T)
                at = (active * rng.width + rng.pos[active])[:, None] + np.arange(2 * T)
                mw = rng.flat_words[at] * np.uint64(3)
                redraw = ((mw & _LO32) == 0).any(1)  # Lemire: 3 * word % 2**32 < 1
                if self._force_scalar:
                    redraw[:] = True
                pick = (mw >> _U32).astype(np.int64)
                pick = pick[:, 0::2] * 3 + pick[:, 1::2]  # [m, T]: square index of each try
                hit = np.take_along_axis(free[active], pick, 1)
                left_a = left[active]
                if left_a.min() < T:
                    hit &= np.arange(T) < left_a[:, None]
                found = hit.any(1)
                first = hit.argmax(1)
                done = found & ~redraw
                d, r = active[done], np.flatnonzero(done)
                new[d] = cand[d, pick[r, first[r]]]
                rng.pos[d] += 2 * (first[r] + 1)
                missed = ~found & ~redraw
                spent = np.minimum(T, left_a[missed])
                rng.pos[active[missed]] += 2 * spent
                left[active[missed]] -= spent
                for i in active[redraw].tolist():  # numpy's own generator, same state
                    ok, x, y = self._sample_scalar(i, int(old[i] // H - 1), 3,
                                                   int(old[i] % H - 1), 3, free[i], 3,
                                                   int(left[i]))
                    if ok:
                        new[i] = x * H + y
                active = active[missed]
                active = active[left[active] > 0]
                T = min(4 * T, rng.k // 2)
            if trapped.any():  # every try rejected: 101 x and y words, nothing moves
                stuck = rows[trapped]
                rng.ensure(stuck, 2 * tries)
                at = (stuck * rng.width + rng.pos[stuck])[:, None] + np.arange(2 * tries)
                redraw = ((rng.flat_words[at] * np.uint64(3)) & _LO32 == 0).any(1)
                if self._force_scalar:
                    redraw[:] = True
                rng.pos[stuck[~redraw]] += 2 * tries
                for i in stuck[redraw].tolist():
                    self._sample_scalar(i, int(old[i] // H - 1), 3, int(old[i] % H - 1), 3,
                                        free[i], 3, tries)
            moved = np.flatnonzero(new >= 0)
            grid3[moved, new[moved]] = grid3[moved, old[moved]]
            grid3[moved, old[moved]] = (EMPTY, 0, 0)
            self.obstacles[moved, k] = new[moved]


    # ---------------------------------------------------------------- generated layouts
    def _init_layouts(self) -> None:
        """Constant parts of the layouts generated here (codes from minigrid's objects)."""
        from minigrid.core.constants import COLOR_NAMES, COLOR_TO_IDX
        from minigrid.core.world_object import Ball, Door, Goal, Key, Wall

        W, H = self.width, self.height
        wall = Wall().encode()
        tpl = np.empty((W, H, 3), np.uint8)
        if self.kind == _DYNOBS or self._layouts == self._doorkey_layouts:
            tpl[:] = (EMPTY, 0, 0)
            tpl[[0, W - 1], :] = wall  # Grid.wall_rect(0, 0, W, H)
            tpl[:, [0, H - 1]] = wall
            tpl[W - 2, H - 2] = Goal().encode()
        else:  # KeyCorridorS3R1: three one-cell rooms in a row
            tpl[:] = wall
            tpl[[1, 3, 5], 1] = (EMPTY, 0, 0)
        self._template = tpl.reshape(-1)
        self._template_types = self._template[0::3].tolist()
        self._wall_code = np.array(wall, np.uint8)
        self._ball_code = np.array(Ball().encode(), np.uint8)
        self._door_code = np.array(Door("yellow", is_locked=True).encode(), np.uint8)
        self._key_code = np.array(Key("yellow").encode(), np.uint8)
        self._color_by_draw = np.array([COLOR_TO_IDX[c] for c in COLOR_NAMES], np.uint8)
        # KeyCorridorS3R1 connect_all: (room i, wall k) picks that add a door
        # (room 0's right wall, room 1's left wall; the others have no door position, hold
        # the locked door or belong to the locked room)
        ok = np.zeros((3, 4), bool)
        ok[0, 0] = ok[1, 2] = True
        self._connect_ok = ok.reshape(-1)

    def _dynobs_layouts(self, idx: np.ndarray) -> None:
        """DynamicObstaclesEnv._gen_grid for slots ``idx`` (fixed agent start): the balls,
        each by place_obj over the whole grid (at most 101 tries)."""
        u = self.envs[0]
        W, H = self.width, self.height
        self.grid[idx] = self._template
        self.agent_x[idx] = int(u.agent_start_pos[0])
        self.agent_y[idx] = int(u.agent_start_pos[1])
        self.agent_dir[idx] = int(u.agent_start_dir)
        self._new_episode(idx)
        zeros = np.zeros(len(idx), np.int64)
        g = self._gflat
        for k in range(self.n_obstacles):
            ok, px, py = self._place(idx, zeros, W, zeros, H, max_tries=100)
            if not ok.all():
                raise RecursionError("rejection sampling failed in place_obj")
            at = self._rowbase[idx] + (px * H + py) * 3
            for ch in range(3):
                g[at + ch] = self._ball_code[ch]
            self.obstacles[idx, k] = px * H + py

    def _dynobs_layout_py(self, i: int, d: _Draws) -> None:
        """:meth:`_dynobs_layouts` for one slot, in Python."""
        u = self.envs[0]
        W, H = self.width, self.height
        types = list(self._template_types)
        sx, sy = int(u.agent_start_pos[0]), int(u.agent_start_pos[1])
        balls = []
        for _ in range(self.n_obstacles):
            for _ in range(101):
                x, y = d.integers(0, W), d.integers(0, H)
                if types[x * H + y] == EMPTY and (x != sx or y != sy):
                    break
            else:
                raise RecursionError("rejection sampling failed in place_obj")
            types[x * H + y] = BALL
            balls.append(x * H + y)
        self.grid[i] = self._template
        self.grid[i].reshape(-1, 3)[balls] = self._ball_code
        self.obstacles[i] = balls
        self.agent_x[i], self.agent_y[i], self.agent_dir[i] = sx, sy, int(u.agent_start_dir)

    def _doorkey_layouts(self, idx: np.ndarray) -> None:
        """DoorKeyEnv._gen_grid for slots ``idx``, drawing from their streams in its order:
        split column, agent (place_agent left of the split, then its direction), door row,
        key (place_obj left of the split)."""
        W, H = self.width, self.height
        m = len(idx)
        g = self._gflat
        rows = self._rowbase[idx]
        zeros = np.zeros(m, np.int64)
        self.grid[idx] = self._template
        split = self._draw(idx, 2, W - 4)
        at = (rows + split * (3 * H))[:, None] + np.arange(0, 3 * H, 3)[None, :]
        for ch in range(3):  # Grid.vert_wall(split, 0)
            g[at + ch] = self._wall_code[ch]
        self.agent_x[idx] = -1  # place_agent: agent_pos is (-1, -1) while it is placed
        self.agent_y[idx] = -1
        inf = 1 << 62
        _, ax, ay = self._place(idx, zeros, split, zeros, H, max_tries=inf)
        self.agent_x[idx], self.agent_y[idx] = ax, ay
        self.agent_dir[idx] = self._draw(idx, 0, 4)
        door = self._draw(idx, 1, H - 3)
        at = rows + (split * H + door) * 3
        for ch in range(3):
            g[at + ch] = self._door_code[ch]
        _, kx, ky = self._place(idx, zeros, split, zeros, H, max_tries=inf)
        at = rows + (kx * H + ky) * 3
        for ch in range(3):
            g[at + ch] = self._key_code[ch]
        self._new_episode(idx)

    def _doorkey_layout_py(self, i: int, d: _Draws) -> None:
        """:meth:`_doorkey_layouts` for one slot, in Python."""
        W, H = self.width, self.height
        types = list(self._template_types)
        split = d.integers(2, W - 2)
        for y in range(H):
            types[split * H + y] = WALL
        while True:
            ax, ay = d.integers(0, split), d.integers(0, H)
            if types[ax * H + ay] == EMPTY:
                break
        direction = d.integers(0, 4)
        door = split * H + d.integers(1, H - 2)
        types[door] = DOOR
        while True:
            kx, ky = d.integers(0, split), d.integers(0, H)
            if types[kx * H + ky] == EMPTY and (kx != ax or ky != ay):
                break
        cells = self.grid[i].reshape(-1, 3)
        cells[:] = self._template.reshape(-1, 3)
        cells[split * H:(split + 1) * H] = self._wall_code
        cells[door] = self._door_code
        cells[kx * H + ky] = self._key_code
        self.agent_x[i], self.agent_y[i], self.agent_dir[i] = ax, ay, direction

    def _keycorridor_s3r1_layouts(self, idx: np.ndarray) -> None:
        """KeyCorridorEnv._gen_grid for one row of three 3x3 rooms (KeyCorridorS3R1), slots
        ``idx``.  Each room is a single cell: (1, 1), (3, 1), (5, 1).  The draws, in order:
        the locked door's colour (door at (4, 1)), the ball's colour, the ball (place_obj in
        room 2 with ``reject_next_to``), the key (room 0, the door's colour), the agent
        (place_agent in room 1, redone while a non-wall object is in front of it), then
        connect_all's (room, wall) picks until one opens room 0 to room 1, and that door's
        colour (door at (2, 1)).  The room-grid door positions, the rooms' rows and the
        key's room are one-value draws, which take nothing from the stream."""
        H = self.height
        m = len(idx)
        g = self._gflat
        rows = self._rowbase[idx]
        zeros = np.zeros(m, np.int64)
        self.grid[idx] = self._template

        def put(x, y, t, c, st):
            at = rows + (x * H + y) * 3
            g[at], g[at + 1], g[at + 2] = t, c, st

        self.agent_x[idx], self.agent_y[idx], self.agent_dir[idx] = 3, 1, 0  # RoomGrid
        door_color = self._color_by_draw[self._draw(idx, 0, 6)]
        put(4, 1, DOOR, door_color, LOCKED)
        ball_color = self._color_by_draw[self._draw(idx, 0, 6)]
        ok, bx, by = self._place(idx, zeros + 4, 3, zeros, 3, 1000, not_next_to_agent=True)
        ok2, kx, ky = ok, bx, by
        if ok.all():
            put(bx, by, BALL, ball_color, 0)
            ok2, kx, ky = self._place(idx, zeros, 3, zeros, 3, 1000, not_next_to_agent=True)
        if not (ok.all() and ok2.all()):
            raise RecursionError("rejection sampling failed in place_obj")
        put(kx, ky, KEY, door_color, 0)
        pending = np.arange(m)
        while pending.size:  # RoomGrid.place_agent(1, 0)
            e = idx[pending]
            self.agent_x[e] = self.agent_y[e] = -1
            ok, ax, ay = self._place(e, zeros[pending] + 2, 3, zeros[pending], 3, 1000)
            if not ok.all():
                raise RecursionError("rejection sampling failed in place_obj")
            d = self._draw(e, 0, 4)
            self.agent_x[e], self.agent_y[e], self.agent_dir[e] = ax, ay, d
            front = g[self._rowbase[e] + ((ax + _DX[d]) * H + ay + _DY[d]) * 3]
            pending = pending[(front != EMPTY) & (front != WALL)]
        free = np.broadcast_to(self._connect_ok, (m, 12))
        ok, _, _ = self._sample(idx, zeros, 3, zeros, 4, free, 4999)
        if not ok.all():
            raise RecursionError("connect_all failed")
        put(2, 1, DOOR, self._color_by_draw[self._draw(idx, 0, 6)], CLOSED)
        self.target_cell[idx] = 5 * H + 1
        self.target_alive[idx] = True
        self._new_episode(idx)

    def _keycorridor_s3r1_layout_py(self, i: int, d: _Draws) -> None:
        """:meth:`_keycorridor_s3r1_layouts` for one slot, in Python."""
        H = self.height
        types = list(self._template_types)
        colors = self._color_by_draw
        door_color = colors[d.integers(0, 6)]
        types[4 * H + 1] = DOOR
        ball_color = colors[d.integers(0, 6)]
        placed = []
        for x0, kind in ((4, BALL), (0, KEY)):  # place_in_room: reject_next_to (3, 1)
            for _ in range(1001):
                x, y = d.integers(x0, x0 + 3), d.integers(0, 3)
                if types[x * H + y] == EMPTY and abs(x - 3) + abs(y - 1) >= 2:
                    break
            else:
                raise RecursionError("rejection sampling failed in place_obj")
            types[x * H + y] = kind
            placed.append(x * H + y)
        while True:  # RoomGrid.place_agent(1, 0)
            for _ in range(1001):
                ax, ay = d.integers(2, 5), d.integers(0, 3)
                if types[ax * H + ay] == EMPTY:
                    break
            else:
                raise RecursionError("rejection sampling failed in place_obj")
            direction = d.integers(0, 4)
            front = types[(ax + _DIRS[direction][0]) * H + ay + _DIRS[direction][1]]
            if front in (EMPTY, WALL):
                break
        for _ in range(5000):  # connect_all
            room, wall = d.integers(0, 3), d.integers(0, 4)
            if self._connect_ok[room * 4 + wall]:
                break
        else:
            raise RecursionError("connect_all failed")
        cells = self.grid[i].reshape(-1, 3)
        cells[:] = self._template.reshape(-1, 3)
        cells[4 * H + 1] = (DOOR, door_color, LOCKED)
        cells[placed[0]] = (BALL, ball_color, 0)
        cells[placed[1]] = (KEY, door_color, 0)
        cells[2 * H + 1] = (DOOR, colors[d.integers(0, 6)], CLOSED)
        self.agent_x[i], self.agent_y[i], self.agent_dir[i] = ax, ay, direction
        self.target_cell[i] = placed[0]
        self.target_alive[i] = True

    def _new_episode(self, idx) -> None:
        self.step_count[idx] = 0
        self.carry_type[idx] = 0
        self.carry_color[idx] = 0

    def _draw(self, idx: np.ndarray, low: int, r: int) -> np.ndarray:
        """``np_random.integers(low, low + r)`` for each slot in ``idx`` (one draw each)."""
        if r == 1:
            return np.full(len(idx), low, np.int64)  # numpy draws nothing for one value
        rng = self._rng
        rng.ensure(idx, 1)
        q = rng.pos[idx]
        mr = rng.words[idx, q] * np.uint64(r)
        out = low + (mr >> _U32).astype(np.int64)
        rng.pos[idx] = q + 1
        thr = (1 << 32) % r  # == (2**32 - r) % r
        redo = np.flatnonzero((mr & _LO32) < np.uint64(thr)) if thr else np.zeros(0, np.int64)
        if self._force_scalar:
            redo = np.arange(len(idx))
        for k in redo.tolist():
            i = int(idx[k])
            rng.pos[i] = q[k]
            gen = self._push_rng(i, self._scratch_gen)
            out[k] = int(gen.integers(low, low + r))
            rng.set(i, gen.bit_generator.state)
        return out

    def _place(self, idx, lx, rx, ly, ry, max_tries, *, not_next_to_agent=False):
        """``MiniGridEnv.place_obj(obj, top=(lx, ly), size=(rx, ry), max_tries)`` for slots
        ``idx`` (``lx``, ``ly`` arrays, ``rx``, ``ry`` ints or arrays): a try is rejected when
        its cell is not empty or is the agent's (and, with ``not_next_to_agent``, when
        roomgrid's ``reject_next_to`` rejects it).  Returns (ok, x, y) as :meth:`_sample`."""
        m = len(idx)
        H = self.height
        RX = rx if isinstance(rx, int) else (int(rx.max()) if m else 1)
        RY = ry if isinstance(ry, int) else (int(ry.max()) if m else 1)
        # which cells of the rectangle a try may land on: free[slot, dx * RY + dy]
        cx = lx[:, None, None] + np.arange(RX)[None, :, None]
        cy = ly[:, None, None] + np.arange(RY)[None, None, :]
        cells = np.minimum(cx * H + cy, self.cells - 1).reshape(m, RX * RY)
        ax, ay = self.agent_x[idx, None], self.agent_y[idx, None]
        free = ((self._gflat[self._rowbase[idx, None] + cells * 3] == EMPTY)
                & (cells != ax * H + ay))
        if not_next_to_agent:
            dist = (np.abs(cx - ax[:, :, None]) + np.abs(cy - ay[:, :, None])).reshape(m, -1)
            free &= dist >= 2
        return self._sample(idx, lx, rx, ly, ry, free, max_tries)

    def _sample(self, idx, lx, rx, ly, ry, free, max_tries):
        """Rejection sampling as minigrid's loops do it: each try draws
        ``x = np_random.integers(lx, lx + rx)`` then ``y = np_random.integers(ly, ly + ry)``
        and is accepted where ``free[slot, (x - lx) * RY + (y - ly)]`` (``RY = max(ry)``);
        at most ``max_tries + 1`` tries.  Advances each slot's stream exactly as numpy does.
        Returns (ok, x, y): ok False where every try was rejected."""
        m = len(idx)
        ok = np.zeros(m, bool)
        px = np.zeros(m, np.int64)
        py = np.zeros(m, np.int64)
        if m == 0:
            return ok, px, py
        if isinstance(rx, int) and isinstance(ry, int):  # one range for all slots
            RX, RY = rx, ry
            square, one = RX == RY, RX == 1 or RY == 1
            rx, ry = np.full(m, RX, np.int64), np.full(m, RY, np.int64)
        else:
            rx = np.broadcast_to(np.asarray(rx, np.int64), (m,))
            ry = np.broadcast_to(np.asarray(ry, np.int64), (m,))
            RX, RY = int(rx.max()), int(ry.max())
            square = RX == RY and bool((rx == RX).all() and (ry == RY).all())
            one = bool((rx == 1).any() or (ry == 1).any())
        if isinstance(max_tries, int):
            left = np.full(m, max_tries + 1, np.int64)
        else:
            left = np.asarray(max_tries, np.int64) + 1
        if one or self._force_scalar:
            # a one-value draw takes no word: leave such (never used here) cases to numpy
            for k in range(m):
                ok[k], px[k], py[k] = self._sample_scalar(
                    int(idx[k]), int(lx[k]), int(rx[k]), int(ly[k]), int(ry[k]), free[k], RY,
                    int(left[k]))
            return ok, px, py
        free_flat = free.reshape(-1)
        if square:
            r64, thr = np.uint64(RX), np.uint64((1 << 32) % RX)
        else:
            rx64, ry64 = rx.astype(np.uint64)[:, None], ry.astype(np.uint64)[:, None]
            thr_x, thr_y = _lemire_threshold(rx)[:, None], _lemire_threshold(ry)[:, None]
        rng = self._rng
        T = min(self.tries_per_round or 8, rng.k // 2)
        active = np.arange(m)
        while active.size:
            steps = np.arange(2 * T)[None, :]
            e = idx[active]
            rng.ensure(e, 2 * T)
            # the next 2T words: try t draws x from word 2t and y from word 2t + 1
            words = rng.flat_words[(e * rng.width + rng.pos[e])[:, None] + steps]
            if square:  # one range for every draw (obstacle moves, square layouts)
                mw = words * r64
                mx, my = mw[:, 0::2], mw[:, 1::2]
                scalar = ((mw & _LO32) < thr).any(1) if thr else None
            else:
                mx = words[:, 0::2] * rx64[active]
                my = words[:, 1::2] * ry64[active]
                scalar = (((mx & _LO32) < thr_x[active])
                          | ((my & _LO32) < thr_y[active])).any(1)
            dx = (mx >> _U32).astype(np.int64)
            dy = (my >> _U32).astype(np.int64)
            hit = free_flat[(active * (RX * RY))[:, None] + dx * RY + dy]
            left_a = left[active]
            if left_a.min() < T:
                hit &= steps[:, :T] < left_a[:, None]
            found = hit.any(1)
            first = hit.argmax(1)
            used = np.where(found, first + 1, np.minimum(T, left_a))
            if scalar is not None and scalar.any():
                # a word numpy would reject and redraw (Lemire): redo those slots exactly
                for r in np.flatnonzero(scalar).tolist():
                    slot = active[r]
                    ok[slot], px[slot], py[slot] = self._sample_scalar(
                        int(idx[slot]), int(lx[slot]), int(rx[slot]), int(ly[slot]),
                        int(ry[slot]), free[slot], RY, int(left[slot]))
                keep = ~scalar
                left[active[scalar]] = 0
                active, e, found, first, used, dx, dy = (
                    x[keep] for x in (active, e, found, first, used, dx, dy))
            rng.pos[e] += 2 * used
            left[active] -= used
            won = np.flatnonzero(found)
            slots = active[won]
            ok[slots] = True
            px[slots] = lx[slots] + dx[won, first[won]]
            py[slots] = ly[slots] + dy[won, first[won]]
            active = active[~found]
            active = active[left[active] > 0]
            T = min(4 * T, rng.k // 2)  # the few slots left get longer rounds
        return ok, px, py

    def _sample_scalar(self, i, lx, rx, ly, ry, free_row, RY, tries):
        """One slot's tries drawn by numpy's own Generator (the exact fallback)."""
        gen = self._push_rng(i, self._scratch_gen)
        found = (False, 0, 0)
        for _ in range(min(tries, 1 << 20)):
            x = int(gen.integers(lx, lx + rx))
            y = int(gen.integers(ly, ly + ry))
            if free_row[(x - lx) * RY + (y - ly)]:
                found = (True, x, y)
                break
        self._rng.set(i, gen.bit_generator.state)
        return found

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
