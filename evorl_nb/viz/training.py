"""Training plots: the live Q-value overestimation monitor, learning curves and score bars.

Everything here consumes what the trainer already produced (:class:`~evorl_nb.dqn.EpisodeRecord`,
:class:`~evorl_nb.dqn.TrainResult`, score tables); nothing trains.

>>> from evorl_nb import library
>>> from evorl_nb.dqn import train, get_config
>>> monitor = QValueMonitor()
>>> run = train(library.get("dqn"), "CartPole-v1", get_config("ci"),
...             callback=monitor.callback("DQN"))
>>> len(monitor.records["DQN"]) == len(run.episodes)
True
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import plotly.graph_objects as go

from evorl_nb.dqn import EpisodeRecord, TrainResult
from evorl_nb.envs import get_spec
from evorl_nb.viz.style import TEMPLATE, algorithm_color

__all__ = ["QValueMonitor", "learning_curves", "score_bars", "moving_average"]



def moving_average(values: Any, k: int) -> np.ndarray:
    """Trailing mean over the last ``k`` values (fewer at the start); same length as the input."""
    v = np.asarray(values, dtype=float)
    if k <= 1 or v.size == 0:
        return v.copy()
    c = np.cumsum(np.insert(v, 0, 0.0))
    idx = np.arange(1, v.size + 1)
    lo = np.maximum(idx - k, 0)
    return (c[idx] - c[lo]) / (idx - lo)


def _rgba(color: str, alpha: float) -> str:
    h = color.lstrip("#")
    r, g, b = (int(h[i:i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


class QValueMonitor:
    """A live plot of Q-value overestimation, one colour per algorithm.

    Per algorithm it draws the online network's estimate of the initial state's value,
    ``max_a Q(s_0, a)`` (``record.q_initial``, solid), and the discounted return actually
    collected from that state (``record.discounted_return``, dashed), against environment
    steps. A solid line above its dashed line is overestimation (the paper's Figure on
    DQN vs DQNReg). ``smoothing=k`` shows trailing means over ``k`` episodes; the raw
    points stay in ``records``. A grey band marks the episodes before the first gradient
    step. Display ``monitor.figure`` in a notebook, then pass
    ``callback=monitor.callback(name)`` to :func:`evorl_nb.dqn.train`.

    Several runs of one algorithm (seeds: ``add(name, record, run=seed)``, e.g. from the
    population trainer's callback) are drawn as their mean over a common step grid, with a
    shaded band spanning the runs' lowest and highest Q(s_0). ``min_interval`` (seconds)
    redraws an algorithm at most that often while records stream in; :meth:`refresh` draws
    what is left.
    """

    def __init__(self, *, smoothing: int = 1, title: str | None = None, height: int = 450,
                 min_interval: float = 0.0):
        """Create the empty figure; ``smoothing`` is the moving-average window in episodes."""
        if smoothing < 1:
            raise ValueError(f"smoothing must be >= 1, got {smoothing}")
        self.smoothing = smoothing
        self.min_interval = float(min_interval)
        self.records: dict[str, list[EpisodeRecord]] = {}
        """The raw episode records received, per algorithm name (every run's, in arrival
        order)."""
        self._by_run: dict[str, dict[Any, list[EpisodeRecord]]] = {}
        self._traces: dict[str, list[int]] = {}
        self._drawn: dict[str, float] = {}
        self._stale: set[str] = set()
        self._marked = False
        smooth = f" (mean of {smoothing} episodes)" if smoothing > 1 else ""
        self.figure = go.FigureWidget(layout=go.Layout(
            title=title or "Q-value overestimation: Q(s₀) (solid) vs realized discounted return"
                           " (dashed)" + smooth,
            xaxis_title="environment steps", yaxis_title="value of the initial state",
            height=height, template=TEMPLATE, hovermode="x unified",
            legend=dict(orientation="h", yanchor="top", y=-0.18, xanchor="left", x=0)))
        """The ``plotly.graph_objects.FigureWidget`` showing the traces."""

    def _add_traces(self, name: str) -> list[int]:
        color = algorithm_color(name, len(self._traces))
        n = len(self.figure.data)
        common = dict(x=[], y=[], mode="lines", legendgroup=name, customdata=[])
        hover = "episode %{customdata}: %{y:.2f}"
        self.figure.add_scatter(name=f"{name}: Q(s₀)", line=dict(color=color, width=2.5),
                                hovertemplate=hover, **common)
        self.figure.add_scatter(name=f"{name}: return", line=dict(color=color, width=1.5,
                                                                  dash="dash"),
                                opacity=0.8, hovertemplate=hover, **common)
        self._traces[name] = [n, n + 1]
        return self._traces[name]

    def add(self, name: str, record: EpisodeRecord, run: Any = 0) -> None:
        """Append one finished episode of run ``run`` (a seed, say) of algorithm ``name`` to
        the records and the figure."""
        self.records.setdefault(name, []).append(record)
        recs = self._by_run.setdefault(name, {}).setdefault(run, [])
        recs.append(record)
        if name not in self._traces:
            self._add_traces(name)
        if not self._marked and not math.isnan(record.batch_q_mean) and len(recs) > 1:
            # shade the episodes before the first gradient step: Q(s0) is the untrained net's
            self._marked = True
            self.figure.add_vrect(x0=0, x1=recs[-2].step, fillcolor="grey", opacity=0.1,
                                  line_width=0, annotation_text="before learning",
                                  annotation_position="top left")
        now = time.monotonic()
        if self.min_interval and now - self._drawn.get(name, -math.inf) < self.min_interval:
            self._stale.add(name)
            return
        self._drawn[name] = now
        self._draw(name)

    def refresh(self) -> None:
        """Draw every algorithm whose latest records :attr:`min_interval` held back."""
        for name in sorted(self._stale):
            self._draw(name)
        self._stale.clear()

    def _draw(self, name: str) -> None:
        self._stale.discard(name)
        runs = self._by_run[name]
        iq, ir = self._traces[name][:2]
        if len(runs) == 1:
            recs = next(iter(runs.values()))
            x = tuple(r.step for r in recs)
            eps = tuple(r.episode for r in recs)
            q = moving_average([r.q_initial for r in recs], self.smoothing)
            ret = moving_average([r.discounted_return for r in recs], self.smoothing)
            with self.figure.batch_update():
                for i, y in ((iq, q), (ir, ret)):
                    tr = self.figure.data[i]
                    tr.x, tr.y, tr.customdata = x, tuple(y.tolist()), eps
            return
        top = max(recs[-1].step for recs in runs.values())
        grid = np.linspace(0, top, 150)
        series = {field: [([r.step for r in recs],
                           moving_average([getattr(r, field) for r in recs], self.smoothing))
                          for recs in runs.values()]
                  for field in ("q_initial", "discounted_return")}
        q_mean, q_lo, q_hi = _band(grid, series["q_initial"])
        r_mean, _, _ = _band(grid, series["discounted_return"])
        ok = ~np.isnan(q_mean)
        g = grid[ok]
        if len(self._traces[name]) == 2:  # the band, added with the second run
            color = self.figure.data[iq].line.color
            self.figure.add_scatter(x=[], y=[], fill="toself", fillcolor=_rgba(color, 0.18),
                                    line=dict(width=0), mode="lines", legendgroup=name,
                                    showlegend=False, hoverinfo="skip",
                                    name=f"{name}: Q(s₀) range")
            self._traces[name].append(len(self.figure.data) - 1)
        ib = self._traces[name][2]
        with self.figure.batch_update():
            self.figure.data[iq].update(x=g, y=q_mean[ok], customdata=None,
                                        name=f"{name}: Q(s₀), mean of {len(runs)}",
                                        hovertemplate="%{y:.2f}")
            self.figure.data[ir].update(x=g, y=r_mean[ok], customdata=None,
                                        name=f"{name}: return, mean of {len(runs)}",
                                        hovertemplate="%{y:.2f}")
            self.figure.data[ib].update(x=np.concatenate([g, g[::-1]]),
                                        y=np.concatenate([q_hi[ok], q_lo[ok][::-1]]))

    def callback(self, name: str, run: Any = 0) -> Callable[[EpisodeRecord], None]:
        """A function ``f(record)`` for ``train(..., callback=f)`` that plots under ``name``
        (as run ``run`` of it).

        Use one name and run per training run: a second run under the same name and run
        continues the same lines (its steps restart from 0).
        """
        def on_episode(record: EpisodeRecord) -> None:
            self.add(name, record, run)
        return on_episode

    def bias(self, name: str) -> float:
        """Mean of ``q_initial - discounted_return`` over the episodes after learning started
        (every run's).

        Positive: the network overestimates the value of the initial state; negative: it
        underestimates. Episodes before the first gradient step (``batch_q_mean`` NaN) are
        left out; NaN if no episode qualifies.
        """
        return _bias(self.records.get(name, []))

    def run_biases(self, name: str) -> dict[Any, float]:
        """:meth:`bias` of each run of ``name`` on its own (to give a spread over seeds)."""
        return {run: _bias(recs) for run, recs in self._by_run.get(name, {}).items()}

    def biases(self) -> dict[str, float]:
        """:meth:`bias` of every algorithm recorded, in the order they were added."""
        return {name: self.bias(name) for name in self.records}


def _band(grid: np.ndarray, series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, min and max over runs of curves ``(steps, values)`` interpolated onto ``grid``
    (NaN outside a run's steps; NaN where no run reaches a grid point)."""
    curves = np.array([np.interp(grid, np.asarray(x, dtype=float), y, left=np.nan,
                                 right=np.nan) for x, y in series])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # grid points no run has reached
        return tuple(f(curves, axis=0) for f in (np.nanmean, np.nanmin, np.nanmax))


def _bias(records: list[EpisodeRecord]) -> float:
    """Mean ``q_initial - discounted_return`` over the episodes after learning started."""
    diffs = [r.q_initial - r.discounted_return for r in records if not math.isnan(r.batch_q_mean)]
    return float(np.mean(diffs)) if diffs else float("nan")


def _runs(value: Any) -> list[TrainResult]:
    """TrainResults from a TrainResult, an EnvScore-like object (``.run``) or an iterable."""
    if isinstance(value, TrainResult):
        return [value]
    if hasattr(value, "run") and isinstance(value.run, TrainResult):
        return [value.run]
    if isinstance(value, Iterable) and not isinstance(value, (str, bytes)):
        return [r for v in value for r in _runs(v)]
    raise TypeError(f"expected TrainResult(s), got {type(value).__name__}")


def learning_curves(results: Mapping[str, Any], *, env_id: str | None = None, window: int = 20,
                    points: int = 200, title: str | None = None) -> go.Figure:
    """Normalized training return against environment steps, one colour per algorithm.

    ``results`` maps an algorithm name to its runs (one :class:`TrainResult`, a list of
    them over seeds, or objects with a ``.run`` such as ``EnvScore``). Each run's episode
    returns are normalized with ``get_spec(env_id).normalize`` (``env_id`` defaults to the
    runs' environment), smoothed by a trailing mean over ``window`` episodes and
    interpolated onto a common grid of ``points`` steps. The solid line is the mean over
    runs; with two or more runs, a shaded band spans their min and max. A run only counts
    over the steps it covered (a failed run stops early).
    """
    runs = {name: [r for r in _runs(v) if r.episodes] for name, v in results.items()}
    if env_id is None:
        envs = {r.env_id for rs in runs.values() for r in rs}
        if len(envs) != 1:
            raise ValueError(f"runs from {len(envs)} environments ({sorted(envs)}); pass env_id")
        env_id = envs.pop()
    spec = get_spec(env_id)
    fig = go.Figure(layout=go.Layout(
        title=title or f"Learning curves on {spec.env_id} (mean of {window} episodes)",
        xaxis_title="environment steps", yaxis_title="normalized return",
        yaxis_range=[-0.02, 1.02], template=TEMPLATE, height=420))
    for k, (name, rs) in enumerate(runs.items()):
        if not rs:
            continue
        color = algorithm_color(name, k)
        first = min(r.episodes[0].step for r in rs)
        last = max(r.episodes[-1].step for r in rs)
        grid = np.linspace(first, last, points) if last > first else np.array([float(first)])
        mean, lo, hi = _band(grid, [([e.step for e in r.episodes],
                                     moving_average(spec.normalize(r.returns), window))
                                    for r in rs])
        ok = ~np.isnan(mean)
        grid, mean, lo, hi = grid[ok], mean[ok], lo[ok], hi[ok]
        if len(rs) > 1:
            fig.add_scatter(x=np.concatenate([grid, grid[::-1]]), y=np.concatenate([hi, lo[::-1]]),
                            fill="toself", fillcolor=_rgba(color, 0.2), line=dict(width=0),
                            mode="lines", name=f"{name} (min-max of {len(rs)} runs)",
                            legendgroup=name, showlegend=False, hoverinfo="skip")
        fig.add_scatter(x=grid, y=mean, mode="lines", line=dict(color=color, width=2.5),
                        name=f"{name} ({len(rs)} run{'s' * (len(rs) > 1)})", legendgroup=name)
    return fig


def score_bars(table: Any, *, title: str | None = None) -> go.Figure:
    """Mean normalized score per program and environment, with the std over rows as error bars.

    ``table`` is a pandas DataFrame or a list of dicts with columns ``program``, ``env`` and
    ``score`` (one row per seed). Bars are grouped by environment, one colour per program;
    an error bar is the sample standard deviation (ddof=1, 0 for a single row).
    """
    import pandas as pd

    df = pd.DataFrame(table)
    missing = {"program", "env", "score"} - set(df.columns)
    if missing:
        raise ValueError(f"table lacks the column(s) {sorted(missing)}")
    stats = df.groupby(["program", "env"], sort=False)["score"].agg(["mean", "std", "count"])
    stats["std"] = stats["std"].fillna(0.0)
    envs = list(dict.fromkeys(df["env"]))
    fig = go.Figure(layout=go.Layout(
        title=title or "Normalized score (mean ± std over seeds)", barmode="group",
        xaxis_title="environment", yaxis_title="normalized score", yaxis_range=[0, 1.05],
        template=TEMPLATE, height=420))
    for k, program in enumerate(dict.fromkeys(df["program"])):
        s = stats.loc[program].reindex(envs)
        fig.add_bar(x=envs, y=s["mean"].tolist(), name=str(program),
                    marker_color=algorithm_color(program, k),
                    error_y=dict(type="data", array=s["std"].tolist(), visible=True),
                    customdata=s["count"].tolist(),
                    hovertemplate="%{x}: %{y:.3f} ± %{error_y.array:.3f} (%{customdata} runs)")
    return fig
