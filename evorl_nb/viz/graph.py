"""A program's DAG as a plotly figure, next to its simplified equation.

The layout is plain data (:func:`graph_layout`, node index -> (x, y)); the
drawing (:func:`program_figure`) and the notebook widget
(:func:`program_widget`) are built on it. Nothing here trains anything.

>>> from evorl_nb import library
>>> pos = graph_layout(library.get("dqn"))
>>> pos[0][0], pos[14][0]          # input q at x=0, the output in the last layer
(0.0, 6.0)
"""

from __future__ import annotations

import html
from collections.abc import Iterable

import networkx as nx

from evorl_nb.ops import OPS, Type
from evorl_nb.program import N_INPUTS, Program
from evorl_nb.viz.style import COLUMN_WIDTH

__all__ = ["TYPE_COLORS", "TYPE_SHAPES", "GRAD_COLOR", "CHANGED_COLOR", "graph_layout",
           "program_figure", "program_widget", "node_hover"]

TYPE_COLORS: dict[Type, str] = {
    Type.R: "#1f77b4",      # blue
    Type.LIST: "#ff7f0e",   # orange
    Type.P: "#9467bd",      # purple
    Type.V: "#8c564b",      # brown
    Type.S: "#2ca02c",      # green
    Type.Z: "#e377c2",      # pink
    Type.PARAM: "#17becf",  # cyan
}
"""The fixed marker colour of each value type."""

TYPE_SHAPES: dict[Type, str] = {
    Type.R: "(B,)", Type.LIST: "(B, A)", Type.P: "(B, A)", Type.V: "(B, D)",
    Type.S: "(B, obs...)", Type.Z: "(B,) int", Type.PARAM: "network",
}
"""The shape of a value of each type for a batch of B transitions with A actions."""

GRAD_COLOR = "#d62728"
"""Colour of the edges on the gradient path (red)."""
EDGE_COLOR = "#555555"
DEAD_COLOR = "#bbbbbb"
DEAD_OPACITY = 0.3
OUTPUT_OUTLINE = "#000000"
MAX_WIDTH = COLUMN_WIDTH  # pixels: wider programs get narrower layers
LEGEND_ENTRY = 180  # pixels of text per legend entry: "changed by the mutation" fits


def graph_layout(program: Program, *, prune: bool = False) -> dict[int, tuple[float, float]]:
    """Node positions, left to right by ``networkx.topological_generations``.

    x is a node's generation (inputs and other sources at 0; every edge goes
    from a smaller to a larger x). Within a generation nodes are ordered by
    the mean y of the nodes they read (then by index) and spread evenly, one
    unit apart, centred on y=0; the first is on top. ``prune=True`` lays out
    the live nodes and the inputs only (indices are kept; every input keeps its row, so
    two related programs' drawings line up). Deterministic.
    """
    g = program.to_networkx()
    if prune:  # the inputs stay, so drawings of a parent and its child line up row by row
        g = g.subgraph(set(program.live()) | set(range(N_INPUTS)))
    pos: dict[int, tuple[float, float]] = {}
    for x, layer in enumerate(nx.topological_generations(g)):
        def key(i: int) -> tuple[float, int]:  # mean height of the nodes read, higher first
            preds = [pos[j][1] for j in g.predecessors(i)]
            return (-sum(preds) / len(preds) if preds else 0.0, i)

        ordered = sorted(layer, key=key) if x else sorted(layer)  # sources: by index
        for k, i in enumerate(ordered):
            pos[i] = (float(x), (len(ordered) - 1) / 2 - k)
    return pos


