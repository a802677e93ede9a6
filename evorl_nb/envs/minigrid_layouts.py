"""MiniGrid layouts generated without the env: DoorKey, Dynamic-Obstacles, KeyCorridorS3R1.

Every slot of the batched MiniGrid could start its next episode with its env's own
``_gen_grid``; for these three envs the same layouts are generated here instead, drawing
from the slot's stream (:mod:`evorl_nb.envs.pcg64_streams`) in ``_gen_grid``'s order, so
the episodes are minigrid's own, bit for bit.

Each generator is written once, against a *builder* that says how a draw, a rejection-
sampled placement or a cell write is carried out, and runs with either of two:

* :class:`SlotsBuilder`: all ended slots at once, with numpy arrays (one value per slot),
  through the env's batched draws (:class:`~evorl_nb.envs.minigrid_sampling.SlotSampling`);
  its cost is mostly per call, so it pays when many episodes end in one step;
* :class:`OneSlotBuilder`: one slot in plain Python ints, reading the slot's precomputed
  words (:class:`~evorl_nb.envs.pcg64_streams.SlotDraws`); cheaper for a few slots.  Where
  numpy would redraw a word or the block runs out it raises
  :class:`~evorl_nb.envs.pcg64_streams.StreamFallback` and the caller runs the env's own
  ``_gen_grid`` from the same state (its ``_load`` overwrites whatever was written here).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from evorl_nb.envs.minigrid_codes import (
    BALL,
    CLOSED,
    DIRS,
    DOOR,
    DX,
    DY,
    DYNOBS,
    EMPTY,
    KEY,
    LOCKED,
    WALL,
)
from evorl_nb.envs.pcg64_streams import SlotDraws

INF_TRIES = 1 << 62  # place_obj's default max_tries (math.inf), as an int the arrays hold


@dataclass(frozen=True)
class LayoutCodes:
    """The constant parts of one env's generated layouts (codes from minigrid's objects)."""

    template: np.ndarray  # the grid before anything is drawn, flat (x, y, channel)
    template_types: list  # its object codes, one per cell
    wall: np.ndarray
    ball: np.ndarray
    door: np.ndarray  # a locked yellow door (DoorKey's)
    key: np.ndarray   # a yellow key (DoorKey's)
    color_by_draw: np.ndarray  # colour code of np_random.choice(COLOR_NAMES)'s draw
    connect_ok: np.ndarray  # KeyCorridorS3R1 connect_all: (room * 4 + wall) picks that add a door


def layout_codes(width: int, height: int, *, rooms: bool) -> LayoutCodes:
    """The codes a generator needs: a walled room with the goal in its far corner
    (DoorKey, Dynamic-Obstacles) or, with ``rooms``, KeyCorridorS3R1's three one-cell
    rooms in a row."""
    from minigrid.core.constants import COLOR_NAMES, COLOR_TO_IDX
    from minigrid.core.world_object import Ball, Door, Goal, Key, Wall

    W, H = width, height
    wall = Wall().encode()
    tpl = np.empty((W, H, 3), np.uint8)
    if not rooms:
        tpl[:] = (EMPTY, 0, 0)
        tpl[[0, W - 1], :] = wall  # Grid.wall_rect(0, 0, W, H)
        tpl[:, [0, H - 1]] = wall
        tpl[W - 2, H - 2] = Goal().encode()
    else:  # KeyCorridorS3R1: three one-cell rooms in a row
        tpl[:] = wall
        tpl[[1, 3, 5], 1] = (EMPTY, 0, 0)
    template = tpl.reshape(-1)
    # KeyCorridorS3R1 connect_all: (room i, wall k) picks that add a door
    # (room 0's right wall, room 1's left wall; the others have no door position, hold
    # the locked door or belong to the locked room)
    ok = np.zeros((3, 4), bool)
    ok[0, 0] = ok[1, 2] = True
    return LayoutCodes(
        template=template,
        template_types=template[0::3].tolist(),
        wall=np.array(wall, np.uint8),
        ball=np.array(Ball().encode(), np.uint8),
        door=np.array(Door("yellow", is_locked=True).encode(), np.uint8),
        key=np.array(Key("yellow").encode(), np.uint8),
        color_by_draw=np.array([COLOR_TO_IDX[c] for c in COLOR_NAMES], np.uint8),
        connect_ok=ok.reshape(-1),
    )


# --------------------------------------------------------------------------------------
# the generators (each written once, run by either builder)
# --------------------------------------------------------------------------------------
def dynamic_obstacles(b) -> None:
    """DynamicObstaclesEnv._gen_grid (fixed agent start): the balls, each by place_obj
    over the whole grid (at most 101 tries)."""
    u = b.env
    H = b.height
    b.set_agent(int(u.agent_start_pos[0]), int(u.agent_start_pos[1]), int(u.agent_start_dir))
    for k in range(b.n_obstacles):
        x, y = b.place(0, b.width, 0, H, max_tries=100)
        b.put(x, y, b.codes.ball)
        b.set_obstacle(k, x * H + y)


def door_key(b) -> None:
    """DoorKeyEnv._gen_grid, drawing in its order: split column, agent (place_agent left of
    the split, then its direction), door row, key (place_obj left of the split)."""
    W, H = b.width, b.height
    split = b.draw(2, W - 2)
    b.put_column(split, b.codes.wall)  # Grid.vert_wall(split, 0)
    b.set_agent(-1, -1)  # place_agent: agent_pos is (-1, -1) while it is placed
    ax, ay = b.place(0, split, 0, H)
    b.set_agent(ax, ay, b.draw(0, 4))
    b.put(split, b.draw(1, H - 2), b.codes.door)
    kx, ky = b.place(0, split, 0, H)
    b.put(kx, ky, b.codes.key)


def key_corridor_s3r1(b) -> None:
    """KeyCorridorEnv._gen_grid for one row of three 3x3 rooms (KeyCorridorS3R1).  Each
    room is a single cell: (1, 1), (3, 1), (5, 1).  The draws, in order: the locked door's
    colour (door at (4, 1)), the ball's colour, the ball (place_obj in room 2 with
    ``reject_next_to``), the key (room 0, the door's colour), the agent (place_agent in
    room 1, redone while a non-wall object is in front of it), then connect_all's (room,
    wall) picks until one opens room 0 to room 1, and that door's colour (door at (2, 1)).
    The room-grid door positions, the rooms' rows and the key's room are one-value draws,
    which take nothing from the stream."""
    colors = b.codes.color_by_draw
    b.set_agent(3, 1, 0)  # RoomGrid
    door_color = colors[b.draw(0, 6)]
    b.put(4, 1, (DOOR, door_color, LOCKED))
    ball_color = colors[b.draw(0, 6)]
    bx, by = b.place(4, 3, 0, 3, 1000, not_next_to_agent=True)
    b.put(bx, by, (BALL, ball_color, 0))
    kx, ky = b.place(0, 3, 0, 3, 1000, not_next_to_agent=True)
    b.put(kx, ky, (KEY, door_color, 0))
    b.repeat_until(_agent_in_middle_room)
    b.choose(3, 4, b.codes.connect_ok, 4999, "connect_all failed")
    b.put(2, 1, (DOOR, colors[b.draw(0, 6)], CLOSED))
    b.set_target(bx * b.height + by)


def _agent_in_middle_room(b):
    """RoomGrid.place_agent(1, 0), one try: done where no non-wall object is in front."""
    b.set_agent(-1, -1)
    x, y = b.place(2, 3, 0, 3, 1000)
    d = b.draw(0, 4)
    b.set_agent(x, y, d)
    front = b.type_in_front(x, y, d)
    return (front == EMPTY) | (front == WALL)


# --------------------------------------------------------------------------------------
# the builders
# --------------------------------------------------------------------------------------
class SlotsBuilder:
    """Runs a generator for slots ``idx`` of ``vec`` at once: values are arrays over the
    slots, draws go through the env's batched sampling (exact, Lemire redraws included)."""

    def __init__(self, vec, idx: np.ndarray, codes: LayoutCodes):
        self.vec, self.idx, self.codes = vec, idx, codes
        self.env, self.width, self.height = vec.envs[0], vec.width, vec.height
        self.n_obstacles = getattr(vec, "n_obstacles", 0)
        self._rows = vec._rowbase[idx]
        self._zeros = np.zeros(len(idx), np.int64)

    def draw(self, low: int, high: int) -> np.ndarray:
        """``np_random.integers(low, high)`` for every slot."""
        return self.vec._draw(self.idx, low, high - low)

    def place(self, lx: int, rx, ly: int, ry: int, max_tries: int = INF_TRIES, *,
              not_next_to_agent: bool = False):
        """``place_obj`` in the rectangle at ``(lx, ly)`` of size ``(rx, ry)``: (x, y)."""
        ok, x, y = self.vec._place(self.idx, self._zeros + lx, rx, self._zeros + ly, ry,
                                   max_tries, not_next_to_agent=not_next_to_agent)
        if not ok.all():
            raise RecursionError("rejection sampling failed in place_obj")
        return x, y

    def choose(self, rx: int, ry: int, allowed: np.ndarray, max_tries: int, what: str):
        """Draw pairs ``(a, b)`` (``a < rx``, ``b < ry``) until ``allowed[a * ry + b]``."""
        free = np.broadcast_to(allowed, (len(self.idx), rx * ry))
        ok, a, b = self.vec._sample(self.idx, self._zeros, rx, self._zeros, ry, free,
                                    max_tries)
        if not ok.all():
            raise RecursionError(what)
        return a, b

    def repeat_until(self, attempt: Callable) -> None:
        """Run ``attempt(builder)`` again for the slots where it returned False."""
        pending = np.arange(len(self.idx))
        while pending.size:
            done = attempt(SlotsBuilder(self.vec, self.idx[pending], self.codes))
            pending = pending[~done]

    def put(self, x, y, code) -> None:
        """Write ``code`` (type, colour, state; each a value or one per slot) at (x, y)."""
        g = self.vec._gflat
        at = self._rows + (x * self.height + y) * 3
        g[at], g[at + 1], g[at + 2] = code

    def put_column(self, x, code) -> None:
        """Write ``code`` into every cell of column ``x``."""
        H = self.height
        g = self.vec._gflat
        at = (self._rows + x * (3 * H))[:, None] + np.arange(0, 3 * H, 3)[None, :]
        for ch in range(3):
            g[at + ch] = code[ch]

    def type_in_front(self, x, y, d) -> np.ndarray:
        """The object code of the cell in direction ``d`` from (x, y)."""
        return self.vec._gflat[self._rows + ((x + DX[d]) * self.height + y + DY[d]) * 3]

    def set_agent(self, x, y, d=None) -> None:
        """Put the agent at (x, y), facing ``d`` (None: leave its direction)."""
        vec, idx = self.vec, self.idx
        vec.agent_x[idx], vec.agent_y[idx] = x, y
        if d is not None:
            vec.agent_dir[idx] = d

    def set_obstacle(self, k: int, cell) -> None:
        """Record that ball ``k`` of Dynamic-Obstacles stands on flat cell ``cell``."""
        self.vec.obstacles[self.idx, k] = cell

    def set_target(self, cell) -> None:
        """Record the cell of the object the episode asks the agent to pick up."""
        self.vec.target_cell[self.idx] = cell
        self.vec.target_alive[self.idx] = True


