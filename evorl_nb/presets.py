"""Every preset in one place: trainer presets, evolution presets, reproduction budgets.

One vocabulary: a *trainer* setting is a trainer preset name (``paper``, ``quick``, ``ci``)
or a dict of :class:`DQNConfig` fields over its ``"preset"`` (default ``"paper"``; a field
given as None is set to None, e.g. ``{"preset": "quick", "max_steps": None}`` lifts the quick
preset's step cap), resolved by :func:`trainer_config` wherever it appears (a search's
config, a reproduction budget). An *evolution preset* is an :class:`EvolutionConfig`; a
*budget* of ``evorl-nb reproduce`` names a trainer setting, a seed count and an evolution
preset.

This module imports no torch, gymnasium or sympy, so the command line can list and check
presets at once.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from evorl_nb.search_space import SearchSpace

__all__ = ["DQNConfig", "config_names", "get_config", "trainer_config", "EvolutionConfig",
           "ConfigError", "get_preset", "preset_names", "preset_summaries", "parse_hurdle",
           "format_hurdle", "BUDGETS", "HURDLE", "TRAINING_ENVS", "DEFAULT_WIDTH",
           "RENAMED"]

# --- the trainer --------------------------------------------------------------


@dataclass(frozen=True)
class DQNConfig:
    """Settings of the DQN inner loop; the defaults are the paper's (facts.md §3)."""

    hidden: tuple[int, ...] = (256, 256)
    """Hidden layer sizes of the MLP Q network (ReLU, linear head)."""
    lr: float = 1e-4
    """Adam learning rate (no gradient clipping)."""
    batch_size: int = 32
    """Transitions per gradient step."""
    buffer_size: int = 1_000_000
    """Replay capacity (uniform, 1-step); never more than the run's step budget is allocated."""
    learning_starts: int = 1_000
    """Transitions collected before the first gradient step."""
    train_every: int = 1
    """Environment steps per gradient step."""
    target_update: int = 100
    """Gradient steps between hard copies of the online network into the target."""
    gamma: float = 0.99
    """Discount factor; the loss sees gamma * (1 - terminated)."""
    eps_start: float = 1.0
    """Initial exploration rate."""
    eps_end: float = 0.05
    """Final exploration rate (the paper's 0.05; the authors' code used 0.02)."""
    eps_decay_steps: int | None = None
    """Steps of the linear decay; None takes the env's (1e3 classic control, 1e5 MiniGrid)."""
    max_eps_decay_steps: int | None = None
    """Cap on the env's decay length (the quick preset shortens MiniGrid's)."""
    budget_episodes: int | None = None
    """Train for this many episodes; with budget_steps also None, the env's paper budget."""
    budget_steps: int | None = None
    """Train for this many environment steps (overrides the env's budget)."""
    max_steps: int | None = None
    """A cap on steps applied on top of any budget (used by the smaller presets)."""
    max_loss: float = 1e10
    """A loss whose magnitude exceeds this counts as exploded and ends the run."""
    failure_score: float = 0.0
    """The normalized score a failed run gets."""
    num_threads: int = 1
    """torch threads used while training (1 lets processes share cores)."""
    device: str = "cpu"
    """torch device for the networks and the replay buffer."""


_TRAINERS: dict[str, DQNConfig] = {
    # the paper's settings, exactly
    "paper": DQNConfig(),
    # a laptop CPU: 64-64 network, lr 1e-3, at most 50k steps per env, MiniGrid
    # exploration over at most 1e4 steps; everything else as in the paper
    "quick": DQNConfig(hidden=(64, 64), lr=1e-3, max_steps=50_000, max_eps_decay_steps=10_000),
    # seconds: a smoke test of the whole loop
    "ci": DQNConfig(hidden=(32,), lr=1e-3, learning_starts=100, max_steps=400,
                    max_eps_decay_steps=200, target_update=20, buffer_size=10_000),
}


def config_names() -> list[str]:
    """Names of the trainer presets: paper, quick, ci."""
    return list(_TRAINERS)


def get_config(name: str, **overrides: Any) -> DQNConfig:
    """A trainer preset by name, with fields overridden by keyword."""
    if name not in _TRAINERS:
        raise KeyError(f"unknown trainer preset {name!r}; known: {', '.join(_TRAINERS)}")
    return replace(_TRAINERS[name], **overrides)


