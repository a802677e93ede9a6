"""Evolution views: fitness and rate curves, lineages and a live dashboard of a run.

Everything here reads a run's store (:func:`evorl_nb.store.load_run`, read-only, safe while
another process writes the run); nothing trains.

>>> import tempfile
>>> with tempfile.TemporaryDirectory() as tmp:  # a run folder without a store yet
...     EvolutionDashboard(f"{tmp}/not-started").status.value
'waiting for the run to start'
"""

from __future__ import annotations

import html
import math
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from evorl_nb.program import Program
from evorl_nb.store import RunData, load_run, store_path
from evorl_nb.viz.style import TEMPLATE

__all__ = ["fitness_figure", "rates_figure", "lineage", "lineage_figure", "EvolutionDashboard"]

STATUS_COLORS = {"trained": "#1f77b4", "duplicate": "#7f7f7f", "below_hurdle": "#ff7f0e",
                 "failed": "#d62728"}
"""Marker colour of each candidate status."""


def _data(run: Any) -> RunData:
    return run if isinstance(run, RunData) else load_run(store_path(run))


def _equation(program_json: str, simplify: bool = True, latex: bool = False) -> str:
    try:
        return Program.from_json(program_json).equation(simplify=simplify, latex=latex)
    except Exception as e:  # noqa: BLE001 - a view must not die on one odd program
        return f"(no equation: {e})"


def _layout(title: str, ytitle: str, height: int, **kw) -> go.Layout:
    return go.Layout(title=title, xaxis_title="candidate id", yaxis_title=ytitle, height=height,
                     template=TEMPLATE, margin=dict(l=60, r=20, t=50, b=40), **kw)


def _fitness_layout() -> go.Layout:
    return _layout("Fitness of every candidate", "fitness", 380)


def _rates_layout(window: int) -> go.Layout:
    return _layout(f"Rates over the last {window} candidates", "rate", 320, yaxis_range=[0, 1.02])


def _curves(df, population: int) -> tuple[np.ndarray, np.ndarray]:
    fit = df["fitness"].astype(float)
    best = fit.fillna(-math.inf).cummax().replace(-math.inf, math.nan).to_numpy()
    mean = fit.fillna(0.0).rolling(max(int(population), 1), min_periods=1).mean().to_numpy()
    return best, mean


def _fitness_traces(data: RunData) -> list[go.Scatter]:
    df = data.candidates
    traces = []
    for status, color in STATUS_COLORS.items():
        sub = df[df["status"] == status]
        traces.append(go.Scatter(
            x=sub["id"].tolist(), y=sub["fitness"].fillna(0.0).tolist(), mode="markers",
            name=status, marker=dict(color=color, size=6, opacity=0.7),
            text=[f"id {i}<br>{m or 'initial'}"
                  for i, m in sub[["id", "mutation"]].itertuples(index=False)],
            hovertemplate="%{text}<br>fitness %{y:.3f}<extra>" + status + "</extra>"))
    best, mean = _curves(df, data.config.get("population", 1))
    traces.append(go.Scatter(x=df["id"].tolist(), y=best.tolist(), mode="lines", name="best so far",
                             line=dict(color="black", width=2, shape="hv")))
    traces.append(go.Scatter(x=df["id"].tolist(), y=mean.tolist(), mode="lines",
                             name="population mean",
                             line=dict(color="#2ca02c", width=2, dash="dash")))
    return traces


def fitness_figure(run: Any) -> go.Figure:
    """Fitness of every candidate vs its id (markers coloured by status), the best-so-far line
    (cumulative max of fitness) and the population's mean fitness (rolling mean over the last
    ``population`` candidates; failed ones count 0, as in the evolution).

    ``run`` is a run folder, a store path or a :class:`~evorl_nb.store.RunData`.
    """
    data = _data(run)
    return go.Figure(_fitness_traces(data), layout=_fitness_layout())


def _rates(df, window: int) -> dict[str, np.ndarray]:
    return {s: (df["status"] == s).astype(float).rolling(max(int(window), 1), min_periods=1)
            .mean().to_numpy() for s in ("duplicate", "below_hurdle", "failed")}


def _rates_traces(data: RunData, window: int) -> list[go.Scatter]:
    x = data.candidates["id"].tolist()
    return [go.Scatter(x=x, y=v.tolist(), mode="lines", name=s.replace("_", " "),
                       line=dict(color=STATUS_COLORS[s], width=2))
            for s, v in _rates(data.candidates, window).items()]


