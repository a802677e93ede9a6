"""Regularized evolution of loss programs (the paper's Algorithm 2), steady-state and asynchronous.

The population is the ``population`` most recently recorded candidates (the
oldest leaves when a child joins). A child comes from a tournament: a sample
of ``tournament`` members without replacement, whose fittest is mutated. A
child whose fingerprint is already known (the functional-equivalence cache)
joins at once with the cached fitness and costs no training; otherwise a free
worker trains it (hurdle first). There is no generation barrier: whenever a
worker is free it gets the next child.

:class:`Evolution` is the ask/tell core a notebook can step cell by cell;
:func:`run` drives it with a backend (in-process, local processes or Ray) up
to a budget, recording every finished candidate in a :class:`RunStore`, so a
killed run resumes where it stopped.

>>> evo = Evolution(get_preset("ci"), seed=0)
>>> first = evo.ask()
>>> first.parent_id is None  # the initial population has no parents
True
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Callable, Iterator

import numpy as np

from evorl_nb.evaluate import HURDLE, TRAINING_ENVS
from evorl_nb.program import Program, ProgramError
from evorl_nb.search_space import SearchSpace, get_space, mutate_explained, random_program

__all__ = ["EvolutionConfig", "ConfigError", "get_preset", "preset_names", "trainer_config",
           "parse_hurdle", "Evolution", "Proposal", "Outcome", "ProgramEvaluator", "DEFAULT_BATCH"]

DEFAULT_BATCH = 64
"""Candidates a search worker trains at once by default: the width bench/bench_search.py
measures fastest on a 2-core machine (docs/performance.md, "Search width")."""


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
    batch: int = DEFAULT_BATCH
    """Candidates a worker trains at once with the population trainer (1: one at a time
    with dqn.train). Local workers use continuous batching: a finished candidate's slot
    goes to the next one at once, and the evolution proposes a child for it then. A
    candidate's score does not depend on its batch (up to float rounding)."""

    def to_dict(self) -> dict:
        """JSON-ready form (stored with a run)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "EvolutionConfig":
        """Rebuild from :meth:`to_dict` (lists become tuples); unknown keys are an error."""
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown evolution config field(s) {sorted(unknown)}; known: {sorted(names)}")
        fixed = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        fixed.setdefault("batch", 1)  # runs saved before batches trained one at a time
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
        """A copy with ``changes``; unknown field names are a :class:`ConfigError`."""
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
        count("batch")
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


def trainer_config(trainer: Any):
    """The :class:`evorl_nb.dqn.DQNConfig` a search's ``trainer`` setting names: a trainer
    preset name, or a dict of DQNConfig fields over ``preset`` (default "paper")."""
    from evorl_nb.dqn import DQNConfig, config_names, get_config

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
        if v is None and default is None:  # the optional step counts: None means unset
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


_PRESETS = {
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
                           hurdle=None, trainer="ci", batch=4),
           "16 candidates on the ci trainer (seconds; a smoke test)"),
}


def preset_names() -> list[str]:
    """Names of the evolution presets: paper, quick, dqnreg, scratch, ci."""
    return list(_PRESETS)


def preset_summaries() -> dict[str, str]:
    """Each evolution preset's one-line summary (what it searches, roughly how long)."""
    return {name: summary for name, (_, summary) in _PRESETS.items()}


def get_preset(name: str, **overrides: Any) -> EvolutionConfig:
    """An evolution preset by name, with fields overridden by keyword."""
    if name not in _PRESETS:
        raise KeyError(f"unknown evolution preset {name!r}; known: {', '.join(_PRESETS)}")
    return _PRESETS[name][0].replace(**overrides)


@dataclass
class Outcome:
    """What evaluating a candidate gave."""

    status: str
    """"trained", "below_hurdle" or "failed" (the evaluation itself broke: a crash, a timeout)."""
    fitness: float
    """Sum of the normalized scores (the hurdle score alone below the hurdle; 0 if failed)."""
    scores: dict[str, float] = field(default_factory=dict)
    """Normalized score per environment evaluated."""
    reason: str | None = None
    """Why training stopped early or the evaluation failed."""
    steps: int = 0
    """Environment steps spent."""
    wall_time: float = 0.0
    """Seconds spent."""
    worker: str | None = None
    """Which worker ran it."""


