"""The population trainer: K DQN agents, each with its own loss program, trained as one batch.

Training one small agent at a time leaves a CPU (and even more a GPU) idle: every
operation is a tiny tensor and Python overhead dominates. Here K agents share every
operation instead:

* **Networks** are stacked: layer ``i`` of all agents is one ``[K, in, out]`` weight, so a
  forward pass is one ``baddbmm`` per layer. Adam runs over the stacked tensors; since it
  is elementwise, each agent's slice follows exactly the update it would get alone.
* **Environments** step as a batch (:func:`evorl_nb.envs.vector.make_vector_env`).
* **Replay buffers** are ``[K, capacity, ...]`` tensors written in lockstep.
* **Losses**: K different programs cannot be one kernel, but their ops can be grouped.
  :class:`LossPlan` compiles the programs once: every Q-network call becomes one of four
  precomputed stacked values (online or target net on ``s_t`` or ``s_{t+1}``), and the
  remaining nodes are evaluated level by level (a node's level is one more than its
  deepest input), one batched call per (level, op, input types) group across all agents.
  The per-agent losses are **summed** (never averaged) into the value that is
  differentiated, so each agent receives exactly its own gradient.
* **Failures** are per agent: a loss that turns NaN/inf, explodes or whose gradient is not
  finite stops that agent (recorded with the reason, as :func:`evorl_nb.dqn.train` does);
  the others go on. Agents that are done (failed, or out of episodes) are dropped from the
  batched learner as they accumulate, so a batch does not pay for them.

Randomness: agent ``k``'s network init and environment come from ``seeds[k]`` exactly as in
:func:`evorl_nb.dqn.train`; exploration and replay sampling draw from one stream seeded by
``seeds[0]``. So with K = 1 the run *is* ``train(program, env_id, config, seed=seeds[0])``
(to float rounding: batched matmuls may round differently), and for K > 1 every agent is an
independent draw from the same distribution.

>>> from evorl_nb import library
>>> runs = train_population([library.get("dqn"), library.get("ddqn")], "CartPole-v1", "ci",
...                         seeds=[0, 1])
>>> [r.steps for r in runs]
[400, 400]
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from evorl_nb.dqn import (
    DQNConfig,
    EpisodeRecord,
    QNetwork,
    TrainResult,
    _budget,
    _threads,
    get_config,
)
from evorl_nb.envs import get_spec
from evorl_nb.envs.vector import make_vector_env
from evorl_nb.ops import OPS, Type, _bc
from evorl_nb.program import N_INPUTS, TARGET, Program

__all__ = ["train_population", "LossPlan", "StackedQ", "agent_seeds"]

# input slots (see evorl_nb.program.INPUTS)
_ONLINE, _ACTION, _S_T, _S_TP1, _REWARD, _DISCOUNT = 0, 1, 2, 4, 5, 6

# value classes of the grouped evaluation: which bank a type's values live in
# the Q-network calls a program can make, in the order their values fill the L bank
_COMBO_ORDER = ((_ONLINE, _S_T), (_ONLINE, _S_TP1), (TARGET, _S_TP1), (TARGET, _S_T))

_CLASS = {Type.R: "R", Type.LIST: "L", Type.P: "L", Type.Z: "Z", Type.S: "S"}
# a bank holds values of one class, with "g" appended for values that carry a gradient
# (Program.grad_nodes): gradient-free values (r_t, gamma, the target net's Q, the TD target
# built from them) are computed without autograd and their reads cost nothing in backward


def agent_seeds(seed: int) -> tuple[int, int, int]:
    """(exploration seed, network/sampling seed, env seed) of one agent: as dqn.train draws them."""
    s = np.random.SeedSequence(int(seed)).generate_state(3)
    return int(s[0]), int(s[1]), int(s[2] % 2**31)


# --- stacked networks --------------------------------------------------------------------


class StackedQ:
    """K MLP Q networks as stacked tensors: ``weights[i]`` is ``[K, in, out]``, ``biases[i]``
    ``[K, 1, out]``; agent k's values equal a :class:`evorl_nb.dqn.QNetwork`'s."""

    def __init__(self, weights: list[torch.Tensor], biases: list[torch.Tensor]):
        self.weights, self.biases = weights, biases

    @classmethod
    def from_generators(cls, obs_dim: int, n_actions: int, hidden: tuple[int, ...],
                        generators: Sequence[torch.Generator], device: str = "cpu") -> StackedQ:
        """K networks, agent k initialised by ``QNetwork(..., generators[k])``."""
        nets = [QNetwork(obs_dim, n_actions, hidden, g) for g in generators]
        weights = [torch.stack([n.layers[i].weight.detach().t() for n in nets]).contiguous()
                   for i in range(len(nets[0].layers))]
        biases = [torch.stack([n.layers[i].bias.detach() for n in nets]).unsqueeze(1)
                  for i in range(len(nets[0].layers))]
        return cls([w.to(device).requires_grad_() for w in weights],
                   [b.to(device).requires_grad_() for b in biases])

    @property
    def parameters(self) -> list[torch.Tensor]:
        """Every stacked tensor (weights then biases, layer by layer)."""
        return [t for pair in zip(self.weights, self.biases) for t in pair]

    @property
    def size(self) -> int:
        """Number of agents K."""
        return self.weights[0].shape[0]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Q-values ``[K, N, A]`` of observations ``[K, N, obs_dim]``."""
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            x = torch.baddbmm(b, x, w)
            if i < last:
                x = torch.relu(x)
        return x

    def subset(self, agents: torch.Tensor) -> StackedQ:
        """The networks of ``agents`` only (differentiable: gradients reach these tensors)."""
        return StackedQ([w.index_select(0, agents) for w in self.weights],
                        [b.index_select(0, agents) for b in self.biases])

    def frozen_copy(self) -> StackedQ:
        """A detached copy (the target network)."""
        return StackedQ([w.detach().clone() for w in self.weights],
                        [b.detach().clone() for b in self.biases])

    def copy_from(self, other: StackedQ) -> None:
        """Overwrite these tensors with ``other``'s values (a hard target update)."""
        with torch.no_grad():
            for mine, theirs in zip(self.parameters, other.parameters):
                mine.copy_(theirs)