def rates_figure(run: Any, window: int = 50) -> go.Figure:
    """Rolling duplicate / below-hurdle / failure rates (fraction of the last ``window``
    candidates) vs candidate id."""
    data = _data(run)
    return go.Figure(_rates_traces(data, window), layout=_rates_layout(window))


def lineage(run: Any, candidate_id: int) -> list[dict]:
    """The ancestors of candidate ``candidate_id``, from the initial population to it.

    Each step is a dict with ``id``, ``parent_id``, ``fitness``, ``status``, ``mutation`` (the
    text of the mutation that made it from its parent; None for the initial population) and
    ``equation`` (simplified). KeyError if the id is not in the run.
    """
    df = _data(run).candidates.set_index("id", drop=False)
    chain, seen, cid = [], set(), int(candidate_id)
    if cid not in df.index:
        raise KeyError(f"no candidate with id {cid} in this run")
    while cid is not None and cid in df.index and cid not in seen:
        seen.add(cid)
        row = df.loc[cid]
        parent = None if pd.isna(row["parent_id"]) else int(row["parent_id"])
        chain.append({"id": cid, "parent_id": parent, "fitness": float(row["fitness"]),
                      "status": row["status"], "mutation": row["mutation"],
                      "equation": _equation(row["program"])})
        cid = parent
    return chain[::-1]


def lineage_figure(run: Any, candidate_id: int) -> go.Figure:
    """The lineage of ``candidate_id`` as a left-to-right chain: one node per ancestor (hover:
    fitness and equation), the mutation of each step written on the arrow into its child."""
    steps = lineage(run, candidate_id)
    x = list(range(len(steps)))
    fit = [0.0 if math.isnan(s["fitness"]) else s["fitness"] for s in steps]
    fig = go.Figure(go.Scatter(
        x=x, y=[0] * len(steps), mode="markers+text", text=[f"#{s['id']}" for s in steps],
        textposition="top center", marker=dict(size=22, color=fit, colorscale="Viridis",
                                                showscale=True, colorbar=dict(title="fitness")),
        customdata=[[s["fitness"], html.escape(s["equation"]), html.escape(s["mutation"] or
                     "initial population")] for s in steps],
        hovertemplate="fitness %{customdata[0]:.3f}<br>%{customdata[1]}<br>"
                      "<i>%{customdata[2]}</i><extra></extra>", showlegend=False))
    for k in range(1, len(steps)):
        fig.add_annotation(x=k, y=0, ax=k - 1, ay=0, xref="x", yref="y", axref="x", ayref="y",
                           showarrow=True, arrowhead=2, standoff=12, startstandoff=12)
        text = html.escape(steps[k]["mutation"] or "")
        fig.add_annotation(x=k - 0.5, y=-0.12, text=text[:40] + ("…" if len(text) > 40 else ""),
                           hovertext=text, showarrow=False, font=dict(size=10), textangle=0)
    fig.update_layout(title=f"Lineage of candidate {candidate_id}", template=TEMPLATE,
                      xaxis=dict(visible=False, range=[-0.6, len(steps) - 0.4]), height=260,
                      yaxis=dict(visible=False, range=[-0.4, 0.4]), margin=dict(l=20, r=20, b=20))
    return fig


def _top_table(data: RunData, k: int = 5, latex: bool = False) -> str:
    """The top-k distinct programs as an HTML table; with ``latex`` the equations are
    LaTeX between ``\\(...\\)`` (typeset where the page runs MathJax: JupyterLab's HTMLMath
    widget), else plain text in ``<code>``. Long equations wrap instead of being cut."""
    best = data.best(k, distinct=True)

    def eq(program_json: str) -> str:
        if latex:
            return "\\(" + html.escape(_equation(program_json, latex=True)) + "\\)"
        return f"<code>{html.escape(_equation(program_json))}</code>"

    cell = "style='text-align:left;white-space:normal;overflow-wrap:anywhere'"
    rows = "".join(f"<tr><td>{r}</td><td>{int(row['id'])}</td><td>{row['fitness']:.3f}</td>"
                   f"<td {cell}>{eq(row['program'])}</td></tr>"
                   for r, (_, row) in enumerate(best.iterrows(), start=1))
    return ("<table><tr><th>rank</th><th>id</th><th>fitness</th>"
            f"<th style='text-align:left'>equation (simplified)</th></tr>{rows}</table>")