def trainer_config(trainer: Any):
    """The :class:`evorl_nb.dqn.DQNConfig` a search's ``trainer`` setting names: a trainer
    preset name, or a dict of DQNConfig fields over ``preset`` (default "paper")."""
    if isinstance(trainer, str):
        if trainer not in config_names():
            raise ConfigError(f"config field trainer = {trainer!r}: a trainer preset, one of "
                              f"{', '.join(config_names())}, or a table of DQNConfig fields")
        return get_config(trainer)
    if not isinstance(trainer, dict):
        raise ConfigError(f"config field trainer = {trainer!r}: a trainer preset name or a "
                          "table of DQNConfig fields")
    extra = dict(trainer)
    name = extra.pop("preset", "paper")
    if name not in config_names():
        raise ConfigError(f"config field trainer.preset = {name!r}: one of "
                          f"{', '.join(config_names())}")
    defaults = DQNConfig()
    known = [f.name for f in fields(DQNConfig)]
    for key, v in extra.items():
        if key not in known:
            raise ConfigError(f"config field trainer.{key}: not a DQNConfig field; known: "
                              f"preset, {', '.join(known)}")
        default = getattr(defaults, key)
        if v is None and default is None:  # an optional step count or cap: None lifts it
            extra[key] = None
            continue
        kind = int if default is None else type(default)
        if kind is tuple:
            ok = isinstance(v, (list, tuple)) and all(isinstance(x, int) and x > 0 for x in v)
            allowed = "a list of positive integers"
        elif kind in (int, float):
            ok = (isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0
                  and (kind is float or float(v).is_integer()))
            allowed = f"a non-negative {kind.__name__}"
        else:
            ok, allowed = isinstance(v, kind), f"a {kind.__name__}"
        if not ok:
            raise ConfigError(f"config field trainer.{key} = {v!r}: must be {allowed}")
        if kind is tuple:
            extra[key] = tuple(v)
        elif kind is int:
            extra[key] = int(v)
    return get_config(name, **extra)


# --- the search ---------------------------------------------------------------

HURDLE = ("CartPole-v0", 0.6)
"""The paper's hurdle: CartPole first, and stop if its normalized score is below 0.6."""
TRAINING_ENVS = ("CartPole-v0", "MiniGrid-KeyCorridorS3R1-v0",
                 "MiniGrid-Dynamic-Obstacles-6x6-v0", "MiniGrid-DoorKey-5x5-v0")
"""The environments DQNReg was evolved on (CartPole is the hurdle)."""

DEFAULT_WIDTH = 64
"""Candidates a search worker trains at once by default: the width bench/bench_search.py
measures fastest on a 2-core machine (docs/performance.md, "Search width")."""

RENAMED = {"batch": "width"}
"""Search config fields renamed since runs were first saved (old name -> new name): a saved
run, a TOML file or a keyword with the old name still means the field."""


def _renamed(data: dict, where: str) -> dict:
    """``data`` with old field names replaced by new ones (both at once is an error)."""
    out = dict(data)
    for old, new in RENAMED.items():
        if old in out:
            if new in out:
                raise ConfigError(f"{where}: {old!r} is the old name of {new!r}; give one")
            out[new] = out.pop(old)
    return out


class ConfigError(ValueError):
    """A search config (a field, a TOML file, a flag) that cannot be used; names the field."""


