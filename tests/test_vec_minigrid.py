"""Parity of evorl_nb.envs.vec_minigrid.MiniGridVec with the minigrid package.

For every vectorized MiniGrid id, N batched slots and N independent ``make_env`` instances
get the same seeds and the same actions (a seeded mix of uniform random actions and a
guided policy that walks to keys, doors, boxes and goals, so successes, unlocks, pickups,
drops, lava and collisions all happen), and must give identical observations (decoded,
exact), rewards, terminated and truncated flags at every step, including the first
observation of each auto-reset episode (the package env is restarted with ``env.reset()``).
"""

from __future__ import annotations

import copy
import zlib
from collections import Counter, deque

import numpy as np
import pytest

from evorl_nb.envs import UnknownEnvError, env_ids, make_env
from evorl_nb.envs.pcg64_streams import PCGStreams
from evorl_nb.envs.vec_minigrid import MINIGRID_IDS, VECTORIZED, MiniGridVec
from evorl_nb.envs.vector import GymVectorEnv, make_vector_env, vectorized_ids

N = 8
TOTAL_STEPS = 10_000  # env steps per id (N slots x TOTAL_STEPS / N batched steps)
# per-slot probability of a uniform random action (else the guided policy's)
EPSILON = np.array([1.0, 1.0, 0.6, 0.4, 0.3, 0.25, 0.15, 0.1])

_DIRS = ((1, 0), (0, 1), (-1, 0), (0, -1))


def _passable(v) -> bool:
    return v is None or v.type in ("goal", "floor") or (v.type == "door" and not v.is_locked)


def _rng(state: dict) -> dict:
    """A generator state with the stale ``uinteger`` numpy keeps when nothing is buffered
    zeroed (it is never read)."""
    return {**state, "uinteger": state["uinteger"] if state["has_uint32"] else 0}


def guided_action(u, rng: np.random.Generator) -> int:
    """A greedy policy on the package env's state: fetch the key of a locked door, open it,
    pick up the object the env asks for (dropping what is in hand first), else walk to the
    goal; closed doors on the way are toggled.  Random action when nothing is reachable."""
    W, H = u.width, u.height
    cells = u.grid.grid
    ax, ay = int(u.agent_pos[0]), int(u.agent_pos[1])
    d = int(u.agent_dir)
    fx, fy = ax + _DIRS[d][0], ay + _DIRS[d][1]
    front = cells[fy * W + fx]
    carrying = u.carrying
    locked = [k for k, v in enumerate(cells) if v is not None and v.type == "door" and v.is_locked]
    target = None
    drop_first = False
    if locked:
        door = cells[locked[0]]
        if carrying is not None and carrying.type == "key" and carrying.color == door.color:
            target = locked[0]
        else:
            keys = [k for k, v in enumerate(cells)
                    if v is not None and v.type == "key" and v.color == door.color]
            target = keys[0] if keys else None
            drop_first = carrying is not None
    else:
        obj = getattr(u, "obj", None)
        at = [k for k, v in enumerate(cells) if v is obj] if obj is not None else []
        if at:
            target, drop_first = at[0], carrying is not None
        else:
            goals = [k for k, v in enumerate(cells) if v is not None and v.type == "goal"]
            target = goals[0] if goals else None
    if drop_first and front is None:
        return 4  # drop
    if target is None:
        return int(rng.integers(0, 7))
    tx, ty = target % W, target // W
    if (fx, fy) == (tx, ty):
        kind = cells[target].type
        if drop_first:
            return 0  # turn until the cell in front is free to drop on
        return {"goal": 2, "door": 5}.get(kind, 3)
    dist = np.full((W, H), 10**6, np.int64)
    dist[tx, ty] = 0
    queue = deque([(tx, ty)])
    while queue:
        x, y = queue.popleft()
        for dx, dy in _DIRS:
            nx, ny = x + dx, y + dy
            if 0 <= nx < W and 0 <= ny < H and dist[nx, ny] > dist[x, y] + 1:
                if (nx, ny) == (ax, ay) or _passable(cells[ny * W + nx]):
                    dist[nx, ny] = dist[x, y] + 1
                    queue.append((nx, ny))
    here = dist[ax, ay]
    if here >= 10**6:
        return int(rng.integers(0, 7))
    if dist[fx, fy] < here:
        return 5 if (front is not None and front.type == "door" and not front.is_open) else 2
    for k, (dx, dy) in enumerate(_DIRS):
        if dist[ax + dx, ay + dy] < here:
            return 1 if k == (d + 1) % 4 else 0
    return int(rng.integers(0, 7))


