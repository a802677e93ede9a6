"""Tests for evorl_nb.envs: registry numbers, factories, observations, aliases, errors."""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import inspect
import sys

import gymnasium as gym
import minigrid  # noqa: F401  (registers the MiniGrid-* ids in gym.registry)
import numpy as np
import pytest

from evorl_nb import envs
from evorl_nb.envs import (
    AmbiguousEnvError,
    EnvSpec,
    MissingDependencyError,
    UnknownEnvError,
    env_ids,
    get_spec,
    make_env,
    register,
    unregister,
)

# facts.md section 3: env -> (Rmin, Rmax, budget kind, budget)
EXPECTED = {
    "CartPole-v0": (0, 200, "episodes", 400),
    "CartPole-v1": (0, 500, "episodes", 400),
    "Acrobot-v1": (-500, -50, "episodes", 400),
    "MountainCar-v0": (-200, -110, "episodes", 500),
    "LunarLander-v3": (-500, 250, "steps", 600_000),
    "MiniGrid-Dynamic-Obstacles-5x5-v0": (-1, 1, "steps", 200_000),
    "MiniGrid-Dynamic-Obstacles-6x6-v0": (-1, 1, "steps", 500_000),
    "MiniGrid-Dynamic-Obstacles-8x8-v0": (-1, 1, "steps", 500_000),
    "MiniGrid-KeyCorridorS3R1-v0": (0, 1, "steps", 500_000),
    "MiniGrid-DoorKey-5x5-v0": (0, 1, "steps", 500_000),
    "MiniGrid-DoorKey-6x6-v0": (0, 1, "steps", 500_000),
    "MiniGrid-Unlock-v0": (0, 1, "steps", 500_000),
    "MiniGrid-UnlockPickup-v0": (0, 1, "steps", 500_000),
    "MiniGrid-SimpleCrossingS9N1-v0": (0, 1, "steps", 400_000),
    "MiniGrid-FourRooms-v0": (0, 1, "steps", 1_000_000),
    "MiniGrid-MultiRoom-N2-S4-v0": (0, 1, "steps", 1_000_000),
    "MiniGrid-Empty-5x5-v0": (0, 1, "episodes", 400),
    "MiniGrid-Empty-6x6-v0": (0, 1, "episodes", 400),
    "MiniGrid-LavaGapS5-v0": (0, 1, "episodes", 400),
    "MiniGrid-LavaCrossingS9N1-v0": (0, 1, "episodes", 400),
}
BUILTIN_IDS = list(EXPECTED)
MINIGRID_IDS = [i for i in BUILTIN_IDS if i.startswith("MiniGrid-")]
HAVE_BOX2D = importlib.util.find_spec("Box2D") is not None


def _make_or_explain(env_id, **kwargs):
    """make_env, except that LunarLander without Box2D must raise the clear error."""
    if env_id == "LunarLander-v3" and not HAVE_BOX2D:
        with pytest.raises(MissingDependencyError, match="box2d"):
            make_env(env_id, **kwargs)
        return None
    return make_env(env_id, **kwargs)


# --------------------------------------------------------------------- the numbers
def test_registered_ids_and_numbers():
    assert env_ids() == BUILTIN_IDS
    assert set(env_ids("minigrid")) == set(MINIGRID_IDS)
    assert set(env_ids("classic")) == set(BUILTIN_IDS) - set(MINIGRID_IDS)
    for env_id, (rmin, rmax, kind, budget) in EXPECTED.items():
        spec = get_spec(env_id)
        assert isinstance(spec, EnvSpec) and spec.env_id == env_id
        assert (spec.rmin, spec.rmax) == (rmin, rmax)
        assert spec.budget == (kind, budget)
        assert (spec.budget_episodes is None) != (spec.budget_steps is None)
        assert spec.epsilon_decay_steps == (100_000 if spec.family == "minigrid" else 1_000)
        assert spec.make is None
        assert env_id in gym.registry  # a real gymnasium / minigrid id
    assert "v0" in get_spec("CartPole-v1").description
    assert "200" in get_spec("CartPole-v1").description


