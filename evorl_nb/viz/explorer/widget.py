"""The :class:`ProgramExplorer` widget: the program drop-down, the DAG figure and equation,
the Mutate / Back buttons and the history, and the layout that holds them with the
training plots.

What a mutation changed is worked out in :mod:`evorl_nb.viz.explorer.changes` and the
training thread lives in :mod:`evorl_nb.viz.explorer.evaluation`; this module wires them to
the widgets. ipywidgets and plotly are imported when an explorer is built.
"""

from __future__ import annotations

import html
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from evorl_nb import library
from evorl_nb.program import N_INPUTS, Program
from evorl_nb.search_space import SearchSpace, get_space, mutate_explained
from evorl_nb.viz.explorer.changes import Change, HistoryEntry, change_html
from evorl_nb.viz.explorer.evaluation import EvaluationMixin
from evorl_nb.viz.graph import program_figure
from evorl_nb.viz.style import TEMPLATE

if TYPE_CHECKING:
    from evorl_nb.dqn import DQNConfig, TrainResult
    from evorl_nb.store import RunData

__all__ = ["ProgramExplorer"]


class ProgramExplorer(EvaluationMixin):
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
        self.changes.value = "" if change is None else change_html(change, self._equations)
        self.back_button.disabled = len(self.history) < 2

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
