"""Test doubles: a fake evaluator for testing evolution logic without training agents,
and a loss program that goes NaN.

Its fitness is a deterministic function of the loss (the fingerprint), so
equivalent programs score the same, as real training with one seed does. It can
sleep, crash its worker process, or hang, to test the backends.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from evorl_nb.evolve import Outcome
from evorl_nb.program import ProgramBuilder


def nan_program():
    """A loss that is NaN from its first update: inf - inf, built from clipped exps squared.

    (log(0 + 1e-12) * 0 is finite and 0 / (0 + 1e-10) is 0, so the guards leave no simpler
    NaN.)
    """
    b = ProgramBuilder()
    q_sa = b.SelectList(b.QValues(b.q, b.s_t), b.a_t)
    zero = b.Subtract(b.r_t, b.r_t)
    huge = b.Exp(b.Exp(b.Exp(b.Add(b.Abs(q_sa), b.Exp(b.Exp(b.Exp(b.Abs(b.r_t))))))))
    inf = b.L2Norm(b.L2Norm(b.L2Norm(b.L2Norm(b.L2Norm(b.L2Norm(huge))))))
    return b.build(b.Add(b.Subtract(inf, inf), zero), name="nan")


def fake_fitness(program) -> float:
    """A fitness in [0, 1) read off the program's fingerprint."""
    return int(program.fingerprint()[:8], 16) / 16**8


@dataclass(frozen=True)
class FakeEvaluator:
    """Scores programs without training; optionally slow, crashing or hanging."""

    sleep: float = 0.0
    crash_every: int = 0
    """Crash (os._exit) on programs whose fingerprint's first hex digits are 0 mod this
    (1: every program not spared)."""
    crash_once_dir: str | None = None
    """With crash_every: crash only the first time per program (a marker file remembers)."""
    hang_every: int = 0
    """Hang (sleep for an hour) on programs whose fingerprint is 0 mod this."""
    hurdle: float | None = None
    """Below this fitness the status is below_hurdle."""
    spare: tuple[str, ...] = ()
    """Fingerprints that never crash or hang (e.g. the seed program's)."""

    def __call__(self, program, seed: int) -> Outcome:
        fp = program.fingerprint()
        key = int(fp[:8], 16)
        spared = fp in self.spare
        if self.crash_every and not spared and key % self.crash_every == 0:
            marker = Path(self.crash_once_dir or "/nonexistent") / fp
            if self.crash_once_dir is None or not marker.exists():
                if self.crash_once_dir is not None:
                    marker.touch()
                os._exit(3)
        if self.hang_every and not spared and key % self.hang_every == 0:
            time.sleep(3600)
        if self.sleep:
            time.sleep(self.sleep)
        fitness = fake_fitness(program)
        status = "below_hurdle" if self.hurdle is not None and fitness < self.hurdle else "trained"
        return Outcome(status, fitness, {"Fake-v0": fitness}, None, 100, self.sleep)


class SlowToStart:
    """Wraps an evaluator so that unpickling it in a worker takes ``delay`` seconds (a slow
    spawn or import), while evaluating stays as fast as the wrapped one."""

    def __init__(self, inner, delay: float):
        self.inner, self.delay = inner, delay

    def __call__(self, program, seed):
        return self.inner(program, seed)

    def __setstate__(self, state):
        import time

        self.__dict__.update(state)
        time.sleep(self.delay)


@dataclass(frozen=True)
class FakeStreamingEvaluator(FakeEvaluator):
    """FakeEvaluator with the streaming interface of ProgramEvaluator.stream: a candidate
    "trains" for 1-4 advance calls (read off its fingerprint), then is scored (and may
    crash or hang) as FakeEvaluator scores it. Its scores record how many candidates the
    stream held when it joined ("in_flight")."""

    def stream(self, slots: int):
        return _FakeStream(self, slots)


class _FakeStream:
    def __init__(self, evaluator, slots):
        self.evaluator, self.slots = evaluator, slots
        self.items: dict = {}  # key -> [program, seed, calls left, in flight when added]

    @property
    def idle(self) -> bool:
        return not self.items

    def add(self, program, seed, key) -> None:
        calls = 1 + int(program.fingerprint()[8:10], 16) % 4
        self.items[key] = [program, seed, calls, len(self.items) + 1]

    def advance(self, max_steps=None):
        done = []
        for key, item in list(self.items.items()):
            item[2] -= 1
            if item[2] <= 0:
                out = self.evaluator(item[0], item[1])
                out.scores["in_flight"] = float(item[3])
                done.append((key, out))
                del self.items[key]
        if self.evaluator.sleep:
            time.sleep(self.evaluator.sleep)
        return done
