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
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np

from evorl_nb.presets import (  # noqa: F401 - re-exported: the search's config lives there
    DEFAULT_WIDTH,
    ConfigError,
    EvolutionConfig,
    format_hurdle,
    get_preset,
    parse_hurdle,
    preset_names,
    preset_summaries,
    trainer_config,
)
from evorl_nb.program import Program, ProgramError
from evorl_nb.search_space import get_space, mutate_explained, random_program

__all__ = ["EvolutionConfig", "ConfigError", "get_preset", "preset_names", "trainer_config",
           "parse_hurdle", "Evolution", "Proposal", "Outcome", "ProgramEvaluator", "DEFAULT_WIDTH"]

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
