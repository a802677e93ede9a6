"""The batched wing: K DQN agents, each with its own loss program, trained as one batch.

Training one small agent at a time leaves a CPU (and even more a GPU) idle: every
operation is a tiny tensor and Python overhead dominates. Here K agents share every
operation instead:

* **Networks** are stacked: layer ``i`` of all agents is one ``[K, out, in]`` weight, so a
  forward pass is one ``baddbmm`` per layer. Adam runs over the stacked tensors; since it
  is elementwise, each agent's slice follows exactly the update it would get alone.
* **Environments** step as a batch (:func:`evorl_nb.envs.vector.make_vector_env`).
* **Replay buffers** are ``[slots, capacity, ...]`` tensors, one buffer per slot.
* **Losses**: K different programs cannot be one kernel, but their ops can be grouped.
  :class:`~evorl_nb.batched.plan.LossPlan` compiles the programs once: every Q-network call
  becomes one of four precomputed stacked values (online or target net on ``s_t`` or
  ``s_{t+1}``), and the remaining nodes are evaluated level by level (a node's level is one
  more than its deepest input), one batched call per (level, op, input types) group across
  all agents, each level's inputs gathered from the value banks in one call per bank. On CPU
  the same nodes run instead in a compiled interpreter (:mod:`evorl_nb.batched.lossvm`:
  every agent's program, forward and backward, in one C call each), and the update runs
  without autograd (:mod:`evorl_nb.batched.fused`): on CPUs with AVX-512 as one C call that
  takes the agents one at a time (networks, loss program, backward;
  :mod:`evorl_nb.batched.netkernel`), elsewhere chunk by chunk of agents with torch's
  batched products. The per-agent losses are **summed** (never averaged) into the value that
  is differentiated, so each agent receives exactly its own gradient.
* **Failures** are per agent: a loss that turns NaN/inf, explodes or whose gradient is not
  finite stops that agent (recorded with the reason, as :func:`evorl_nb.dqn.train` does);
  the others go on.
* **Continuous batching** (:class:`~evorl_nb.batched.trainer.Population`): agents that are
  done (failed, or out of budget) leave the batched learner, and a queued agent takes a
  freed slot at once, so a batch stays full although its agents need very different
  numbers of steps.

Randomness: every agent has its own streams, seeded by its own seed exactly as
:func:`evorl_nb.dqn.train` seeds them (network init, environment, exploration, replay
sampling, the loss's random ops; exploration and sampling are counter-based
:mod:`evorl_nb.streams`, drawn for all agents in one call), and its own counters (steps,
epsilon, updates, target schedule, Adam's step). So an agent's run does not depend on its
companions, on the slot count or on when it got a slot: it *is* ``train(program, env_id,
config, seed)`` to float rounding (batched matmuls may round differently; tested over
whole runs).

>>> from evorl_nb import library
>>> runs = train_population([library.get("dqn"), library.get("ddqn")], "CartPole-v1", "ci",
...                         seeds=[0, 1])
>>> [r.steps for r in runs]
[400, 400]

Where each part lives: ``trainer`` (Population, train_population), ``stacked`` (the stacked
networks), ``plan`` (LossPlan), ``grouped`` (the grouped torch evaluation), ``lossvm`` (the
C library and the loss interpreter), ``netkernel`` (the networks' kernel), ``fused`` (the
update without autograd), ``adam``, ``replay``, ``memory`` (the allocator tuning); the C
sources are in ``csrc/``.
"""

from evorl_nb.batched.memory import keep_freed_memory
from evorl_nb.batched.plan import LossPlan
from evorl_nb.batched.stacked import StackedQ
from evorl_nb.batched.trainer import Population, run_in_order, train_population
from evorl_nb.streams import agent_seeds

__all__ = ["train_population", "Population", "run_in_order", "LossPlan", "StackedQ",
           "agent_seeds", "keep_freed_memory"]