# --- grouped loss evaluation ----------------------------------------------------------------


def _sum_trailing(x: torch.Tensor) -> torch.Tensor:
    """Sum over everything after the (group, batch) axes."""
    return x.flatten(2).sum(-1) if x.dim() > 2 else x


def _grouped(op_name: str, args: list[torch.Tensor], types: tuple[Type, ...]) -> torch.Tensor:
    """``op`` on values with a leading group axis: ``[G, B]`` / ``[G, B, A]`` / ``[G, B, D]``.

    Most ops in the table act on the last axis or elementwise and work unchanged; the ones
    that reduce over the batch axis or "everything after it" are written out here.
    """
    op = OPS[op_name]
    if op_name == "MeanBatch":
        x = args[0]
        return x.mean(1, keepdim=True).expand_as(x)
    if op_name == "StdBatch":
        x = args[0]
        return x.std(1, unbiased=False, keepdim=True).expand_as(x)
    if op_name == "DotProduct" and types[0] in (Type.V, Type.S):
        return _sum_trailing(args[0] * args[1])
    if op_name == "L2Distance":
        x, y = _bc(args[0], args[1])
        return 0.5 * _sum_trailing((x - y) ** 2)
    if op.typed:
        return op.torch(*args, types=types)
    return op.torch(*args)


def _classes(p: Program) -> list[str]:
    """The bank class of every node of ``p`` (inputs included)."""
    grad = p.grad_nodes()
    return [_CLASS.get(t, "-") + ("g" if g else "") for t, g in zip(p.types, grad)]


def _combo_class(combo: tuple[int, int]) -> str:
    return "Lg" if combo[0] == _ONLINE else "L"


def _rows(idx: list[int]) -> slice | torch.Tensor:
    """Bank rows to read: a slice (a view, no copy) when they are consecutive."""
    if idx == list(range(idx[0], idx[0] + len(idx))):
        return slice(idx[0], idx[0] + len(idx))
    return torch.tensor(idx, dtype=torch.long)


