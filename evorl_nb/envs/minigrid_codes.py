"""MiniGrid's codes and the tables the batched MiniGrid reads them with.

The object, colour, door-state and action numbers of minigrid (checked against the installed
package by :func:`check_constants`), the direction vectors, which cells the agent may enter
or pick up, and which of minigrid's step rules an env follows (:func:`kind_of`).  Shared by
:mod:`evorl_nb.envs.vec_minigrid` (the step rules) and the modules that generate layouts and
move obstacles for it.
"""

from __future__ import annotations

import numpy as np

# Object / colour codes (minigrid.core.constants; checked against the package at import).
EMPTY, WALL, FLOOR, DOOR, KEY, BALL, BOX, GOAL, LAVA, AGENT = 1, 2, 3, 4, 5, 6, 7, 8, 9, 10
RED = 0
OPEN, CLOSED, LOCKED = 0, 1, 2
LEFT, RIGHT, FORWARD, PICKUP, DROP, TOGGLE, DONE = range(7)

# The step each direction takes (minigrid's DIR_TO_VEC), as arrays for a batch of slots
# (DX, DY) and as pairs for one slot (DIRS).
DX = np.array([1, 0, -1, 0], dtype=np.int64)
DY = np.array([0, 1, 0, -1], dtype=np.int64)
DIRS = ((1, 0), (0, 1), (-1, 0), (0, -1))

# ENTER[type * 4 + state]: can the agent walk onto the cell (WorldObj.can_overlap, or empty)
ENTER = np.zeros(11 * 4, dtype=bool)
for _t in (EMPTY, FLOOR, GOAL, LAVA):
    ENTER[_t * 4:_t * 4 + 4] = True
ENTER[DOOR * 4 + OPEN] = True
PICK = np.zeros(11, dtype=bool)  # WorldObj.can_pickup
PICK[[KEY, BALL, BOX]] = True


class UnsupportedEnv(ValueError):
    """The installed minigrid differs from what :mod:`evorl_nb.envs.vec_minigrid` reproduces
    (its :data:`VECTORIZED` factory then falls back to ``GymVectorEnv``)."""


def check_constants() -> None:
    """Raise :class:`UnsupportedEnv` unless the installed minigrid uses the codes above,
    so a changed package falls back to the generic env instead of giving wrong dynamics."""
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
# env kinds
# --------------------------------------------------------------------------------------
BASE, UNLOCK, PICKUP_TARGET, DYNOBS = "base", "unlock", "pickup_target", "dynamic_obstacles"


def kind_of(env) -> str:
    """Which step rules ``env`` (an unwrapped minigrid env) follows; ValueError if unknown."""
    from minigrid import envs as mg
    from minigrid.minigrid_env import MiniGridEnv

    cls = type(env)
    own = {mg.UnlockEnv: UNLOCK, mg.UnlockPickupEnv: PICKUP_TARGET,
           mg.KeyCorridorEnv: PICKUP_TARGET, mg.DynamicObstaclesEnv: DYNOBS}
    base = (mg.DoorKeyEnv, mg.CrossingEnv, mg.FourRoomsEnv, mg.MultiRoomEnv, mg.EmptyEnv,
            mg.LavaGapEnv)
    if cls in own and cls.step is own_step(cls):
        return own[cls]
    if cls in base and cls.step is MiniGridEnv.step:
        return BASE
    raise UnsupportedEnv(f"vec_minigrid does not reproduce {cls.__name__}'s step rules")


def own_step(cls):
    """The step function defined by ``cls`` itself (None if it inherits it)."""
    return cls.__dict__.get("step")
