"""The in-process backend: candidates trained in the driver itself, deterministically.

Kept apart from the worker backends because it spawns nothing: it reuses the task runner
and the stream host of :mod:`evorl_nb.backends.tasks` directly.
"""

from __future__ import annotations

from evorl_nb.backends.tasks import STREAM_CHUNK, Task, _run_task, _StreamHost, _task
from evorl_nb.evolve import Outcome
from evorl_nb.program import Program

__all__ = ["InProcessBackend"]


class InProcessBackend:
    """Trains candidates in this process (deterministic; the notebook default): with
    ``slots`` > 1 and a streaming evaluator, up to ``slots`` at once with continuous
    batching; otherwise one batch at a time."""

    name = "inprocess"

    def __init__(self, slots: int = 1):
        self.slots = max(1, int(slots))
        self._queue: list[Task] = []
        self._host = _StreamHost()
        self._done: list[tuple[str, Outcome]] = []

    def free(self) -> int:
        """Candidates it can take now."""
        if self._queue:
            return 0
        return max(0, self.slots - len(self._host.owner))

    def submit(self, keys: list[str], evaluator, programs: list[Program], seed: int) -> None:
        """Add candidates to the stream, or queue them as one batch."""
        task = _task(keys, evaluator, programs, seed)
        if self.slots > 1 and hasattr(evaluator, "stream") and self._host.accepts(evaluator):
            for _, key, out in self._host.add(None, task.keys, evaluator, task.programs_json,
                                              seed, self.slots):
                self._done.append((key, out))
        else:
            self._queue.append(task)

    def wait(self, timeout: float | None = None) -> list[tuple[str, Outcome]]:
        """Train until at least one candidate is decided; return the decided ones."""
        done, self._done = self._done, []
        while self._queue:
            t = self._queue.pop(0)
            done.extend(zip(t.keys, _run_task(t.evaluator, t.programs_json, t.seed), strict=False))
        while not done and not self._host.idle:
            done.extend((key, out) for _, key, out in self._host.advance(STREAM_CHUNK))
        for _, out in done:
            out.worker = out.worker or "main"
        return done

    def close(self) -> None:
        """Nothing to release."""