@dataclass(frozen=True)
class EvolutionConfig:
    """A search: the evolution's settings and how each candidate is scored."""

    population: int = 300
    """Size of the population (the paper's 300)."""
    tournament: int = 25
    """Members sampled (without replacement) per tournament (the paper's 25)."""
    candidates: int = 20_000
    """Candidates to record in all, the initial population included (the paper's ~20,000)."""
    space: str = "bootstrap"
    """Search-space preset: "bootstrap" (from seed_programs) or "scratch"."""
    seed_programs: tuple[str, ...] = ("dqn",)
    """Library programs the bootstrapped initial population is made of (cycled)."""
    seed_run: str | None = None
    """A saved run whose best programs make up the initial population instead (bootstrap)."""
    envs: tuple[str, ...] = TRAINING_ENVS
    """Environments a candidate is trained on; fitness is the sum of their scores."""
    hurdle: tuple[str, float] | None = HURDLE
    """(env, threshold): evaluated first, below it the other envs are skipped; None for none."""
    trainer: str | dict = "paper"
    """Trainer preset (paper, quick, ci) or a dict of DQNConfig fields over its "preset"
    (default "paper"), e.g. ``{"preset": "quick", "max_steps": 30000}``."""
    window: str = "all"
    """Score window: "all" episodes (the paper's) or "last50" (the authors' code)."""
    eval_seed: int = 0
    """Training seed of every candidate (one seed for all, so the cache is consistent)."""
    width: int = DEFAULT_WIDTH
    """Candidates a worker trains at once with the population trainer (1: one at a time
    with dqn.train); called ``batch`` before (still accepted). Local workers use continuous
    batching: a finished candidate's slot goes to the next one at once, and the evolution
    proposes a child for it then. A candidate's score does not depend on the width (up to
    float rounding)."""

    def to_dict(self) -> dict:
        """JSON-ready form (stored with a run)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "EvolutionConfig":
        """Rebuild from :meth:`to_dict` (lists become tuples); unknown keys are an error."""
        names = {f.name for f in fields(cls)}
        data = _renamed(data, "evolution config")
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown evolution config field(s) {sorted(unknown)}; "
                             f"known: {sorted(names)}")
        fixed = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        fixed.setdefault("width", 1)  # runs saved before candidates trained several at once
        return cls(**fixed)

    @classmethod
    def from_run(cls, store) -> "EvolutionConfig":
        """The validated config a run store holds (for ``resume`` and ``rescore``); a
        StoreError naming the run if this evorl_nb cannot run it."""
        from evorl_nb.store import StoreError

        try:
            return cls.from_dict(store.config).validate()
        except (ValueError, TypeError) as e:
            raise StoreError(f"run {store.path} has a config this evorl_nb cannot run: "
                             f"{e}") from None

    def replace(self, **changes: Any) -> "EvolutionConfig":
        """A copy with ``changes`` (an old field name, see :data:`RENAMED`, means the new
        one); unknown field names are a :class:`ConfigError`."""
        changes = _renamed(changes, "evolution config")
        names = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise ConfigError(f"unknown evolution config field(s) {unknown}; known: "
                              f"{', '.join(sorted(names))}")
        return replace(self, **changes)

    def validate(self) -> "EvolutionConfig":
        """Check every field (types, ranges, env ids, library names, the trainer) and
        return ``self``; a :class:`ConfigError` names the first bad field and what is
        allowed. Runs before any training, so a bad search fails in a second."""
        from evorl_nb import library
        from evorl_nb.envs import get_spec

        def need(ok: bool, name: str, allowed: str) -> None:
            if not ok:
                raise ConfigError(f"config field {name} = {getattr(self, name)!r}: {allowed}")

        def count(name: str, low: int = 1) -> None:
            v = getattr(self, name)
            need(isinstance(v, int) and not isinstance(v, bool) and v >= low, name,
                 f"must be an integer >= {low}")

        count("population")
        count("tournament")
        need(self.tournament <= self.population, "tournament",
             f"must be at most the population ({self.population})")
        count("candidates")
        count("width")
        count("eval_seed", 0)
        need(self.space in ("bootstrap", "scratch"), "space", 'must be "bootstrap" or "scratch"')
        need(isinstance(self.seed_programs, tuple) and len(self.seed_programs) > 0
             and all(p in library.names() for p in self.seed_programs), "seed_programs",
             f"must be library program names, from: {', '.join(library.names())}")
        need(self.seed_run is None or isinstance(self.seed_run, str), "seed_run",
             "must be a run path or absent")
        need(self.window in ("all", "last50"), "window", 'must be "all" or "last50"')
        need(isinstance(self.envs, tuple) and len(self.envs) > 0
             and all(isinstance(e, str) for e in self.envs), "envs",
             "must be a non-empty list of environment ids (see `evorl-nb envs`)")
        def env_id(name: str, env: str) -> str:
            try:
                return get_spec(env).env_id
            except (KeyError, ValueError, ImportError) as e:
                raise ConfigError(f"config field {name}: {e.args[0] if e.args else e}") from None

        ids = [env_id("envs", env) for env in self.envs]
        need(len(set(ids)) == len(ids), "envs", "must not name an environment twice")
        if self.hurdle is not None:
            h = self.hurdle
            need(isinstance(h, tuple) and len(h) == 2 and isinstance(h[0], str)
                 and isinstance(h[1], (int, float)) and not isinstance(h[1], bool)
                 and 0.0 <= h[1] <= 1.0, "hurdle",
                 "must be (env id, threshold in [0, 1]), written ENV:THRESHOLD, or none")
            need(env_id("hurdle", h[0]) in ids, "hurdle", f"its env must be one of the envs {list(ids)} (its "
                 "score counts toward the fitness)")
        trainer_config(self.trainer)
        return self

    def to_toml(self) -> str:
        """The config as TOML that :meth:`from_toml` (and ``evorl-nb evolve --config``)
        reads back to an equal config."""
        lines = ["# evorl_nb search config: EvolutionConfig fields (`evorl-nb evolve --config "
                 "FILE`; flags override)"]
        trainer = None
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "trainer" and isinstance(v, dict):
                trainer = v
                continue
            if f.name == "hurdle":
                v = format_hurdle(v)
            if v is None:  # TOML has no null: an absent key takes the default (None)
                continue
            lines.append(f"{f.name} = {_toml_value(v)}")
        if trainer is not None:
            lines += ["", "[trainer]  # a trainer preset and DQNConfig fields over it"]
            lines += [f"{k} = {_toml_value(v)}" for k, v in trainer.items() if v is not None]
        return "\n".join(lines) + "\n"

    @classmethod
    def from_toml(cls, text: str, base: "EvolutionConfig | None" = None,
                  source: str = "config") -> "EvolutionConfig":
        """Read TOML (as :meth:`to_toml` writes) over ``base`` (default: the defaults);
        a :class:`ConfigError` names the file and the field for an unknown key or bad value."""
        try:
            import tomllib
        except ImportError:  # Python 3.10
            import tomli as tomllib

        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{source}: not valid TOML: {e}") from None
        base = base or cls()
        changes = {}
        for key, v in data.items():
            if key == "hurdle":
                try:
                    v = parse_hurdle(v)
                except ConfigError as e:
                    raise ConfigError(f"{source}: {e}") from None
            elif isinstance(v, list):
                v = tuple(v)
            elif key == "trainer" and isinstance(v, dict):
                v = {k: tuple(x) if isinstance(x, list) else x for k, x in v.items()}
            changes[key] = v
        try:
            return base.replace(**changes).validate()
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None

    def search_space(self) -> SearchSpace:
        """The search space this config draws from."""
        from evorl_nb.search_space import get_space

        if self.space == "bootstrap":
            return get_space("bootstrap", program=self.seed_programs[0])
        return get_space(self.space)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v) if not isinstance(v, float) or math.isfinite(v) else str(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise ConfigError(f"cannot write {v!r} as a TOML value")


def format_hurdle(hurdle: tuple[str, float] | None) -> str:
    """``ENV:THRESHOLD`` or ``none``: how the command line and TOML write a hurdle."""
    return "none" if hurdle is None else f"{hurdle[0]}:{hurdle[1]:g}"


def parse_hurdle(value: Any) -> tuple[str, float] | None:
    """A hurdle from ``ENV:THRESHOLD``, ``none`` or an (env, threshold) pair."""
    if value is None or isinstance(value, str) and value.strip().lower() == "none":
        return None
    if isinstance(value, str):
        env, sep, threshold = value.rpartition(":")
        try:
            if not sep or not env:
                raise ValueError
            return (env, float(threshold))
        except ValueError:
            raise ConfigError(f"config field hurdle = {value!r}: write ENV:THRESHOLD (e.g. "
                              "CartPole-v0:0.6) or none") from None
    if isinstance(value, (list, tuple)) and len(value) == 2 and isinstance(value[0], str):
        return (value[0], value[1])
    raise ConfigError(f"config field hurdle = {value!r}: write ENV:THRESHOLD (e.g. "
                      "CartPole-v0:0.6) or none")


_EVOLUTION = {
    # name: (config, one-line summary for --help)
    "paper": (EvolutionConfig(),
              "the paper's search: 20,000 candidates, population 300, CartPole hurdle + three "
              "MiniGrid envs at the paper's budgets (weeks on a laptop)"),
    # a laptop (about a minute on 2 cores): bootstrapped from DQN, population 25,
    # tournament 5, 600 candidates, scored on CartPole-v0 alone (no hurdle needed) with
    # the quick trainer capped at 15,000 steps
    "quick": (EvolutionConfig(population=25, tournament=5, candidates=600,
                              envs=("CartPole-v0",), hurdle=None,
                              trainer={"preset": "quick", "max_steps": 15_000}),
              "600 candidates from DQN on CartPole-v0 alone (minutes)"),
    # the paper's bootstrapped search that found DQNReg (facts.md §3), sized for this
    # machine: 3,000 candidates took 17 min on 2 cores plus 10 min of re-scoring
    # (docs/results/search/dqnreg), so 8,000 fit in about an hour. Hurdle 0.5, not the
    # paper's 0.6: at 30k steps DQN itself scores 0.53-0.60 on CartPole-v0, so 0.6
    # would reject DQN (docs/evolution.md, "Calibrating the hurdle").
    "dqnreg": (EvolutionConfig(population=100, tournament=8, candidates=8_000,
                               envs=TRAINING_ENVS, hurdle=("CartPole-v0", 0.5),
                               trainer={"preset": "quick", "max_steps": 30_000}),
               "the paper's DQNReg search from DQN: CartPole hurdle 0.5 + KeyCorridorS3R1, "
               "Dynamic-Obstacles-6x6, DoorKey-5x5 at 30k steps, 8,000 candidates (about "
               "an hour on 2 cores)"),
    # the paper's from-scratch search (random initial programs; CartPole hurdle then
    # LunarLander), the same hurdle calibration, the paper's 20,000 candidates: on 2 cores
    # 3,000 took 2.5 min and 20,000 took 21 min (about 70% duplicates; most evaluations
    # stop at the hurdle, so LunarLander is rarely trained), plus 13 min of re-scoring
    # (docs/results/search/scratch)
    "scratch": (EvolutionConfig(population=100, tournament=8, candidates=20_000,
                                space="scratch", envs=("CartPole-v0", "LunarLander-v3"),
                                hurdle=("CartPole-v0", 0.5),
                                trainer={"preset": "quick", "max_steps": 30_000}),
                "the paper's from-scratch search: random programs, CartPole hurdle 0.5 + "
                "LunarLander at 30k steps, 20,000 candidates (about 35 min on 2 cores, "
                "re-scoring included)"),
    # seconds: the whole loop on the ci trainer
    "ci": (EvolutionConfig(population=6, tournament=3, candidates=16, envs=("CartPole-v0",),
                           hurdle=None, trainer="ci", width=4),
           "16 candidates on the ci trainer (seconds; a smoke test)"),
}


def preset_names() -> list[str]:
    """Names of the evolution presets: paper, quick, dqnreg, scratch, ci."""
    return list(_EVOLUTION)


def preset_summaries() -> dict[str, str]:
    """Each evolution preset's one-line summary (what it searches, roughly how long)."""
    return {name: summary for name, (_, summary) in _EVOLUTION.items()}