def node_hover(program: Program, index: int) -> str:
    """Hover text of a node: index, op, input types → output type, shape per batch, role."""
    t = program.types[index]
    shape = f"value per batch: {TYPE_SHAPES[t]}"
    if index < N_INPUTS:
        head = f"<b>input {index}: {html.escape(program.label(index))}</b>"
        lines = [head, f"type {t.label}", shape]
    else:
        node = program.node(index)
        ins = ", ".join(program.types[j].label for j in node.inputs)
        op = node.describe() if node.op == "Constant" else node.op
        lines = [f"<b>node {index}: {html.escape(op)}</b>",
                 f"({ins}) → {t.label}", shape]
        if node.inputs:
            lines.append("reads " + ", ".join(str(j) for j in node.inputs))
        if OPS[node.op].doc:
            lines.append(html.escape(OPS[node.op].doc))
    if index == program.output:
        lines.append("<b>output</b> (the per-transition loss)")
    if index not in set(program.live()):
        lines.append("<i>dead: the output does not read it</i>")
    elif program.grad_nodes()[index]:
        lines.append("carries the gradient of q")
    return "<br>".join(lines)


def _default_title(program: Program) -> str:
    # plain text: plotly titles only typeset LaTeX where MathJax is a page global, which
    # JupyterLab 4 and static export here do not provide; program_widget shows the LaTeX
    return f"{program.name or 'program'}:  {program.equation()}"


CHANGED_COLOR = "#ffbf00"
"""Colour of the ring around the nodes a mutation changed (``highlight``)."""


def _route(pos: dict[int, tuple[float, float]], s: int, d: int, half_x: float,
           half_y: dict[int, float]) -> list[tuple[float, float]]:
    """The points an edge s -> d is drawn through: straight where that clears every node box
    in the layers between them, else through the free gap of each such layer nearest the
    straight line (boxes are ``half_x`` wide and ``half_y[i]`` high, in layout units)."""
    (x0, y0), (x1, y1) = pos[s], pos[d]
    layers = range(int(x0) + 1, int(x1))
    if not layers:
        return [(x0, y0), (x1, y1)]
    by_layer: dict[int, list[int]] = {}
    for i, (x, _) in pos.items():
        if int(x0) < x < int(x1):
            by_layer.setdefault(int(x), []).append(i)

    def blocked(x: int, y: float) -> bool:
        return any(abs(y - pos[i][1]) < half_y[i] + 0.12 for i in by_layer.get(x, ()))

    def at(x: float) -> float:
        return y0 + (y1 - y0) * (x - x0) / (x1 - x0)

    if not any(blocked(x, at(x + dx)) for x in layers for dx in (-half_x, 0.0, half_x)):
        return [(x0, y0), (x1, y1)]
    points = [(x0, y0)]
    for x in layers:
        ys = sorted(pos[i][1] for i in by_layer.get(x, ()))
        gaps = [(a + b) / 2 for a, b in zip(ys, ys[1:], strict=False)]
        gaps += [ys[-1] + 0.5, ys[0] - 0.5] if ys else [at(x)]
        free = [g for g in gaps if not blocked(x, g)] or gaps
        points.append((float(x), min(free, key=lambda g: (abs(g - at(x)), g))))
    return points + [(x1, y1)]