def test_envspec_is_frozen_and_every_field_has_a_docstring():
    spec = get_spec("CartPole-v0")
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.rmin = 1.0  # type: ignore[misc]
    tree = ast.parse(inspect.getsource(EnvSpec))
    body = tree.body[0].body
    fields = {f.name for f in dataclasses.fields(EnvSpec)}
    assert fields == {"env_id", "rmin", "rmax", "budget_episodes", "budget_steps", "family",
                      "epsilon_decay_steps", "make", "description"}
    documented = set()
    for stmt, nxt in zip(body, body[1:], strict=False):
        if isinstance(stmt, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(
            nxt.value, ast.Constant) and isinstance(nxt.value.value, str):
            documented.add(stmt.target.id)
    assert documented == fields


def test_normalize_known_values():
    np.testing.assert_allclose(get_spec("CartPole-v0").normalize([-10, 0, 100, 200, 300]),
                               [0, 0, 0.5, 1, 1])
    np.testing.assert_allclose(get_spec("Acrobot-v1").normalize([-600, -500, -275, -50, 0]),
                               [0, 0, 0.5, 1, 1])
    np.testing.assert_allclose(get_spec("MountainCar-v0").normalize([-200, -155, -110]),
                               [0, 0.5, 1])
    np.testing.assert_allclose(get_spec("Dynamic-Obstacles-5x5").normalize([-1, 0, 0.5, 1]),
                               [0, 0.5, 0.75, 1])
    np.testing.assert_allclose(get_spec("LunarLander-v3").normalize(-125.0), 0.5)
    out = get_spec("CartPole-v1").normalize(np.array([[250.0, 600.0]]))
    assert isinstance(out, np.ndarray) and out.shape == (1, 2)
    np.testing.assert_allclose(out, [[0.5, 1.0]])


# ------------------------------------------------------------------ make and step
@pytest.mark.parametrize("env_id", BUILTIN_IDS)
def test_make_reset_step_random(env_id):
    env = _make_or_explain(env_id, seed=0)
    if env is None:
        return
    space = env.observation_space
    assert isinstance(space, gym.spaces.Box) and space.dtype == np.float32
    assert len(space.shape) == 1
    assert isinstance(env.action_space, gym.spaces.Discrete)
    obs, info = env.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(40):
        assert obs.dtype == np.float32 and obs.shape == space.shape
        if env_id.startswith("MiniGrid-"):
            assert obs.min() >= 0.0 and obs.max() <= 1.0
            assert space.contains(obs)
        obs, reward, terminated, truncated, info = env.step(int(rng.integers(env.action_space.n)))
        assert isinstance(terminated, bool) and isinstance(truncated, bool)
        assert np.isscalar(reward)
        if terminated or truncated:
            obs, info = env.reset()
    env.close()


@pytest.mark.parametrize("env_id", BUILTIN_IDS)
def test_same_seed_same_first_observation(env_id):
    env_a, env_b = _make_or_explain(env_id, seed=5), _make_or_explain(env_id, seed=5)
    if env_a is None:
        return
    np.testing.assert_array_equal(env_a.reset(seed=5)[0], env_b.reset(seed=5)[0])
    # the seed given to make_env is used by a first reset() without a seed
    np.testing.assert_array_equal(make_env(env_id, seed=5).reset()[0], env_b.reset(seed=5)[0])


def test_same_seed_same_trajectory_and_seeds_differ():
    def rollout(seed):
        env = make_env("MiniGrid-Dynamic-Obstacles-6x6-v0", seed=seed)
        obs, _ = env.reset(seed=seed)
        rng, out = np.random.default_rng(1), [obs]
        for _ in range(30):
            obs, _, term, trunc, _ = env.step(int(rng.integers(env.action_space.n)))
            out.append(obs)
            if term or trunc:
                out.append(env.reset()[0])
        return np.stack(out)

    np.testing.assert_array_equal(rollout(3), rollout(3))
    firsts = {make_env("DoorKey-6x6").reset(seed=s)[0].tobytes() for s in range(6)}
    assert len(firsts) > 1


def test_terminated_and_truncated_are_kept_apart():
    env = make_env("MiniGrid-Empty-5x5-v0", seed=0)
    env.reset(seed=0)
    left = 0  # turning in place never reaches the goal: the episode is truncated
    steps = 0
    while True:
        _, reward, terminated, truncated, _ = env.step(left)
        steps += 1
        if terminated or truncated:
            break
    assert (terminated, truncated, reward) == (False, True, 0)
    assert steps == env.unwrapped.max_steps
    env = make_env("CartPole-v0", seed=0)
    env.reset(seed=0)
    terminated = truncated = False
    while not (terminated or truncated):
        _, _, terminated, truncated, _ = env.step(0)  # always push left: falls over
    assert terminated and not truncated


# ------------------------------------------------------ the MiniGrid observation
def _expected_minigrid_obs(env) -> np.ndarray:
    """Independent computation: full grid, agent cell overwritten, (10, 5, 3) scaling."""
    base = env.unwrapped
    grid = base.grid.encode().astype(np.float64)
    x, y = base.agent_pos
    grid[x, y] = [10, 0, base.agent_dir]  # (agent, red, direction)
    grid /= np.array([10.0, 5.0, 3.0])
    return grid.reshape(-1).astype(np.float32)


def test_minigrid_constants_match_the_scaling():
    from minigrid.core.constants import COLOR_TO_IDX, OBJECT_TO_IDX, STATE_TO_IDX

    assert OBJECT_TO_IDX["agent"] == max(OBJECT_TO_IDX.values()) == 10
    assert COLOR_TO_IDX["red"] == 0 and max(COLOR_TO_IDX.values()) == 5
    assert max(STATE_TO_IDX.values()) == 2
    np.testing.assert_array_equal(envs.wrappers.grid_channel_divisors(), [10, 5, 3])


@pytest.mark.parametrize(
    "env_id", ["MiniGrid-DoorKey-5x5-v0", "MiniGrid-Dynamic-Obstacles-6x6-v0",
               "MiniGrid-KeyCorridorS3R1-v0", "MiniGrid-LavaGapS5-v0"])
def test_minigrid_observation_matches_independent_computation(env_id):
    env = make_env(env_id, seed=2)
    obs, _ = env.reset(seed=2)
    base = env.unwrapped
    assert obs.shape == (base.width * base.height * 3,)
    rng = np.random.default_rng(2)
    directions = set()
    for _ in range(25):
        np.testing.assert_array_equal(obs, _expected_minigrid_obs(env))
        directions.add(base.agent_dir)
        x, y = base.agent_pos
        cell = obs.reshape(base.width, base.height, 3)[x, y]
        np.testing.assert_allclose(cell, [1.0, 0.0, base.agent_dir / 3], rtol=1e-6)
        obs, _, term, trunc, _ = env.step(int(rng.integers(3)))  # left/right/forward
        if term or trunc:
            obs, _ = env.reset()
    if env_id.startswith("MiniGrid-DoorKey"):  # the locked door: state 2 -> 2/3
        states = obs.reshape(base.width, base.height, 3)[:, :, 2]
        assert np.isclose(states, 2 / 3).any()


# ------------------------------------------------------------- aliases and errors
@pytest.mark.parametrize("alias, env_id", [
    ("DoorKey-5x5", "MiniGrid-DoorKey-5x5-v0"),
    ("DoorKey-5x5-v0", "MiniGrid-DoorKey-5x5-v0"),
    ("MiniGrid-DoorKey-5x5", "MiniGrid-DoorKey-5x5-v0"),
    ("KeyCorridorS3R1", "MiniGrid-KeyCorridorS3R1-v0"),
    ("Acrobot", "Acrobot-v1"),
    ("LunarLander", "LunarLander-v3"),
    ("cartpole-v1", "CartPole-v1"),
    ("CartPole-v0", "CartPole-v0"),
])
def test_aliases(alias, env_id):
    assert get_spec(alias).env_id == env_id


def test_make_env_accepts_alias():
    env = make_env("DoorKey-5x5", seed=0)
    assert env.unwrapped.spec.id == "MiniGrid-DoorKey-5x5-v0"


def test_ambiguous_alias_lists_candidates():
    with pytest.raises(AmbiguousEnvError) as info:
        get_spec("CartPole")
    msg = str(info.value)
    assert "CartPole-v0" in msg and "CartPole-v1" in msg and "ambiguous" in msg
    with pytest.raises(UnknownEnvError):
        make_env("CartPole")


def test_unknown_id_message():
    with pytest.raises(UnknownEnvError) as info:
        get_spec("NoSuchEnv-v0")
    err, msg = info.value, str(info.value)
    assert isinstance(err, KeyError) and isinstance(err, ValueError)
    assert not msg.startswith(("'", '"'))  # not KeyError's quoted repr
    assert "NoSuchEnv-v0" in msg
    assert all(env_id in msg for env_id in BUILTIN_IDS)
    assert "evorl_nb.envs.register(EnvSpec(env_id=" in msg and 'family="custom"' in msg
    with pytest.raises(UnknownEnvError, match="Did you mean .*DoorKey-5x5"):
        get_spec("DoorKey")


@pytest.mark.parametrize("env_id", ["Pendulum-v1", "FrozenLake-v1", "MiniGrid-Empty-8x8-v0"])
def test_unregistered_gymnasium_id_message(env_id):
    with pytest.raises(UnknownEnvError) as info:
        make_env(env_id)
    msg = str(info.value)
    assert env_id in msg and "gymnasium environment" in msg
    assert "Rmin/Rmax" in msg and "evorl_nb.envs.register(EnvSpec(" in msg
    assert "CartPole-v0" in msg  # lists the known ids


def test_lunarlander_without_box2d_raises_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "Box2D", None)  # makes `import Box2D` fail
    with pytest.raises(MissingDependencyError) as info:
        make_env("LunarLander-v3")
    msg = str(info.value)
    assert "LunarLander-v3" in msg and "Box2D" in msg and "pip install" in msg
    assert isinstance(info.value, ImportError)


