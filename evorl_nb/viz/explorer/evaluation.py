"""The program explorer's Evaluate and Stop: training the program shown with
:func:`evorl_nb.dqn.train` in a background thread, plotting each episode live and reporting
the normalized score (or why the run failed).

A mixin of :class:`~evorl_nb.viz.explorer.ProgramExplorer`, kept apart from the widget
layout because the thread, its stop event and its error hand-over are their own concern.
"""

from __future__ import annotations

import html
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from evorl_nb.dqn import DQNConfig, EpisodeRecord, TrainResult
    from evorl_nb.program import Program

__all__ = ["EvaluationMixin"]


class _Stopped(Exception):
    """Raised from the episode callback to end a training run early."""


class EvaluationMixin:
    """:meth:`evaluate`, :meth:`wait` and :meth:`stop` of the program explorer.

    It runs on the explorer's state: the program shown (``program``, ``name``), the settings
    (``config``, ``train_seed``, the ``env`` drop-down), the widgets it updates (``curve``,
    ``monitor``, ``status``, ``evaluate_button``, ``stop_button``), the results it sets
    (``result``, ``score``, ``results``) and its own bookkeeping (``_thread``, ``_stop``,
    ``_error``, ``_runs``, ``_evaluated``), all made by ``ProgramExplorer.__init__``.
    """

    @property
    def running(self) -> bool:
        """True while a background evaluation is training."""
        return self._thread is not None and self._thread.is_alive()

    def evaluate(self, *, wait: bool = False, env_id: str | None = None,
                 config: str | DQNConfig | None = None,
                 seed: int | None = None) -> TrainResult | None:
        """Train the program shown and plot each episode live; returns at once by default.

        By default (the button) training runs in a background thread and this returns None:
        call :meth:`wait` for the :class:`~evorl_nb.dqn.TrainResult`. ``wait=True`` trains in
        the calling thread (the kernel is busy meanwhile; widgets still update) and returns
        it. ``env_id`` (default: the env picked), ``config`` (default: :attr:`config`) and
        ``seed`` (default: :attr:`train_seed`, plus one for each earlier evaluation of the same
        program, so evaluating again shows a new run beside the first instead of the same
        curve over it) override the explorer's settings for this run.
        A run whose loss fails (NaN, explosion, an error) is shown with its reason and scores
        the config's ``failure_score``; it never raises. One evaluation at a time.
        """
        from evorl_nb.dqn import get_config
        from evorl_nb.envs import get_spec

        if self.running:
            raise RuntimeError("an evaluation is already running; wait() for it or stop() it")
        spec = get_spec(env_id or self.env.value)
        cfg = self.config if config is None else (
            get_config(config) if isinstance(config, str) else config)
        key = self.program.structural_hash()
        if seed is None:  # a repeated evaluation of one program trains a new seed: a new curve
            seed = self.train_seed + self._evaluated.get(key, 0)
        self._evaluated[key] = self._evaluated.get(key, 0) + 1
        self._runs += 1
        label = f"{self.name} #{self._runs} (seed {seed})"
        self._stop = threading.Event()
        self._error = None
        self.result, self.score = None, None
        self.evaluate_button.disabled, self.stop_button.disabled = True, False
        args = (self.program, label, spec, cfg, seed, self._stop)
        if wait:
            self._train(*args, background=False)
            return self.result
        self._thread = threading.Thread(target=self._train, args=args, daemon=True,
                                        kwargs={"background": True},
                                        name="program-explorer-evaluate")
        self._thread.start()
        return None

    def wait(self, timeout: float | None = None) -> TrainResult | None:
        """Wait for the background evaluation (if any) and return its TrainResult.

        None if it was stopped; re-raises an error that broke it (e.g. a missing environment
        dependency; a failing *loss* is a result, not an error). TimeoutError if it is still
        running after ``timeout`` seconds.
        """
        t = self._thread
        if t is not None:
            t.join(timeout)
            if t.is_alive():
                raise TimeoutError(f"the evaluation is still running after {timeout} s")
        if self._error is not None:
            err, self._error = self._error, None
            raise err
        return self.result

    def stop(self) -> None:
        """Ask the running evaluation to stop at the end of its current episode."""
        self._stop.set()
        if self.running:
            self.status.value += " · <i>stopping at the end of this episode…</i>"

    def _train(self, program: Program, label: str, spec, cfg: DQNConfig, seed: int,
               stop: threading.Event, *, background: bool) -> None:
        from evorl_nb.dqn import train

        trace = len(self.curve.data)
        self.curve.add_scatter(x=[], y=[], mode="lines+markers", name=label,
                               marker=dict(size=4), line=dict(width=1.5))
        head = (f"<b>{html.escape(label)}</b> on {html.escape(spec.env_id)} "
                f"(seed {seed})")
        self.status.value = f"{head}: training…"

        def on_episode(rec: EpisodeRecord) -> None:
            if stop.is_set():
                raise _Stopped
            self.monitor.add(label, rec)
            tr = self.curve.data[trace]
            norm = float(spec.normalize(rec.ret))
            with self.curve.batch_update():
                tr.x, tr.y = (*tr.x, rec.step), (*tr.y, norm)
            self.status.value = (f"{head}: episode {rec.episode + 1}, step {rec.step}, "
                                 f"return {rec.ret:g} (normalized {norm:.3f})")

        try:
            result = train(program, spec.env_id, cfg, seed=seed, callback=on_episode)
        except _Stopped:
            n = len(self.monitor.records.get(label, []))
            self.status.value = f"{head}: <b>stopped</b> after {n} episodes (no score)"
        except BaseException as e:
            self.status.value = (f"{head}: <b style='color:#d62728'>error</b> "
                                 f"{html.escape(type(e).__name__)}: {html.escape(str(e))}")
            if not background:
                raise
            self._error = e
        else:
            self.result, self.results[label] = result, result
            self.score = result.score(spec, failure_score=cfg.failure_score)
            done = (f"{len(result.episodes)} episodes, {result.steps} steps, "
                    f"{result.wall_time:.1f} s")
            if result.failed:
                self.status.value = (
                    f"{head}: <b style='color:#d62728'>failed</b>: {html.escape(result.reason)} "
                    f"({done}); a failed run scores {self.score:g}")
            else:
                self.status.value = (f"{head}: normalized score <b>{self.score:.3f}</b> (mean "
                                     f"normalized return over {done})")
        finally:
            self.evaluate_button.disabled, self.stop_button.disabled = False, True