def program_figure(program: Program, *, show_dead: bool = True, title: str | None = None,
                   highlight: Iterable[int] = ()):
    """The program's DAG as a ``plotly.graph_objects.Figure``.

    One marker per node (inputs included), coloured by value type (one legend
    entry per type present) and drawn as a box labelled ``program.label(i)``; hovering
    shows the node index, op, types and shape. Dead nodes are faded, or left
    out with ``show_dead=False``. The output node has a thick black outline; edges on
    the gradient path (both ends live and carrying the gradient of ``q``) are
    red and thick. Arrows point left to right. The title defaults to the
    program's name and its simplified equation as plain text (``program_widget``
    shows it typeset). ``highlight`` rings the given nodes (a mutation's changed node, in
    the parent's and the child's drawing). An edge that would cross another node's box is
    routed through the gaps of the layers it passes. Every node marker's ``customdata`` is
    its graph index; every edge trace point's ``customdata`` is its ``[source, target]``
    (an edge is its points from source to target, then None).
    """
    import plotly.graph_objects as go

    pos = graph_layout(program, prune=not show_dead)
    live, grad = set(program.live()), program.grad_nodes()
    labels = {i: program.label(i) for i in pos}
    n_x = 1 + int(max(x for x, _ in pos.values()))
    n_y = max(sum(1 for p in pos.values() if p[0] == x) for x in range(n_x))
    width = min(MAX_WIDTH, max(560, 115 * n_x + 40))
    # the legend sits in the bottom margin, in rows of fixed-width entries (so it wraps
    # inside the figure rather than running off its right edge): one per type drawn, one per
    # kind of edge, and the ring
    n_entries = len({program.types[i] for i in pos}) + 3 + bool(highlight)
    rows = -(-n_entries // max(1, (width - 20) // (LEGEND_ENTRY + 45)))  # + the symbol
    margin = {"l": 10, "r": 10, "t": 50, "b": 34 + 22 * rows}
    height = max(360, 56 * n_y + 60) + margin["b"]
    sx = (width - margin["l"] - margin["r"]) / n_x  # pixels per layout unit
    sy = (height - margin["t"] - margin["b"]) / (n_y + 0.4)
    # box half sizes in pixels (short labels get a fixed-width box, long ones fit their text)
    half = {i: (19.0 if len(labels[i]) <= 3 else 3.8 * len(labels[i]) + 6, 12.0) for i in pos}

    def gap(i: int, dx: float, dy: float) -> float:
        """Pixels from node i's centre to its box edge along (dx, dy)."""
        hw, hh = half[i]
        length = (dx * dx + dy * dy) ** 0.5
        return min(hw / abs(dx) if dx else 1e9, hh / abs(dy) if dy else 1e9) * length + 2

    half_x = max(hw for hw, _ in half.values()) / sx  # box half sizes in layout units
    half_y = {i: hh / sy for i, (_, hh) in half.items()}
    fig = go.Figure()
    groups: dict[str, list[tuple[int, int]]] = {"gradient path": [], "edge": [], "dead edge": []}
    for s, d in program.to_networkx().edges():
        if s not in pos or d not in pos:
            continue
        if s in live and d in live:
            groups["gradient path" if grad[s] and grad[d] else "edge"].append((s, d))
        else:
            groups["dead edge"].append((s, d))
    style = {"gradient path": (GRAD_COLOR, 3.0, 1.0), "edge": (EDGE_COLOR, 1.3, 0.9),
             "dead edge": (DEAD_COLOR, 1.0, 0.6)}
    for name, edges in groups.items():
        if not edges:
            continue
        color, lw, opacity = style[name]
        xs, ys, cd = [], [], []
        for s, d in edges:
            points = _route(pos, s, d, half_x, half_y)
            xs += [x for x, _ in points] + [None]
            ys += [y for _, y in points] + [None]
            cd += [[s, d]] * (len(points) + 1)
            (ax, ay), (bx, by) = points[-2], points[-1]  # the arrow: the last leg
            dx, dy = (bx - ax) * sx, (by - ay) * sy
            fig.add_annotation(x=bx, y=by, ax=ax, ay=ay,
                               xref="x", yref="y", axref="x", ayref="y", text="",
                               showarrow=True, arrowhead=2, arrowsize=1.0 if lw > 2 else 1.3,
                               arrowwidth=lw, arrowcolor=color, opacity=opacity,
                               standoff=gap(d, dx, dy),
                               startstandoff=gap(s, dx, dy) if len(points) == 2 else 0)
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name=name, customdata=cd,
                                 line={"color": color, "width": lw}, opacity=opacity,
                                 hoverinfo="skip", legendrank=2000))

    for t in Type:  # marker traces per type (live, dead): legend, hover, data for tests
        for is_dead in (False, True):
            idx = [i for i in sorted(pos) if program.types[i] is t and (i not in live) == is_dead]
            if not idx:
                continue
            out = [i == program.output for i in idx]
            fig.add_trace(go.Scatter(
                x=[pos[i][0] for i in idx], y=[pos[i][1] for i in idx], mode="markers",
                name=f"{t.label} {TYPE_SHAPES[t]}" + (" (dead)" if is_dead else ""),
                customdata=idx, text=[labels[i] for i in idx],
                hovertext=[node_hover(program, i) for i in idx], hoverinfo="text",
                marker={"size": [22 if o else 14 for o in out], "color": TYPE_COLORS[t],
                        "symbol": "square", "opacity": DEAD_OPACITY if is_dead else 1.0,
                        "line": {"width": [4 if o else 1 for o in out],
                                 "color": [OUTPUT_OUTLINE if o else "white" for o in out]}},
                hoverlabel={"bgcolor": "white", "bordercolor": TYPE_COLORS[t]},
                legendgroup=t.label, showlegend=not is_dead or not any(
                    program.types[i] is t and i in live for i in pos)))
    for i in sorted(pos):  # the labelled boxes, opaque, drawn over the edges and markers
        c, is_out, alive = TYPE_COLORS[program.types[i]], i == program.output, i in live
        fig.add_annotation(x=pos[i][0], y=pos[i][1], text=html.escape(labels[i]), showarrow=False,
                           bgcolor=_tint(c) if alive else "#f5f5f5", borderwidth=4 if is_out else 2,
                           bordercolor=OUTPUT_OUTLINE if is_out else c if alive else _tint(c, 0.55),
                           borderpad=3, font={"size": 13, "color": "#111" if alive else "#9a9a9a"},
                           width=28 if len(labels[i]) <= 3 else None)

    ring = [i for i in highlight if i in pos]
    if ring:
        fig.add_scatter(x=[pos[i][0] for i in ring], y=[pos[i][1] for i in ring],
                        mode="markers", name="changed by the mutation", customdata=ring,
                        hoverinfo="skip", marker={"symbol": "circle-open", "size": 46,
                                                  "color": CHANGED_COLOR,
                                                  "line": {"width": 4, "color": CHANGED_COLOR}})
    fig.update_layout(
        title={"text": _default_title(program) if title is None else title, "x": 0.01},
        width=width, height=height, margin=margin, plot_bgcolor="white",
        xaxis={"visible": False, "range": [-0.5, n_x - 0.5], "fixedrange": True},
        yaxis={"visible": False, "range": [-(n_y + 0.4) / 2, (n_y + 0.4) / 2], "fixedrange": True},
        legend={"orientation": "h", "x": 0, "y": -0.02, "yanchor": "top",
                "entrywidth": LEGEND_ENTRY, "entrywidthmode": "pixels",
                "title": {"text": "type (shape per batch):", "side": "top"}},
        hovermode="closest", hoverlabel={"align": "left"}, showlegend=True)
    return fig