def _events(u, action: int, before: dict, reward: float, terminated: bool) -> list[str]:
    out = []
    if before["carrying"] is None and u.carrying is not None:
        out.append("pickup")
    if before["carrying"] is not None and u.carrying is None:
        out.append("drop")
    front = before["front"]
    if action == 5 and front is not None and front.type == "door":
        if before["door_state"] == (False, True) and front.is_open:
            out.append("unlock")
        elif before["door_state"] != (front.is_open, front.is_locked):
            out.append("door_toggle")
    if action == 5 and front is not None and front.type == "box":
        out.append("box_open")
    if reward > 0:
        out.append("success")
    if reward < 0:
        out.append("collision")
    if terminated and reward == 0:
        out.append("lava")
    return out


def _snapshot(u) -> dict:
    d = int(u.agent_dir)
    fx, fy = int(u.agent_pos[0]) + _DIRS[d][0], int(u.agent_pos[1]) + _DIRS[d][1]
    front = u.grid.get(fx, fy)
    state = (front.is_open, front.is_locked) if front is not None and front.type == "door" else None
    return {"carrying": u.carrying, "front": front, "door_state": state}


def run_parity(env_id: str, total_steps: int = TOTAL_STEPS, n: int = N,
               epsilon: np.ndarray = EPSILON, seed0: int = 0, vec: MiniGridVec | None = None):
    """Drive ``vec`` and ``n`` package envs side by side; assert equality; count events."""
    vec = MiniGridVec(env_id, n) if vec is None else vec
    envs = [make_env(env_id) for _ in range(n)]
    seeds = [seed0 + 1000 * i + 7 for i in range(n)]
    rng = np.random.default_rng([zlib.crc32(env_id.encode()), seed0])
    raw = vec.reset(seeds)
    assert raw.dtype == np.uint8 and raw.shape == (n, vec.obs_dim)
    ref = np.stack([e.reset(seed=s)[0] for e, s in zip(envs, seeds, strict=True)])
    np.testing.assert_array_equal(vec.decode(raw), ref)
    assert vec.decode(raw).dtype == np.float32
    obs = ref
    counts: Counter = Counter()
    for t in range(total_steps // n):
        random_a = rng.integers(0, vec.n_actions, n)
        coin = rng.random(n)
        actions = np.array([
            random_a[i] if coin[i] < epsilon[i]
            else guided_action(envs[i].unwrapped, rng) % vec.n_actions
            for i in range(n)])
        step = vec.step(actions)
        assert step.reward.dtype == np.float64
        assert step.terminated.dtype == bool and step.truncated.dtype == bool
        decoded_next, decoded_obs = vec.decode(step.next_obs), vec.decode(step.obs)
        for i, env in enumerate(envs):
            u = env.unwrapped
            before = _snapshot(u)
            o, r, te, tr, _ = env.step(int(actions[i]))
            where = f"{env_id} step {t} slot {i} action {actions[i]}"
            assert np.array_equal(decoded_next[i], o), where
            assert step.reward[i] == r, f"{where}: reward {step.reward[i]} != {r}"
            assert step.terminated[i] == te, where
            assert step.truncated[i] == tr, where
            counts.update(_events(u, int(actions[i]), before, r, te))
            if te or tr:
                counts["episodes"] += 1
                counts["truncated"] += bool(tr)
                o = env.reset()[0]
            assert np.array_equal(decoded_obs[i], o), f"{where}: first obs of the new episode"
            obs[i] = o
    if getattr(vec, "_streams", False):  # layouts/obstacles drawn from vec's own streams
        for i, env in enumerate(envs):
            assert _rng(vec._rng_state(i)) == _rng(env.unwrapped.np_random.bit_generator.state)
    vec.close()
    return counts


# What each env id must have exercised (all reachable by the mixed policy at these seeds).
EXPECT = {
    "MiniGrid-Dynamic-Obstacles-5x5-v0": ("success", "collision"),
    "MiniGrid-Dynamic-Obstacles-6x6-v0": ("success", "collision"),
    "MiniGrid-Dynamic-Obstacles-8x8-v0": ("success", "collision"),
    "MiniGrid-KeyCorridorS3R1-v0": ("success", "pickup", "drop", "unlock", "door_toggle"),
    "MiniGrid-DoorKey-5x5-v0": ("success", "pickup", "drop", "unlock", "door_toggle"),
    "MiniGrid-DoorKey-6x6-v0": ("success", "pickup", "unlock", "door_toggle", "truncated"),
    "MiniGrid-Unlock-v0": ("success", "pickup", "drop", "unlock", "truncated"),
    "MiniGrid-UnlockPickup-v0": ("success", "pickup", "drop", "unlock", "box_open"),
    "MiniGrid-SimpleCrossingS9N1-v0": ("success", "truncated"),
    "MiniGrid-FourRooms-v0": ("success", "truncated"),
    "MiniGrid-MultiRoom-N2-S4-v0": ("success", "door_toggle", "truncated"),
    "MiniGrid-Empty-5x5-v0": ("success", "truncated"),
    "MiniGrid-Empty-6x6-v0": ("success", "truncated"),
    "MiniGrid-LavaGapS5-v0": ("success", "lava"),
    "MiniGrid-LavaCrossingS9N1-v0": ("success", "lava"),
}


def test_every_registered_minigrid_id_is_covered():
    assert set(VECTORIZED) == set(MINIGRID_IDS) == set(EXPECT)
    assert set(env_ids("minigrid")) == set(VECTORIZED)


@pytest.mark.parametrize("env_id", MINIGRID_IDS)
def test_parity_with_minigrid(env_id):
    vec = MiniGridVec(env_id, N)
    vec.layout_path = "vector"  # vectorized layouts (where there are) for every ended episode
    counts = run_parity(env_id, vec=vec)
    missing = [k for k in EXPECT[env_id] if counts[k] == 0]
    assert not missing, f"{env_id}: never exercised {missing}; counts {dict(counts)}"


@pytest.mark.parametrize("env_id", ["MiniGrid-Dynamic-Obstacles-6x6-v0",
                                    "MiniGrid-DoorKey-6x6-v0", "MiniGrid-KeyCorridorS3R1-v0"])
def test_scalar_draws_match_vectorized(env_id):
    """The exact fallback (numpy's own Generator.integers) gives the same episodes."""
    vec = MiniGridVec(env_id, 4)
    vec._force_scalar = True
    vec.layout_path = "vector"
    counts = run_parity(env_id, 1200, n=4, epsilon=EPSILON[1::2], vec=vec)
    assert counts["episodes"] > 5


STREAM_IDS = ["MiniGrid-Dynamic-Obstacles-5x5-v0", "MiniGrid-DoorKey-5x5-v0",
              "MiniGrid-KeyCorridorS3R1-v0"]


@pytest.mark.parametrize("path, words", [("python", 128), ("env", 128), ("python", 4),
                                         ("vector", 4)])
@pytest.mark.parametrize("env_id", STREAM_IDS)
def test_layout_paths_agree(env_id, path, words):
    """Every way of making a new episode (vectorized, per slot in Python, the env's own
    _gen_grid) continues the same streams; with 4-output blocks the Python layouts keep
    running out of words (and hand over to the env) and the vectorized ones keep refilling."""
    vec = MiniGridVec(env_id, 4)
    vec.layout_path = path
    vec._rng = PCGStreams(4, k=words)
    steps = 2400 if "KeyCorridor" in env_id else 1000  # its episodes are longer
    counts = run_parity(env_id, steps, n=4, epsilon=EPSILON[1::2], vec=vec)
    assert counts["episodes"] > 5


def _load_package_state(vec: MiniGridVec, slot: int, u) -> None:
    vec.envs[slot] = copy.deepcopy(u)
    vec._load(slot)
    vec._pull_rng(slot)


def test_dynamic_obstacles_trapped_ball_and_lemire_rejection():
    """A ball with no free cell around it (101 rejected tries, minigrid keeps it in place)
    and a draw that hits Lemire's rejection (a 32-bit zero) stay exact."""
    env_id = "MiniGrid-Dynamic-Obstacles-6x6-v0"
    env = make_env(env_id)
    env.reset(seed=3)
    u = env.unwrapped
    from minigrid.core.world_object import Ball

    for ob in u.obstacles:
        u.grid.set(*ob.cur_pos, None)
    u.obstacles = [Ball(), Ball(), Ball()]
    for ob, pos in zip(u.obstacles, [(1, 1), (1, 2), (2, 2)], strict=True):
        u.put_obj(ob, *pos)
    u.agent_pos, u.agent_dir = (2, 1), 0
    # next 64-bit output has a zero low half: the first x draw is rejected and redrawn
    mult, mask = 0x2360ED051FC65DA44385DF649FCCF645, (1 << 128) - 1
    inc = u.np_random.bit_generator.state["state"]["inc"]
    hi = 0x0000000012345678  # top 6 bits zero: no rotation, output = hi ^ lo
    nxt = (hi << 64) | (hi ^ 0x9ABCDEF000000000)
    state = ((nxt - inc) * pow(mult, -1, 1 << 128)) & mask
    st = u.np_random.bit_generator.state
    st.update(state={"state": state, "inc": inc}, has_uint32=0, uinteger=0)
    u.np_random.bit_generator.state = st

    vec = MiniGridVec(env_id, 2)
    vec.reset([0, 1])
    _load_package_state(vec, 1, u)
    assert _rng(vec._rng_state(1)) == _rng(u.np_random.bit_generator.state)
    rng = np.random.default_rng(0)
    for t in range(30):
        a = int(rng.integers(0, 3)) if t else 0
        step = vec.step(np.array([0, a]))
        o, r, te, tr, _ = env.step(a)
        assert np.array_equal(vec.decode(step.next_obs[1]), o), t
        assert (step.reward[1], step.terminated[1], step.truncated[1]) == (r, te, tr)
        if t == 0:
            assert vec.grid[1].reshape(6, 6, 3)[1, 1, 0] == 6  # the trapped ball stayed
        if te or tr:
            o = env.reset()[0]
        assert np.array_equal(vec.decode(step.obs[1]), o)
        assert _rng(vec._rng_state(1)) == _rng(u.np_random.bit_generator.state), t


def test_reseeding_restarts_streams():
    env_id = "MiniGrid-Dynamic-Obstacles-5x5-v0"
    vec = MiniGridVec(env_id, 3)
    vec.reset([1, 2, 3])
    for _ in range(20):
        vec.step(np.zeros(3, np.int64) + 2)
    envs = [make_env(env_id) for _ in range(3)]
    raw = vec.reset([5, 6, 7])
    first = [e.reset(seed=s)[0] for e, s in zip(envs, [5, 6, 7], strict=True)]
    np.testing.assert_array_equal(vec.decode(raw), np.stack(first))
    for i in range(3):
        assert _rng(vec._rng_state(i)) == _rng(envs[i].unwrapped.np_random.bit_generator.state)
    for _ in range(40):
        a = np.array([2, 1, 2])
        step = vec.step(a)
        for i, e in enumerate(envs):
            o, r, te, tr, _ = e.step(int(a[i]))
            assert np.array_equal(vec.decode(step.next_obs[i]), o)
            assert (step.reward[i], step.terminated[i], step.truncated[i]) == (r, te, tr)
            if te or tr:
                e.reset()


def test_dynamic_obstacles_out_of_range_action_is_left():
    env_id = "MiniGrid-Dynamic-Obstacles-5x5-v0"
    vec = MiniGridVec(env_id, 1)
    env = make_env(env_id)
    vec.reset([4])
    env.reset(seed=4)
    for a in (5, 2, 6, 2, 3):
        step = vec.step(np.array([a]))
        o, r, te, tr, _ = env.step(a)
        assert np.array_equal(vec.decode(step.next_obs[0]), o)
        assert (step.reward[0], step.terminated[0]) == (r, te)
        if te or tr:
            env.reset()


def test_make_vector_env_picks_minigridvec():
    assert set(MINIGRID_IDS) <= set(vectorized_ids())
    for env_id in MINIGRID_IDS:
        vec = make_vector_env(env_id, 2)
        assert isinstance(vec, MiniGridVec) and vec.env_id == env_id and vec.num_envs == 2
        assert vec.obs_dim == make_env(env_id).observation_space.shape[0]
        assert vec.n_actions == make_env(env_id).action_space.n
        assert vec.obs_dtype == np.uint8 and vec.obs_divisor.dtype == np.float32
        vec.close()
    alias = make_vector_env("DoorKey-5x5", 1)
    assert isinstance(alias, MiniGridVec) and alias.env_id == "MiniGrid-DoorKey-5x5-v0"
    assert isinstance(make_vector_env("DoorKey-5x5", 1, vectorized=False), GymVectorEnv)


def test_unsupported_minigrid_falls_back_to_gym_vector_env(monkeypatch):
    """If the installed minigrid's step rules are not the ones reproduced, the factory
    warns and returns the generic implementation instead of wrong dynamics."""
    from minigrid.envs import EmptyEnv

    monkeypatch.setattr(EmptyEnv, "step", lambda self, action: None, raising=False)
    with pytest.warns(RuntimeWarning, match="GymVectorEnv"):
        vec = make_vector_env("MiniGrid-Empty-5x5-v0", 2)
    assert isinstance(vec, GymVectorEnv)


def test_errors():
    with pytest.raises(UnknownEnvError):
        make_vector_env("MiniGrid-NoSuchEnv-v0", 2)
    with pytest.raises(UnknownEnvError):
        MiniGridVec("MiniGrid-NoSuchEnv-v0", 2)
    with pytest.raises(ValueError, match="does not cover"):
        MiniGridVec("CartPole-v1", 2)
    with pytest.raises(ValueError, match="num_envs"):
        MiniGridVec("MiniGrid-Empty-5x5-v0", 0)
    vec = MiniGridVec("MiniGrid-Empty-5x5-v0", 3)
    with pytest.raises(RuntimeError, match="reset"):
        vec.step(np.zeros(3, np.int64))
    with pytest.raises(ValueError, match="3 seeds"):
        vec.reset([1, 2])
    with pytest.raises(ValueError, match="3 seeds"):
        vec.reset([1, 2, 3, 4])
    vec.reset([1, 2, 3])
    with pytest.raises(ValueError, match="shape"):
        vec.step(np.zeros(2, np.int64))
    with pytest.raises(ValueError, match="unknown action"):
        vec.step(np.array([0, 7, 0]))
    with pytest.raises(ValueError, match="unknown action"):
        vec.step(np.array([0, -1, 0]))
