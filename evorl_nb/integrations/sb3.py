"""Stable-Baselines3's DQN trained with an evolved loss (``pip install 'evorl_nb[sb3]'``).

:class:`EvolvedDQN` is SB3's ``DQN`` with one change: each gradient step minimises a
program's loss (``Program.loss`` on SB3's own ``q_net`` and ``q_net_target``) in place of
SB3's TD loss. Everything else is SB3's: the policy and networks, the replay buffer,
the exploration and learning-rate schedules, the target updates, gradient-norm clipping,
logging, ``save``/``load``.

Note: SB3's DQN minimises the Huber (smooth L1) TD error; the library's ``dqn`` program is
the squared TD error ``δ²`` (the paper's DQN), so ``EvolvedDQN("dqn", ...)`` is not
numerically SB3's default DQN; ``dqn_half`` is ``½δ²``, which Huber equals for |δ| ≤ 1.

>>> from evorl_nb.integrations.sb3 import EvolvedDQN   # doctest: +SKIP
>>> model = EvolvedDQN("dqn_reg", "MlpPolicy", "CartPole-v1", seed=0)  # doctest: +SKIP
>>> model.learn(50_000)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from evorl_nb import library
from evorl_nb.program import Batch, Program

try:
    from stable_baselines3 import DQN
except ImportError as e:  # the optional extra is missing: say how to get it
    raise ImportError("evorl_nb.integrations.sb3 needs Stable-Baselines3: "
                      "pip install 'evorl_nb[sb3]'") from e

__all__ = ["EvolvedDQN"]


class EvolvedDQN(DQN):
    """SB3's DQN whose gradient step minimises ``program``'s loss.

    ``program`` is a :class:`~evorl_nb.program.Program` or a library name (``"dqn_reg"``);
    the other arguments are SB3 ``DQN``'s. Random ops in the program draw from a
    generator seeded from ``seed``. With n-step replay, each transition's own discount
    (SB3's ``discounts``) is used as γ.
    """

    def __init__(self, program: Program | str = "dqn", *args: Any, **kwargs: Any):
        self.program = library.get(program) if isinstance(program, str) else program
        self.loss_generator: torch.Generator | None = None  # made on the model's device at first use
        super().__init__(*args, **kwargs)

    def program_loss(self, replay_data) -> torch.Tensor:
        """The program's scalar loss on one SB3 replay sample (differentiable in q_net)."""
        batch = Batch(obs=replay_data.observations,
                      action=replay_data.actions.reshape(-1).long(),
                      reward=replay_data.rewards.reshape(-1),
                      next_obs=replay_data.next_observations,
                      done=replay_data.dones.reshape(-1))
        discounts = getattr(replay_data, "discounts", None)
        gamma = self.gamma if discounts is None else discounts.reshape(-1)
        if getattr(self, "loss_generator", None) is None:  # not saved: remade after load
            self.loss_generator = torch.Generator(self.device).manual_seed(int(self.seed or 0))
        return self.program.loss(batch, self.q_net, self.q_net_target, gamma=gamma,
                                 generator=self.loss_generator)

    def train(self, gradient_steps: int, batch_size: int = 100) -> None:
        """SB3's DQN gradient steps with the program's loss in place of the Huber TD loss."""
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        losses = []
        for _ in range(gradient_steps):
            replay_data = self.replay_buffer.sample(batch_size, env=self._vec_normalize_env)
            loss = self.program_loss(replay_data)
            losses.append(loss.item())
            self.policy.optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
            self.policy.optimizer.step()
        self._n_updates += gradient_steps
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/loss", float(np.mean(losses)) if losses else float("nan"))

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "loss_generator"]
