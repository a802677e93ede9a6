"""Figures of the paper's experiments (``evorl-nb reproduce`` folders, notebook 05).

:func:`figures` turns an experiment folder (:func:`evorl_nb.reproduce.load`) into plotly
figures: learning curves per env, the score bars, Q(s_0) against the realized return, the
branch fractions of DQNClipped's maxes, a search's fitness. Each algorithm has its colour
from :mod:`evorl_nb.viz.style` and every figure takes its column's width.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from evorl_nb.reproduce import load
from evorl_nb.viz.evolution import fitness_figure
from evorl_nb.viz.style import COLUMN_WIDTH, algorithm_color, fit

__all__ = ["figures", "save_figures"]


def figures(folder: str | Path | dict) -> dict:
    """Plotly figures of an experiment folder (or of what :func:`load` returned): learning
    curves per env; Q(s_0) against the realized discounted return (overestimation); the
    branch fractions over training (clipped_cases); the search's fitness over candidates
    (search experiments)."""
    data = load(folder)
    folder, meta = data["folder"], data["meta"]
    figs = {}
    colors = {alg: algorithm_color(alg, i) for i, alg in enumerate(meta.get("algorithms", ()))}
    if "convergence" in data:
        fig = fitness_figure(folder / meta["run"])
        what = "search from scratch" if meta["experiment"] == "scratch" else "bootstrapped search"
        fig.update_layout(title=f"{what} ({meta['budget']} budget): fitness of every candidate "
                                "and the best so far")
        figs["convergence"] = fig
        return figs
    ep = data.get("episodes")
    envs = meta["envs"]  # an env where no episode finished keeps an empty panel
    rows, cols = _grid(envs)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=envs)
    for j, env in enumerate(envs, start=1):
        for alg in meta["algorithms"]:
            g = ep[(ep.env == env) & (ep.algorithm == alg)] if ep is not None else ()
            if len(g) == 0:
                continue
            x, y = _mean_curve(g, "normalized")
            fig.add_trace(go.Scatter(x=x, y=y, name=alg, legendgroup=alg, showlegend=j == 1,
                                     line={"color": colors[alg]}),
                          **_cell(j, cols))
    figs["curves"] = _per_env(fig, f"{meta['experiment']}: normalized return during training "
                                   f"({meta['budget']} budget, {meta['seeds']} seeds)", rows, 90)
    if "summary" in data:
        summary = data["summary"]
        fig = go.Figure()
        for alg in meta["algorithms"]:
            g = summary[summary.algorithm == alg].set_index("env").reindex(envs)
            fig.add_trace(go.Bar(x=envs, y=g.score_all, name=alg,
                                 marker_color=colors[alg],
                                 error_y={"type": "data", "array": g.ci95_all.fillna(0)}))
        fit(fig, legend_below=True)
        fig.update_layout(barmode="group", height=440,
                          title=f"{meta['experiment']}: normalized score over all training "
                                f"episodes, mean and 95% CI of {meta['seeds']} seeds",
                          yaxis_title="normalized score", yaxis_range=[0, 1.05])
        figs["scores"] = fig
    if meta["experiment"] == "overestimation" and ep is not None:
        fig = make_subplots(rows=rows, cols=cols, subplot_titles=envs)
        for j, env in enumerate(envs, start=1):
            for alg in meta["algorithms"]:
                g = ep[(ep.env == env) & (ep.algorithm == alg)]
                if g.empty:
                    continue
                color = colors[alg]
                x, q = _mean_curve(g, "q_initial")
                _, d = _mean_curve(g, "discounted_return")
                fig.add_trace(go.Scatter(x=x, y=q, name=f"{alg}: Q(s_0)", legendgroup=alg,
                                         showlegend=j == 1, line={"color": color}),
                              **_cell(j, cols))
                fig.add_trace(go.Scatter(x=x, y=d, name=f"{alg}: realized return",
                                         legendgroup=alg, showlegend=j == 1,
                                         line={"color": color, "dash": "dot"}),
                              **_cell(j, cols))
        figs["overestimation"] = _per_env(
            fig, "estimated Q(s_0) (solid) vs realized discounted return (dotted)", rows, 110)
    if "cases" in data:
        cases = data["cases"]
        fig = make_subplots(rows=rows, cols=cols, subplot_titles=envs)
        nodes = list(dict.fromkeys(cases.node))
        for j, env in enumerate(envs, start=1):
            for i, node in enumerate(nodes):
                g = cases[(cases.env == env) & (cases.node == node)]
                if g.empty:
                    continue
                mean = g.groupby("step").fraction_first.mean()
                first, second = g["first"].iloc[0], g["second"].iloc[0]
                label = f"{g.op.iloc[0].lower()}[{first}, {second}] takes {first}"
                fig.add_trace(go.Scatter(x=mean.index, y=mean.to_numpy(), name=label,
                                         legendgroup=str(node), showlegend=j == 1,
                                         line={"color": algorithm_color(f"branch {node}", i)}),
                              **_cell(j, cols))
        fig.update_yaxes(range=[0, 1])
        figs["cases"] = _per_env(fig, "fraction of transitions on each max's first branch "
                                      f"(mean of {meta['seeds']} seeds)", rows, 110)
    return figs


def _per_env(fig: go.Figure, title: str, rows: int, head: int) -> go.Figure:
    """Lay out a figure of one panel per env: its title, 300 px per row of panels plus
    ``head`` for the title, the column's width with the legend below, steps on x."""
    fig.update_layout(title=title, height=head + 300 * rows)
    fit(fig, legend_below=True)
    fig.update_xaxes(title_text="environment steps")
    return fig


def _cell(j: int, cols: int) -> dict:
    """The row and col keywords of panel ``j`` (1-based) in a grid of ``cols`` columns."""
    return {"row": (j - 1) // cols + 1, "col": (j - 1) % cols + 1}


def _grid(envs) -> tuple[int, int]:
    """(rows, columns) of a figure with one panel per env, at most 4 panels a row."""
    cols = min(4, max(1, len(envs)))
    return -(-max(1, len(envs)) // cols), cols


def save_figures(folder: str | Path | dict, scale: float = 1.5) -> list[Path]:
    """Export the folder's figures as ``figures/NAME.png`` (plotly through kaleido, which
    drives Chromium: Debian's ``chromium`` package will do). Returns the files written.
    ``folder`` may also be what :func:`evorl_nb.reproduce.load` returned."""
    data = load(folder)
    out = data["folder"] / "figures"
    out.mkdir(exist_ok=True)
    written = []
    for name, fig in figures(data).items():
        path = out / f"{name}.png"
        fig.write_image(path, scale=scale, width=COLUMN_WIDTH)
        written.append(path)
    return written


def _mean_curve(g, column: str, points: int = 50):
    """Mean over seeds of ``column`` against environment steps, on a common step grid."""
    top = g.step.max()
    grid = np.linspace(0, top, points)
    curves = []
    for _, s in g.groupby("seed"):
        s = s.sort_values("step")
        curves.append(np.interp(grid, s.step.to_numpy(), s[column].to_numpy(),
                                left=np.nan))
    stacked = np.vstack(curves)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # grid points before any episode
        return grid, np.nanmean(stacked, axis=0)
