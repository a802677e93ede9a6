"""A batch of candidates as one task, and how a worker runs it.

:class:`Task` carries the retry policy every backend applies to a lost worker's work
(remaining candidates, split into single ones, failed after two tries); ``_run_task`` and
``_StreamHost`` are what a worker (or the driver, in-process) does with a task, so that an
evaluator's exception becomes a "failed" Outcome instead of killing the search.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

from evorl_nb.evolve import Outcome
from evorl_nb.program import Program

__all__ = ["Task", "STREAM_CHUNK"]

STREAM_CHUNK = 64
"""Batched steps a streaming worker trains between looks at its inbox."""


@dataclass
class Task:
    """A batch of candidates trained together (often one)."""

    keys: list[str]
    evaluator: Callable[[Program, int], Outcome]
    programs_json: list[str]
    seed: int
    tries: int = 0
    started: float = field(default_factory=time.time)
    """When the current try was sent, then (local backend) when its worker began it."""
    running: bool = False
    """Whether a local worker has acknowledged the current try (see ``STARTED``)."""
    alone: bool = False
    """Train it on a worker of its own (a retry: it may be what broke its last worker)."""
    left: set[str] = field(init=False)
    """Keys whose outcome has not come back yet (a streaming worker returns them one by one)."""

    def __post_init__(self):
        self.left = set(self.keys)

    def remaining(self) -> Task:
        """The candidates still without an outcome, as a task with the same tries."""
        keep = [i for i, k in enumerate(self.keys) if k in self.left]
        return Task([self.keys[i] for i in keep], self.evaluator,
                    [self.programs_json[i] for i in keep], self.seed, self.tries, self.started)

    def split(self) -> list[Task]:
        """One task per candidate, each with its own two tries and a worker of its own (a
        batch that broke does not count against the candidates that were not to blame)."""
        return [Task([k], self.evaluator, [p], self.seed, alone=True)
                for k, p in zip(self.keys, self.programs_json, strict=False)]

    def failed(self, why: str, worker: str | None) -> list[tuple[str, Outcome]]:
        """Every candidate of the task recorded as failed."""
        took = time.time() - self.started
        return [(k, Outcome("failed", 0.0, {}, why, 0, took, worker)) for k in self.keys]


def _crash(e: Exception, start: float) -> Outcome:
    tb = traceback.format_exc(limit=3)
    return Outcome("failed", 0.0, {}, f"evaluator raised {type(e).__name__}: {e}\n{tb}", 0,
                   time.perf_counter() - start)


def _run_task(evaluator, programs_json: list[str], seed: int) -> list[Outcome]:
    """Evaluate a batch (through ``evaluator.batch`` when it has one and there are several
    programs); an exception becomes "failed" Outcomes, never an exception."""
    start = time.perf_counter()
    try:
        programs = [Program.from_json(text) for text in programs_json]
    except Exception as e:
        return [_crash(e, start) for _ in programs_json]
    if len(programs) > 1 and hasattr(evaluator, "batch"):
        try:
            outs = list(evaluator.batch(programs, seed))
            if len(outs) != len(programs):
                raise RuntimeError(f"batch returned {len(outs)} outcomes for {len(programs)}")
            return outs
        except Exception as e:  # the evaluator's bug must not kill the search
            return [_crash(e, start) for _ in programs]
    outs = []
    for program in programs:
        try:
            outs.append(evaluator(program, seed))
        except Exception as e:
            outs.append(_crash(e, start))
    return outs


def _task(keys, evaluator, programs, seed) -> Task:
    if isinstance(keys, str):  # one candidate: submit(key, evaluator, program, seed)
        keys, programs = [keys], [programs]
    if len(keys) != len(programs) or not keys:
        raise ValueError(f"need one key per program, got {len(keys)} keys, "
                         f"{len(programs)} programs")
    return Task(list(keys), evaluator, [p.to_json() for p in programs], seed)


class _StreamHost:
    """Candidates in continuous-batching training (an evaluator's ``stream``), each with
    the tag of the task it came in (shared by local workers and the in-process backend)."""

    def __init__(self):
        self.stream, self.evaluator, self.owner = None, None, {}

    @property
    def idle(self) -> bool:
        return self.stream is None or self.stream.idle

    def accepts(self, evaluator) -> bool:
        """Whether ``evaluator``'s candidates can join (same evaluator, or nothing running)."""
        return self.idle or self.evaluator == evaluator

    def add(self, tag, keys, evaluator, programs_json, seed, slots) -> list[tuple]:
        """Queue candidates; returns (tag, key, Outcome) for programs that would not load."""
        if self.stream is None or self.evaluator != evaluator:
            self.stream, self.evaluator = evaluator.stream(slots), evaluator
        start, bad = time.perf_counter(), []
        for key, text in zip(keys, programs_json, strict=False):
            try:
                self.stream.add(Program.from_json(text), seed, key)
                self.owner[key] = tag
            except Exception as e:
                bad.append((tag, key, _crash(e, start)))
        return bad

    def advance(self, steps: int) -> list[tuple]:
        """Train ``steps`` batched steps; (tag, key, Outcome) of the candidates decided. An
        exception from the evaluator fails every candidate in flight, never the caller."""
        start = time.perf_counter()
        try:
            done = self.stream.advance(steps)
        except Exception as e:
            out = [(tag, key, _crash(e, start)) for key, tag in self.owner.items()]
            self.stream, self.evaluator, self.owner = None, None, {}
            return out
        return [(self.owner.pop(key), key, out) for key, out in done]
