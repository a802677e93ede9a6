"""The program explorer: pick a loss, read its DAG and equation, mutate it, train it.

:class:`ProgramExplorer` is an ``ipywidgets`` view in a notebook. Pick a library or evolved
program in the drop-down; its DAG (a plotly ``FigureWidget``) is drawn beside its simplified
equation. **Mutate** makes a child with the evolution's own mutation operator and says what
changed (the mutation, the equation before and after, the nodes that changed, joined or left
the loss, and whether the loss is functionally the same); **Back** returns to the parent.
**Evaluate** trains the program shown with :func:`evorl_nb.dqn.train`, plotting each episode
live, and reports the normalized score (or, for a failed run, why it failed).

Every button has a method (:meth:`~ProgramExplorer.select`, :meth:`~ProgramExplorer.mutate`,
:meth:`~ProgramExplorer.back`, :meth:`~ProgramExplorer.evaluate`), so a notebook or a test can
drive the explorer without clicking. Every mutation is drawn from one
``numpy.random.Generator`` seeded by ``seed``: the same calls replay the same session.

>>> explorer = ProgramExplorer(seed=0)
>>> explorer.select("dqn_reg").equation()
'δ^2 + 0.1*Q(s_t, a_t)'
>>> change = explorer.mutate()
>>> change.parent.name, explorer.back().name
('dqn_reg', 'dqn_reg')
"""

from __future__ import annotations

import html
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from evorl_nb import library
from evorl_nb.program import N_INPUTS, Program
from evorl_nb.search_space import Mutation, SearchSpace, get_space, mutate_explained
from evorl_nb.viz.graph import program_figure
from evorl_nb.viz.style import TEMPLATE

if TYPE_CHECKING:
    from evorl_nb.dqn import DQNConfig, EpisodeRecord, TrainResult
    from evorl_nb.store import RunData

__all__ = ["ProgramExplorer", "Change", "HistoryEntry"]


@dataclass(frozen=True)
class Change:
    """What one mutation did to a program: the parent, the child and how they differ."""

    parent: Program
    """The program mutated."""
    child: Program
    """The mutated program."""
    mutation: Mutation
    """The mutation as the search space drew it (``mutation.describe()`` says it in words)."""
    changed: tuple[int, ...]
    """Graph indices of the nodes whose op, inputs or value differ."""
    now_live: tuple[int, ...]
    """Graph indices the child's loss reads but the parent's did not (added to the loss)."""
    now_dead: tuple[int, ...]
    """Graph indices the parent's loss read but the child's does not (removed from the loss)."""
    same_loss: bool
    """True if parent and child have the same fingerprint: they compute the same loss, so
    an evolution would not train the child again (a duplicate)."""

    @classmethod
    def of(cls, parent: Program, child: Program, mutation: Mutation) -> Change:
        """Compare ``parent`` and its mutated ``child`` (same number of nodes)."""
        pairs = zip(parent.nodes, child.nodes, strict=True)
        changed = tuple(i for i, (a, b) in enumerate(pairs, N_INPUTS) if a != b)
        before, after = set(parent.live()), set(child.live())
        return cls(parent, child, mutation, changed, tuple(sorted(after - before)),
                   tuple(sorted(before - after)), parent.fingerprint() == child.fingerprint())

    def describe(self) -> str:
        """A few lines of plain text: the mutation, the node changes and the verdict."""
        lines = [self.mutation.describe()]
        live = set(self.parent.live()) | set(self.child.live())
        dead = [i for i in self.changed if i not in live]
        if dead:
            lines.append(f"dead in parent and child (the output reads neither): "
                         f"{_indices(dead)}")
        if self.now_live:
            lines.append(f"added to the loss (now live): {_indices(self.now_live)}")
        if self.now_dead:
            lines.append(f"removed from the loss (now dead): {_indices(self.now_dead)}")
        if self.same_loss:
            lines.append("the loss is functionally the same (same fingerprint)")
        else:
            lines.append(f"a different loss (fingerprint {self.parent.fingerprint()} -> "
                         f"{self.child.fingerprint()})")
        return "\n".join(lines)


