"""The DQN trainer: trains one agent with any loss and records what Eval(L, E) needs.

The trainer knows nothing about programs beyond a loss: anything with the
``Program.loss`` signature, ``loss(batch, q_net, target_net, gamma)`` (or an
object with such a ``.loss`` method). It follows the paper's inner loop
(facts.md §3): epsilon-greedy acting, a uniform replay buffer, one gradient
step per environment step after ``learning_starts``, a hard target copy every
``target_update`` updates, and ``discount = gamma * (1 - terminated)`` so a
time-limit truncation still bootstraps.

A loss that turns NaN/inf, explodes past ``max_loss`` or raises ends the run
with ``failed=True`` and a ``reason``; it never raises to the caller. Every
random choice (network init, exploration, replay sampling, random ops in the
loss) flows from ``seed``, so the same seed gives the same result on a CPU.

>>> from evorl_nb import library
>>> result = train(library.get("dqn"), "CartPole-v1", get_config("ci"), seed=0)
>>> result.failed, result.steps
(False, 400)
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from evorl_nb.conditioning import ill_conditioned
from evorl_nb.envs import EnvSpec, get_spec, make_env
from evorl_nb.presets import DQNConfig, config_names, get_config
from evorl_nb.program import Batch, Program
from evorl_nb.streams import Stream, agent_seeds

__all__ = ["DQNConfig", "get_config", "config_names", "train", "TrainResult", "EpisodeRecord",
           "QNetwork", "Replay"]


# --- pieces -------------------------------------------------------------------


class QNetwork(torch.nn.Module):
    """An MLP from flat observations to one Q-value per action, initialised from a generator."""

    def __init__(self, obs_dim: int, n_actions: int, hidden: tuple[int, ...],
                 generator: torch.Generator):
        super().__init__()
        sizes = [obs_dim, *hidden, n_actions]
        self.layers = torch.nn.ModuleList(torch.nn.Linear(a, b) for a, b in zip(sizes, sizes[1:]))
        with torch.no_grad():  # PyTorch's default Linear init, drawn from our generator
            for layer in self.layers:
                bound = 1.0 / math.sqrt(layer.in_features)
                layer.weight.uniform_(-bound, bound, generator=generator)
                layer.bias.uniform_(-bound, bound, generator=generator)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        x = obs.flatten(1)
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):  # F.linear skips nn.Module call overhead
            x = F.linear(x, layer.weight, layer.bias)
            if i < last:
                x = torch.relu(x)
        return x


class Replay:
    """A uniform replay buffer: numpy arrays that grow (doubling) up to ``capacity``.

    Writing a transition into numpy is cheap; a sampled batch is gathered with
    torch from zero-copy views and moved to ``device``.
    """

    def __init__(self, capacity: int, obs_dim: int, device: str = "cpu"):
        self.capacity, self.size, self.pos = capacity, 0, 0
        self.obs_dim, self.device = obs_dim, device
        self._allocate(min(capacity, 4096))

    def _allocate(self, n: int) -> None:
        old = getattr(self, "_arrays", None)
        self._arrays = {"obs": np.zeros((n, self.obs_dim), np.float32),
                        "next_obs": np.zeros((n, self.obs_dim), np.float32),
                        "action": np.zeros(n, np.int64), "reward": np.zeros(n, np.float32),
                        "done": np.zeros(n, np.float32)}
        if old is not None:
            for k, a in old.items():
                self._arrays[k][: len(a)] = a
        self._views = {k: torch.from_numpy(a) for k, a in self._arrays.items()}

    def add(self, obs, action: int, reward: float, next_obs, terminated: bool) -> None:
        """Store one transition (``terminated`` only: a truncation still bootstraps)."""
        a = self._arrays
        if self.pos == len(a["obs"]) and len(a["obs"]) < self.capacity:
            self._allocate(min(2 * len(a["obs"]), self.capacity))
            a = self._arrays
        i = self.pos
        a["obs"][i], a["next_obs"][i] = obs, next_obs
        a["action"][i], a["reward"][i], a["done"][i] = action, reward, float(terminated)
        self.pos = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, batch_size: int, stream: Stream) -> Batch:
        """A uniform batch of stored transitions, indices drawn from ``stream``."""
        idx = torch.from_numpy(stream.integers(self.size, batch_size))
        v = self._views
        parts = [v[k][idx].to(self.device) for k in ("obs", "action", "reward", "next_obs", "done")]
        return Batch(*parts)


@dataclass
class EpisodeRecord:
    """One finished training episode, with the Q-value tracking of the overestimation study."""

    episode: int
    """Index of the episode (0-based)."""
    step: int
    """Environment steps done when the episode ended."""
    ret: float
    """Undiscounted return."""
    length: int
    """Steps in the episode."""
    discounted_return: float
    """The realized sum of gamma^t r_t from the episode's initial state."""
    q_initial: float
    """The online network's max_a Q(s_0, a) when the episode started."""
    q_initial_taken: float
    """The online network's Q(s_0, a_0) for the first action taken."""
    batch_q_mean: float
    """Mean Q(s_t, a_t) over the training batches of this episode, each taken just before
    its gradient step (NaN before learning)."""
    loss_mean: float
    """Mean loss over this episode's gradient steps (NaN before learning)."""
    epsilon: float
    """Exploration rate at the episode's end."""


