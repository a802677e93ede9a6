"""The population trainer: K DQN agents, each with its own loss program, in one batch.

:class:`Population` keeps ``slots`` agents training at once (continuous batching: a
finished agent's slot goes to the next queued one) and :func:`train_population` trains a
list of programs to the end. See :mod:`evorl_nb.batched` for how a step is shared.
"""

from __future__ import annotations

import time
import warnings
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from evorl_nb.batched import netkernel
from evorl_nb.batched.adam import adam_step
from evorl_nb.batched.memory import keep_freed_memory
from evorl_nb.batched.plan import LossPlan
from evorl_nb.batched.replay import Replay, decode
from evorl_nb.batched.stacked import StackedQ
from evorl_nb.conditioning import ill_conditioned
from evorl_nb.dqn import (
    ADAM_BETAS,
    ADAM_EPS,
    GRADIENT_NOT_FINITE,
    DQNConfig,
    EpisodeRecord,
    TrainResult,
    budget,
    eps_decay,
    epsilon,
    get_config,
    loss_failure,
    torch_threads,
)
from evorl_nb.envs import get_spec
from evorl_nb.envs.vector import make_vector_env
from evorl_nb.inputs import ONLINE, S_T
from evorl_nb.program import Program
from evorl_nb.streams import AgentSeeds, Streams, agent_seeds

__all__ = ["Population", "train_population", "run_in_order"]



@dataclass
class _Agent:
    """One agent: its loss, seeds, random streams and results (lives in a slot while training)."""

    key: Any
    program: Program
    seed: int
    result: TrainResult
    seeds: AgentSeeds
    """Its seeds (exploration and replay-sampling streams)."""
    gen: torch.Generator
    """Network init, then the loss's random ops (as dqn.train)."""
    started: float = 0.0