class OneSlotBuilder:
    """Runs a generator for slot ``i`` of ``vec`` in plain Python, drawing from ``draws``
    (the slot's precomputed words); raises ``StreamFallback`` where it cannot go on."""

    def __init__(self, vec, i: int, draws: SlotDraws, codes: LayoutCodes):
        self.vec, self.i, self.d, self.codes = vec, i, draws, codes
        self.env, self.width, self.height = vec.envs[0], vec.width, vec.height
        self.n_obstacles = getattr(vec, "n_obstacles", 0)
        self.types = list(codes.template_types)  # what place() reads: object code per cell
        self.cells = vec.grid[i].reshape(-1, 3)
        self.ax = self.ay = -1

    def draw(self, low: int, high: int) -> int:
        """``np_random.integers(low, high)``."""
        return self.d.integers(low, high)

    def place(self, lx: int, rx: int, ly: int, ry: int, max_tries: int = INF_TRIES, *,
              not_next_to_agent: bool = False) -> tuple[int, int]:
        """``place_obj`` in the rectangle at ``(lx, ly)`` of size ``(rx, ry)``: (x, y)."""
        d, types, H, ax, ay = self.d, self.types, self.height, self.ax, self.ay
        for _ in range(max_tries + 1):
            x, y = d.integers(lx, lx + rx), d.integers(ly, ly + ry)
            if (types[x * H + y] == EMPTY and (x != ax or y != ay)
                    and not (not_next_to_agent and abs(x - ax) + abs(y - ay) < 2)):
                return x, y
        raise RecursionError("rejection sampling failed in place_obj")

    def choose(self, rx: int, ry: int, allowed: np.ndarray, max_tries: int, what: str):
        """Draw pairs ``(a, b)`` (``a < rx``, ``b < ry``) until ``allowed[a * ry + b]``."""
        d = self.d
        for _ in range(max_tries + 1):
            a, b = d.integers(0, rx), d.integers(0, ry)
            if allowed[a * ry + b]:
                return a, b
        raise RecursionError(what)

    def repeat_until(self, attempt: Callable) -> None:
        """Run ``attempt(builder)`` until it returns True."""
        while not attempt(self):
            pass

    def put(self, x: int, y: int, code) -> None:
        """Write ``code`` (type, colour, state) at (x, y)."""
        self.types[x * self.height + y] = int(code[0])
        self.cells[x * self.height + y] = code

    def put_column(self, x: int, code) -> None:
        """Write ``code`` into every cell of column ``x``."""
        H = self.height
        self.types[x * H:(x + 1) * H] = [int(code[0])] * H
        self.cells[x * H:(x + 1) * H] = code

    def type_in_front(self, x: int, y: int, d: int) -> int:
        """The object code of the cell in direction ``d`` from (x, y)."""
        return self.types[(x + DIRS[d][0]) * self.height + y + DIRS[d][1]]

    def set_agent(self, x: int, y: int, d: int | None = None) -> None:
        """Put the agent at (x, y), facing ``d`` (None: leave its direction)."""
        vec, i = self.vec, self.i
        self.ax, self.ay = x, y
        vec.agent_x[i], vec.agent_y[i] = x, y
        if d is not None:
            vec.agent_dir[i] = d

    def set_obstacle(self, k: int, cell: int) -> None:
        """Record that ball ``k`` of Dynamic-Obstacles stands on flat cell ``cell``."""
        self.vec.obstacles[self.i, k] = cell

    def set_target(self, cell: int) -> None:
        """Record the cell of the object the episode asks the agent to pick up."""
        self.vec.target_cell[self.i] = cell
        self.vec.target_alive[self.i] = True


