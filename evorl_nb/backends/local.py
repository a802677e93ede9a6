"""The local backend: candidates trained in spawned worker processes on this machine.

The driver's side only (placing tasks, noticing dead or hung workers, retrying what they
held); what runs inside a worker is in :mod:`evorl_nb.backends.worker`.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from multiprocessing.connection import wait as mp_wait

from evorl_nb.backends.tasks import Task, _task
from evorl_nb.backends.worker import STARTED, _Worker
from evorl_nb.evolve import Outcome
from evorl_nb.program import Program

__all__ = ["LocalBackend", "STARTUP_GRACE"]


STARTUP_GRACE = 120.0
"""Seconds a local worker may take to start a task (spawn, imports) before it counts as hung."""


class LocalBackend:
    """Trains candidates in ``workers`` spawned processes on this machine.

    With ``slots`` > 1 and an evaluator that can stream (``ProgramEvaluator.stream``),
    each worker trains up to ``slots`` candidates at once with continuous batching: a
    candidate that finishes frees its slot for the next one at once, so a worker never
    waits for the slowest member of a batch. Otherwise each worker trains one task (a
    batch of up to ``slots`` candidates) at a time.
    """

    name = "local"

    def __init__(self, workers: int | None = None, timeout: float | None = None,
                 slots: int = 1):
        self.ctx = mp.get_context("spawn")
        self.n = workers or os.cpu_count() or 1
        self.timeout = timeout
        self.slots = max(1, int(slots))
        self._made = 0
        self._ids = 0
        self.workers = [self._new() for _ in range(self.n)]
        self._retry: list[Task] = []
        self._queued: list[Task] = []
        self._done: list[tuple[str, Outcome]] = []

    def _new(self) -> _Worker:
        self._made += 1
        return _Worker(self.ctx, self._made)

    def _streams(self, task: Task) -> bool:
        return self.slots > 1 and not task.alone and hasattr(task.evaluator, "stream")

    def _room(self, w: _Worker) -> int:
        """Candidates worker ``w`` can take now."""
        if not w.tasks:
            return self.slots
        if not w.streaming:
            return 0
        return max(0, self.slots - w.in_flight())

    def free(self) -> int:
        """Candidates it can take now (0 while retries or queued tasks wait for room)."""
        if self._retry or self._queued:
            return 0
        return sum(self._room(w) for w in self.workers)

    def submit(self, keys: list[str], evaluator, programs: list[Program], seed: int) -> None:
        """Send a batch of candidates to the workers with room (queued if none has)."""
        self._place(_task(keys, evaluator, programs, seed))

    def _place(self, task: Task) -> bool:
        """Start ``task`` (split over streaming workers as their room allows); False if no
        worker can take any of it now."""
        if self._streams(task):
            while task.keys:
                w = max(self.workers, key=self._room)
                room = self._room(w)
                if room <= 0:
                    self._queued.append(task)
                    return False
                part, rest = task.keys[:room], task.keys[room:]
                if rest:
                    head = Task(part, task.evaluator, task.programs_json[:room], task.seed)
                    task = Task(rest, task.evaluator, task.programs_json[room:], task.seed)
                    self._start(head, w, stream=True)
                else:
                    self._start(task, w, stream=True)
                    return True
            return True
        w = next((w for w in self.workers if not w.tasks), None)
        if w is None:
            (self._retry if task.alone else self._queued).append(task)
            return False
        self._start(task, w, stream=False)
        return True

    def _start(self, task: Task, w: _Worker, stream: bool, respawns: int = 0) -> None:
        """Send ``task`` to ``w``. A worker found dead on sending (killed while idle) is
        replaced, what it held is retried as for any lost worker, and ``task`` goes to the
        replacement without counting a try against it (it never reached a worker)."""
        task.tries += 1
        task.started, task.running = time.time(), False
        self._ids += 1
        w.tasks[self._ids] = task
        w.streaming = stream
        try:
            w.conn.send((self._ids, task.keys, task.evaluator, task.programs_json, task.seed,
                         self.slots if stream else 0))
            return
        except (OSError, EOFError):  # BrokenPipeError, ConnectionResetError: w is gone
            pass
        del w.tasks[self._ids]
        task.tries -= 1
        slot = self.workers.index(w)
        self._lost(w, f"worker {w.index} died (exit code {w.proc.exitcode})")
        if respawns >= 2:  # fresh workers die at once: the machine, not the task, is broken
            raise RuntimeError(f"local workers die as soon as they start (last exit code "
                               f"{w.proc.exitcode}); see the worker's stderr above")
        self._start(task, self.workers[slot], stream, respawns + 1)

    def _lost(self, w: _Worker, why: str) -> None:
        """A worker died or hung: replace it, and retry what it had not finished once."""
        tasks = [t.remaining() for t in w.tasks.values() if t.left]
        w.kill()
        self.workers[self.workers.index(w)] = self._new()
        for task in tasks:
            if len(task.keys) > 1:  # a batch that broke: each candidate gets two tries alone
                self._retry.extend(task.split())
            elif task.tries < 2:
                task.alone = True
                self._retry.append(task)
            else:
                self._done.extend(task.failed(f"{why} (twice)", f"local-{w.index}"))

    def _receive(self, w: _Worker) -> None:
        try:
            msg = w.conn.recv()
        except (EOFError, OSError):
            self._lost(w, f"worker {w.index} died (exit code {w.proc.exitcode})")
            return
        if msg[0] == STARTED:
            task = w.tasks.get(msg[1])
            if task is not None:
                task.started, task.running = time.time(), True
            return
        task_id, keys, outs = msg
        task = w.tasks.get(task_id)
        for key, out in zip(keys, outs, strict=False):
            out.worker = out.worker or f"local-{w.index}"
            self._done.append((key, out))
            if task is not None:
                task.left.discard(key)
        if task is not None and not task.left:
            del w.tasks[task_id]

    def _hung(self, w: _Worker) -> bool:
        if self.timeout is None:
            return False
        now = time.time()
        return any(now - t.started > (self.timeout if t.running
                                      else max(self.timeout, STARTUP_GRACE))
                   for t in w.tasks.values())

    def wait(self, timeout: float | None = None) -> list[tuple[str, Outcome]]:
        """Block until at least one candidate finishes (or ``timeout``); return outcomes."""
        deadline = None if timeout is None else time.time() + timeout
        while not self._done:
            while self._retry:  # a retry needs a worker of its own
                w = next((w for w in self.workers if not w.tasks), None)
                if w is None:
                    break
                self._start(self._retry.pop(0), w, stream=False)
            while self._queued and self._place(self._queued.pop(0)):
                pass
            busy = [w for w in self.workers if w.tasks]
            if not busy:
                break
            tick = 1.0 if self.timeout is None else min(1.0, self.timeout)
            if deadline is not None:
                tick = max(0.0, min(tick, deadline - time.time()))
            ready = mp_wait([w.conn for w in busy] + [w.proc.sentinel for w in busy], tick)
            for w in busy:
                if w.conn in ready:
                    while w.tasks and w.conn.poll(0):
                        self._receive(w)
                        if w not in self.workers:  # lost while receiving
                            break
                elif w.proc.sentinel in ready or not w.proc.is_alive():
                    self._lost(w, f"worker {w.index} died (exit code {w.proc.exitcode})")
                elif self._hung(w):
                    self._lost(w, f"worker {w.index} hung past the {self.timeout:g}s timeout")
            if deadline is not None and time.time() >= deadline:
                break
        done, self._done = self._done, []
        return done

    def close(self) -> None:
        """Stop the workers."""
        for w in self.workers:
            try:
                w.conn.send(None)
            except (OSError, BrokenPipeError):
                pass
        for w in self.workers:
            w.proc.join(2)
            w.kill()
