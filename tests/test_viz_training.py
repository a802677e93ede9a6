"""The training plots (evorl_nb.viz.training) on real ci-budget training runs."""

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from evorl_nb import library
from evorl_nb.dqn import get_config, train
from evorl_nb.envs import get_spec
from evorl_nb.viz.training import QValueMonitor, learning_curves, moving_average, score_bars

ENV = "CartPole-v1"
NAMES = {"DQN": "dqn", "DQNReg": "dqn_reg"}


@pytest.fixture(scope="module")
def monitored():
    """Two library programs trained at the ci preset with the monitor's callback."""
    monitor = QValueMonitor()
    runs = {name: train(library.get(prog), ENV, get_config("ci"), seed=0,
                        callback=monitor.callback(name))
            for name, prog in NAMES.items()}
    return monitor, runs


@pytest.fixture(scope="module")
def two_seeds(monitored):
    _, runs = monitored
    return {name: [runs[name], train(library.get(prog), ENV, get_config("ci"), seed=1)]
            for name, prog in NAMES.items()}


def test_monitor_traces_follow_the_records(monitored):
    monitor, runs = monitored
    fig = monitor.figure
    assert isinstance(fig, go.FigureWidget)
    assert len(fig.data) == 2 * len(NAMES)
    for name, run in runs.items():
        assert not run.failed and run.episodes
        assert monitor.records[name] == run.episodes
        traces = [t for t in fig.data if t.name.startswith(f"{name}: ")]
        assert len(traces) == 2
        q_trace, ret_trace = traces
        assert q_trace.line.dash in (None, "solid") and ret_trace.line.dash == "dash"
        assert q_trace.line.color == ret_trace.line.color
        for t in traces:
            assert len(t.x) == len(t.y) == len(run.episodes)
            assert list(t.x) == [e.step for e in run.episodes]
            assert np.all(np.diff(t.x) > 0)
        assert list(q_trace.y) == pytest.approx([e.q_initial for e in run.episodes])
        assert list(ret_trace.y) == pytest.approx([e.discounted_return for e in run.episodes])
    names = " ".join(t.name for t in fig.data)
    assert all(name in names for name in NAMES)
    colors = {t.line.color for t in fig.data}
    assert len(colors) == len(NAMES)


def test_bias_is_mean_overestimation_after_learning_starts(monitored):
    monitor, runs = monitored
    for name, run in runs.items():
        learned = [e for e in run.episodes if not math.isnan(e.batch_q_mean)]
        assert 0 < len(learned) < len(run.episodes)  # the ci preset starts learning at step 100
        expected = sum(e.q_initial - e.discounted_return for e in learned) / len(learned)
        assert monitor.bias(name) == pytest.approx(expected)
    assert list(monitor.biases()) == list(NAMES)
    assert math.isnan(monitor.bias("never trained"))


def test_monitor_smoothing_keeps_one_point_per_episode(monitored):
    _, runs = monitored
    smooth = QValueMonitor(smoothing=5)
    for record in runs["DQN"].episodes:
        smooth.callback("DQN")(record)
    q_trace = smooth.figure.data[0]
    raw = [e.q_initial for e in runs["DQN"].episodes]
    assert len(q_trace.y) == len(raw)
    assert q_trace.y[-1] == pytest.approx(np.mean(raw[-5:]))
    assert q_trace.y[0] == pytest.approx(raw[0])
    with pytest.raises(ValueError):
        QValueMonitor(smoothing=0)


def test_moving_average():
    assert moving_average([1, 2, 3, 4], 2).tolist() == [1, 1.5, 2.5, 3.5]
    assert moving_average([1, 2], 1).tolist() == [1, 2]
    assert moving_average([], 3).size == 0


def test_learning_curves_band_and_mean_per_algorithm(two_seeds):
    fig = learning_curves(two_seeds, window=5)
    assert len(fig.data) == 2 * len(NAMES)
    for name in NAMES:
        band = [t for t in fig.data if t.legendgroup == name and t.fill == "toself"]
        mean = [t for t in fig.data if t.legendgroup == name and t.fill != "toself"]
        assert len(band) == 1 and len(mean) == 1
        y_mean, y_band = np.asarray(mean[0].y), np.asarray(band[0].y)
        assert np.all((0 <= y_mean) & (y_mean <= 1)) and np.all((0 <= y_band) & (y_band <= 1))
        n = len(mean[0].x)
        hi, lo = y_band[:n], y_band[n:][::-1]
        assert np.all(lo <= y_mean + 1e-12) and np.all(y_mean <= hi + 1e-12)
        assert np.all(np.diff(mean[0].x) > 0)
    # the curve is the runs' smoothed normalized returns: check the last point
    spec = get_spec(ENV)
    runs = two_seeds["DQN"]
    mean = next(t for t in fig.data if t.legendgroup == "DQN" and t.fill != "toself")
    at_end = [moving_average(spec.normalize(r.returns), 5)[-1] for r in runs
              if r.episodes[-1].step == max(r.episodes[-1].step for r in runs)]
    assert mean.y[-1] == pytest.approx(np.mean(at_end))