class Population:
    """``slots`` agents trained as one batch, continuously: a finished agent's slot is
    given to the next queued one (continuous batching), so a batch stays full when its
    agents need very different numbers of steps.

    ``add(program, seed, key)`` queues an agent; ``advance()`` trains until every queued
    agent is done (or ``max_steps`` batched steps) and returns the ``(key, TrainResult)``
    pairs that finished. Every agent keeps its own step and update counters, epsilon,
    replay buffer, target-update schedule, Adam step count and random streams (seeded by
    its own seed exactly as :func:`evorl_nb.dqn.train` seeds them), so its run does not
    depend on its companions or on when it got its slot: it is the single trainer's run,
    up to float rounding (which over thousands of updates may flip a greedy action, after
    which the two runs part).

    >>> from evorl_nb import library
    >>> pop = Population("CartPole-v1", "ci", slots=2)
    >>> for i, name in enumerate(["dqn", "ddqn", "dqn_reg"]):
    ...     _ = pop.add(library.get(name), seed=i, key=name)
    >>> sorted(key for key, _ in pop.advance())
    ['ddqn', 'dqn', 'dqn_reg']
    """

    def __init__(self, env_id: str, config: DQNConfig | str = "paper", slots: int = 8, *,
                 vectorized: bool = True, compact: bool = True,
                 callback: Callable[[Any, EpisodeRecord], None] | None = None,
                 chunk: int = 128):
        self.config = config = get_config(config) if isinstance(config, str) else config
        if int(slots) < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        if int(chunk) < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        self.chunk = int(chunk)
        """Agents per chunk of the fused update where it runs on torch's products (CPU
        without AVX-512; see LossPlan.fused_update)."""
        keep_freed_memory()
        self.slots = S = int(slots)
        """Agents trained at once."""
        self.spec = spec = get_spec(env_id)
        self.compact, self.callback = compact, callback
        self.device = torch.device(config.device)
        self.queue: deque[_Agent] = deque()
        self._added = 0
        self.env = make_vector_env(spec.env_id, S, vectorized=vectorized)
        self.n_actions, self.obs_dim = self.env.n_actions, self.env.obs_dim
        self.episodes_budget, self.steps_budget = budget(config, spec)
        self.decay = eps_decay(config, spec)
        self.divisor = (None if self.env.obs_divisor is None else
                        torch.as_tensor(self.env.obs_divisor, dtype=torch.float32,
                                        device=self.device))
        self.replay = Replay(S, min(config.buffer_size, self.steps_budget), self.obs_dim,
                             self.env.obs_dtype, self.device)
        # per slot
        self.agents: list[_Agent | None] = [None] * S
        self.active = np.zeros(S, bool)
        self.steps = np.zeros(S, np.int64)
        self.updates = np.zeros(S, np.int64)
        self.ret, self.disc = np.zeros(S), np.zeros(S)
        self.length = np.zeros(S, np.int64)
        self.q0, self.q_taken = np.full(S, np.nan), np.full(S, np.nan)
        self.loss_sum, self.q_sum = np.zeros(S), np.zeros(S)
        self.n_updates = np.zeros(S, np.int64)
        self.need_q0 = np.ones(S, bool)
        self.explore = Streams(S)
        """Each slot's exploration stream (two numbers per step, as dqn.train)."""
        self.sampling = Streams(S)
        """Each slot's replay-sampling stream (one number per sampled transition)."""
        # the batched learner: row j trains the agent in slot rows[j]
        self.rows = np.zeros(0, np.int64)
        self.online: StackedQ | None = None
        self.target: StackedQ | None = None
        self.moments: list[tuple[torch.Tensor, torch.Tensor]] = []
        """Adam's first and second moments of every online tensor (stacked like it)."""
        self.plan: LossPlan | None = None
        self.adam_steps = np.zeros(0, np.int64)
        self.raw: np.ndarray | None = None  # raw observations of every slot
        self._done: list[tuple[Any, TrainResult]] = []

    # --- queue ---------------------------------------------------------------------------

    def add(self, program: Program, seed: int = 0, key: Any = None) -> Any:
        """Queue an agent training ``program`` seeded by ``seed``; returns its key (by
        default the number of agents added before it)."""
        if not isinstance(program, Program):
            raise TypeError(f"the population trainer trains Programs, got "
                            f"{type(program).__name__} (use evorl_nb.dqn.train for a plain "
                            "loss callable)")
        key = self._added if key is None else key
        self._added += 1
        if why := ill_conditioned(program):  # failed before it trains, as dqn.train does
            self._done.append((key, TrainResult(self.spec.env_id, int(seed), failed=True,
                                                reason=f"{why} at step 0")))
            return key
        seeds = agent_seeds(seed)
        self.queue.append(_Agent(key, program, int(seed), TrainResult(self.spec.env_id, int(seed)),
                                 seeds, torch.Generator().manual_seed(seeds.net)))
        return key

    @property
    def running(self) -> int:
        """Agents training now."""
        return int(self.active.sum())

    @property
    def pending(self) -> int:
        """Agents queued for a slot."""
        return len(self.queue)

    @property
    def idle(self) -> bool:
        """True when nothing is training, queued, or finished and not yet returned by
        :meth:`advance`."""
        return not self.queue and not self.active.any() and not self._done

    # --- training ------------------------------------------------------------------------

    def advance(self, max_steps: int | None = None, *,
                progress: bool = False) -> list[tuple[Any, TrainResult]]:
        """Train until every queued agent is done, or for ``max_steps`` batched steps;
        return the agents that finished meanwhile as ``(key, TrainResult)``, in the order
        they finished. Never raises for a bad loss (that agent fails, the others go on)."""
        bar = None
        if progress:
            from tqdm.auto import tqdm

            one_wave = len(self.queue) <= self.slots - self.running  # else: unknown length
            total = self.steps_budget if self.steps_budget < 10**12 and one_wave else None
            bar = tqdm(total=total, unit="step", leave=False,
                       desc=f"{self.running + self.pending} agents on {self.spec.env_id}")
        n = 0
        with torch_threads(self.config.num_threads):
            self._settle()
            while self.active.any() and (max_steps is None or n < max_steps):
                self._step()
                self._settle()
                n += 1
                if bar is not None:
                    bar.update(1)
        if bar is not None:
            bar.close()
        done, self._done = self._done, []
        return done

    def close(self) -> None:
        """Release the environments."""
        self.env.close()

    # --- slots and the learner's layout ----------------------------------------------------

    def _settle(self) -> None:
        """Give free slots to queued agents, or drop finished agents from the learner."""
        free = np.flatnonzero(~self.active)
        gone = ~self.active[self.rows]
        if self.queue and len(free) and (len(free) >= max(1, self.slots // 32)
                                         or not self.active.any()):
            take = [self.queue.popleft() for _ in range(min(len(free), len(self.queue)))]
            self._relayout(list(zip(free[:len(take)].tolist(), take, strict=True)))
        elif gone.any() and (gone.all() or self.compact and
                             gone.sum() >= max(1, len(self.rows) // 8)):
            self._relayout([])

    def _relayout(self, fill: list[tuple[int, _Agent]]) -> None:
        """Rebuild the learner for the rows still training plus the agents in ``fill``."""
        cfg, dev = self.config, self.device
        keep = np.flatnonzero(self.active[self.rows])  # learner rows that go on training
        new_slots = np.asarray([s for s, _ in fill], np.int64)
        for s, a in fill:
            self.agents[s] = a
            a.started = time.perf_counter()
            self.active[s] = True
            self.steps[s] = self.updates[s] = self.length[s] = self.n_updates[s] = 0
            self.ret[s] = self.disc[s] = self.loss_sum[s] = self.q_sum[s] = 0.0
            self.need_q0[s] = True
            self.replay.reset(s)
            self.explore.seed(s, a.seeds.explore)
            self.sampling.seed(s, a.seeds.sample)
        if fill and self.raw is None:  # first episode of every slot (empty slots: seed 0)
            seeds = [0] * self.slots
            for s, a in fill:
                seeds[s] = a.seeds.env
            self.raw = self.env.reset(seeds)
        elif fill:
            self.raw[new_slots] = self.env.reset_at(new_slots.tolist(),
                                                    [a.seeds.env for _, a in fill])
        self.rows = np.concatenate([self.rows[keep], new_slots]).astype(np.int64)
        self.adam_steps = np.concatenate([self.adam_steps[keep],
                                          np.zeros(len(fill), np.int64)])
        if not len(self.rows):
            self.online = self.target = self.plan = None
            self.moments = []
            return
        fresh = (StackedQ.from_generators(self.obs_dim, self.n_actions, cfg.hidden,
                                          [a.gen for _, a in fill], str(dev)) if fill else None)
        kept = self.online is not None and len(keep) > 0
        idx = torch.as_tensor(keep, dtype=torch.long, device=dev)

        def join(old: torch.Tensor | None, new: torch.Tensor | None) -> torch.Tensor:
            """The kept rows of ``old`` followed by ``new`` (either may be absent), a copy."""
            parts = ([old.detach().index_select(0, idx)] if kept else []) + (
                [new.detach()] if new is not None else [])
            return torch.cat(parts) if len(parts) > 1 else parts[0].clone()

        n_params = 2 * (len(cfg.hidden) + 1)
        params, targets, moments = [], [], []
        for i in range(n_params):
            old_p = self.online.parameters[i] if kept else None
            new_p = fresh.parameters[i] if fresh is not None else None
            old_m, old_v = self.moments[i] if kept else (None, None)
            zeros = torch.zeros_like(new_p) if new_p is not None else None
            params.append(join(old_p, new_p).requires_grad_())
            targets.append(join(self.target.parameters[i] if kept else None, new_p))
            moments.append((join(old_m, zeros), join(old_v, zeros)))
        self.online = StackedQ(params[0::2], params[1::2])
        self.target = StackedQ(targets[0::2], targets[1::2])
        self.moments = moments
        self.plan = LossPlan([self.agents[s].program for s in self.rows]).to(dev)

    # --- one batched step ------------------------------------------------------------------

    def _finish(self, s: int) -> None:
        a = self.agents[s]
        self.active[s] = False
        a.result.steps, a.result.updates = int(self.steps[s]), int(self.updates[s])
        a.result.wall_time = time.perf_counter() - a.started
        self._done.append((a.key, a.result))

    def _step(self) -> None:
        cfg, S, nA = self.config, self.slots, self.n_actions
        act = self.active
        live = np.flatnonzero(act)
        rows = self.rows
        eps = epsilon(cfg, self.decay, self.steps)
        draws = np.zeros((S, 2))
        draws[live] = self.explore.uniform(live, 2)  # explore?, which random action
        obs_t = decode(self.raw[rows], self.divisor, self.device)
        with torch.no_grad():
            q = self._act(obs_t)  # [n, A]
            greedy_rows = q.argmax(1).cpu().numpy()
            q_np = q.cpu().numpy().astype(np.float64)
        actions = np.minimum((draws[:, 1] * nA).astype(np.int64), nA - 1)
        greedy = actions.copy()
        greedy[rows] = greedy_rows
        actions = np.where(draws[:, 0] < eps, actions, greedy)
        # Q tracking: max_a Q(s_0, a) and Q(s_0, a_0) at each agent's episode start
        starting = self.need_q0[rows] & act[rows]
        if starting.any():
            ks = rows[starting]
            self.q0[ks] = q_np[starting].max(1)
            self.q_taken[ks] = q_np[starting, actions[ks]]
            self.need_q0[ks] = False
        out = self.env.step(actions)
        self.replay.add(live, self.raw, actions, out.reward, out.next_obs, out.terminated)
        gamma = cfg.gamma
        self.disc += gamma ** self.length * out.reward
        self.ret += out.reward
        self.length += 1
        self.steps[live] += 1
        row_steps = self.steps[rows]
        learn = act[rows] & (row_steps >= cfg.learning_starts) & (row_steps % cfg.train_every == 0)
        if learn.any():
            failed = self._update(learn)
            for j, reason in failed.items():
                s = rows[j]
                self.agents[s].result.failed = True
                self.agents[s].result.reason = f"{reason} at step {self.steps[s]}"
                self._finish(s)
            stepped = learn.copy()
            stepped[list(failed)] = False
            ss = rows[stepped]
            self.updates[ss] += 1
            copy = np.zeros(len(rows), bool)
            copy[stepped] = self.updates[ss] % cfg.target_update == 0
            if copy.any():
                self._copy_target(copy)
        ended = out.terminated | out.truncated
        for s in np.flatnonzero(ended & self.active).tolist():
            a = self.agents[s]
            mean = lambda x, n: float(x / n) if n else float("nan")  # noqa: E731
            record = EpisodeRecord(len(a.result.episodes), int(self.steps[s]), float(self.ret[s]),
                                   int(self.length[s]), float(self.disc[s]), float(self.q0[s]),
                                   float(self.q_taken[s]),
                                   mean(self.q_sum[s], self.n_updates[s]),
                                   mean(self.loss_sum[s], self.n_updates[s]), float(eps[s]))
            a.result.episodes.append(record)
            if self.callback is not None:
                self.callback(a.key, record)
            if (self.episodes_budget is not None
                    and len(a.result.episodes) >= self.episodes_budget):
                self._finish(s)
        self.ret[ended] = self.disc[ended] = 0.0
        self.length[ended] = 0
        self.loss_sum[ended] = self.q_sum[ended] = 0.0
        self.n_updates[ended] = 0
        self.need_q0[ended] = True
        for s in np.flatnonzero(self.active & (self.steps >= self.steps_budget)).tolist():
            self._finish(s)
        self.raw = out.obs

    def _act(self, obs: torch.Tensor) -> torch.Tensor:
        """The online networks' Q-values ``[n, A]`` on one observation per learner row."""
        if (obs.device.type == "cpu" and obs.dtype == torch.float32
                and self.online.weights[0].dtype == torch.float32
                and netkernel.networks_available()):
            return netkernel.NetKernel(self.online.weights, self.online.biases).act(obs)
        return self.online(obs.unsqueeze(1)).squeeze(1)

    def _copy_target(self, rows_mask: np.ndarray) -> None:
        """Hard target update of the learner rows in ``rows_mask``."""
        if rows_mask.all():
            self.target.copy_from(self.online)
            return
        idx = torch.as_tensor(np.flatnonzero(rows_mask), dtype=torch.long, device=self.device)
        with torch.no_grad():
            for mine, theirs in zip(self.target.parameters, self.online.parameters, strict=True):
                mine.index_copy_(0, idx, theirs.detach().index_select(0, idx))

    def _update(self, learn: np.ndarray) -> dict[int, str]:
        """One gradient step for the learner rows in ``learn``; returns {row: why it stops}."""
        cfg, rows = self.config, self.rows
        gens = ([self.agents[s].gen if ok else None
                 for s, ok in zip(rows.tolist(), learn, strict=True)]
                if self.plan.random_nodes else None)  # only the loss's random ops use them
        b = self.replay.sample(rows, learn, cfg.batch_size, self.sampling, self.divisor)
        online, target = self.online, self.target
        learn_t = torch.as_tensor(learn, device=self.device)
        for p in online.parameters:
            p.grad = None
        try:
            adam = (self.moments, self.adam_steps, cfg.lr, *ADAM_BETAS, ADAM_EPS)
            fused = self.plan.fused_update(b["obs"], b["action"], b["reward"], b["next_obs"],
                                           b["done"], online, target, cfg.gamma, gens, learn_t,
                                           cfg.max_loss, self.chunk, adam)
            if fused is None:  # the grouped torch evaluation, through autograd
                q_cache: dict = {}
                losses = self.plan.losses(b["obs"], b["action"], b["reward"], b["next_obs"],
                                          b["done"], online, target, cfg.gamma, gens, q_cache)
        except Exception as e:  # a wild op must not kill the batch: every agent fails with it
            rows_failed = np.flatnonzero(learn)
            _warn_batch_failure(e, len(rows_failed))
            return {j: f"loss raised {type(e).__name__}: {e}" for j in rows_failed}
        grad_ok = None  # set where the fused update checked the gradients and took Adam's step
        if fused is not None:
            values, ok, q_sa, grad_ok = fused
            differentiable = True
        else:
            q_sa = q_cache.get((ONLINE, S_T))
            if q_sa is None:
                with torch.no_grad():
                    q_sa = online(b["obs"])
            values = losses.detach()
            ok = torch.isfinite(values) & ~(values.abs() > cfg.max_loss) & learn_t
            total = torch.where(ok, losses, torch.zeros_like(losses)).sum()
            differentiable = total.requires_grad
            if differentiable:
                total.backward()
        q_taken = q_sa.detach().gather(2, b["action"].unsqueeze(2)).squeeze(2).mean(1)
        grads = [p.grad for p in online.parameters]
        stepped_already = grad_ok is not None
        if grad_ok is None and all(g is not None for g in grads):
            grad_ok = torch.isfinite(torch.stack([g.flatten(1).sum(1) for g in grads]).sum(0))
        elif grad_ok is None:
            grad_ok = torch.ones_like(ok)
        values_np = values.cpu().numpy().astype(np.float64)
        ok_np, grad_ok_np = ok.cpu().numpy(), grad_ok.cpu().numpy()
        failed: dict[int, str] = {}
        for j in np.flatnonzero(learn & (~ok_np | ~grad_ok_np)):
            failed[j] = loss_failure(float(values_np[j]), cfg.max_loss) or GRADIENT_NOT_FINITE
        stepped = learn.copy()
        stepped[list(failed)] = False
        if stepped_already:
            self.adam_steps[stepped] += 1
        elif differentiable:
            adam_step(online.parameters, self.moments, self.adam_steps, stepped,
                      self.active[rows] & ~learn, cfg.lr)
        ks = rows[stepped]
        self.loss_sum[ks] += values_np[stepped]
        self.q_sum[ks] += q_taken.cpu().numpy().astype(np.float64)[stepped]
        self.n_updates[ks] += 1
        return failed

_WARNED: set[str] = set()


def _warn_batch_failure(error: Exception, n: int) -> None:
    """Warn (once per message and process) that one exception failed a whole update.

    The agents are recorded failed as for any bad loss, and training goes on; but an
    exception raised inside evorl_nb looks exactly like that (every agent of every batch
    failing with one reason), so it is said out loud, not only in the run's records.
    """
    why = f"{type(error).__name__}: {error}"
    if why not in _WARNED:
        _WARNED.add(why)
        warnings.warn(f"evorl_nb: an update of {n} agents raised {why}; all of them are "
                      "recorded failed with it. A loss can do this, but if every candidate "
                      "fails this way it is a bug, not the losses", RuntimeWarning,
                      stacklevel=3)


def train_population(programs: Sequence[Program], env_id: str,
                     config: DQNConfig | str = "paper", *, seeds: Sequence[int] | None = None,
                     callback: Callable[[int, EpisodeRecord], None] | None = None,
                     progress: bool = False, vectorized: bool = True,
                     compact: bool = True, slots: int | None = None) -> list[TrainResult]:
    """Train one DQN agent per program on ``env_id``, all at once; never raises for a bad loss.

    ``seeds[k]`` seeds agent k (default ``0..K-1``); the result list is in program order
    and each entry is what :func:`evorl_nb.dqn.train` would return for that agent.
    ``callback(k, record)`` sees every finished episode of agent k. ``vectorized=False``
    steps plain gymnasium envs (for checking the batched envs). ``compact`` drops finished
    agents from the batched learner as they accumulate. ``slots`` (default: all K) trains
    that many at a time, a finished agent's slot going to the next program.
    """
    config = get_config(config) if isinstance(config, str) else config
    programs = list(programs)
    if not programs:
        return []
    K = len(programs)
    seeds = list(range(K)) if seeds is None else [int(s) for s in seeds]
    if len(seeds) != K:
        raise ValueError(f"need one seed per program: {K} programs, {len(seeds)} seeds")
    pop = Population(env_id, config, min(K, slots or K), vectorized=vectorized,
                     compact=compact, callback=callback)
    return run_in_order(pop, programs, seeds, progress)


def run_in_order(trainer, programs: Sequence, seeds: Sequence[int], progress: bool = False) -> list:
    """Add ``programs`` (keys 0..n-1) to a :class:`Population`-like ``trainer``, run it to
    the end, close it, and return the results in program order."""
    try:
        for k, (p, s) in enumerate(zip(programs, seeds, strict=True)):
            trainer.add(p, s, key=k)
        done = dict(trainer.advance(progress=progress))
    finally:
        trainer.close()
    return [done[k] for k in range(len(programs))]