def _indices(idx: Iterable[int]) -> str:
    return ", ".join(str(i) for i in idx) or "none"


class _Stopped(Exception):
    """Raised from the episode callback to end a training run early."""


@dataclass
class HistoryEntry:
    """One step of :attr:`ProgramExplorer.history`."""

    name: str
    """The program's display name."""
    program: Program
    """The program."""
    change: Change | None = None
    """The change that made it from the entry before; None for the program picked."""


class ProgramExplorer:
    """An interactive view of loss programs: DAG, equation, mutation and training.

    ``programs`` are the ones to choose from: None for the library's losses
    (:func:`evorl_nb.library.names`), a dict name -> :class:`~evorl_nb.program.Program`, a
    list of Programs (or of library names), or a run folder / store path /
    :class:`~evorl_nb.store.RunData` (the library's losses plus the run's top evolved
    programs). ``run`` adds a run's ``top`` distinct best programs to any ``programs``.

    ``seed`` seeds the ``numpy.random.Generator`` every mutation is drawn from, so the same
    calls replay the same session. ``space`` (a preset name or a
    :class:`~evorl_nb.search_space.SearchSpace`) supplies the ops, constants and
    point-mutation probability of :func:`~evorl_nb.search_space.mutate_explained`; the
    mutation acts on the program shown, node for node (its frozen prefix stays).

    **Evaluate** trains the program shown with :func:`evorl_nb.dqn.train` on the env picked
    (default ``env_id``) under ``config`` (a trainer preset name or a
    :class:`~evorl_nb.dqn.DQNConfig`; "ci" takes seconds) with training seed ``train_seed``.
    Training runs in a background thread so the notebook stays usable and the plots update
    live; ``evaluate(wait=True)`` trains in the calling thread instead and returns the
    :class:`~evorl_nb.dqn.TrainResult`, and :meth:`wait` waits for a background run. Display
    the explorer (or its ``widget``) in a notebook to see it.
    """

    def __init__(self, programs: Any = None, *, run: Any = None, top: int = 5, seed: int = 0,
                 space: str | SearchSpace = "bootstrap", env_id: str = "CartPole-v1",
                 config: str | DQNConfig = "ci", train_seed: int = 0, show_dead: bool = True):
        """Build the widgets and show the first program (see the class docstring)."""
        import ipywidgets as w
        import plotly.graph_objects as go

        from evorl_nb.dqn import get_config
        from evorl_nb.envs import env_ids, get_spec

        if _is_run(programs):
            programs, run = None, programs if run is None else run
        self.programs: dict[str, Program] = _programs(programs)
        """The programs to choose from, by name (the drop-down's options)."""
        if run is not None:
            self.programs.update(_run_programs(run, top))
        if not self.programs:
            raise ValueError("no programs to explore")
        self.seed = seed
        """The seed of the mutation generator."""
        self.rng = np.random.default_rng(seed)
        """The ``numpy.random.Generator`` every mutation is drawn from."""
        self.space: SearchSpace = get_space(space) if isinstance(space, str) else space
        """The search space mutations draw from."""
        self.config: DQNConfig = get_config(config) if isinstance(config, str) else config
        """The trainer settings of :meth:`evaluate`."""
        self.train_seed = train_seed
        """The training seed of :meth:`evaluate` (same seed, same run on a CPU)."""
        self.history: list[HistoryEntry] = []
        """The programs from the one picked to the one shown (each later one a child of the
        one before); :meth:`back` drops the last."""
        self.results: dict[str, TrainResult] = {}
        """Every finished evaluation's TrainResult, by its name in the plots' legends."""
        self.result: TrainResult | None = None
        """The last evaluation's TrainResult (None before one finished, or if it stopped)."""
        self.score: float | None = None
        """The last evaluation's normalized score (``result.score``; a failed run's is the
        config's ``failure_score``)."""
        self._mutants = 0  # mutants made (names them)
        self._runs = 0  # evaluations started (names them)
        self._evaluated: dict[str, int] = {}  # evaluations per program (their next seed)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._cache: dict[Program, tuple[str, str]] = {}  # program -> (text, latex) equations

        envs = env_ids()
        env_id = get_spec(env_id).env_id
        self.picker = w.Dropdown(options=list(self.programs), description="program",
                                 layout=w.Layout(width="340px"))
        """Drop-down of the programs to choose from."""
        self.mutate_button = w.Button(description="Mutate", icon="random",
                                      tooltip="make a child of the program shown")
        """Button: :meth:`mutate`."""
        self.back_button = w.Button(description="Back", icon="arrow-left",
                                    tooltip="return to the parent", disabled=True)
        """Button: :meth:`back`."""
        self.evaluate_button = w.Button(description="Evaluate", icon="play",
                                        button_style="success",
                                        tooltip="train a DQN agent with the program shown")
        """Button: :meth:`evaluate` in the background."""
        self.stop_button = w.Button(description="Stop", icon="stop", disabled=True,
                                    tooltip="stop the training at the end of its episode")
        """Button: :meth:`stop`."""
        self.env = w.Dropdown(options=envs if env_id in envs else [env_id, *envs],
                              value=env_id, description="env", layout=w.Layout(width="330px"))
        """Drop-down of the environment :meth:`evaluate` trains on."""
        self.dead = w.Checkbox(value=show_dead, description="dead nodes", indent=False,
                               layout=w.Layout(width="110px"))
        """Checkbox: draw the dead nodes (faded) or only the live ones."""
        self.path = w.HTML()
        """HTML line: the history, from the program picked to the one shown."""
        self.figure = go.FigureWidget()
        """The ``FigureWidget`` of the DAG of the program shown (see ``program_figure``)."""
        self.equation = w.HTMLMath(layout=w.Layout(min_width="260px", max_width="520px"))
        """HTMLMath: the simplified equation of the program shown, as LaTeX."""
        self.changes = w.HTMLMath()
        """HTMLMath: what the mutation that made the program shown changed."""
        self.status = w.HTML()
        """HTML line: the evaluation's progress, score or failure reason."""
        self.monitor = _monitor()
        """The :class:`~evorl_nb.viz.training.QValueMonitor` the evaluations plot into."""
        self.curve = go.FigureWidget(layout=go.Layout(
            title="Normalized return per episode", xaxis_title="environment steps",
            yaxis_title="normalized return", yaxis_range=[-0.02, 1.02], height=320,
            template=TEMPLATE, legend=dict(orientation="h", y=-0.25, x=0)))
        """``FigureWidget``: each evaluation's normalized episode returns, live."""
        self.widget = w.VBox([
            w.HBox([self.picker, self.mutate_button, self.back_button, self.dead],
                   layout=w.Layout(flex_flow="row wrap")),
            self.path,
            w.HBox([self.figure, self.equation],
                   layout=w.Layout(align_items="center", flex_flow="row wrap")),
            self.changes,
            w.HBox([self.env, self.evaluate_button, self.stop_button],
                   layout=w.Layout(flex_flow="row wrap")),
            self.status, self.curve, self.monitor.figure])
        """The ``ipywidgets.VBox`` holding everything (displaying the explorer shows it)."""

        self._syncing = False
        self.picker.observe(self._on_pick, names="value")
        self.dead.observe(lambda _: self._show(), names="value")
        self.mutate_button.on_click(self._button(self.mutate))
        self.back_button.on_click(self._button(self.back))
        self.evaluate_button.on_click(self._button(self.evaluate))
        self.stop_button.on_click(self._button(self.stop))
        self.select(self.picker.value)

    # --- what is shown ---------------------------------------------------------------

    @property
    def program(self) -> Program:
        """The program shown (the last of :attr:`history`)."""
        return self.history[-1].program

    @property
    def name(self) -> str:
        """The display name of the program shown (a mutant is named after its root)."""
        return self.history[-1].name

    @property
    def change(self) -> Change | None:
        """The change that made the program shown from its parent; None for a picked one."""
        return self.history[-1].change

    def select(self, name: str) -> Program:
        """Show the program ``name`` (one of :attr:`programs`); the history restarts at it."""
        if name not in self.programs:
            raise KeyError(f"unknown program {name!r}; known: {', '.join(self.programs)}")
        self.history = [HistoryEntry(name, self.programs[name])]
        if self.picker.value != name:
            self._syncing = True
            try:
                self.picker.value = name
            finally:
                self._syncing = False
        self._show()
        return self.program

    def mutate(self) -> Change:
        """Mutate the program shown, show the child and what changed; returns the change.

        The child is drawn by :func:`~evorl_nb.search_space.mutate_explained` from
        :attr:`rng` and becomes the program shown (:meth:`back` returns to the parent).
        """
        parent = self.program
        child, how = mutate_explained(parent, self.space, self.rng)
        self._mutants += 1
        root = self.history[0].name
        name = f"{root} · mutant {self._mutants}"
        child = Program(child.nodes, frozen=child.frozen, name=name)
        change = Change.of(parent, child, how)
        self.history.append(HistoryEntry(name, child, change))
        self._show()
        return change

    def back(self) -> Program:
        """Return to the parent of the program shown (nothing happens at the picked one)."""
        if len(self.history) > 1:
            self.history.pop()
            self._show()
        return self.program

    def _equations(self, program: Program) -> tuple[str, str]:
        if program not in self._cache:
            try:
                self._cache[program] = (program.equation(), program.equation(latex=True))
            except Exception as e:  # noqa: BLE001 - a view must not die on one odd program
                text = f"(no equation: {e})"
                self._cache[program] = (text, r"\text{" + _tex_escape(text) + "}")
        return self._cache[program]

    def _show(self) -> None:
        """Redraw the figure, equation, history line and change panel for the program shown."""
        prog, change = self.program, self.change
        fig = program_figure(prog, show_dead=self.dead.value, title=self.name,
                             highlight=change.changed if change is not None else ())
        with self.figure.batch_update():
            self.figure.data = []
            self.figure.add_traces(fig.data)
            self.figure.layout = fig.layout
        _, tex = self._equations(prog)
        live = len(prog.live()) - N_INPUTS
        self.equation.value = (
            f"<h4>{html.escape(self.name)}</h4><p><b>loss (simplified)</b></p><p>$$ {tex} $$</p>"
            f"<p>{len(prog.nodes)} op nodes, {live} live · fingerprint "
            f"<code>{prog.fingerprint()}</code></p>")
        self.path.value = "<b>history:</b> " + " → ".join(
            html.escape(e.name) for e in self.history)
        self.changes.value = "" if change is None else self._change_html(change)
        self.back_button.disabled = len(self.history) < 2

    def _change_html(self, change: Change) -> str:
        m, parent, child = change.mutation, change.parent, change.child
        live_before, live_after = set(parent.live()), set(child.live())
        if m.kind == "point":
            what = (f"a point mutation of node {m.index} ("
                    + ("live" if m.index in live_before else "dead") + " in the parent, "
                    + ("live" if m.index in live_after else "dead") + " in the child)")
        else:
            what = f"redrew every mutable node ({len(change.changed)} changed)"
        (text_a, tex_a), (text_b, tex_b) = self._equations(parent), self._equations(child)
        rows = [f"<p><b>What changed</b> ({html.escape(parent.name or 'parent')} → "
                f"{html.escape(child.name or 'child')}): {what}</p>"]
        nodes = []
        for i in change.changed:
            a, b = parent.node(i), child.node(i)
            nodes.append(f"node {i}: <code>{html.escape(a.describe())}</code> → "
                         f"<code>{html.escape(b.describe())}</code>")
        rows.append("<ul>" + "".join(f"<li>{n}</li>" for n in nodes[:8])
                    + (f"<li>… {len(nodes) - 8} more</li>" if len(nodes) > 8 else "")
                    + f"<li>added to the loss (now live): {_indices(change.now_live)}</li>"
                    f"<li>removed from the loss (now dead): {_indices(change.now_dead)}</li>"
                    "</ul>")
        if text_a == text_b:
            rows.append(f"<p><b>equation</b> (unchanged): $$ {tex_b} $$</p>")
        else:
            rows.append(f"<p><b>equation before</b>: $$ {tex_a} $$</p>"
                        f"<p><b>after</b>: $$ {tex_b} $$</p>")
        if change.same_loss:
            verdict = ("<b>The loss is functionally the same</b>: the child has the parent's "
                       "fingerprint, so an evolution would count it as a duplicate and not "
                       "train it again.")
        elif text_a == text_b:
            verdict = ("<b>A different loss with the same simplified equation</b>: the values "
                       "differ (fingerprint changed) but not the gradient, e.g. a term "
                       "without a gradient changed.")
        else:
            verdict = "<b>A different loss</b> (the fingerprint changed)."
        rows.append(f"<p>{verdict}</p>")
        return "".join(rows)

    # --- training --------------------------------------------------------------------

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

    # --- widget plumbing -------------------------------------------------------------

    def _on_pick(self, change: dict) -> None:
        if not self._syncing:
            self._button(lambda: self.select(change["new"]))()

    def _button(self, fn):
        def on_click(*_):
            try:
                fn()
            except Exception as e:  # noqa: BLE001 - show it; a widget callback has no caller
                self.status.value = (f"<b style='color:#d62728'>{html.escape(type(e).__name__)}"
                                     f"</b>: {html.escape(str(e))}")
        return on_click

    def _ipython_display_(self):
        __import__("IPython.display").display.display(self.widget)