def test_learning_curves_single_run_and_env_checks(monitored, two_seeds):
    _, runs = monitored
    fig = learning_curves({"DQN": runs["DQN"]})
    assert len(fig.data) == 1 and fig.data[0].fill is None
    other = train(library.get("dqn"), "CartPole-v0", get_config("ci", max_steps=150), seed=0)
    with pytest.raises(ValueError, match="environments"):
        learning_curves({"a": runs["DQN"], "b": other})
    assert len(learning_curves({"a": runs["DQN"], "b": other}, env_id=ENV).data) == 2


def test_score_bars_error_bars_are_the_std():
    rows = [{"program": p, "env": e, "score": s}
            for p, e, scores in [("dqn", "CartPole-v1", [0.2, 0.4, 0.9]),
                                 ("dqn", "Acrobot-v1", [0.5]),
                                 ("dqn_reg", "CartPole-v1", [0.7, 0.8]),
                                 ("dqn_reg", "Acrobot-v1", [0.1, 0.3, 0.2])]
            for s in scores]
    for table in (rows, pd.DataFrame(rows)):
        fig = score_bars(table)
        assert [t.name for t in fig.data] == ["dqn", "dqn_reg"]
        dqn, reg = fig.data
        assert list(dqn.x) == ["CartPole-v1", "Acrobot-v1"]
        assert list(dqn.y) == pytest.approx([0.5, 0.5])
        assert list(dqn.error_y.array) == pytest.approx([np.std([0.2, 0.4, 0.9], ddof=1), 0.0])
        assert list(reg.y) == pytest.approx([0.75, 0.2])
        assert list(reg.error_y.array) == pytest.approx([np.std([0.7, 0.8], ddof=1),
                                                         np.std([0.1, 0.3, 0.2], ddof=1)])
    with pytest.raises(ValueError, match="score"):
        score_bars([{"program": "dqn", "env": "CartPole-v1"}])


def test_monitor_draws_the_mean_of_several_seeds_with_a_band(two_seeds):
    runs = two_seeds["DQN"]
    monitor = QValueMonitor(min_interval=3600.0)  # hold every redraw back until refresh()
    for seed, run in enumerate(runs):
        for record in run.episodes:
            monitor.add("DQN", record, run=seed)
    assert len(monitor.figure.data) == 2 and len(monitor.figure.data[0].x) <= 1  # held back
    monitor.refresh()
    q, ret, band = monitor.figure.data
    assert "mean of 2" in q.name and "mean of 2" in ret.name and band.fill == "toself"
    assert q.line.color == ret.line.color
    # the mean line sits inside the band, which spans the two seeds' Q(s_0)
    n = len(q.x)
    hi, lo = np.array(band.y[:n]), np.array(band.y[n:][::-1])
    assert np.all(lo <= np.array(q.y) + 1e-9) and np.all(np.array(q.y) <= hi + 1e-9)
    last = [r.episodes[-1] for r in runs]
    top = max(e.step for e in last)
    assert q.x[-1] <= top and q.x[0] >= 0
    per_run = monitor.run_biases("DQN")
    assert set(per_run) == {0, 1}
    for seed, run in enumerate(runs):
        learned = [e.q_initial - e.discounted_return for e in run.episodes
                   if not math.isnan(e.batch_q_mean)]
        assert per_run[seed] == pytest.approx(np.mean(learned))


def test_every_algorithm_has_one_colour_in_every_figure(monitored, two_seeds):
    from evorl_nb.viz.style import ALGORITHM_COLORS, algorithm_color

    monitor, _ = monitored
    curves = learning_curves(two_seeds)
    bars = score_bars([{"program": n, "env": ENV, "score": r.score()}
                       for n, rs in two_seeds.items() for r in rs])
    for name, prog in NAMES.items():  # "DQNReg" and "dqn_reg" are one algorithm
        want = ALGORITHM_COLORS[prog]
        assert algorithm_color(name) == want
        assert {t.line.color for t in monitor.figure.data if t.name.startswith(name + ":")} \
            == {want}
        assert {t.line.color for t in curves.data
                if t.name.startswith(name + " (") and t.fill != "toself"} == {want}
        assert [t.marker.color for t in bars.data if t.name == name] == [want]
    assert algorithm_color("id:7981", 0) not in ALGORITHM_COLORS.values()