@dataclass(frozen=True)
class ProgramEvaluator:
    """Eval(L, E) for a search: picklable, so worker processes can run it."""

    envs: tuple[str, ...]
    hurdle: tuple[str, float] | None
    trainer: Any
    window: str = "all"

    @classmethod
    def from_config(cls, config: EvolutionConfig) -> "ProgramEvaluator":
        """The evaluator a search config describes."""
        return cls(tuple(config.envs), config.hurdle, config.trainer, config.window)

    def trainer_config(self):
        """The DQNConfig of the ``trainer`` setting."""
        return trainer_config(self.trainer)

    def __call__(self, program: Program, seed: int) -> Outcome:
        """Train on the envs (hurdle first) and summarize."""
        from evorl_nb.evaluate import evaluate

        r = evaluate(program, self.envs, self.trainer_config(), seed=seed,
                     hurdle=tuple(self.hurdle) if self.hurdle else None, window=self.window)
        return _outcome(r)

    def batch(self, programs: list[Program], seed: int) -> list[Outcome]:
        """Train several candidates together (population trainer), one Outcome each."""
        from evorl_nb.evaluate import evaluate_batch

        results = evaluate_batch(programs, self.envs, self.trainer_config(), seeds=seed,
                                 hurdle=tuple(self.hurdle) if self.hurdle else None,
                                 window=self.window)
        return [_outcome(r) for r in results]


    def stream(self, slots: int) -> "OutcomeStream":
        """A continuous-batching evaluator for a worker: ``add(program, seed, key)`` while it
        trains, ``advance(max_steps)`` returns finished ``(key, Outcome)`` pairs."""
        from evorl_nb.evaluate import StreamingEvaluation

        return OutcomeStream(StreamingEvaluation(
            self.envs, self.trainer_config(), hurdle=tuple(self.hurdle) if self.hurdle else None,
            window=self.window, slots=slots))


class OutcomeStream:
    """:class:`evorl_nb.evaluate.StreamingEvaluation` giving search :class:`Outcome`s."""

    def __init__(self, evaluation):
        self.evaluation = evaluation

    @property
    def idle(self) -> bool:
        """True when no candidate is training or queued."""
        return self.evaluation.idle

    def add(self, program: Program, seed: int, key: Any) -> None:
        """Queue a candidate."""
        self.evaluation.add(program, seed, key)

    def advance(self, max_steps: int | None = None) -> list[tuple[Any, Outcome]]:
        """Train a while; the candidates whose evaluation ended, as Outcomes."""
        return [(k, _outcome(r)) for k, r in self.evaluation.advance(max_steps)]


def _outcome(r) -> Outcome:
    status = "below_hurdle" if r.hurdle_passed is False else "trained"
    reasons = "; ".join(f"{env}: {why}" for env, why in r.reasons.items())
    return Outcome(status, r.fitness, {k: s.score for k, s in r.scores.items()},
                   reasons or r.stopped, r.steps, r.wall_time)


@dataclass
class Proposal:
    """A candidate the evolution wants scored (or already knows the score of)."""

    key: str
    """Unique proposal key, e.g. "p000042"."""
    program: Program
    parent_id: int | None
    mutation: str | None
    fingerprint: str
    cached: Outcome | None = None
    """Set when the fingerprint was known: the candidate is a duplicate, no training needed."""
    proposed_at: float = field(default_factory=time.time)


@dataclass
class Member:
    """A population member: a recorded candidate."""

    id: int
    fitness: float
    program: Program


