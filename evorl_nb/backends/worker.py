"""A local worker process: the loop it runs, and the driver's handle on it.

The code here runs on both sides of one pipe: ``_worker_main`` in the spawned process (it
must stay importable by name, as spawn pickles it so), :class:`_Worker` in the driver. The
messages: the driver sends ``(task_id, keys, evaluator, programs_json, seed, slots)`` or
None (stop); the worker answers ``(STARTED, task_id)``, then ``(task_id, keys, outcomes)``
once, or once per candidate when it streams.
"""

from __future__ import annotations

from evorl_nb.backends.tasks import STREAM_CHUNK, Task, _run_task, _StreamHost

__all__ = ["STARTED"]


STARTED = "started"
"""What a local worker sends once it has the task in hand (spawned, imported, unpickled)."""


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
    """The driver's handle on one spawned worker: its process, its end of the pipe, and
    the tasks sent to it that have not all come back."""

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
