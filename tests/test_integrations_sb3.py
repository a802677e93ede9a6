"""Stable-Baselines3's DQN trained with a program's loss (``evorl_nb.integrations.sb3``).

The project's test environment installs the ``[sb3]`` extra (Makefile), so these run in CI.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from stable_baselines3.common.evaluation import evaluate_policy

from evorl_nb import library
from evorl_nb.integrations.sb3 import EvolvedDQN
from evorl_nb.program import Batch

SMALL = dict(learning_rate=1e-3, target_update_interval=500, exploration_fraction=0.3,
             exploration_final_eps=0.05, train_freq=4, gradient_steps=1, batch_size=64,
             buffer_size=20_000, policy_kwargs=dict(net_arch=[64, 64]))


def _model(program: str, **kw) -> EvolvedDQN:
    return EvolvedDQN(program, "MlpPolicy", "CartPole-v1", seed=0, **{**SMALL, **kw})


def _sb3_td(model: EvolvedDQN, data):
    """SB3's own current Q(s, a) and TD target, computed as SB3's DQN.train does."""
    with torch.no_grad():
        next_q = model.q_net_target(data.next_observations).max(dim=1).values.reshape(-1, 1)
        target = data.rewards + (1 - data.dones) * model.gamma * next_q
    current = torch.gather(model.q_net(data.observations), 1, data.actions.long())
    return current, target


def test_program_loss_is_the_loss_on_sb3s_own_networks_and_replay_sample():
    model = _model("dqn", learning_starts=100)
    model.learn(600)  # fills the buffer and moves the nets off their initial weights
    data = model.replay_buffer.sample(64)
    current, target = _sb3_td(model, data)
    # the paper's DQN is the squared TD error (SB3's default is Huber)
    assert torch.allclose(model.program_loss(data), F.mse_loss(current, target), rtol=1e-5)
    assert not torch.allclose(F.mse_loss(current, target), F.smooth_l1_loss(current, target))
    reg = EvolvedDQN("dqn_reg", "MlpPolicy", "CartPole-v1", seed=0, **SMALL)
    reg.policy.load_state_dict(model.policy.state_dict())
    assert torch.allclose(reg.program_loss(data),
                          F.mse_loss(current, target) + 0.1 * current.mean(), rtol=1e-5)
    batch = Batch(data.observations, data.actions.flatten(), data.rewards.flatten(),
                  data.next_observations, data.dones.flatten())
    want = library.get("dqn_reg").loss(batch, reg.q_net, reg.q_net_target, gamma=reg.gamma)
    assert torch.equal(reg.program_loss(data), want)
    # and it is differentiable in q_net, not in the target net
    reg.program_loss(data).backward()
    assert all(p.grad is not None for p in reg.q_net.parameters())
    assert all(p.grad is None for p in reg.q_net_target.parameters())


def test_evolved_dqn_learns_cartpole_at_a_small_budget():
    model = _model("dqn_reg", learning_starts=1000)
    untrained, _ = evaluate_policy(model, model.get_env(), n_eval_episodes=5)
    model.learn(20_000)
    trained, _ = evaluate_policy(model, model.get_env(), n_eval_episodes=10)
    assert trained > 80 and trained > 3 * untrained, (untrained, trained)


def test_save_and_load_keep_the_program(tmp_path):
    model = _model("ddqn", learning_starts=50)
    model.learn(200)
    model.save(tmp_path / "agent")
    loaded = EvolvedDQN.load(tmp_path / "agent", env=model.get_env())
    assert loaded.program.fingerprint() == library.get("ddqn").fingerprint()
    loaded.learn(200)  # trains on after loading
