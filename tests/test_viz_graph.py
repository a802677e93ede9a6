"""The program DAG figure (``evorl_nb.viz.graph``): layout, markers, colours, hover, edges."""

from __future__ import annotations

import numpy as np
import pytest

go = pytest.importorskip("plotly.graph_objects")

from evorl_nb import library  # noqa: E402
from evorl_nb.ops import Type  # noqa: E402
from evorl_nb.program import N_INPUTS, ProgramBuilder  # noqa: E402
from evorl_nb.search_space import get_space, random_program  # noqa: E402
from evorl_nb.viz.graph import (  # noqa: E402
    GRAD_COLOR,
    TYPE_COLORS,
    graph_layout,
    program_figure,
    program_widget,
)

EDGE_TRACES = {"gradient path", "edge", "dead edge"}


def _random_bootstrap():
    return random_program(get_space("bootstrap"), np.random.default_rng(0))


def _node_traces(fig):
    return [t for t in fig.data if t.name not in EDGE_TRACES]


def _node_points(fig):
    """Graph index -> (trace, position in the trace) for every node marker."""
    out = {}
    for t in _node_traces(fig):
        for k, i in enumerate(t.customdata):
            assert i not in out, f"node {i} has two markers"
            out[i] = (t, k)
    return out


def _edges(fig, name):
    trace = next((t for t in fig.data if t.name == name), None)
    return set() if trace is None else {tuple(cd) for cd in trace.customdata}


# --- layout --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["dqn", "dqn_clipped", "mdqn"])
def test_layout_x_is_topological_generation(name):
    prog = library.get(name)
    pos = graph_layout(prog)
    assert set(pos) == set(range(len(prog.types)))
    for i in range(N_INPUTS):
        assert pos[i][0] == 0.0
    for i, node in enumerate(prog.nodes, start=N_INPUTS):  # longest path from a source
        want = 1 + max((pos[j][0] for j in node.inputs), default=-1)
        assert pos[i][0] == want
        for j in node.inputs:
            assert pos[j][0] < pos[i][0]  # every edge goes left to right
    # within a layer: evenly spaced, one unit apart, centred, no two nodes at one place
    for x in {p[0] for p in pos.values()}:
        ys = sorted(p[1] for p in pos.values() if p[0] == x)
        assert np.allclose(np.diff(ys), 1.0) and abs(sum(ys)) < 1e-9
    assert graph_layout(prog) == pos  # deterministic


def test_layout_prune_keeps_live_indices():
    prog = _random_bootstrap()
    pruned = graph_layout(prog, prune=True)
    assert set(pruned) == set(prog.live()) != set(range(len(prog.types)))


# --- markers and colours ---------------------------------------------------------------


def test_marker_count_with_and_without_dead_nodes():
    prog = _random_bootstrap()
    n_all, n_live = len(prog.types), len(prog.live())
    assert n_live < n_all  # the bootstrap program starts with dead random nodes
    full = program_figure(prog)
    assert sum(len(t.x) for t in _node_traces(full)) == n_all
    assert set(_node_points(full)) == set(range(n_all))
    live_only = program_figure(prog, show_dead=False)
    assert sum(len(t.x) for t in _node_traces(live_only)) == n_live
    assert set(_node_points(live_only)) == set(prog.live())
    assert "dead edge" in {t.name for t in full.data}
    assert "dead edge" not in {t.name for t in live_only.data}
    # dead markers are faded; live ones are not
    for i, (trace, _) in _node_points(full).items():
        assert (trace.marker.opacity < 0.5) == (i not in prog.live())


def test_colours_follow_types():
    prog = library.get("dqn")
    fig = program_figure(prog)
    points = _node_points(fig)
    colour = {i: t.marker.color for i, (t, _) in points.items()}
    assert colour[5] == colour[6] == TYPE_COLORS[Type.R]  # r_t and discount: both R
    assert colour[0] == colour[3] == TYPE_COLORS[Type.PARAM]  # q and q_targ
    assert prog.types[7] is Type.LIST and prog.types[8] is Type.R
    assert colour[7] != colour[8]  # QValues (List[R]) vs SelectList (R)
    for i, c in colour.items():
        assert c == TYPE_COLORS[prog.types[i]]
    legend = {t.name for t in _node_traces(fig) if t.showlegend is not False}
    assert legend == {"R (B,)", "List[R] (B, A)", "S (B, obs...)", "Z (B,) int", "Param network"}


def test_output_hover_and_highlight():
    prog = library.get("dqn_reg")
    fig = program_figure(prog)
    trace, k = _node_points(fig)[prog.output]
    hover = trace.hovertext[k]
    assert "Add" in hover and "(R, R) → R" in hover and "output" in hover
    assert trace.marker.line.width[k] > max(
        w for j, w in enumerate(trace.marker.line.width) if j != k)
    # the box of the output node has the thick outline too
    boxes = [a for a in fig.layout.annotations if not a.showarrow]
    assert len(boxes) == len(prog.types)
    assert max(boxes, key=lambda a: a.borderwidth).x == graph_layout(prog)[prog.output][0]


def test_input_hover_has_shape():
    fig = program_figure(library.get("dqn"))
    trace, k = _node_points(fig)[2]  # s_t
    assert "s_t" in trace.hovertext[k] and "(B, obs...)" in trace.hovertext[k]