@dataclass
class TrainResult:
    """Everything one training run produced."""

    env_id: str
    seed: int
    episodes: list[EpisodeRecord] = field(default_factory=list)
    steps: int = 0
    """Environment steps taken."""
    updates: int = 0
    """Gradient steps taken."""
    wall_time: float = 0.0
    """Seconds the run took."""
    failed: bool = False
    """True if the loss went NaN/inf, exploded or raised."""
    reason: str | None = None
    """Why the run ended early, if it did."""

    @property
    def returns(self) -> np.ndarray:
        """Undiscounted return of every finished episode."""
        return np.array([e.ret for e in self.episodes], dtype=float)

    def score(self, spec: EnvSpec | None = None, window: str = "all",
              failure_score: float = 0.0) -> float:
        """Normalized training performance: the mean over all episodes (``"all"``, the
        paper's) or over the last 50 (``"last50"``, the authors' code)."""
        spec = spec or get_spec(self.env_id)
        if self.failed or not self.episodes:
            return failure_score
        returns = self.returns if window == "all" else self.returns[-50:]
        if window not in ("all", "last50"):
            raise ValueError(f"window must be 'all' or 'last50', got {window!r}")
        return float(spec.normalize(returns).mean())


# --- the loop -------------------------------------------------------------------


def _loss_fn(loss: Any) -> Callable:
    fn = getattr(loss, "loss", loss)
    if not callable(fn):
        raise TypeError(f"loss must be a Program or a callable(batch, q_net, target_net, gamma), "
                        f"got {type(loss).__name__}")
    return fn


_NO_STEP_CAP = 10**12  # the step bound of a run limited by episodes alone


def budget(config: DQNConfig, spec: EnvSpec) -> tuple[int | None, int]:
    """(episode budget or None, step budget) for this env under this config; both trainers
    stop an agent by it."""
    if config.budget_episodes is not None or config.budget_steps is not None:
        episodes, steps = config.budget_episodes, config.budget_steps
    else:
        episodes, steps = spec.budget_episodes, spec.budget_steps
    # an episode budget has no step bound of its own
    cap = steps if steps is not None else _NO_STEP_CAP
    if config.max_steps is not None:
        cap = min(cap, config.max_steps)
    return episodes, cap


def eps_decay(config: DQNConfig, spec: EnvSpec) -> int:
    """Steps over which epsilon falls from eps_start to eps_end for this env and config."""
    decay = config.eps_decay_steps or spec.epsilon_decay_steps
    if config.max_eps_decay_steps is not None:
        decay = min(decay, config.max_eps_decay_steps)
    return decay