# ------------------------------------------------------------------- register
@pytest.fixture
def cleanup():
    added = []
    yield added
    for env_id in added:
        if env_id in env_ids():
            unregister(env_id)


def test_register_custom_factory(cleanup):
    calls = []

    def factory(**kwargs):
        calls.append(kwargs)
        return gym.make("CartPole-v1", max_episode_steps=50)

    spec = register(EnvSpec(env_id="TinyCartPole-v0", rmin=0, rmax=50, budget_episodes=10,
                            family="custom", make=factory, description="test"))
    cleanup.append(spec.env_id)
    assert spec.epsilon_decay_steps == 1_000  # the family default
    assert get_spec("TinyCartPole") is spec
    env = make_env("TinyCartPole-v0", seed=1)
    assert calls == [{}]
    obs, _ = env.reset(seed=1)
    assert obs.dtype == np.float32 and obs.shape == (4,)
    steps, done = 0, False
    while not done:
        _, _, term, trunc, _ = env.step(1)
        steps, done = steps + 1, term or trunc
    assert steps <= 50


def test_register_factory_with_image_observation_is_flattened(cleanup):
    from minigrid.wrappers import ImgObsWrapper

    def factory():
        return ImgObsWrapper(gym.make("MiniGrid-Empty-5x5-v0"))  # uint8 7 x 7 x 3

    cleanup.append(register(EnvSpec(env_id="PartialEmpty-v0", rmin=0, rmax=1,
                                    budget_steps=1000, make=factory)).env_id)
    env = make_env("PartialEmpty-v0", seed=0)
    obs, _ = env.reset(seed=0)
    assert env.observation_space.shape == (147,) and obs.dtype == np.float32
    assert env.observation_space.contains(obs)


