"""Where candidates are trained: in-process, local worker processes, or a Ray cluster.

Every backend has the same small interface: ``free()`` slots, ``submit(keys,
evaluator, programs, seed)`` of a batch of candidates (one task: a worker trains
them together through the evaluator's ``batch`` method, the population trainer, or
one by one if the evaluator has none), ``wait(timeout)`` for finished ``(key,
Outcome)`` pairs, and ``close()``. A worker that dies or runs past ``timeout``
seconds (per task) has its task retried on a fresh worker: a batch split into single
candidates (so one bad candidate cannot sink the others), a single candidate once; a second failure
comes back as an Outcome with status "failed" and the reason, and the search goes
on. Only the driver process writes the run store.

Local workers are spawned processes (not forked), so they start clean from a
notebook kernel too; the evaluator and the program travel pickled (the program
as JSON), so a notebook-defined evaluator must be importable or picklable by
value.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
import traceback
from dataclasses import dataclass, field
from multiprocessing.connection import wait as mp_wait
from typing import Any, Callable

from evorl_nb.evolve import Outcome
from evorl_nb.program import Program

__all__ = ["InProcessBackend", "LocalBackend", "RayBackend", "make_backend", "Task"]


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
                for k, p in zip(self.keys, self.programs_json)]

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
        raise ValueError(f"need one key per program, got {len(keys)} keys, {len(programs)} programs")
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
        for key, text in zip(keys, programs_json):
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
            done.extend(zip(t.keys, _run_task(t.evaluator, t.programs_json, t.seed)))
        while not done and not self._host.idle:
            done.extend((key, out) for _, key, out in self._host.advance(STREAM_CHUNK))
        for _, out in done:
            out.worker = out.worker or "main"
        return done

    def close(self) -> None:
        """Nothing to release."""


STARTED = "started"
"""What a local worker sends once it has the task in hand (spawned, imported, unpickled)."""

STARTUP_GRACE = 120.0
"""Seconds a local worker may take to start a task (spawn, imports) before it counts as hung."""


STREAM_CHUNK = 64
"""Batched steps a streaming worker trains between looks at its inbox."""


def _worker_main(conn) -> None:
    """A local worker: receive tasks, send back outcomes, until told to stop.

    A task marked for streaming joins the worker's :class:`StreamingEvaluation` (continuous
    batching: the worker trains up to ``slots`` candidates at once and takes new ones as
    others finish); its outcomes go back one by one as they are decided. Other tasks run
    to the end at once (``_run_task``)."""
    import signal

    import torch

    # Ctrl+C in a terminal reaches the whole process group: the driver stops the workers
    # itself, so a worker ignores it rather than printing a traceback of its own
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)
    try:
        _serve(conn)
    except (EOFError, OSError):  # the driver died or closed the pipe: exit quietly
        return


def _serve(conn) -> None:
    """The worker loop: returns when told to stop; raises EOFError/OSError when the driver
    is gone."""
    host = _StreamHost()
    while True:
        msg = conn.recv() if host.idle or conn.poll(0) else _NOTHING
        if msg is None:
            return
        if msg is not _NOTHING:
            task_id, keys, evaluator, programs_json, seed, slots = msg
            conn.send((STARTED, task_id))  # the timeout counts from here, not from the spawn
            if slots and host.accepts(evaluator):
                for tag, key, out in host.add(task_id, keys, evaluator, programs_json, seed,
                                              slots):
                    conn.send((tag, [key], [out]))
            else:
                conn.send((task_id, keys, _run_task(evaluator, programs_json, seed)))
            continue
        for tag, key, out in host.advance(STREAM_CHUNK):
            conn.send((tag, [key], [out]))


_NOTHING = object()


class _Worker:
    def __init__(self, ctx, index: int):
        self.index = index
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child,), daemon=True,
                                name=f"evorl-worker-{index}")
        self.proc.start()
        child.close()
        self.tasks: dict[int, Task] = {}
        self.streaming = False

    def in_flight(self) -> int:
        return sum(len(t.left) for t in self.tasks.values())

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(5)
        self.conn.close()


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
        for key, out in zip(keys, outs):
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
                for key, out in zip(self._running.pop(ref).keys, outs):
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


def make_backend(name: str, workers: int | None = None, timeout: float | None = None,
                 address: str | None = None, slots: int = 1):
    """A backend by name: "inprocess", "local" or "ray"; ``slots``: candidates a worker
    trains at once (the search's ``batch``)."""
    if name == "inprocess":
        return InProcessBackend(slots)
    if name == "local":
        return LocalBackend(workers, timeout, slots)
    if name == "ray":
        return RayBackend(workers, timeout, address, slots=slots)
    raise ValueError(f"unknown backend {name!r}; known: inprocess, local, ray")
