"""Where candidates are trained: in-process, local worker processes, or a Ray cluster.

Every backend has the same small interface: ``free()`` slots, ``submit(keys,
evaluator, programs, seed)`` of a batch of candidates (one task: a worker trains
them together through the evaluator's ``batch`` method, the population trainer, or
one by one if the evaluator has none), ``wait(timeout)`` for finished ``(key,
Outcome)`` pairs, and ``close()``. A worker that dies or runs past ``timeout``
seconds (per task) has its task retried on a fresh worker: a batch split into single
candidates (so one bad candidate cannot sink the others), a single candidate once; a
second failure comes back as an Outcome with status "failed" and the reason, and the
search goes on. Only the driver process writes the run store.

Local workers are spawned processes (not forked), so they start clean from a
notebook kernel too; the evaluator and the program travel pickled (the program
as JSON), so a notebook-defined evaluator must be importable or picklable by
value.

:mod:`~evorl_nb.backends.tasks` holds the task (the retry policy) and how a worker runs
one, :mod:`~evorl_nb.backends.worker` the local worker process and its protocol, and
:mod:`~evorl_nb.backends.inprocess`, :mod:`~evorl_nb.backends.local` and
:mod:`~evorl_nb.backends.ray_cluster` one backend each.
"""

from __future__ import annotations

from evorl_nb.backends.inprocess import InProcessBackend
from evorl_nb.backends.local import STARTUP_GRACE, LocalBackend  # noqa: F401 - re-exported
from evorl_nb.backends.ray_cluster import RAY_CONNECT_TIMEOUT, RayBackend  # noqa: F401
from evorl_nb.backends.tasks import STREAM_CHUNK, Task  # noqa: F401 - re-exported
from evorl_nb.backends.worker import STARTED  # noqa: F401 - re-exported

__all__ = ["InProcessBackend", "LocalBackend", "RayBackend", "make_backend", "Task"]


def make_backend(name: str, workers: int | None = None, timeout: float | None = None,
                 address: str | None = None, slots: int = 1):
    """A backend by name: "inprocess", "local" or "ray"; ``slots``: candidates a worker
    trains at once (the search's ``width``)."""
    if name == "inprocess":
        return InProcessBackend(slots)
    if name == "local":
        return LocalBackend(workers, timeout, slots)
    if name == "ray":
        return RayBackend(workers, timeout, address, slots=slots)
    raise ValueError(f"unknown backend {name!r}; known: inprocess, local, ray")