class GeneratedLayouts:
    """One env's layout generator with its codes: new episodes for many slots at once
    (:meth:`batch`) or for one slot from its stream words (:meth:`one`)."""

    def __init__(self, generate: Callable, codes: LayoutCodes):
        self.generate, self.codes = generate, codes

    def batch(self, vec, idx: np.ndarray) -> None:
        """Lay out new episodes in slots ``idx`` of ``vec`` (grid, agent, objects)."""
        vec.grid[idx] = self.codes.template
        self.generate(SlotsBuilder(vec, idx, self.codes))

    def one(self, vec, i: int, draws: SlotDraws) -> None:
        """Lay out a new episode in slot ``i``; raises ``StreamFallback`` (see the module)."""
        vec.grid[i] = self.codes.template
        self.generate(OneSlotBuilder(vec, i, draws, self.codes))


def generated_layouts(env, kind: str) -> GeneratedLayouts | None:
    """The generator reproducing ``env``'s ``_gen_grid`` (``kind`` from
    :func:`~evorl_nb.envs.minigrid_codes.kind_of`), or None where the env's own is used
    (RoomGrid-based envs, crossings, rooms, a random agent start)."""
    from minigrid import envs as mg

    W, H = int(env.width), int(env.height)
    if kind == DYNOBS:
        if env.agent_start_pos is None:
            return None
        return GeneratedLayouts(dynamic_obstacles, layout_codes(W, H, rooms=False))
    if type(env) is mg.DoorKeyEnv:
        return GeneratedLayouts(door_key, layout_codes(W, H, rooms=False))
    if (type(env) is mg.KeyCorridorEnv
            and (env.num_rows, env.num_cols, env.room_size, env.obj_type) == (1, 3, 3, "ball")):
        return GeneratedLayouts(key_corridor_s3r1, layout_codes(W, H, rooms=True))
    return None
