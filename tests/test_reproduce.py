"""Every reproduction experiment runs at the ci budget and writes what it promises."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from evorl_nb import reproduce
from evorl_nb.cli import main as cli_main
from evorl_nb.viz.experiments import figures, save_figures


def test_ci95_matches_a_hand_computation():
    mean, half = reproduce.ci95([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.303 * 1.0 / math.sqrt(3))
    assert math.isnan(reproduce.ci95([5.0])[1])


TRAINING = sorted(n for n, e in reproduce.EXPERIMENTS.items() if e.kind != "search")
SEARCHES = sorted(n for n, e in reproduce.EXPERIMENTS.items() if e.kind == "search")


@pytest.mark.parametrize("name", TRAINING)
def test_each_training_experiment_runs_at_the_ci_budget(tmp_path, name):
    exp = reproduce.EXPERIMENTS[name]
    folder = reproduce.run(name, "ci", tmp_path, progress=False)
    data = reproduce.load(folder)
    runs, summary, episodes, meta = (data["runs"], data["summary"], data["episodes"],
                                     data["meta"])
    seeds = reproduce.BUDGETS["ci"]["seeds"]
    assert len(runs) == len(exp.algorithms) * len(exp.envs) * seeds
    assert len(summary) == len(exp.algorithms) * len(exp.envs)
    assert ((runs.score_all >= 0) & (runs.score_all <= 1)).all()
    assert (summary.seeds == seeds).all() and summary.ci95_all.notna().all()
    # the summary is the runs' mean
    for _, row in summary.iterrows():
        mine = runs[(runs.algorithm == row.algorithm) & (runs.env == row.env)]
        assert row.score_all == pytest.approx(mine.score_all.mean())
    # every finished episode is in episodes.csv (a ci run has fewer than EPISODE_ROWS)
    assert len(episodes) == runs.episodes.sum()
    assert np.isfinite(episodes.q_initial).all()
    assert meta["command"] == f"evorl-nb reproduce {name} --budget ci"
    json.dumps(meta)
    figs = figures(folder)
    pairs = len(episodes.groupby(["algorithm", "env"]))  # runs with a finished episode
    assert pairs >= len(exp.algorithms)
    assert len(figs["curves"].data) == pairs
    bars = figs["scores"].data  # one bar trace per algorithm, the summary's means
    assert [b.name for b in bars] == list(exp.algorithms)
    assert list(bars[0].y) == pytest.approx(
        summary[summary.algorithm == exp.algorithms[0]].set_index("env")
        .reindex(list(bars[0].x)).score_all.tolist())
    if name == "overestimation":
        assert len(figs["overestimation"].data) == 2 * pairs
        bias = reproduce.overestimation_bias(folder)
        assert len(bias) == len(exp.algorithms) * len(exp.envs)
        assert np.isfinite(bias.bias).all()
    if exp.kind == "cases":
        cases = data["cases"]
        assert set(cases.env) == set(exp.envs) and cases.seed.nunique() == seeds
        assert cases.fraction_first.between(0, 1).all()
        # every update of every run is counted once per tracked node
        per_run = cases.groupby(["env", "seed", "node"]).updates.sum()
        assert per_run.nunique() == 1 and per_run.iloc[0] > 0
        table = reproduce.case_summary(folder)
        assert len(table) == 2 * len(exp.envs)  # DQNClipped has two max ops
        assert table.first_all.between(0, 1).all()
        assert len(figs["cases"].data) == len(table)


@pytest.mark.parametrize("name", SEARCHES)
def test_each_search_experiment_runs_at_the_ci_budget(tmp_path, name):
    from evorl_nb.evolve import get_preset
    from evorl_nb.store import load_run

    folder = reproduce.run(name, "ci", tmp_path, progress=False)
    data = reproduce.load(folder)
    run = load_run(folder / data["meta"]["run"])
    conv, table = data["convergence"], data["table"]
    assert len(conv) == len(run.candidates) == get_preset("ci").candidates
    fit = conv.fitness.to_numpy(dtype=float)
    assert np.allclose(conv.best_so_far.to_numpy(dtype=float), np.fmax.accumulate(fit),
                       equal_nan=True)
    assert table.score.is_monotonic_decreasing and table["rank"].iloc[0] == 1
    assert table.score.iloc[0] == pytest.approx(np.nanmax(fit))
    assert table["rank"].is_monotonic_increasing and table.proposed.min() >= 1
    assert len(figures(folder)["convergence"].data) >= 2
    from evorl_nb import library

    dqn_seen = (run.candidates.fingerprint == library.get("dqn").fingerprint()).any()
    assert dqn_seen == (name == "search")  # the bootstrapped search starts from DQN


def test_branch_tracker_trains_exactly_as_the_program_and_counts_the_branches():
    import torch

    from evorl_nb import library
    from evorl_nb.dqn import get_config, train
    from evorl_nb.program import Batch

    program = library.get("dqn_clipped")
    plain = train(program, "CartPole-v0", "ci", seed=3)
    tracker = reproduce.BranchTracker(program)
    tracked = train(tracker, "CartPole-v0", "ci", seed=3)
    assert list(plain.returns) == list(tracked.returns)
    assert [e.q_initial for e in plain.episodes] == [e.q_initial for e in tracked.episodes]
    assert len(tracker.history) == tracked.updates > 0
    rows = tracker.rows(get_config("ci"))
    assert sum(r["updates"] for r in rows) == 2 * tracked.updates
    # by hand: Q(s_t, a_t) > δ^2 + Y exactly where the first max takes its first input
    gen = torch.Generator().manual_seed(0)
    batch = Batch(torch.randn(64, 4, generator=gen), torch.randint(0, 2, (64,), generator=gen),
                  torch.randn(64, generator=gen), torch.randn(64, 4, generator=gen),
                  torch.zeros(64))
    q = torch.nn.Linear(4, 2)
    t = torch.nn.Linear(4, 2)
    tracker = reproduce.BranchTracker(program)
    tracker.loss(batch, q, t, 0.99)
    with torch.no_grad():
        q_sa = q(batch.obs).gather(1, batch.action[:, None])[:, 0]
        y = batch.reward + 0.99 * t(batch.next_obs).max(1).values
        expect = float(((q_sa >= (q_sa - y) ** 2 + y)).float().mean())
    assert tracker.history[0][0] == pytest.approx(expect)


def test_family_names_the_papers_families():
    from evorl_nb import library

    assert reproduce.family(library.get("dqn")) == "δ^2"
    assert reproduce.family(library.get("dqn_reg")) == "δ^2 + 0.1*Q"
    assert reproduce.family(library.get("ddqn")) == "δ^2 (other Y)"
    assert reproduce.family(library.get("dqn_half")) == "0.5*δ^2"
    assert reproduce.family(library.get("cql")) == "other"


# found by a search with MiniGrid in its fitness: sympy.simplify raises on this target
# ("The argument 'E_B[0.2]' is not comparable"), which once crashed the search's table
CLIPPED_BY_A_BATCH_MEAN = (
    '{"format": "evorl_nb.program", "frozen": 0, "inputs": ["q", "a_t", "s_t", "q_targ", '
    '"s_tp1", "r_t", "discount"], "nodes": [{"inputs": [6, 6], "op": "L2Distance"}, '
    '{"inputs": [7, 6], "op": "Add"}, {"inputs": [], "op": "Constant", "value": 0.2}, '
    '{"inputs": [9], "op": "MeanBatch"}, {"inputs": [8, 5], "op": "L2Distance"}, '
    '{"inputs": [5, 10], "op": "L2Distance"}, {"inputs": [8, 11], "op": "DotProduct"}, '
    '{"inputs": [10, 5], "op": "Min"}, {"inputs": [14, 14], "op": "Min"}, '
    '{"inputs": [11], "op": "Abs"}, {"inputs": [14, 15], "op": "Min"}, '
    '{"inputs": [10, 5], "op": "DotProduct"}, {"inputs": [0, 2], "op": "QValues"}, '
    '{"inputs": [19, 1], "op": "SelectList"}, {"inputs": [3, 4], "op": "QValues"}, '
    '{"inputs": [21], "op": "MaxList"}, {"inputs": [6, 22], "op": "DotProduct"}, '
    '{"inputs": [23, 17], "op": "Min"}, {"inputs": [20, 24], "op": "Subtract"}, '
    '{"inputs": [25], "op": "L2Norm"}], "version": 1}')


def test_family_never_raises_on_terms_sympy_cannot_simplify():
    from evorl_nb.program import Program

    program = Program.from_json(CLIPPED_BY_A_BATCH_MEAN)
    assert reproduce.family(program) == "δ^2 (other Y)"


def test_thin_keeps_first_last_and_at_most_the_limit():
    assert reproduce.thin(10, 20).tolist() == list(range(10))
    idx = reproduce.thin(1000, 300)
    assert len(idx) <= 300 and idx[0] == 0 and idx[-1] == 999
    assert (np.diff(idx) > 0).all()


def test_figures_export_as_png(tmp_path):
    import shutil

    if not (shutil.which("chromium") or shutil.which("google-chrome")):
        pytest.skip("no Chromium on this machine: kaleido cannot export figures")
    folder = reproduce.run("overestimation", "ci", tmp_path, seeds=2,
                           envs=("CartPole-v0",), progress=False)
    paths = save_figures(folder)
    assert sorted(p.name for p in paths) == ["curves.png", "overestimation.png", "scores.png"]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000


def test_cli_reproduce_prints_the_table_and_rejects_unknown_names(tmp_path, capsys):
    assert cli_main(["reproduce", "overestimation", "--budget", "ci", "--seeds", "2",
                     "--out", str(tmp_path), "--quiet", "--no-figures"]) == 0
    out = capsys.readouterr().out
    assert "dqn_clipped" in out and "Q(s_0) - realized" in out
    assert (tmp_path / "overestimation" / "summary.csv").exists()
    assert cli_main(["reproduce", "atari", "--out", str(tmp_path)]) == 2
    assert "unknown experiment" in capsys.readouterr().err
    assert cli_main(["reproduce", "training", "--envs", "NoSuchEnv-v9", "--out",
                     str(tmp_path), "--quiet"]) == 2
    assert "NoSuchEnv-v9" in capsys.readouterr().err


def test_overrides_and_the_long_budget(tmp_path):
    folder = reproduce.run("overestimation", "ci", tmp_path, seeds=1, envs=("CartPole-v0",),
                           algorithms=("dqn", "dqn_reg"), progress=False)
    data = reproduce.load(folder)
    assert sorted(set(data["runs"].algorithm)) == ["dqn", "dqn_reg"] and len(data["runs"]) == 2
    assert data["meta"]["command"].endswith(
        "--seeds 1 --envs CartPole-v0 --algorithms dqn dqn_reg")
    with pytest.raises(KeyError, match="unknown algorithm"):
        reproduce.run("training", "ci", tmp_path, algorithms=("nope",), progress=False)
    long = reproduce.trainer_config("long")
    assert long.max_steps is None and long.max_eps_decay_steps is None
    assert long.hidden == reproduce.trainer_config("quick").hidden
    assert reproduce.trainer_config("paper").hidden == (256, 256)


def test_an_experiment_takes_a_found_program_file_and_labels_it_by_its_stem(tmp_path):
    """A search's program, exported as JSON, runs in an experiment beside the library's, and
    trains as the same loss would under its library name (same seeds: same scores)."""
    from evorl_nb import library

    found = tmp_path / "found_reg.json"
    found.write_text(library.get("dqn_reg").to_json())
    folder = reproduce.run("training", "ci", tmp_path / "out", seeds=1, envs=("CartPole-v0",),
                           algorithms=("dqn_reg", str(found)), progress=False)
    data = reproduce.load(folder)
    assert data["meta"]["algorithms"] == ["dqn_reg", "found_reg"]
    runs = data["runs"].set_index("algorithm")
    assert runs.loc["found_reg", "score_all"] == pytest.approx(runs.loc["dqn_reg", "score_all"])
    bad = tmp_path / "bad.json"
    bad.write_text('{"nodes": []}')
    with pytest.raises(Exception, match="bad.json"):  # refused before any training
        reproduce.run("training", "ci", tmp_path / "out2", algorithms=(str(bad),),
                      progress=False)
    assert not (tmp_path / "out2" / "training" / "runs.csv").exists()