def epsilon(config: DQNConfig, decay: int, steps):
    """The exploration rate after ``steps`` environment steps (an int, or an array of every
    agent's steps): linear from eps_start to eps_end over ``decay`` steps, then flat. The
    one schedule both trainers use."""
    return config.eps_end + (config.eps_start - config.eps_end) * np.maximum(
        0.0, 1.0 - np.asarray(steps) / decay)


# Adam's betas and eps: torch's defaults, written out because the population trainer's own
# Adam (evorl_nb.batched.adam and the C kernel) must use the same
ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8

GRADIENT_NOT_FINITE = "gradient is not finite"
"""Why an agent stops when its gradient has a NaN or inf (both trainers)."""


def loss_failure(value: float, max_loss: float) -> str | None:
    """Why an agent whose loss came out ``value`` must stop: the loss is NaN/inf or beyond
    ``max_loss``; None if it may learn from it. Both trainers record these words."""
    if not math.isfinite(value):
        return f"loss is {value}"
    if abs(value) > max_loss:
        return f"loss exploded ({value:.3g} > max_loss {max_loss:g})"
    return None


@contextlib.contextmanager
def torch_threads(n: int):
    """Run the block with torch using ``n`` threads, then restore the old count."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def train(loss: Any, env_id: str, config: DQNConfig | str = "paper", *, seed: int = 0,
          callback: Callable[[EpisodeRecord], None] | None = None,
          progress: bool = False) -> TrainResult:
    """Train a DQN agent on ``env_id`` with ``loss``; never raises for a bad loss.

    ``callback`` is called with each finished :class:`EpisodeRecord` (a
    notebook can plot live from it). ``progress`` shows a tqdm bar.
    """
    config = get_config(config) if isinstance(config, str) else config
    spec = get_spec(env_id)
    if isinstance(loss, Program) and (why := ill_conditioned(loss)):  # before any env is made
        return TrainResult(spec.env_id, seed, failed=True, reason=f"{why} at step 0")
    loss_fn, takes_generator = _loss_fn(loss), hasattr(loss, "loss")
    seeds = agent_seeds(seed)
    explore, sampler = Stream(seeds.explore), Stream(seeds.sample)
    gen = torch.Generator().manual_seed(seeds.net)
    env = make_env(spec.env_id, seed=seeds.env)
    obs_dim = int(np.prod(env.observation_space.shape))
    n_actions = int(env.action_space.n)
    episodes_budget, steps_budget = budget(config, spec)
    decay = eps_decay(config, spec)
    result = TrainResult(spec.env_id, seed)
    start = time.perf_counter()
    bar, by_steps = None, True
    if progress:
        from tqdm.auto import tqdm

        # count whichever limit binds: steps when a step cap exists, else episodes
        by_steps = episodes_budget is None or steps_budget < _NO_STEP_CAP
        bar = tqdm(total=steps_budget if by_steps else episodes_budget,
                   unit="step" if by_steps else "episode", leave=False,
                   desc=f"{getattr(loss, 'name', None) or 'loss'} on {spec.env_id}")

    with torch_threads(config.num_threads):
        q_net = QNetwork(obs_dim, n_actions, config.hidden, gen).to(config.device)
        target = copy.deepcopy(q_net).requires_grad_(False)
        optim = torch.optim.Adam(q_net.parameters(), lr=config.lr, betas=ADAM_BETAS, eps=ADAM_EPS,
                                 fused=True)
        replay = Replay(min(config.buffer_size, steps_budget), obs_dim, config.device)
        obs, _ = env.reset(seed=seeds.env)
        ep = _Episode(q_net, obs, config)
        while result.steps < steps_budget and (episodes_budget is None
                                               or len(result.episodes) < episodes_budget):
            eps = float(epsilon(config, decay, result.steps))
            u, v = explore.uniform(2)  # explore?, and which random action (drawn either way)
            if u < eps:
                action = min(int(v * n_actions), n_actions - 1)
            else:
                with torch.no_grad():
                    action = int(q_net(_as_batch(obs, config.device)).argmax(1))
            ep.first_action(action)
            next_obs, reward, terminated, truncated, _ = env.step(action)
            replay.add(obs, action, float(reward), next_obs, terminated)
            ep.reward(float(reward))
            result.steps += 1
            obs = next_obs
            if result.steps >= config.learning_starts and result.steps % config.train_every == 0:
                reason = _update(loss_fn, takes_generator, replay, q_net, target, optim, gen,
                                 sampler, config, ep)
                if reason:
                    result.failed, result.reason = True, f"{reason} at step {result.steps}"
                    break
                result.updates += 1
                if result.updates % config.target_update == 0:
                    target.load_state_dict(q_net.state_dict())
            if terminated or truncated:
                record = ep.finish(len(result.episodes), result.steps, eps)
                result.episodes.append(record)
                if callback is not None:
                    callback(record)
                if bar is not None and not by_steps:
                    bar.update(1)
                obs, _ = env.reset()
                ep = _Episode(q_net, obs, config)
            if bar is not None and by_steps:
                bar.update(1)
    env.close()
    if bar is not None:
        bar.close()
    result.wall_time = time.perf_counter() - start
    return result


def _as_batch(obs, device) -> torch.Tensor:
    return torch.as_tensor(np.asarray(obs, dtype=np.float32), device=device).unsqueeze(0)


def _update(loss_fn, takes_generator, replay, q_net, target, optim, gen, sampler, config,
            ep) -> str | None:
    """One gradient step; returns why training must stop, or None."""
    batch = replay.sample(config.batch_size, sampler)
    with torch.no_grad():  # the Q tracking: Q(s_t, a_t) of the batch before this step
        q_taken = float(q_net(batch.obs).gather(1, batch.action.unsqueeze(1)).mean())
    try:
        if takes_generator:
            value = loss_fn(batch, q_net, target, config.gamma, generator=gen)
        else:
            value = loss_fn(batch, q_net, target, config.gamma)
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            return f"loss returned {type(value).__name__}, not a scalar tensor"
        loss_value = float(value.detach())
        if why := loss_failure(loss_value, config.max_loss):
            return why
        optim.zero_grad(set_to_none=True)
        value.backward()
    except Exception as e:  # a wild evolved loss must not kill the caller
        return f"loss raised {type(e).__name__}: {e}"
    grads = [p.grad.sum() for p in q_net.parameters() if p.grad is not None]
    if grads and not torch.isfinite(torch.stack(grads).sum()):  # one check for every gradient
        return GRADIENT_NOT_FINITE
    optim.step()
    ep.learned(loss_value, q_taken)
    return None


class _Episode:
    """Book-keeping of the running episode (returns and Q tracking)."""

    def __init__(self, q_net, obs, config: DQNConfig):
        with torch.no_grad():
            self.q0 = q_net(_as_batch(obs, config.device))[0]
        self.gamma, self.ret, self.disc, self.length = config.gamma, 0.0, 0.0, 0
        self.q_taken = float("nan")
        self.losses: list[float] = []
        self.batch_q: list[float] = []

    def first_action(self, action: int) -> None:
        if self.length == 0:
            self.q_taken = float(self.q0[action])

    def reward(self, r: float) -> None:
        self.ret += r
        self.disc += self.gamma**self.length * r
        self.length += 1

    def learned(self, loss: float, q_taken: float) -> None:
        self.losses.append(loss)
        self.batch_q.append(q_taken)

    def finish(self, index: int, step: int, eps: float) -> EpisodeRecord:
        mean = lambda xs: float(np.mean(xs)) if xs else float("nan")  # noqa: E731
        return EpisodeRecord(index, step, self.ret, self.length, self.disc, float(self.q0.max()),
                             self.q_taken, mean(self.batch_q), mean(self.losses), eps)