@dataclass
class _Group:
    op: str
    types: tuple[Type, ...]
    out_class: str
    args: list[tuple[str, slice | torch.Tensor]]  # (bank class, rows) per input position
    size: int


@dataclass
class _Level:
    groups: list[_Group] = field(default_factory=list)


class LossPlan:
    """K programs compiled for grouped evaluation over stacked networks (see module docs).

    ``plan.losses(batch, online, target, gamma, generator)`` returns the ``[K]`` per-agent
    losses; agent k's equals ``programs[k].loss`` on its own slice of the batch.
    """

    def __init__(self, programs: Sequence[Program]):
        self.programs = list(programs)
        self.K = K = len(self.programs)
        rows: dict[str, int] = defaultdict(int)
        where: list[dict[int, tuple[str, int]]] = [dict() for _ in range(K)]

        def new_rows(cls: str, n: int) -> int:
            start = rows[cls]
            rows[cls] += n
            return start

        # level 0: inputs, constants, random sources, Q-network calls
        reward0, discount0 = new_rows("R", K), new_rows("R", K)
        action0, obs0, next0 = new_rows("Z", K), new_rows("S", K), new_rows("S", K)
        # the Q-network calls: (net slot, state slot) -> agents that make it; the online net
        # on s_t is always computed for every agent (the Q tracking reads it)
        users: dict[tuple[int, int], set[int]] = defaultdict(set)
        self.constants: list[float] = []
        const_row: dict[float, int] = {}
        self.random_nodes: list[tuple[int, int, str]] = []  # (agent, node, op) in draw order
        levels: dict[int, dict[tuple, list[tuple[int, int]]]] = defaultdict(dict)
        level_of: list[dict[int, int]] = [dict() for _ in range(K)]
        classes = [_classes(p) for p in self.programs]
        for k, p in enumerate(self.programs):
            w, lv, cls_k = where[k], level_of[k], classes[k]
            w.update({_REWARD: ("R", reward0 + k), _DISCOUNT: ("R", discount0 + k),
                      _ACTION: ("Z", action0 + k), _S_T: ("S", obs0 + k),
                      _S_TP1: ("S", next0 + k)})
            lv.update({i: 0 for i in range(N_INPUTS)})
            live = set(p.live())
            for i, n in enumerate(p.nodes, start=N_INPUTS):
                if i not in live:
                    continue
                op = OPS[n.op]
                if n.op == "QValues":
                    users[(n.inputs[0], n.inputs[1])].add(k)
                    lv[i] = 0
                    continue  # rows assigned below, once every combo is known
                if op.arity == 0:
                    lv[i] = 0
                    if op.random:
                        w[i] = ("R", new_rows("R", 1))
                        self.random_nodes.append((k, i, n.op))
                    else:
                        v = float(n.value)
                        if v not in const_row:
                            const_row[v] = len(self.constants)
                            self.constants.append(v)
                        w[i] = ("R", -1 - const_row[v])  # patched once the count is known
                    continue
                lv[i] = 1 + max(lv[j] for j in n.inputs)
                types = tuple(p.types[j] for j in n.inputs)
                key = (n.op, types, tuple(cls_k[j] for j in n.inputs), cls_k[i])
                levels[lv[i]].setdefault(key, []).append((k, i))
        # constants follow the random rows in the R bank; Q combos fill the L bank's level 0
        const0 = new_rows("R", len(self.constants))
        users[(_ONLINE, _S_T)] = set(range(K))
        self.combos = [c for c in _COMBO_ORDER if users.get(c)]
        """The Q-network calls made, in L-bank order: (net slot, state slot)."""
        self.combo_agents = {c: torch.tensor(sorted(users[c]), dtype=torch.long)
                             for c in self.combos}
        """Agents making each call (a call made by every agent uses no subset)."""
        combo_row: dict[tuple[int, int], dict[int, int]] = {}
        for c in self.combos:  # online values carry a gradient, the target net's do not
            start = new_rows(_combo_class(c), len(users[c]))
            combo_row[c] = {k: start + j for j, k in enumerate(sorted(users[c]))}
        for k, p in enumerate(self.programs):
            w = where[k]
            for i, (cls, r) in list(w.items()):
                if cls == "R" and r < 0:
                    w[i] = ("R", const0 + (-1 - r))
            for i, n in enumerate(p.nodes, start=N_INPUTS):
                if n.op == "QValues" and i in level_of[k]:
                    combo = (n.inputs[0], n.inputs[1])
                    w[i] = (_combo_class(combo), combo_row[combo][k])
        # levels >= 1: one group per (op, input types, banks read, bank written); rows are
        # appended in group order
        self.levels: list[_Level] = []
        for depth in sorted(levels):
            level = _Level()
            for (op_name, types, in_cls, out_cls), members in levels[depth].items():
                args = []
                for m, c in enumerate(in_cls):
                    idx = [where[k][self.programs[k].node(i).inputs[m]][1] for k, i in members]
                    assert all(where[k][self.programs[k].node(i).inputs[m]][0] == c
                               for k, i in members)
                    args.append((c, _rows(idx)))
                start = new_rows(out_cls, len(members))
                for j, (k, i) in enumerate(members):
                    where[k][i] = (out_cls, start + j)
                level.groups.append(_Group(op_name, types, out_cls, args, len(members)))
            self.levels.append(level)
        # a Program's output is always an R node with a gradient (Program validates it)
        self._out_rows = torch.tensor([where[k][p.output][1] for k, p in enumerate(self.programs)],
                                      dtype=torch.long)
        self._device = torch.device("cpu")
        self.n_groups = sum(len(lv.groups) for lv in self.levels)
        """Batched op calls per evaluation (what the grouping costs, independent of K)."""

    def to(self, device: str | torch.device) -> LossPlan:
        """Move the index tensors to ``device``."""
        device = torch.device(device)
        if device != self._device:
            for level in self.levels:
                for g in level.groups:
                    g.args = [(c, idx if isinstance(idx, slice) else idx.to(device))
                              for c, idx in g.args]
            self._out_rows = self._out_rows.to(device)
            self.combo_agents = {c: idx.to(device) for c, idx in self.combo_agents.items()}
            self._device = device
        return self

    def needs(self, net_slot: int, state_slot: int) -> bool:
        """True if some program calls that network on that state."""
        return (net_slot, state_slot) in self.combos

    def losses(self, obs: torch.Tensor, action: torch.Tensor, reward: torch.Tensor,
               next_obs: torch.Tensor, done: torch.Tensor, online: StackedQ, target: StackedQ,
               gamma: float, generator: torch.Generator | None = None,
               q_cache: dict[tuple[int, int], torch.Tensor] | None = None) -> torch.Tensor:
        """Per-agent losses ``[K]`` for a batch ``[K, B, ...]`` (obs float, action long).

        ``q_cache`` may hold already computed stacked Q-values by (net slot, state slot);
        the ones computed here are added to it.
        """
        K, B = action.shape
        discount = gamma * (1.0 - done.to(reward.dtype))
        q_cache = {} if q_cache is None else q_cache
        states = {_S_T: obs, _S_TP1: next_obs}
        online_next = self.combo_agents.get((_ONLINE, _S_TP1))
        if online_next is not None and len(online_next) == K and (_ONLINE, _S_T) not in q_cache:
            # both states through the online net in one call
            both = online(torch.cat([obs, next_obs], 1))
            q_cache[(_ONLINE, _S_T)], q_cache[(_ONLINE, _S_TP1)] = both[:, :B], both[:, B:]
        blocks: dict[str, list[torch.Tensor]] = defaultdict(list)
        for key in self.combos:
            if key not in q_cache:
                net_slot, state_slot = key
                agents, x = self.combo_agents[key], states[state_slot]
                net = target if net_slot == TARGET else online
                if len(agents) < K:
                    net, x = net.subset(agents), x.index_select(0, agents)
                if net_slot == TARGET:
                    with torch.no_grad():
                        q_cache[key] = net(x)
                else:
                    q_cache[key] = net(x)
            blocks[_combo_class(key)].append(q_cache[key])
        r_blocks = [reward, discount]
        if self.random_nodes:
            draws = []
            for _k, _i, op_name in self.random_nodes:
                fn = torch.randn if op_name == "Normal" else torch.rand
                draws.append(fn(B, generator=generator, dtype=reward.dtype, device=reward.device))
            r_blocks.append(torch.stack(draws))
        if self.constants:
            r_blocks.append(torch.tensor(self.constants, dtype=reward.dtype, device=reward.device)
                            .unsqueeze(1).expand(-1, B))
        banks: dict[str, torch.Tensor] = {"R": torch.cat(r_blocks), "Z": action,
                                          "S": torch.cat([obs, next_obs])}
        banks.update((cls, torch.cat(parts)) for cls, parts in blocks.items())
        for level in self.levels:
            new: dict[str, list[torch.Tensor]] = defaultdict(list)
            for g in level.groups:
                with torch.set_grad_enabled(g.out_class.endswith("g")):
                    args = [banks[c][idx] if isinstance(idx, slice)
                            else banks[c].index_select(0, idx) for c, idx in g.args]
                    new[g.out_class].append(_grouped(g.op, args, g.types))
            for cls, outs in new.items():
                banks[cls] = torch.cat([banks[cls], *outs]) if cls in banks else torch.cat(outs)
        return banks["Rg"].index_select(0, self._out_rows).mean(-1)

    def subset(self, keep: Sequence[int]) -> LossPlan:
        """The plan of the programs at positions ``keep`` (agents dropped from a batch)."""
        return LossPlan([self.programs[k] for k in keep]).to(self._device)


