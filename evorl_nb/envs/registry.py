"""The environment registry: :class:`EnvSpec`, lookup (with short aliases) and ``make_env``.

Every environment a loss program can be scored on has an :class:`EnvSpec` holding the
return range used to normalize scores (Rmin/Rmax), the training budget and the epsilon
schedule of the paper.  ``make_env`` builds the gymnasium environment with a flat float32
observation and a ``Discrete`` action space.

Episodes end when ``terminated or truncated``; gymnasium 1.x reports the two apart and the
wrappers here keep them apart (the trainer discounts with ``gamma * (1 - terminated)``, so a
time-limit truncation still bootstraps).

Seeding: ``make_env(env_id, seed=s)`` seeds the action/observation spaces with ``s`` and
remembers ``s`` for the first ``reset()``; the trainer calls ``env.reset(seed=s)`` on its
first reset anyway (and plain ``reset()`` afterwards, which continues the same RNG stream),
so a given seed always produces the same sequence of episodes.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import re
import warnings
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from evorl_nb.envs.wrappers import Float32FlatObservation, wrap_minigrid

__all__ = [
    "EnvSpec", "UnknownEnvError", "AmbiguousEnvError", "MissingDependencyError",
    "register", "unregister", "get_spec", "env_ids", "make_env", "FAMILIES",
    "DEFAULT_EPSILON_DECAY_STEPS",
]

FAMILIES = ("classic", "minigrid", "custom")
DEFAULT_EPSILON_DECAY_STEPS = {"classic": 1_000, "minigrid": 100_000, "custom": 1_000}

_HOW_TO_REGISTER = (
    "To add one: evorl_nb.envs.register(EnvSpec(env_id=..., rmin=..., rmax=..., "
    'budget_episodes=..., family="custom", make=...))'
)


@dataclasses.dataclass(frozen=True)
class EnvSpec:
    """One environment: its normalization range, training budget and how to build it."""

    env_id: str
    """The canonical id (a gymnasium id for built-in envs, e.g. ``"CartPole-v1"``)."""
    rmin: float
    """Return mapped to score 0 by :meth:`normalize` (returns below are clipped to it)."""
    rmax: float
    """Return mapped to score 1 by :meth:`normalize` (returns above are clipped to it)."""
    budget_episodes: int | None = None
    """Training budget in episodes (the paper's), or None when the budget is in steps."""
    budget_steps: int | None = None
    """Training budget in environment steps (the paper's), or None when it is in episodes."""
    family: str = "custom"
    """``"classic"`` (classic control / Box2D), ``"minigrid"`` or ``"custom"``."""
    epsilon_decay_steps: int | None = None
    """Steps over which epsilon decays linearly (paper: 1e3 classic control, 1e5 MiniGrid);
    None fills in the family's default."""
    make: Callable[..., gym.Env] | None = None
    """Custom factory ``make(**kwargs) -> gymnasium.Env``; None means
    ``gymnasium.make(env_id)`` plus the family's observation wrappers."""
    description: str = ""
    """Free text: provenance of the numbers, differences from the paper."""

    def __post_init__(self) -> None:
        if not isinstance(self.env_id, str) or not self.env_id:
            raise ValueError(f"env_id must be a non-empty string, got {self.env_id!r}")
        if self.family not in FAMILIES:
            raise ValueError(
                f"{self.env_id}: family must be one of {FAMILIES}, got {self.family!r}"
            )
        rmin, rmax = float(self.rmin), float(self.rmax)
        if not (np.isfinite(rmin) and np.isfinite(rmax) and rmin < rmax):
            raise ValueError(
                f"{self.env_id}: need finite rmin < rmax, got {self.rmin}, {self.rmax}"
            )
        object.__setattr__(self, "rmin", rmin)
        object.__setattr__(self, "rmax", rmax)
        budgets = {"budget_episodes": self.budget_episodes, "budget_steps": self.budget_steps}
        given = [k for k, v in budgets.items() if v is not None]
        if len(given) != 1:
            raise ValueError(
                f"{self.env_id}: set exactly one of budget_episodes / budget_steps, got {budgets}"
            )
        value = budgets[given[0]]
        if isinstance(value, bool) or int(value) != value or value <= 0:
            raise ValueError(f"{self.env_id}: {given[0]} must be a positive integer, got {value!r}")
        object.__setattr__(self, given[0], int(value))
        eps = self.epsilon_decay_steps
        if eps is None:
            eps = DEFAULT_EPSILON_DECAY_STEPS[self.family]
        if isinstance(eps, bool) or int(eps) != eps or eps <= 0:
            raise ValueError(f"{self.env_id}: epsilon_decay_steps must be a positive integer")
        object.__setattr__(self, "epsilon_decay_steps", int(eps))
        if self.make is not None and not callable(self.make):
            raise ValueError(f"{self.env_id}: make must be callable or None")

    @property
    def budget(self) -> tuple[str, int]:
        """``("episodes", n)`` or ``("steps", n)``."""
        if self.budget_episodes is not None:
            return "episodes", self.budget_episodes
        return "steps", int(self.budget_steps)  # type: ignore[arg-type]

    def normalize(self, returns: Any) -> np.ndarray:
        """Normalized score ``(clip(R, rmin, rmax) - rmin) / (rmax - rmin)``, in [0, 1]."""
        r = np.asarray(returns, dtype=np.float64)
        return (np.clip(r, self.rmin, self.rmax) - self.rmin) / (self.rmax - self.rmin)


class UnknownEnvError(KeyError, ValueError):
    """No registered environment matches the requested id (catch as KeyError or ValueError)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:  # KeyError would quote the message
        return self.message


class AmbiguousEnvError(UnknownEnvError):
    """A short alias matches more than one registered environment."""


class MissingDependencyError(ImportError):
    """The environment needs an optional package that is not installed."""


_REGISTRY: dict[str, EnvSpec] = {}

# Packages an environment needs beyond gymnasium/minigrid: env_id -> (module, install hint).
_REQUIREMENTS: dict[str, tuple[str, str]] = {
    "LunarLander-v3": (
        "Box2D",
        'pip install "box2d>=2.3.10" (a prebuilt wheel for CPython 3.10-3.13), or '
        'pip install "gymnasium[box2d]" (on Python 3.14+ that builds box2d-py and needs swig)',
    ),
}


def register(spec: EnvSpec, *, replace: bool = False) -> EnvSpec:
    """Add ``spec`` to the registry; refuses to overwrite an id unless ``replace=True``."""
    if not isinstance(spec, EnvSpec):
        raise TypeError(f"register() takes an EnvSpec, got {type(spec).__name__}")
    # EnvSpec.__post_init__ already validates; checked again so register() is the gate.
    if not spec.rmin < spec.rmax:
        raise ValueError(f"{spec.env_id}: need rmin < rmax")
    if (spec.budget_episodes is None) == (spec.budget_steps is None):
        raise ValueError(f"{spec.env_id}: set exactly one of budget_episodes / budget_steps")
    if spec.env_id in _REGISTRY and not replace:
        raise ValueError(
            f"environment {spec.env_id!r} is already registered; pass replace=True to overwrite"
        )
    _REGISTRY[spec.env_id] = spec
    return spec


def unregister(env_id: str) -> EnvSpec:
    """Remove a registered id (exact id only) and return its spec."""
    try:
        return _REGISTRY.pop(env_id)
    except KeyError:
        raise UnknownEnvError(f"cannot unregister {env_id!r}: not registered") from None


def env_ids(family: str | None = None) -> list[str]:
    """Registered ids in registration order, optionally only one family."""
    return [k for k, s in _REGISTRY.items() if family is None or s.family == family]


_SUFFIX = re.compile(r"-v\d+$", re.IGNORECASE)
_PREFIX = "minigrid-"


def _alias_forms(env_id: str) -> set[str]:
    """Lower-case names accepted for ``env_id``: with/without ``MiniGrid-`` and ``-vN``."""
    full = env_id.lower()
    forms = {full, _SUFFIX.sub("", full)}
    if full.startswith(_PREFIX):
        forms |= {f[len(_PREFIX):] for f in list(forms)}
    return {f for f in forms if f}


def _gym_registry() -> dict[str, Any]:
    import minigrid  # noqa: F401  (importing it registers the MiniGrid-* ids)

    return gym.registry


def _resolve(name: str) -> str:
    if not isinstance(name, str):
        raise UnknownEnvError(f"environment id must be a string, got {name!r}")
    if name in _REGISTRY:
        return name
    query = name.strip().lower()
    matches = [k for k in _REGISTRY if query in _alias_forms(k)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise AmbiguousEnvError(
            f"environment alias {name!r} is ambiguous: it matches {', '.join(matches)}. "
            "Use the full id."
        )
    known = ", ".join(_REGISTRY)
    gym_matches = [g for g in _gym_registry() if query in _alias_forms(g)]
    if gym_matches:
        gid = " / ".join(gym_matches)
        what = f"{name!r}" if gym_matches == [name] else f"{name!r} ({gid})"
        raise UnknownEnvError(
            f"{what} is a gymnasium environment but is not registered in evorl_nb.envs: "
            "scores are normalized as (clip(R, Rmin, Rmax) - Rmin) / (Rmax - Rmin), so "
            "evorl_nb needs its Rmin/Rmax (and a training budget) before it can be used. "
            f"{_HOW_TO_REGISTER}; for a gymnasium id make=None calls gymnasium.make "
            '(family="classic" passes observations through as float32, family="minigrid" '
            "adds the scaled full-grid observation). make_env needs a Box observation and "
            f"Discrete actions; otherwise pass a make= factory that wraps it. Known ids: {known}."
        )
    close = [k for k in _REGISTRY if any(query in f for f in _alias_forms(k))]
    close = close or difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise UnknownEnvError(
        f"unknown environment {name!r}.{hint} Known ids: {known}. {_HOW_TO_REGISTER}"
    )


def get_spec(env_id: str) -> EnvSpec:
    """The :class:`EnvSpec` for ``env_id`` or an unambiguous alias (``"DoorKey-5x5"``)."""
    return _REGISTRY[_resolve(env_id)]


class _SeedFirstReset(gym.Wrapper):
    """Use ``seed`` for the first ``reset()`` when the caller passes none."""

    def __init__(self, env: gym.Env, seed: int):
        super().__init__(env)
        self._pending_seed: int | None = seed

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is None:
            seed = self._pending_seed
        self._pending_seed = None
        return self.env.reset(seed=seed, options=options)


def _check_requirements(env_id: str) -> None:
    if env_id not in _REQUIREMENTS:
        return
    module, hint = _REQUIREMENTS[env_id]
    try:
        with warnings.catch_warnings():  # Box2D's swig bindings warn on import (py3.12+ style)
            warnings.simplefilter("ignore", DeprecationWarning)
            importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{env_id} needs the {module!r} module, which is not installed. Install it "
            f"into this environment: {hint}."
        ) from exc


def make_env(env_id: str, seed: int | None = None, **kwargs: Any) -> gym.Env:
    """Build the environment for ``env_id`` (or an alias) with a flat float32 observation.

    ``kwargs`` go to the factory (``gymnasium.make`` or ``spec.make``).  With ``seed`` the
    action and observation spaces are seeded and the first ``reset()`` without a seed uses
    it; ``env.reset(seed=seed)`` is deterministic either way.
    """
    spec = get_spec(env_id)
    _check_requirements(spec.env_id)
    if spec.make is not None:
        env = spec.make(**kwargs)
        if not isinstance(env, gym.Env):
            raise TypeError(
                f"{spec.env_id}: make() returned {type(env).__name__}, not a gymnasium.Env"
            )
    else:
        if spec.family == "minigrid":
            _gym_registry()
        try:
            with warnings.catch_warnings():  # the paper deliberately uses CartPole-v0
                warnings.filterwarnings("ignore", message=r".*is out of date.*")
                env = gym.make(spec.env_id, **kwargs)
        except gym.error.DependencyNotInstalled as exc:
            raise MissingDependencyError(f"{spec.env_id}: {exc}") from exc
        if spec.family == "minigrid":
            env = wrap_minigrid(env)
    obs_space = env.observation_space
    if not isinstance(obs_space, spaces.Box):
        raise TypeError(f"{spec.env_id}: observation space must be a Box, got {obs_space!r}")
    if obs_space.dtype != np.float32 or len(obs_space.shape) != 1:
        env = Float32FlatObservation(env)
    if not isinstance(env.action_space, spaces.Discrete):
        raise TypeError(
            f"{spec.env_id}: action space must be Discrete (DQN), got {env.action_space!r}"
        )
    if seed is not None:
        seed = int(seed)
        env.action_space.seed(seed)
        env.observation_space.seed(seed)
        env = _SeedFirstReset(env, seed)
    return env
