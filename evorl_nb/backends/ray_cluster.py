"""The Ray backend: candidates trained as Ray tasks on a cluster.

Apart from the others because Ray is optional: it is imported only when a
:class:`RayBackend` is made. (Not named ``ray.py``, so it can never be taken for Ray itself.)
"""

from __future__ import annotations

import time
from typing import Any

from evorl_nb.backends.tasks import Task, _run_task, _task
from evorl_nb.evolve import Outcome
from evorl_nb.program import Program

__all__ = ["RayBackend", "RAY_CONNECT_TIMEOUT"]


RAY_CONNECT_TIMEOUT = 10.0
"""Seconds to wait for a Ray cluster's HOST:PORT to accept a connection before giving up."""


def _check_reachable(address: str | None) -> None:
    """ValueError within ``RAY_CONNECT_TIMEOUT`` if a HOST:PORT address does not answer (Ray
    itself would retry for minutes without a word)."""
    if not address or address == "auto" or "://" in address:
        return
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--address {address!r} is not HOST:PORT or auto")
    import socket

    try:
        socket.create_connection((host or "127.0.0.1", int(port)), RAY_CONNECT_TIMEOUT).close()
    except OSError as e:
        raise ValueError(f"no Ray cluster answers at {address} (waited {RAY_CONNECT_TIMEOUT:g} "
                         f"s: {e.strerror or e}); start one with `ray start --head` or use "
                         "--address auto") from None


class RayBackend:
    """Trains candidates as Ray tasks on an existing cluster (``address``) or a local one."""

    name = "ray"

    def __init__(self, workers: int | None = None, timeout: float | None = None,
                 address: str | None = None, slots: int = 1, **init_kwargs: Any):
        try:
            import ray
        except ImportError:
            raise ImportError("the Ray backend needs Ray: pip install 'evorl_nb[ray]'") from None
        self.ray = ray
        if not ray.is_initialized():
            _check_reachable(address)
            ray.init(address=address, ignore_reinit_error=True, log_to_driver=False,
                     **init_kwargs)
        self.n = workers or int(ray.cluster_resources().get("CPU", 1))
        self.timeout = timeout
        self.slots = max(1, int(slots))
        self._remote = ray.remote(num_cpus=1, max_retries=0)(_run_task)
        self._running: dict[Any, Task] = {}
        self._retry: list[Task] = []
        self._done: list[tuple[str, Outcome]] = []

    def free(self) -> int:
        """Candidates it can take now (a task of up to ``slots`` per free worker)."""
        return max(0, self.n - len(self._running) - len(self._retry)) * self.slots

    def submit(self, keys: list[str], evaluator, programs: list[Program], seed: int) -> None:
        """Start one batch of candidates as a Ray task."""
        self._start(_task(keys, evaluator, programs, seed))

    def _start(self, task: Task) -> None:
        task.tries += 1
        task.started = time.time()
        self._running[self._remote.remote(task.evaluator, task.programs_json, task.seed)] = task

    def _lost(self, ref, why: str) -> None:
        task = self._running.pop(ref)
        if task.tries < 2:
            self._retry.extend(task.split() if len(task.keys) > 1 else [task])
        else:
            self._done.extend(task.failed(f"{why} (twice)", "ray"))

    def wait(self, timeout: float | None = None) -> list[tuple[str, Outcome]]:
        """Block until at least one task finishes (or ``timeout``); return finished outcomes."""
        ray = self.ray
        deadline = None if timeout is None else time.time() + timeout
        while not self._done:
            while self._retry and len(self._running) < self.n:
                self._start(self._retry.pop(0))
            if not self._running:
                break
            ready, _ = ray.wait(list(self._running), num_returns=1, timeout=1.0)
            for ref in ready:
                try:
                    outs = ray.get(ref)
                except Exception as e:  # a dead worker surfaces here
                    self._lost(ref, f"ray worker died: {type(e).__name__}")
                    continue
                for key, out in zip(self._running.pop(ref).keys, outs, strict=False):
                    out.worker = out.worker or "ray"
                    self._done.append((key, out))
            if self.timeout is not None:
                for ref, task in list(self._running.items()):
                    if time.time() - task.started > self.timeout:
                        ray.cancel(ref, force=True)
                        self._lost(ref, f"ray task hung past the {self.timeout:g}s timeout")
            if deadline is not None and time.time() >= deadline:
                break
        done, self._done = self._done, []
        return done

    def close(self) -> None:
        """Cancel what is still running (the cluster stays up)."""
        for ref in list(self._running):
            self.ray.cancel(ref, force=True)
        self._running.clear()