class Evolution:
    """The ask/tell core of regularized evolution; knows nothing of workers or files.

    ``ask()`` returns the next :class:`Proposal` (or None while the initial
    population is still being scored); ``tell(proposal, outcome, id)`` adds the
    recorded candidate to the population. Every random choice of proposal k
    comes from a generator seeded by (seed, k), so a run is reproducible.
    """

    def __init__(self, config: EvolutionConfig, seed: int = 0):
        self.config, self.seed = config, seed
        self.space = config.search_space()
        self.population: deque[Member] = deque(maxlen=config.population)
        self.cache: dict[str, Outcome] = {}  # fingerprint -> outcome of its evaluation
        self.pending: dict[str, list[Proposal]] = {}  # fingerprint -> proposals awaiting it
        self.next_index = 0  # index of the next proposal (keys stay unique across resumes)
        self.recorded = 0  # candidates told (recorded)
        self.outstanding = 0  # proposals asked but not yet told
        self.best: Member | None = None
        self._from_run: list[Program] | None = None  # seed_run's programs, read on first use

    # --- state from a store --------------------------------------------------

    def replay(self, records) -> None:
        """Rebuild the population, cache and counters from recorded candidates (in id order)."""
        for rec in records:
            try:
                program = Program.from_json(rec.program_json)
                index = int(rec.proposal.lstrip("p"))
            except (ProgramError, ValueError) as e:
                raise ProgramError(f"recorded candidate {rec.id} (proposal {rec.proposal!r}) "
                                   f"cannot be replayed, so the run cannot go on: {e}") from None
            outcome = Outcome(rec.status, _fitness(rec.fitness), dict(rec.scores), rec.reason,
                              rec.steps, rec.wall_time, rec.worker)
            if rec.status in ("trained", "below_hurdle"):
                self.cache.setdefault(rec.fingerprint, outcome)
            self._join(Member(rec.id, _fitness(rec.fitness), program))
            self.next_index = max(self.next_index, index + 1)

    # --- ask / tell -----------------------------------------------------------

    @property
    def done(self) -> bool:
        """True once ``candidates`` candidates are recorded."""
        return self.recorded >= self.config.candidates

    def proposals_left(self) -> int:
        """Proposals that may still be made before the budget is spent."""
        return self.config.candidates - self.recorded - self.outstanding

    def ask(self) -> Proposal | None:
        """The next candidate to score, or None if none can be made now."""
        if self.proposals_left() <= 0:
            return None
        index = self.next_index
        rng = np.random.default_rng([self.seed, index])
        if self.recorded + self.outstanding < self.config.population:  # the initial population
            parent_id, mutation = None, "initial"
            program = self._initial_program(index, rng)
        elif self.recorded < self.config.population:
            return None  # wait for the initial population to be scored
        else:
            parent = self._tournament(rng)
            program, how = mutate_explained(parent.program, self.space, rng)
            parent_id, mutation = parent.id, how.describe()
        self.next_index += 1
        self.outstanding += 1
        fp = program.fingerprint()
        prop = Proposal(f"p{index:06d}", program, parent_id, mutation, fp)
        if fp in self.cache:
            prop.cached = _duplicate(self.cache[fp])
        elif fp in self.pending:
            self.pending[fp].append(prop)  # same loss already in training: wait for its score
        else:
            self.pending[fp] = []
        return prop

    def waiting_on(self, prop: Proposal) -> bool:
        """True if ``prop`` is a duplicate of a candidate still being trained."""
        return prop.cached is None and any(prop is p for p in self.pending.get(prop.fingerprint, []))

    def tell(self, prop: Proposal, outcome: Outcome, record_id: int) -> list[Proposal]:
        """Add a recorded candidate; returns proposals that were waiting on its score
        (now duplicates with ``cached`` set, to be recorded by the caller)."""
        self._join(Member(record_id, outcome.fitness, prop.program))
        self.outstanding -= 1
        released: list[Proposal] = []
        if prop.cached is None and prop.fingerprint in self.pending and not self.waiting_on(prop):
            waiting = self.pending.pop(prop.fingerprint)
            if outcome.status != "failed":
                self.cache[prop.fingerprint] = outcome
                for p in waiting:
                    p.cached = _duplicate(outcome)
                released = waiting
            else:  # a broken evaluation teaches nothing: let the first waiter train instead
                if waiting:  # the first waiter comes back with cached=None: train it
                    self.pending[prop.fingerprint] = waiting[1:]
                    released = [waiting[0]]
        return released

    # --- internals ------------------------------------------------------------

    def _join(self, member: Member) -> None:
        self.population.append(member)
        self.recorded += 1
        if self.best is None or member.fitness > self.best.fitness:
            self.best = member

    def _initial_program(self, index: int, rng) -> Program:
        if self.config.seed_run is not None:
            seeds = self._seed_run_programs()
            return seeds[index % len(seeds)]
        if self.config.space == "bootstrap":
            name = self.config.seed_programs[index % len(self.config.seed_programs)]
            return random_program(get_space("bootstrap", program=name), rng)
        return random_program(self.space, rng)

    def _seed_run_programs(self) -> list[Program]:
        if self._from_run is None:
            from evorl_nb.store import load_run

            best = load_run(self.config.seed_run).best(self.config.population)
            if best.empty:
                raise ValueError(f"seed_run {self.config.seed_run!r} has no scored candidates")
            self._from_run = [Program.from_json(text) for text in best["program"]]
        return self._from_run

    def _tournament(self, rng) -> Member:
        members = list(self.population)
        size = min(self.config.tournament, len(members))
        picks = rng.choice(len(members), size=size, replace=False)
        # fittest wins; among equals the younger (a later index) wins
        return max((members[i] for i in picks), key=lambda m: (m.fitness, m.id))


def _fitness(value) -> float:
    return 0.0 if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def _duplicate(outcome: Outcome) -> Outcome:
    return Outcome("duplicate", outcome.fitness, dict(outcome.scores), None, 0, 0.0, None)


def iterate(evo: Evolution, evaluate_fn: Callable[[Program, int], Outcome]) -> Iterator[
        tuple[Proposal, Outcome]]:
    """Step an evolution in-process, one candidate at a time (for notebooks and tests).

    Yields each (proposal, outcome) as it is decided; record ids are the order of yield.
    """
    while not evo.done:
        prop = evo.ask()
        if prop is None:
            return
        outcome = prop.cached or evaluate_fn(prop.program, evo.config.eval_seed)
        released = evo.tell(prop, outcome, evo.recorded + 1)
        yield prop, outcome
        for waiter in released:
            evo.tell(waiter, waiter.cached, evo.recorded + 1)
            yield waiter, waiter.cached
