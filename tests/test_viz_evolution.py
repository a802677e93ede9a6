"""Tests of the evolution views (evorl_nb.viz.evolution) on real (fake-scored) runs."""

import time

import numpy as np
import pytest
from fakes import FakeEvaluator

import evorl_nb.runner
from evorl_nb.evolve import get_preset
from evorl_nb.store import load_run
from evorl_nb.viz.evolution import (
    EvolutionDashboard,
    fitness_figure,
    lineage,
    lineage_figure,
    rates_figure,
)


def _start(out):
    return evorl_nb.runner.start(out, get_preset("ci", population=6, tournament=3, candidates=30),
                                 seed=0, evaluator=FakeEvaluator(), progress=False, verbose=False)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return _start(tmp_path_factory.mktemp("evo") / "r")


def _trace(fig, name):
    return next(t for t in fig.data if t.name == name)


def test_fitness_figure(run):
    data = load_run(run)
    df = data.candidates
    fig = fitness_figure(run)
    statuses = ("trained", "duplicate", "below_hurdle", "failed")
    assert sum(len(_trace(fig, s).x) for s in statuses) == len(df) == 30
    best = np.asarray(_trace(fig, "best so far").y, dtype=float)
    assert np.all(np.diff(best) >= 0)
    np.testing.assert_allclose(best, df["fitness"].cummax().to_numpy())
    mean = np.asarray(_trace(fig, "population mean").y, dtype=float)
    assert len(mean) == 30
    np.testing.assert_allclose(mean[-1], df["fitness"].fillna(0).to_numpy()[-6:].mean())
    assert len(fitness_figure(data).data) == len(fig.data)  # RunData works too


def test_rates_figure(run):
    fig = rates_figure(run, window=10)
    assert len(fig.data) == 3
    for t in fig.data:
        y = np.asarray(t.y, dtype=float)
        assert len(y) == 30 and np.all((y >= 0) & (y <= 1))


def test_lineage(run):
    df = load_run(run).candidates
    target = int(df["id"].iloc[-1])
    steps = lineage(run, target)
    assert steps[-1]["id"] == target
    assert steps[0]["parent_id"] is None
    for parent, child in zip(steps, steps[1:], strict=False):
        assert child["parent_id"] == parent["id"]
        assert isinstance(child["mutation"], str) and child["mutation"]
    assert all(isinstance(s["equation"], str) and s["equation"] for s in steps)
    fig = lineage_figure(run, target)
    assert len(fig.data[0].x) == len(steps)
    with pytest.raises(KeyError):
        lineage(run, 10_000)


def test_dashboard_refresh_follows_resume(tmp_path):
    path = _start(tmp_path / "r")
    dash = EvolutionDashboard(tmp_path / "r")
    assert len(_trace(dash.fitness, "best so far").x) == 30
    assert "<table>" in dash.table.value and "\\(" in dash.table.value  # typeset equations
    evorl_nb.runner.resume(path, candidates=40, evaluator=FakeEvaluator(), progress=False,
                           verbose=False)
    assert dash.refresh()
    assert len(_trace(dash.fitness, "best so far").x) == 40
    assert all(len(t.x) == 40 for t in dash.rates.data)
    assert dash.widget.children[1] is dash.fitness


def test_dashboard_without_store(tmp_path):
    dash = EvolutionDashboard(tmp_path / "not-yet")
    assert dash.refresh() is False
    assert "waiting" in dash.status.value
    dash.start(interval=0.01)
    dash.stop()
    assert not (tmp_path / "not-yet").exists()


def test_dashboard_start_refreshes_in_background(tmp_path):
    dash = EvolutionDashboard(tmp_path / "r")
    dash.start(interval=0.05)
    try:
        _start(tmp_path / "r")
        deadline = time.time() + 10
        while time.time() < deadline and dash.data is None:
            time.sleep(0.05)
    finally:
        dash.stop()
    assert dash.data is not None and dash._thread is None