def _tint(color: str, amount: float = 0.72) -> str:
    """``color`` (#rrggbb) mixed with white: an opaque pale fill."""
    rgb = [int(color[k:k + 2], 16) for k in (1, 3, 5)]
    return "#" + "".join(f"{round(v + (255 - v) * amount):02x}" for v in rgb)


def program_widget(program: Program, *, show_dead: bool = True):
    """An ``ipywidgets.HBox``: the DAG as a ``FigureWidget`` beside its equations.

    Beside the figure (below it when the notebook is too narrow) an
    ``ipywidgets.HTMLMath`` shows the simplified equation and the raw one
    (unsimplified, guards dropped), rendered by JupyterLab's MathJax. The
    figure's title is the plain program name: plotly's own MathJax rendering
    needs a global MathJax that JupyterLab 4 does not provide.
    """
    import ipywidgets as w
    import plotly.graph_objects as go

    fig = go.FigureWidget(program_figure(program, show_dead=show_dead,
                                         title=program.name or "program"))
    eq = program.equation(latex=True)
    raw = program.equation(latex=True, simplify=False)
    text = (f"<h4>{html.escape(program.name or 'program')}</h4>"
            f"<p><b>simplified</b></p><p>$$ {eq} $$</p>"
            f"<p><b>raw</b> (the graph read as it is)</p><p>$$ {raw} $$</p>"
            f"<p>{len(program.nodes)} op nodes, {len(program.live()) - N_INPUTS} live</p>")
    math = w.HTMLMath(value=text, layout=w.Layout(min_width="260px", max_width="480px"))
    return w.HBox([fig, math], layout=w.Layout(align_items="center", flex_flow="row wrap"))
