"""The DQN trainer and Eval(L, E): updates, robustness, hurdle, normalization, smoke runs."""

import copy
import json
import math

import numpy as np
import pytest
import torch
from fakes import nan_program

from evorl_nb import library
from evorl_nb.cli import main as cli_main
from evorl_nb.dqn import QNetwork, Replay, _Episode, _update, get_config, train
from evorl_nb.envs import get_spec
from evorl_nb.evaluate import EnvScore, evaluate
from evorl_nb.streams import Stream

CI = get_config("ci")


def hand_written_dqn(batch, q_net, target_net, gamma):
    """DQN's loss written directly in torch: mean (Q(s,a) - r - gamma (1-d) max Q_targ(s'))^2."""
    with torch.no_grad():
        y = batch.reward + gamma * (1 - batch.done) * target_net(batch.next_obs).max(1).values
    q_sa = q_net(batch.obs).gather(1, batch.action.unsqueeze(1)).squeeze(1)
    return ((q_sa - y) ** 2).mean()


def _filled_replay(n=64, obs_dim=4, seed=0):
    rng = np.random.default_rng(seed)
    replay = Replay(n, obs_dim)
    for _ in range(n):
        replay.add(rng.normal(size=obs_dim).astype(np.float32), int(rng.integers(2)),
                   float(rng.normal()), rng.normal(size=obs_dim).astype(np.float32),
                   bool(rng.random() < 0.3))
    return replay