# --- the trainer -------------------------------------------------------------------------------


@dataclass
class _Agents:
    """Per-agent episode book-keeping as arrays over all K agents."""

    K: int
    gamma: float

    def __post_init__(self):
        K = self.K
        self.ret = np.zeros(K)
        self.disc = np.zeros(K)
        self.length = np.zeros(K, np.int64)
        self.q0 = np.full(K, np.nan)
        self.q_taken = np.full(K, np.nan)
        self.loss_sum = np.zeros(K)
        self.q_sum = np.zeros(K)
        self.n_updates = np.zeros(K, np.int64)
        self.need_q0 = np.ones(K, bool)


def train_population(programs: Sequence[Program], env_id: str,
                     config: DQNConfig | str = "paper", *, seeds: Sequence[int] | None = None,
                     callback: Callable[[int, EpisodeRecord], None] | None = None,
                     progress: bool = False, vectorized: bool = True,
                     compact: bool = True) -> list[TrainResult]:
    """Train one DQN agent per program on ``env_id``, all at once; never raises for a bad loss.

    ``seeds[k]`` seeds agent k (default ``0..K-1``); the result list is in program order
    and each entry is what :func:`evorl_nb.dqn.train` would return for that agent.
    ``callback(k, record)`` sees every finished episode of agent k. ``vectorized=False``
    steps plain gymnasium envs (for checking the batched envs). ``compact`` drops finished
    agents from the batched learner as they accumulate.
    """
    config = get_config(config) if isinstance(config, str) else config
    programs = list(programs)
    if not programs:
        return []
    for p in programs:
        if not isinstance(p, Program):
            raise TypeError(f"train_population trains Programs, got {type(p).__name__} "
                            "(use evorl_nb.dqn.train for a plain loss callable)")
    K = len(programs)
    seeds = list(range(K)) if seeds is None else [int(s) for s in seeds]
    if len(seeds) != K:
        raise ValueError(f"need one seed per program: {K} programs, {len(seeds)} seeds")
    spec = get_spec(env_id)
    device = torch.device(config.device)
    results = [TrainResult(spec.env_id, s) for s in seeds]
    start = time.perf_counter()
    with _threads(config.num_threads):
        return _run(programs, spec, config, seeds, results, device, callback, progress,
                    vectorized, compact, start)


