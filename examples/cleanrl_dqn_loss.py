"""DQN on a gymnasium env in one file, CleanRL-style, trained with a loss exported by evorl_nb.

    evorl-nb export dqn_reg -o dqn_reg_loss.py
    python examples/cleanrl_dqn_loss.py --loss-file dqn_reg_loss.py --env-id CartPole-v1

The only evorl_nb thing here is the loss file: a plain module whose
``loss(q_net, target_net, obs, action, reward, next_obs, done, gamma)`` replaces the usual
``F.mse_loss(q_sa, td_target)``. Everything else is a standard DQN: an epsilon-greedy
policy on a linear schedule, a replay buffer, a target network copied every
``target_network_frequency`` steps. It prints episodic returns, steps per second (SPS)
and the mean Q-value of the sampled actions, and needs only torch, gymnasium and numpy.
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import time
from dataclasses import dataclass, fields

import gymnasium as gym
import numpy as np
import torch
from torch import nn


@dataclass
class Args:
    """Run settings; every field is also a command-line flag (``--learning-rate 1e-3``)."""

    loss_file: str = "loss.py"
    """the exported loss (``evorl-nb export NAME -o FILE``)"""
    env_id: str = "CartPole-v1"
    """the gymnasium environment"""
    seed: int = 1
    """seed of python, numpy, torch and the environment"""
    total_timesteps: int = 50_000
    """environment steps in all"""
    learning_rate: float = 2.5e-4
    """Adam's learning rate"""
    buffer_size: int = 10_000
    """replay buffer capacity"""
    gamma: float = 0.99
    """discount factor"""
    tau: float = 1.0
    """target network update rate (1 = hard copy)"""
    target_network_frequency: int = 500
    """steps between target network updates"""
    batch_size: int = 128
    """transitions per gradient step"""
    start_e: float = 1.0
    """epsilon at the start"""
    end_e: float = 0.05
    """epsilon at the end of the schedule"""
    exploration_fraction: float = 0.5
    """fraction of total_timesteps over which epsilon falls from start_e to end_e"""
    learning_starts: int = 10_000
    """steps before the first gradient step"""
    train_frequency: int = 10
    """steps between gradient steps"""
    log_every: int = 1_000
    """steps between progress lines"""


def parse_args(argv=None) -> Args:
    """The dataclass's fields as flags (underscores become dashes)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for f in fields(Args):
        parser.add_argument("--" + f.name.replace("_", "-"), type=type(f.default),
                            default=f.default)
    return Args(**vars(parser.parse_args(argv)))


def load_loss(path: str):
    """The ``loss`` function of an exported loss file."""
    spec = importlib.util.spec_from_file_location("exported_loss", path)
    if spec is None:
        raise SystemExit(f"cannot load a loss from {path!r}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.loss


class QNetwork(nn.Module):
    """Observations to one Q-value per action."""

    def __init__(self, env: gym.Env):
        super().__init__()
        self.network = nn.Sequential(
            nn.Linear(int(np.prod(env.observation_space.shape)), 120), nn.ReLU(),
            nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, env.action_space.n))

    def forward(self, x):
        return self.network(x.flatten(1))


def linear_schedule(start_e: float, end_e: float, duration: int, t: int) -> float:
    """Epsilon falling linearly from start_e to end_e over ``duration`` steps, then flat."""
    return max(end_e, start_e + (end_e - start_e) * t / max(duration, 1))


class ReplayBuffer:
    """A ring buffer of transitions, sampled uniformly."""

    def __init__(self, size: int, obs_shape: tuple, rng: np.random.Generator):
        self.obs = np.zeros((size, *obs_shape), np.float32)
        self.next_obs = np.zeros((size, *obs_shape), np.float32)
        self.action = np.zeros(size, np.int64)
        self.reward = np.zeros(size, np.float32)
        self.done = np.zeros(size, np.float32)
        self.size, self.pos, self.full, self.rng = size, 0, False, rng

    def add(self, obs, next_obs, action, reward, done):
        i = self.pos
        self.obs[i], self.next_obs[i], self.action[i] = obs, next_obs, action
        self.reward[i], self.done[i] = reward, done
        self.pos = (i + 1) % self.size
        self.full = self.full or self.pos == 0

    def sample(self, n: int):
        idx = self.rng.integers(0, self.size if self.full else self.pos, n)
        return tuple(torch.as_tensor(a[idx]) for a in
                     (self.obs, self.action, self.reward, self.next_obs, self.done))


def main(argv=None) -> list[float]:
    """Train; returns the episodic returns in the order they finished."""
    args = parse_args(argv)
    loss_fn = load_loss(args.loss_file)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)  # for losses with random ops

    env = gym.wrappers.RecordEpisodeStatistics(gym.make(args.env_id))
    q_network = QNetwork(env)
    optimizer = torch.optim.Adam(q_network.parameters(), lr=args.learning_rate)
    target_network = QNetwork(env)
    target_network.load_state_dict(q_network.state_dict())
    rb = ReplayBuffer(args.buffer_size, env.observation_space.shape,
                      np.random.default_rng(args.seed))

    returns, mean_q, start = [], float("nan"), time.time()
    obs, _ = env.reset(seed=args.seed)
    for step in range(args.total_timesteps):
        epsilon = linear_schedule(args.start_e, args.end_e,
                                  int(args.exploration_fraction * args.total_timesteps), step)
        if random.random() < epsilon:
            action = env.action_space.sample()
        else:
            with torch.no_grad():
                action = int(q_network(torch.as_tensor(obs[None], dtype=torch.float32)).argmax())
        next_obs, reward, terminated, truncated, info = env.step(action)
        rb.add(obs, next_obs, action, reward, terminated)  # truncation is not a terminal
        obs = next_obs
        if terminated or truncated:
            returns.append(float(info["episode"]["r"]))
            obs, _ = env.reset()

        if step >= args.learning_starts:
            if step % args.train_frequency == 0:
                b_obs, b_action, b_reward, b_next_obs, b_done = rb.sample(args.batch_size)
                loss = loss_fn(q_network, target_network, b_obs, b_action, b_reward,
                               b_next_obs, b_done, gamma=args.gamma, generator=generator)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                with torch.no_grad():
                    mean_q = float(q_network(b_obs).gather(1, b_action[:, None]).mean())
            if step % args.target_network_frequency == 0:
                for t, q in zip(target_network.parameters(), q_network.parameters()):
                    t.data.copy_(args.tau * q.data + (1.0 - args.tau) * t.data)
        if (step + 1) % args.log_every == 0:
            recent = np.mean(returns[-10:]) if returns else float("nan")
            print(f"step={step + 1} episodes={len(returns)} return(last 10)={recent:.1f} "
                  f"mean_q={mean_q:.3f} epsilon={epsilon:.2f} "
                  f"SPS={int((step + 1) / (time.time() - start))}", flush=True)
    env.close()
    return returns


if __name__ == "__main__":
    main()