def test_register_validation(cleanup):
    spec = get_spec("CartPole-v0")
    with pytest.raises(ValueError, match="already registered"):
        register(spec)
    assert register(spec, replace=True) is spec
    with pytest.raises(ValueError, match="rmin < rmax"):
        EnvSpec(env_id="Bad-v0", rmin=1, rmax=1, budget_episodes=10)
    with pytest.raises(ValueError, match="exactly one"):
        EnvSpec(env_id="Bad-v0", rmin=0, rmax=1, budget_episodes=10, budget_steps=10)
    with pytest.raises(ValueError, match="exactly one"):
        EnvSpec(env_id="Bad-v0", rmin=0, rmax=1)
    with pytest.raises(ValueError, match="positive integer"):
        EnvSpec(env_id="Bad-v0", rmin=0, rmax=1, budget_steps=0)
    with pytest.raises(ValueError, match="family"):
        EnvSpec(env_id="Bad-v0", rmin=0, rmax=1, budget_steps=10, family="atari")
    with pytest.raises(TypeError):
        register("CartPole-v0")  # type: ignore[arg-type]
    with pytest.raises(UnknownEnvError):
        unregister("NotThere-v0")
    assert env_ids() == BUILTIN_IDS


@pytest.mark.parametrize("env_id,vectorized", [
    ("CartPole-v1", True), ("Acrobot-v1", True), ("MountainCar-v0", True),
    ("MiniGrid-DoorKey-5x5-v0", True), ("MiniGrid-Dynamic-Obstacles-6x6-v0", True),
    ("MiniGrid-LavaGapS5-v0", True), ("CartPole-v1", False)])
def test_reset_at_restarts_one_slot_as_a_fresh_env_and_leaves_the_others(env_id, vectorized):
    """A population trainer hands a freed slot to a new agent: after reset_at, that slot
    runs exactly like a fresh env seeded the same, and the other slots do not notice."""
    from evorl_nb.envs.vector import make_vector_env

    rng = np.random.default_rng(0)
    venv = make_vector_env(env_id, 3, vectorized=vectorized)
    ref = make_vector_env(env_id, 3, vectorized=vectorized)
    fresh = make_vector_env(env_id, 1, vectorized=vectorized)
    assert np.array_equal(venv.reset([1, 2, 3]), ref.reset([1, 2, 3]))
    n = venv.n_actions
    for _ in range(37):
        a = rng.integers(0, n, 3)
        venv.step(a)
        ref.step(a)
    first = venv.reset_at([1], [77])
    assert np.array_equal(first, fresh.reset([77]))
    for _ in range(400):
        a = rng.integers(0, n, 3)
        mine, theirs, alone = venv.step(a), ref.step(a), fresh.step(a[1:2])
        for field in ("next_obs", "reward", "terminated", "truncated", "obs"):
            got = getattr(mine, field)
            assert np.array_equal(got[[0, 2]], getattr(theirs, field)[[0, 2]]), field
            assert np.array_equal(got[1:2], getattr(alone, field)), field
    with pytest.raises(ValueError, match="one seed per slot"):
        venv.reset_at([0, 1], [5])
    with pytest.raises(ValueError, match="distinct indices"):
        venv.reset_at([3], [5])
