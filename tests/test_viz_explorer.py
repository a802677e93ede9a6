"""The program explorer (evorl_nb.viz.explorer), driven through its methods and buttons."""

import html

import numpy as np
import pytest
from fakes import FakeEvaluator, nan_program

import evorl_nb.runner
from evorl_nb import library
from evorl_nb.evolve import get_preset
from evorl_nb.program import Program
from evorl_nb.search_space import get_space, random_program
from evorl_nb.store import load_run
from evorl_nb.viz import ProgramExplorer
from evorl_nb.viz.explorer import Change

EDGE_TRACES = {"gradient path", "edge", "dead edge", "changed by the mutation"}


def _nodes(fig) -> dict[int, str]:
    """Graph index -> label of every node marker in a program figure."""
    out = {}
    for t in fig.data:
        if t.name not in EDGE_TRACES:
            out.update(zip(t.customdata, t.text, strict=True))
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A real (fake-scored) evolution run at a tiny budget."""
    config = get_preset("ci", population=4, tournament=2, candidates=10)
    return evorl_nb.runner.start(tmp_path_factory.mktemp("evo") / "r", config, seed=0,
                                 evaluator=FakeEvaluator(), progress=False, verbose=False)


def test_select_updates_figure_and_equation():
    ex = ProgramExplorer()
    assert list(ex.programs) == library.names() and ex.name == library.names()[0]
    for name in ("dqn_reg", "mdqn"):
        prog = ex.select(name)
        assert prog == library.get(name) and ex.picker.value == name
        assert _nodes(ex.figure) == {i: prog.label(i) for i in range(len(prog.types))}
        assert prog.equation(latex=True) in ex.equation.value
        assert ex.changes.value == "" and ex.back_button.disabled
    ex.picker.value = "ddqn"  # the drop-down selects too
    assert ex.name == "ddqn" and len(_nodes(ex.figure)) == len(library.get("ddqn").types)
    assert library.get("ddqn").equation(latex=True) in ex.equation.value
    ex.dead.value = False  # live nodes only
    assert set(_nodes(ex.figure)) == set(ex.program.live())
    assert ex.widget.children[2].children[0] is ex.figure


def test_mutate_shows_the_child_and_back_returns():
    ex = ProgramExplorer(seed=1)
    parent = ex.select("dqn")
    change = ex.mutate()
    child = ex.program
    assert isinstance(change, Change) and change.parent == parent and change.child == child
    assert Program.from_json(child.to_json()) == child  # a valid program
    assert child != parent and change.changed
    m = change.mutation
    assert ex.change is change and ex.name == "dqn · mutant 1"
    assert _nodes(ex.figure) == {i: child.label(i) for i in range(len(child.types))}
    assert child.equation(latex=True) in ex.equation.value
    panel = ex.changes.value
    assert "What changed" in panel
    if m.kind == "point":
        assert f"point mutation of node {m.index}" in panel
        for node in (m.before, m.after):
            assert html.escape(node.describe()) in panel
        ring = next(t for t in ex.figure.data if t.name == "changed by the mutation")
        assert list(ring.customdata) == [m.index]
    else:
        assert "redrew every mutable node" in panel
    assert ("functionally the same" in panel) == change.same_loss
    assert "→" in ex.path.value and not ex.back_button.disabled
    assert ex.back() == parent and ex.change is None and ex.changes.value == ""
    assert _nodes(ex.figure) == {i: parent.label(i) for i in range(len(parent.types))}
    assert ex.back() == parent  # at the picked program: nothing to go back to
    ex.mutate_button.click()  # the buttons do the same
    ex.mutate_button.click()
    assert len(ex.history) == 3 and ex.history[1].program == ex.history[2].change.parent
    ex.back_button.click()
    assert len(ex.history) == 2


def _session(seed):
    ex = ProgramExplorer(seed=seed)
    ex.select("dqn_reg")
    out = [ex.mutate(), ex.mutate()]
    ex.back()
    out.append(ex.mutate())
    ex.select("ddqn")
    out.append(ex.mutate())
    return [(c.mutation, c.child) for c in out]


def test_the_same_seed_replays_the_same_mutations():
    a, b = _session(7), _session(7)
    assert a == b
    assert _session(8) != a


def test_a_mutation_that_keeps_the_loss_says_so():
    # a bootstrap program has 12 dead nodes: mutating one leaves the loss as it is
    boot = random_program(get_space("bootstrap"), np.random.default_rng(0))
    ex = ProgramExplorer({"boot": boot}, seed=0)
    seen = set()
    for _ in range(30):
        change = ex.mutate()
        seen.add(change.same_loss)
        text = ex.changes.value
        if change.same_loss:
            assert "functionally the same" in text and "same fingerprint" in change.describe()
            assert change.child.fingerprint() == boot.fingerprint()
        else:
            assert "A different loss" in text
        ex.back()
        if seen == {True, False}:
            break
    assert seen == {True, False}


def test_programs_from_a_run_list_and_dict(run):
    data = load_run(run)
    best = data.best(3, distinct=True)
    ex = ProgramExplorer(run, top=3)
    evolved = [n for n in ex.programs if n.startswith("evolved #")]
    assert len(evolved) == len(best) and set(library.names()) < set(ex.programs)
    first = evolved[0]
    assert first == f"evolved #{int(best['id'].iloc[0])} (fitness {best['fitness'].iloc[0]:.3f})"
    prog = ex.select(first)
    assert prog == Program.from_json(best["program"].iloc[0])
    assert len(_nodes(ex.figure)) == len(prog.types)
    ex.mutate()
    assert ex.name.startswith(first)
    ex2 = ProgramExplorer(["dqn", library.get("cql"), nan_program()], run=data, top=1)
    assert list(ex2.programs)[:3] == ["dqn", "cql", "nan"] and len(ex2.programs) == 4
    ex3 = ProgramExplorer({"mine": library.get("dqn_reg")})
    assert ex3.program.name == "mine" and ex3.program == library.get("dqn_reg")
    with pytest.raises(KeyError):
        ex3.select("dqn")


def test_evaluate_plots_every_episode_and_reports_the_score():
    ex = ProgramExplorer(["dqn"], config="ci")
    result = ex.evaluate(wait=True)
    assert not result.failed and result.episodes and ex.result is result
    label = "dqn #1 (seed 0)"
    assert ex.results == {label: result}
    curve = ex.curve.data[0]
    assert curve.name == label and len(curve.x) == len(curve.y) == len(result.episodes)
    assert list(curve.x) == [e.step for e in result.episodes]
    assert ex.monitor.records[label] == result.episodes
    assert all(len(t.x) == len(result.episodes) for t in ex.monitor.figure.data
               if t.name.startswith(label))
    assert ex.score == pytest.approx(result.score()) and 0 <= ex.score <= 1
    assert f"{ex.score:.3f}" in ex.status.value and "normalized score" in ex.status.value
    assert not ex.evaluate_button.disabled and ex.stop_button.disabled
    # in the background, evaluating again: the next seed, a new run in new traces (the same
    # seed would draw the same curve over the first one)
    assert ex.evaluate() is None
    again = ex.wait(timeout=120)
    assert again.seed == 1 and "dqn #2 (seed 1)" in ex.results
    assert len(ex.curve.data) == 2 and len(ex.curve.data[1].x) == len(again.episodes)
    same = ex.evaluate(wait=True, seed=0)  # an explicit seed is taken as it is
    assert list(same.returns) == list(result.returns)
    with pytest.raises(Exception, match="Nowhere"):
        ex.evaluate(wait=True, env_id="Nowhere-v0")


def test_a_failed_run_shows_its_reason():
    ex = ProgramExplorer({"nan": nan_program()})
    result = ex.evaluate(wait=True)
    assert result.failed and "loss is nan" in result.reason
    assert "failed" in ex.status.value and html.escape(result.reason) in ex.status.value
    assert ex.score == 0.0
    ex.evaluate()  # in the background: no exception either
    assert ex.wait(timeout=60).failed and "loss is nan" in ex.status.value


def test_stop_ends_a_background_run():
    ex = ProgramExplorer(["dqn"], config="quick")
    ex.evaluate()
    with pytest.raises(RuntimeError, match="already running"):
        ex.evaluate()
    ex.stop()
    assert ex.wait(timeout=60) is None and "stopped" in ex.status.value
    assert not ex.running and not ex.results and ex.result is None