def test_update_equals_a_hand_written_dqn_step():
    config = get_config("paper", hidden=(16, 16))
    replay = _filled_replay()
    q_net = QNetwork(4, 2, config.hidden, torch.Generator().manual_seed(0))
    target = copy.deepcopy(q_net)
    with torch.no_grad():  # make the target differ from the online net
        for p in target.parameters():
            p.add_(0.1)
    ref_q, ref_optim = copy.deepcopy(q_net), None

    optim = torch.optim.Adam(q_net.parameters(), lr=config.lr)
    gen = torch.Generator().manual_seed(7)
    ep = _Episode(q_net, np.zeros(4, np.float32), config)
    assert _update(library.get("dqn").loss, True, replay, q_net, target, optim, gen,
                   Stream(7), config, ep) is None

    # the same step by hand: same batch (the same stream from its start), same Adam
    batch = replay.sample(config.batch_size, Stream(7))
    ref_optim = torch.optim.Adam(ref_q.parameters(), lr=config.lr)
    ref_optim.zero_grad()
    hand_written_dqn(batch, ref_q, target, config.gamma).backward()
    ref_optim.step()
    for a, b in zip(q_net.parameters(), ref_q.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert any(not torch.equal(a, b) for a, b in zip(q_net.parameters(), QNetwork(
        4, 2, config.hidden, torch.Generator().manual_seed(0)).parameters()))


def test_training_with_the_program_equals_training_with_a_hand_written_loss():
    a = train(library.get("dqn"), "CartPole-v1", CI, seed=3)
    b = train(hand_written_dqn, "CartPole-v1", CI, seed=3)
    assert not a.failed and a.updates > 0
    np.testing.assert_allclose(a.returns, b.returns)
    np.testing.assert_allclose([e.loss_mean for e in a.episodes], [e.loss_mean for e in b.episodes],
                               rtol=1e-5, equal_nan=True)


def test_same_seed_same_result_different_seed_different():
    a = train(library.get("dqn_reg"), "CartPole-v1", CI, seed=1)
    b = train(library.get("dqn_reg"), "CartPole-v1", CI, seed=1)
    c = train(library.get("dqn_reg"), "CartPole-v1", CI, seed=2)
    for field in ("ret", "q_initial", "q_initial_taken", "batch_q_mean", "loss_mean"):
        np.testing.assert_array_equal([getattr(e, field) for e in a.episodes],
                                      [getattr(e, field) for e in b.episodes])  # NaN == NaN here
    assert list(a.returns) != list(c.returns)


def test_a_nan_loss_is_recorded_as_failed_not_raised():
    result = train(nan_program(), "CartPole-v1", CI, seed=0)
    assert result.failed and "loss is nan" in result.reason
    assert result.steps == CI.learning_starts  # stopped at the first update
    assert result.score() == CI.failure_score == 0.0
    r = evaluate(nan_program(), ["CartPole-v1"], CI, hurdle=None)
    assert r.failed and r.fitness == 0.0 and "nan" in r.reasons["CartPole-v1"]


def test_an_exploding_or_raising_loss_is_recorded():
    def explode(batch, q_net, target_net, gamma):
        return q_net(batch.obs).sum() * 1e12

    def boom(batch, q_net, target_net, gamma):
        raise RuntimeError("custom failure")

    r1 = train(explode, "CartPole-v1", CI, seed=0)
    r2 = train(boom, "CartPole-v1", CI, seed=0)
    assert r1.failed and "exploded" in r1.reason
    assert r2.failed and "RuntimeError: custom failure" in r2.reason


def test_normalization_and_windows():
    spec = get_spec("CartPole-v0")
    run = train(library.get("dqn"), "CartPole-v0", CI, seed=0)
    returns = run.returns
    assert len(returns) > 5
    expected_all = np.mean(np.clip(returns, 0, 200) / 200)
    assert run.score(spec, "all") == pytest.approx(expected_all)
    assert run.score(spec, "last50") == pytest.approx(np.mean(np.clip(returns[-50:], 0, 200) / 200))
    with pytest.raises(ValueError, match="last50"):
        run.score(spec, "last10")


def test_hurdle_stops_the_evaluation():
    # the ci budget is far too small to reach 0.6 on CartPole: the hurdle stops it
    r = evaluate(library.get("dqn"), ["CartPole-v0", "Acrobot-v1"], CI)
    assert r.hurdle_passed is False and list(r.scores) == ["CartPole-v0"]
    assert "below the hurdle" in r.stopped and r.fitness == r.scores["CartPole-v0"].score < 0.6
    # a zero threshold lets it through to every env; fitness is the sum
    r = evaluate(library.get("dqn"), ["Acrobot-v1", "CartPole-v0"], CI, hurdle=("CartPole-v0", 0.0))
    assert r.hurdle_passed and list(r.scores) == ["CartPole-v0", "Acrobot-v1"]
    assert r.fitness == pytest.approx(sum(s.score for s in r.scores.values()))
    with pytest.raises(ValueError, match="hurdle"):
        evaluate(library.get("dqn"), ["Acrobot-v1"], CI)


def test_env_seed_does_not_depend_on_order():
    a = evaluate(library.get("dqn"), ["Acrobot-v1", "CartPole-v1"], CI, hurdle=None)
    b = evaluate(library.get("dqn"), ["CartPole-v1", "Acrobot-v1"], CI, hurdle=None)
    assert a.scores["Acrobot-v1"].score == b.scores["Acrobot-v1"].score


@pytest.mark.parametrize("env_id", ["CartPole-v1", "MiniGrid-DoorKey-5x5-v0"])
def test_ci_preset_smoke_runs(env_id):
    records = []
    r = evaluate(library.get("dqn_reg"), [env_id], "ci", hurdle=None,
                 callback=lambda e, rec: records.append((e, rec)))
    run = r.scores[env_id].run
    assert isinstance(r.scores[env_id], EnvScore) and not run.failed
    assert run.steps == CI.max_steps and run.updates == CI.max_steps - CI.learning_starts + 1
    assert 0.0 <= r.scores[env_id].score <= 1.0
    assert len(records) == len(run.episodes) and all(e == env_id for e, _ in records)
    learned = [rec for _, rec in records if not math.isnan(rec.batch_q_mean)]
    for rec in run.episodes:  # Q tracking: an estimate of s_0 and the realized discounted return
        assert math.isfinite(rec.q_initial) and math.isfinite(rec.discounted_return)
    assert learned or len(run.episodes) <= 2


def test_unknown_env_is_a_clear_error():
    with pytest.raises(Exception, match="register"):
        train(library.get("dqn"), "NoSuchEnv-v9", CI)


def test_cli_evaluate_table_and_json(capsys):
    assert cli_main(["evaluate", "--program", "dqn", "--env", "CartPole-v1", "--preset", "ci",
                     "--seeds", "2"]) == 0
    out = capsys.readouterr().out
    # one row per seed (program, env, seed, ...), then the mean ± 95% CI per program
    assert "CartPole-v1" in out and "mean" in out and out.count("\ndqn     CartPole-v1") == 2
    assert cli_main(["evaluate", "--program", "dqn", "--env", "CartPole-v1", "--preset", "ci",
                     "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["runs"][0]["env"] == "CartPole-v1" and 0 <= data["runs"][0]["score"] <= 1
    assert cli_main(["evaluate", "--program", "dqn", "--env", "Nope-v0", "--preset", "ci"]) == 2
    assert "register" in capsys.readouterr().err