# --- edges -----------------------------------------------------------------------------


def test_gradient_path_edges_for_dqn():
    # 7=QValues(q, s_t); 8=SelectList; 9=QValues(q_targ, s_tp1); 10=MaxList
    prog = library.get("dqn")
    assert (prog.nodes[0].inputs, prog.nodes[2].inputs) == ((0, 2), (3, 4))
    fig = program_figure(prog)
    grad, plain = _edges(fig, "gradient path"), _edges(fig, "edge")
    assert (7, 8) in grad and (0, 7) in grad and (13, 14) in grad
    assert (9, 10) not in grad and (9, 10) in plain
    assert (3, 9) in plain and (2, 7) in plain  # s_t carries no gradient of q
    g = prog.to_networkx()
    assert grad | plain == set(g.edges())
    trace = next(t for t in fig.data if t.name == "gradient path")
    assert trace.line.color == GRAD_COLOR
    assert trace.line.width > next(t for t in fig.data if t.name == "edge").line.width
    # each drawn edge runs from its source's layout position to its target's (through
    # waypoints where it is routed around other nodes), then None
    pos = graph_layout(prog)
    for s, d, points in _polylines(trace):
        assert points[0] == pos[s] and points[-1] == pos[d]
        assert all(a[0] < b[0] for a, b in zip(points, points[1:]))  # left to right
    # one arrow per edge, red on the gradient path
    arrows = [a for a in fig.layout.annotations if a.showarrow]
    assert len(arrows) == g.number_of_edges()
    assert sum(a.arrowcolor == GRAD_COLOR for a in arrows) == len(grad)


def test_gradient_path_stops_at_argmax():
    prog = library.get("ddqn")  # 7=QValues(q, s_tp1) -> 8=ArgMaxList: no gradient past it
    grad = _edges(program_figure(prog), "gradient path")
    assert (0, 7) in grad and (7, 8) not in grad and (8, 10) not in grad


# --- title and widget --------------------------------------------------------------------


def test_title_has_the_equation():
    prog = library.get("dqn_reg")
    title = program_figure(prog).layout.title.text
    assert prog.equation() in title and title.startswith(prog.name)
    assert program_figure(prog, title="mine").layout.title.text == "mine"


def test_unnamed_built_program():
    b = ProgramBuilder()
    q_sa = b.SelectList(b.QValues(b.q, b.s_t), b.a_t)
    prog = b.build(b.L2Norm(q_sa))
    fig = program_figure(prog)
    assert sum(len(t.x) for t in _node_traces(fig)) == len(prog.types)


def test_program_widget_contains_figure_widget():
    widgets = pytest.importorskip("ipywidgets")
    prog = library.get("dqn_clipped")
    box = program_widget(prog)
    assert isinstance(box, widgets.Box)
    figs = [c for c in box.children if isinstance(c, go.FigureWidget)]
    assert len(figs) == 1
    assert sum(len(t.x) for t in _node_traces(figs[0])) == len(prog.types)
    math = [c for c in box.children if isinstance(c, widgets.HTMLMath)]
    assert len(math) == 1
    assert prog.equation(latex=True) in math[0].value
    assert prog.equation(latex=True, simplify=False) in math[0].value


def _polylines(trace):
    """(source, target, points) of each edge drawn in an edge trace."""
    out, points = [], []
    for x, y, cd in zip(trace.x, trace.y, trace.customdata, strict=True):
        if x is None:
            out.append((cd[0], cd[1], points))
            points = []
        else:
            points.append((x, y))
    return out


@pytest.mark.parametrize("name", ["dqn", "ddqn", "dqn_clipped", "cql", "mdqn"])
def test_edges_do_not_cross_other_nodes(name):
    """An edge that skips layers is routed through their gaps: at every layer it passes, it
    is clear of the boxes there (so a live edge never reads as an input of a dead node)."""
    prog = library.get(name)
    fig = program_figure(prog)
    pos = graph_layout(prog)
    n_y = max(sum(1 for p in pos.values() if p[0] == x) for x in {p[0] for p in pos.values()})
    m = fig.layout.margin
    half = 12.0 / ((fig.layout.height - m.t - m.b) / (n_y + 0.4))  # box half height, units
    crossings = 0
    for trace in fig.data:
        if trace.name not in ("gradient path", "edge", "dead edge"):
            continue
        for s, d, points in _polylines(trace):
            for (xa, ya), (xb, yb) in zip(points, points[1:]):
                for i, (x, y) in pos.items():
                    if i in (s, d) or not xa < x < xb:
                        continue
                    at = ya + (yb - ya) * (x - xa) / (xb - xa)
                    crossings += abs(at - y) < half
    assert crossings == 0


def test_highlight_rings_the_changed_node_and_inputs_keep_their_rows():
    prog = library.get("dqn_reg")
    changed = prog.output
    fig = program_figure(prog, show_dead=False, highlight=[changed])
    ring = next(t for t in fig.data if t.name == "changed by the mutation")
    assert list(ring.customdata) == [changed]
    pos, full = graph_layout(prog, prune=True), graph_layout(prog)
    assert all(pos[i] == full[i] for i in range(7))  # every input, live or not, keeps its row
    assert "changed by the mutation" not in {t.name for t in program_figure(prog).data}