# --- helpers ---------------------------------------------------------------------------


def _monitor():
    from evorl_nb.viz.training import QValueMonitor

    return QValueMonitor(height=380, title="Q(s₀) (solid) vs realized discounted return "
                                           "(dashed): overestimation")


def _tex_escape(text: str) -> str:
    return "".join("\\" + c if c in "#$%&_{}" else c for c in text)


def _is_run(value: Any) -> bool:
    from evorl_nb.store import RunData

    return isinstance(value, (str, Path, RunData))


def _programs(programs: Any) -> dict[str, Program]:
    """The name -> Program dict of the ``programs`` argument (None: the library)."""
    if programs is None:
        return {name: library.get(name) for name in library.names()}
    if isinstance(programs, Program):
        programs = [programs]
    if isinstance(programs, Mapping):
        out = {}
        for name, p in programs.items():
            if not isinstance(p, Program):
                raise TypeError(f"programs[{name!r}] is a {type(p).__name__}, not a Program")
            out[str(name)] = p if p.name == name else Program(p.nodes, frozen=p.frozen,
                                                              name=str(name))
        return out
    out: dict[str, Program] = {}
    for k, p in enumerate(programs):
        if isinstance(p, str):
            p = library.get(p)
        if not isinstance(p, Program):
            raise TypeError(f"programs[{k}] is a {type(p).__name__}, not a Program")
        name = p.name or f"program {k + 1}"
        while name in out:
            name += "′"
        out[name] = p if p.name == name else Program(p.nodes, frozen=p.frozen, name=name)
    return out


def _run_programs(run: Any, top: int) -> dict[str, Program]:
    """The ``top`` distinct best programs of a run, named ``evolved #id (fitness f)``."""
    from evorl_nb.store import RunData, load_run, store_path

    data: RunData = run if isinstance(run, RunData) else load_run(store_path(run))
    out = {}
    for _, row in data.best(top, distinct=True).iterrows():
        name = f"evolved #{int(row['id'])} (fitness {row['fitness']:.3f})"
        p = Program.from_json(row["program"])
        out[name] = Program(p.nodes, frozen=p.frozen, name=name)
    return out