def run_report(run: Any, k: int = 10) -> str:
    """A standalone HTML page of a run: its rates, the fitness and rate figures (plotly from
    its CDN, each as wide as the page) and the top-``k`` distinct programs."""
    data = _data(run)
    rates = data.rates()
    title = html.escape(str(data.path))
    figs = "".join(f.to_html(full_html=False, include_plotlyjs="cdn" if i == 0 else False,
                             config={"responsive": True}, default_width="100%")
                   for i, f in enumerate((fitness_figure(data), rates_figure(data))))
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title>"
            "<style>body{font-family:sans-serif;max-width:1000px;margin:auto}"
            "td,th{padding:2px 8px;text-align:left}</style></head><body>"
            f"<h2>{title}</h2><p>{len(data.candidates)} candidates: duplicates "
            f"{rates['duplicate']:.0%}, below hurdle {rates['below_hurdle']:.0%}, failed "
            f"{rates['failed']:.0%}</p>{figs}<h3>Top {k} distinct programs</h3>"
            f"{_top_table(data, k)}</body></html>")


def save_run_figure(run: Any, path: str | Path, k: int = 10) -> Path:
    """Write the run's view to ``path``: ``.html`` the whole :func:`run_report`, ``.png`` /
    ``.svg`` / ``.pdf`` the fitness figure (plotly's export through kaleido, which needs
    Chromium)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".html", ".htm"):
        path.write_text(run_report(run, k), encoding="utf-8")
    elif suffix in (".png", ".svg", ".pdf"):
        fitness_figure(run).update_layout(width=900).write_image(path, scale=1.5)
    else:
        raise ValueError(f"cannot write {path.name!r}: the file name must end in .html, .png, "
                         ".svg or .pdf")
    return path


class EvolutionDashboard:
    """A live view of a run: fitness and rate figures and the top-5 distinct programs.

    ``widget`` is an ``ipywidgets.VBox`` (displaying the dashboard shows it). :meth:`refresh`
    re-reads the store (read-only; fine while another process writes the run);
    :meth:`start` refreshes every ``interval`` seconds in a background thread until
    :meth:`stop`. A run folder without a store yet shows "waiting for the run to start".
    """

    def __init__(self, run: str | Path, window: int = 50):
        """Follow the run in folder (or store file) ``run``; ``window`` is the rates window."""
        import ipywidgets as w
        self.path = store_path(run)
        """The store file followed."""
        self.window = window
        """Window (candidates) of the rolling rates."""
        self.data: RunData | None = None
        """The last snapshot read (None before the store exists)."""
        self.fitness = go.FigureWidget(layout=_fitness_layout())
        """FigureWidget of the fitness curves."""
        self.rates = go.FigureWidget(layout=_rates_layout(window))
        """FigureWidget of the rolling rates."""
        self.status = w.HTML("waiting for the run to start")
        """HTML line saying how far the run is."""
        self.table = w.HTMLMath("")
        """HTMLMath table of the top-5 distinct programs, equations typeset."""
        self.widget = w.VBox([self.status, self.fitness, self.rates, self.table])
        """The ``ipywidgets.VBox`` holding everything."""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.refresh()

    def refresh(self) -> bool:
        """Reload the store and update the view; False (and no error) if there is no store yet
        or it cannot be read right now."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            self.status.value = "waiting for the run to start"
            return False
        try:
            data = load_run(self.path)
        except Exception as e:  # noqa: BLE001 - e.g. mid-create; try again next time
            self.status.value = f"waiting for the run to start ({html.escape(str(e))})"
            return False
        self.data = data
        for fig, traces in ((self.fitness, _fitness_traces(data)),
                            (self.rates, _rates_traces(data, self.window))):
            with fig.batch_update():
                fig.data = []
                fig.add_traces(traces)
        r, total = data.rates(), data.config.get("candidates")
        done = " (finished)" if data.meta.get("finished") else ""
        self.status.value = (f"<b>{r['total']}</b> / {total} candidates{done}: {r['evaluated']} "
                             f"trained, duplicates {r['duplicate']:.0%}, below hurdle "
                             f"{r['below_hurdle']:.0%}, failed {r['failed']:.0%}")
        self.table.value = _top_table(data, latex=True)
        return True

    def start(self, interval: float = 5.0) -> None:
        """Refresh every ``interval`` seconds in a background (daemon) thread; returns at once."""
        self.stop()
        self._stop = stop = threading.Event()
        def loop():
            while not stop.wait(interval):
                self.refresh()

        self._thread = threading.Thread(target=loop, name="evolution-dashboard", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the background refreshing (if any) and wait for its thread to end."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _ipython_display_(self):
        __import__("IPython.display").display.display(self.widget)