def get_preset(name: str, **overrides: Any) -> EvolutionConfig:
    """An evolution preset by name, with fields overridden by keyword."""
    if name not in _EVOLUTION:
        raise KeyError(f"unknown evolution preset {name!r}; known: {', '.join(_EVOLUTION)}")
    return _EVOLUTION[name][0].replace(**overrides)


# --- the paper's experiments (evorl-nb reproduce) ----------------------------------

BUDGETS: dict[str, dict[str, Any]] = {
    "ci": {"trainer": "ci", "seeds": 2, "evolution": "ci"},
    "quick": {"trainer": "quick", "seeds": 5, "evolution": "quick"},
    # the quick network (64-64, lr 1e-3) for the paper's step budgets and exploration
    # schedule: what the sparse MiniGrid claims need, at ~1/10 of the paper's compute
    "long": {"trainer": {"preset": "quick", "max_steps": None, "max_eps_decay_steps": None},
             "seeds": 3, "evolution": "quick"},
    "paper": {"trainer": "paper", "seeds": 5, "evolution": "paper"},
}
"""Per budget: the trainer setting (see :func:`trainer_config`), the number of seeds, and the
evolution preset (search experiments)."""


def budget_names() -> list[str]:
    """Names of the reproduction budgets: ci, quick, long, paper."""
    return list(BUDGETS)