def _run(programs, spec, config, seeds, results, device, callback, progress, vectorized,
         compact, start):
    K = len(programs)
    per_agent = [agent_seeds(s) for s in seeds]
    rng = np.random.default_rng(per_agent[0][0])
    env = make_vector_env(spec.env_id, K, vectorized=vectorized)
    n_actions, obs_dim = env.n_actions, env.obs_dim
    gens = [torch.Generator().manual_seed(a[1]) for a in per_agent]
    online = StackedQ.from_generators(obs_dim, n_actions, config.hidden, gens, str(device))
    # one sampling stream: agent 0's generator, continued after its network init
    if device.type == "cpu":
        gen = gens[0]
    else:
        gen = torch.Generator(device).manual_seed(per_agent[0][1])
    target = online.frozen_copy()
    optim = torch.optim.Adam(online.parameters, lr=config.lr, fused=True)
    plan = LossPlan(programs).to(device)
    episodes_budget, steps_budget = _budget(config, spec)
    decay = config.eps_decay_steps or spec.epsilon_decay_steps
    if config.max_eps_decay_steps is not None:
        decay = min(decay, config.max_eps_decay_steps)
    divisor = (None if env.obs_divisor is None
               else torch.as_tensor(env.obs_divisor, dtype=torch.float32, device=device))
    capacity = min(config.buffer_size, steps_budget)
    replay = _Replay(K, capacity, obs_dim, env.obs_dtype, device)
    replay.divisor = divisor
    book = _Agents(K, config.gamma)
    active = np.ones(K, bool)  # still training (not failed, episodes left)
    rows = np.arange(K)  # learner row -> agent index
    stop: dict[int, tuple[int, int]] = {}  # agent -> (steps, updates) when it stopped
    raw = env.reset([a[2] for a in per_agent])
    steps = updates = 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps_budget if steps_budget < 10**12 else None, unit="step",
                   leave=False, desc=f"{K} agents on {spec.env_id}")
    gamma = config.gamma
    while steps < steps_budget and active.any():
        eps = config.eps_end + (config.eps_start - config.eps_end) * max(0.0, 1.0 - steps / decay)
        draws = rng.random((K, 2))
        obs_t = _decode(raw, divisor, device)
        with torch.no_grad():
            q = online(obs_t[rows].unsqueeze(1)).squeeze(1)  # [n, A] for learner rows
            greedy_rows = q.argmax(1).cpu().numpy()
            q_np = q.cpu().numpy().astype(np.float64)
        actions = np.minimum((draws[:, 1] * n_actions).astype(np.int64), n_actions - 1)
        greedy = actions.copy()
        greedy[rows] = greedy_rows
        explore = draws[:, 0] < eps
        actions = np.where(explore, actions, greedy)
        # Q tracking: max_a Q(s_0, a) and Q(s_0, a_0) at each agent's episode start
        starting = book.need_q0[rows]
        if starting.any():
            ks = rows[starting]
            book.q0[ks] = q_np[starting].max(1)
            book.q_taken[ks] = q_np[starting, actions[ks]]
            book.need_q0[ks] = False
        out = env.step(actions)
        replay.add(raw, actions, out.reward, out.next_obs, out.terminated, rows)
        book.disc += gamma ** book.length * out.reward
        book.ret += out.reward
        book.length += 1
        steps += 1
        if steps >= config.learning_starts and steps % config.train_every == 0 and len(rows):
            failed = _update(plan, replay, online, target, optim, gen, config, book, rows)
            for j, reason in failed.items():
                k = rows[j]
                if active[k]:
                    results[k].failed, results[k].reason = True, f"{reason} at step {steps}"
                    active[k] = False
                    stop[k] = (steps, updates)
            updates += 1
            if updates % config.target_update == 0:
                target.copy_from(online)
        ended = out.terminated | out.truncated
        if ended.any():
            for k in np.flatnonzero(ended):
                if not active[k]:
                    continue
                mean = lambda s, n: float(s / n) if n else float("nan")  # noqa: E731
                record = EpisodeRecord(len(results[k].episodes), steps, float(book.ret[k]),
                                       int(book.length[k]), float(book.disc[k]),
                                       float(book.q0[k]), float(book.q_taken[k]),
                                       mean(book.q_sum[k], book.n_updates[k]),
                                       mean(book.loss_sum[k], book.n_updates[k]), eps)
                results[k].episodes.append(record)
                if callback is not None:
                    callback(int(k), record)
                if episodes_budget is not None and len(results[k].episodes) >= episodes_budget:
                    active[k] = False
                    stop[k] = (steps, updates)
            book.ret[ended] = book.disc[ended] = 0.0
            book.length[ended] = 0
            book.loss_sum[ended] = book.q_sum[ended] = 0.0
            book.n_updates[ended] = 0
            book.need_q0[ended] = True
        raw = out.obs
        # drop finished agents from the learner once enough have accumulated
        gone = ~active[rows]
        if gone.any() and (not compact and gone.all() or
                           compact and gone.sum() >= max(1, len(rows) // 8)):
            keep = np.flatnonzero(~gone)
            rows = rows[keep]
            if len(rows):
                online, target, optim = _shrink(online, target, optim, keep, config)
                plan = plan.subset(keep)
                replay.shrink(keep)
        if bar is not None:
            bar.update(1)
    env.close()
    if bar is not None:
        bar.close()
    wall = time.perf_counter() - start
    for k, r in enumerate(results):
        r.steps, r.updates = stop.get(k, (steps, updates))
        r.wall_time = wall
    return results


def _decode(raw: np.ndarray, divisor, device) -> torch.Tensor:
    x = torch.as_tensor(raw).to(device=device, dtype=torch.float32)
    return x / divisor if divisor is not None else x


def _shrink(online: StackedQ, target: StackedQ, optim, keep, config):
    """Keep learner rows ``keep``: networks, target and Adam state."""
    idx = torch.as_tensor(keep, dtype=torch.long, device=online.weights[0].device)
    new_online = StackedQ(
        [w.detach().index_select(0, idx).requires_grad_() for w in online.weights],
        [b.detach().index_select(0, idx).requires_grad_() for b in online.biases])
    new_target = StackedQ([w.index_select(0, idx) for w in target.weights],
                          [b.index_select(0, idx) for b in target.biases])
    new_optim = torch.optim.Adam(new_online.parameters, lr=config.lr, fused=True)
    for old, new in zip(online.parameters, new_online.parameters):
        state = optim.state.get(old)
        if state:
            new_optim.state[new] = {"step": state["step"].clone(),
                                    "exp_avg": state["exp_avg"].index_select(0, idx),
                                    "exp_avg_sq": state["exp_avg_sq"].index_select(0, idx)}
    return new_online, new_target, new_optim


class _Replay:
    """K uniform replay buffers written in lockstep: ``[n, capacity, ...]`` tensors that grow
    by doubling, raw observations (uint8 grid codes stay uint8)."""

    def __init__(self, K: int, capacity: int, obs_dim: int, obs_dtype, device):
        self.capacity, self.size, self.pos = capacity, 0, 0
        self.obs_dim, self.device = obs_dim, device
        self.obs_dtype = torch.from_numpy(np.zeros(0, dtype=obs_dtype)).dtype
        self._alloc(K, min(capacity, 4096))

    def _alloc(self, n_agents: int, n: int) -> None:
        old = getattr(self, "t", None)
        d, dev = self.obs_dim, self.device
        self.t = {"obs": torch.zeros(n_agents, n, d, dtype=self.obs_dtype, device=dev),
                  "next_obs": torch.zeros(n_agents, n, d, dtype=self.obs_dtype, device=dev),
                  "action": torch.zeros(n_agents, n, dtype=torch.long, device=dev),
                  "reward": torch.zeros(n_agents, n, dtype=torch.float32, device=dev),
                  "done": torch.zeros(n_agents, n, dtype=torch.float32, device=dev)}
        if old is not None:
            m = old["obs"].shape[1]
            for k, v in old.items():
                self.t[k][:, :m] = v

    def add(self, obs, action, reward, next_obs, terminated, rows) -> None:
        """Store each learner row's transition at the shared position."""
        t = self.t
        if self.pos == t["obs"].shape[1] and t["obs"].shape[1] < self.capacity:
            self._alloc(t["obs"].shape[0], min(2 * t["obs"].shape[1], self.capacity))
            t = self.t
        i, dev = self.pos, self.device
        t["obs"][:, i] = torch.as_tensor(obs[rows]).to(dev)
        t["next_obs"][:, i] = torch.as_tensor(next_obs[rows]).to(dev)
        t["action"][:, i] = torch.as_tensor(action[rows]).to(dev)
        t["reward"][:, i] = torch.as_tensor(reward[rows], dtype=torch.float32).to(dev)
        t["done"][:, i] = torch.as_tensor(terminated[rows], dtype=torch.float32).to(dev)
        self.pos = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, batch_size: int, generator, divisor):
        """A batch per row: obs/next_obs ``[n, B, D]`` float, action, reward, done ``[n, B]``."""
        n, cap = self.t["obs"].shape[:2]
        idx = torch.randint(0, self.size, (n, batch_size), generator=generator,
                            device=self.device)
        # row-major positions in the flattened [n * capacity] buffers: one index_select each
        flat = (idx + torch.arange(n, device=self.device).unsqueeze(1) * cap).flatten()
        out = {k: v.flatten(0, 1).index_select(0, flat).view(n, batch_size, *v.shape[2:])
               for k, v in self.t.items()}
        for k in ("obs", "next_obs"):
            x = out[k].to(torch.float32)
            out[k] = x / divisor if divisor is not None else x
        return out

    def shrink(self, keep) -> None:
        """Keep only rows ``keep``."""
        idx = torch.as_tensor(keep, dtype=torch.long, device=self.device)
        self.t = {k: v.index_select(0, idx) for k, v in self.t.items()}


def _update(plan: LossPlan, replay: _Replay, online: StackedQ, target: StackedQ, optim, gen,
            config: DQNConfig, book: _Agents, rows: np.ndarray) -> dict[int, str]:
    """One gradient step for every learner row; returns {row: why it must stop}."""
    divisor = getattr(replay, "divisor", None)
    b = replay.sample(config.batch_size, gen, divisor)
    failed: dict[int, str] = {}
    q_cache: dict = {}
    try:
        losses = plan.losses(b["obs"], b["action"], b["reward"], b["next_obs"], b["done"],
                             online, target, config.gamma, gen, q_cache)
    except Exception as e:  # a wild op must not kill the batch: every agent fails with it
        return {j: f"loss raised {type(e).__name__}: {e}" for j in range(len(rows))}
    q_sa = q_cache.get((_ONLINE, _S_T))
    if q_sa is None:
        with torch.no_grad():
            q_sa = online(b["obs"])
    q_taken = q_sa.detach().gather(2, b["action"].unsqueeze(2)).squeeze(2).mean(1)
    values = losses.detach()
    finite = torch.isfinite(values)
    big = values.abs() > config.max_loss
    ok = finite & ~big
    total = torch.where(ok, losses, torch.zeros_like(losses)).sum()
    optim.zero_grad(set_to_none=True)
    if total.requires_grad:
        total.backward()
    grads = [p.grad for p in online.parameters]
    if all(g is not None for g in grads):
        per_agent = torch.stack([g.flatten(1).sum(1) for g in grads]).sum(0)
        grad_ok = torch.isfinite(per_agent)
    else:
        grad_ok = torch.ones_like(ok)
    values_np = values.cpu().numpy().astype(np.float64)
    ok_np, grad_ok_np = ok.cpu().numpy(), grad_ok.cpu().numpy()
    for j in np.flatnonzero(~ok_np | ~grad_ok_np):
        if j in failed:
            continue
        v = values_np[j]
        if not math.isfinite(v):
            failed[j] = f"loss is {float(v)}"
        elif abs(v) > config.max_loss:
            failed[j] = f"loss exploded ({v:.3g} > max_loss {config.max_loss:g})"
        else:
            failed[j] = "gradient is not finite"
    if failed:
        bad = torch.as_tensor(sorted(failed), dtype=torch.long, device=total.device)
        with torch.no_grad():
            for g in grads:
                if g is not None:
                    g.index_fill_(0, bad, 0.0)
    if total.requires_grad:
        optim.step()
    good = np.ones(len(rows), bool)
    good[list(failed)] = False
    ks = rows[good]
    book.loss_sum[ks] += values_np[good]
    book.q_sum[ks] += q_taken.cpu().numpy().astype(np.float64)[good]
    book.n_updates[ks] += 1
    return failed
