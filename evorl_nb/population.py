"""The population trainer: K DQN agents, each with its own loss program, trained as one batch.

Training one small agent at a time leaves a CPU (and even more a GPU) idle: every
operation is a tiny tensor and Python overhead dominates. Here K agents share every
operation instead:

* **Networks** are stacked: layer ``i`` of all agents is one ``[K, out, in]`` weight, so a
  forward pass is one ``baddbmm`` per layer. Adam runs over the stacked tensors; since it
  is elementwise, each agent's slice follows exactly the update it would get alone.
* **Environments** step as a batch (:func:`evorl_nb.envs.vector.make_vector_env`).
* **Replay buffers** are ``[slots, capacity, ...]`` tensors, one buffer per slot.
* **Losses**: K different programs cannot be one kernel, but their ops can be grouped.
  :class:`LossPlan` compiles the programs once: every Q-network call becomes one of four
  precomputed stacked values (online or target net on ``s_t`` or ``s_{t+1}``), and the
  remaining nodes are evaluated level by level (a node's level is one more than its
  deepest input), one batched call per (level, op, input types) group across all agents,
  each level's inputs gathered from the value banks in one call per bank. On CPU the
  same nodes run instead in a compiled interpreter (:mod:`evorl_nb.lossvm`: every agent's
  program, forward and backward, in one C call each), and the update runs without
  autograd (:meth:`LossPlan.fused_update`): on CPUs with AVX-512 as one C call that takes
  the agents one at a time (networks, loss program, backward; :mod:`evorl_nb.lossvm`),
  elsewhere chunk by chunk of agents with torch's batched products. The per-agent losses are
  **summed** (never averaged) into the value that is differentiated, so each agent
  receives exactly its own gradient.
* **Failures** are per agent: a loss that turns NaN/inf, explodes or whose gradient is not
  finite stops that agent (recorded with the reason, as :func:`evorl_nb.dqn.train` does);
  the others go on.
* **Continuous batching** (:class:`Population`): agents that are done (failed, or out of
  budget) leave the batched learner, and a queued agent takes a freed slot at once, so a
  batch stays full although its agents need very different numbers of steps.

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
"""

from __future__ import annotations

import ctypes
import math
import os
import sys
import time
from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from evorl_nb import lossvm
from evorl_nb.conditioning import ill_conditioned
from evorl_nb.dqn import (
    DQNConfig,
    EpisodeRecord,
    QNetwork,
    TrainResult,
    _budget,
    _eps_decay,
    _threads,
    get_config,
)
from evorl_nb.envs import get_spec
from evorl_nb.envs.vector import make_vector_env
from evorl_nb.lossvm import VMCode, VMLoss, engine_setting
from evorl_nb.ops import OPS, Type, _bc
from evorl_nb.program import N_INPUTS, TARGET, Program
from evorl_nb.streams import AgentSeeds, Streams, agent_seeds

__all__ = ["train_population", "Population", "LossPlan", "StackedQ", "agent_seeds",
           "keep_freed_memory"]

# input slots (see evorl_nb.program.INPUTS)
_ONLINE, _ACTION, _S_T, _S_TP1, _REWARD, _DISCOUNT = 0, 1, 2, 4, 5, 6

# value classes of the grouped evaluation: which bank a type's values live in
# the Q-network calls a program can make, in the order their values fill the L bank
_COMBO_ORDER = ((_ONLINE, _S_T), (_ONLINE, _S_TP1), (TARGET, _S_TP1), (TARGET, _S_T))

_CLASS = {Type.R: "R", Type.LIST: "L", Type.P: "L", Type.Z: "Z", Type.S: "S"}
# a bank holds the values of one class, with and without a gradient alike: a group whose
# inputs need no gradient (r_t, gamma, the target net's Q, a TD target built from them)
# records no autograd graph anyway, and one group where there were two (one per gradient
# class) saves a batched call: ~30% fewer groups, +3-10% agent-steps/s (K=256-64, distinct
# losses, same-run A/B)


# Adam's betas and eps: torch's defaults, which the single trainer's Adam uses
_BETAS, _ADAM_EPS = (0.9, 0.999), 1e-8


# --- the allocator -----------------------------------------------------------------------------

_MALLOC_TUNED: bool | None = None


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse instead of handing it back to the kernel.

    A batched step allocates and frees the same large tensors every step (``[K, 64, 64]``
    weight gradients are megabytes). glibc's defaults serve large blocks with fresh ``mmap``
    calls and trim the heap top on free, so every step pays thousands of page faults
    re-mapping memory (a large share of a step; docs/performance.md). This serves every block from the heap (no
    ``mmap``) and turns heap trimming off, for the whole process; the price is that the
    process keeps its peak heap for reuse. :class:`Population` calls it once per process;
    set the environment variable ``EVORL_NB_MALLOC=default`` to leave the allocator alone.
    Returns True if applied (Linux with glibc; elsewhere it does nothing).
    """
    global _MALLOC_TUNED
    if _MALLOC_TUNED is None:
        _MALLOC_TUNED = False
        if sys.platform.startswith("linux") and os.environ.get("EVORL_NB_MALLOC") != "default":
            try:
                libc = ctypes.CDLL("libc.so.6")
                m_trim_threshold, m_mmap_max = -1, -4  # <malloc.h>
                _MALLOC_TUNED = bool(libc.mallopt(m_trim_threshold, 2**31 - 1)
                                     and libc.mallopt(m_mmap_max, 0))
            except (OSError, AttributeError):  # not glibc (e.g. musl)
                pass
    return _MALLOC_TUNED


# --- stacked networks --------------------------------------------------------------------


def _mlp_forward(x: torch.Tensor, ws, bs) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Stacked MLP forward, feature-major: the output ``[K, out, N]`` and every layer's
    input (``x`` transposed, then the ReLU outputs), as the backward needs them."""
    h = x.transpose(1, 2)
    hs = [h]
    for i, (w, b) in enumerate(zip(ws, bs, strict=True)):
        h = torch.baddbmm(b, w, h)
        if i < len(ws) - 1:
            h.relu_()
            hs.append(h)
    return h, hs


def _mlp_backward(grad: torch.Tensor, hs, ws, need_x: bool, need_w, need_b, out=None):
    """The written-out backward of :func:`_mlp_forward`: (dx, [dW], [db]) for the gradient
    ``grad`` ``[K, N, out]`` of its (transposed) output. ``out=(dws, dbs)``: contiguous
    tensors to write the gradients into (then returned)."""
    n = len(ws)
    g = grad.transpose(1, 2).contiguous()
    dws: list[torch.Tensor | None] = [None] * n if out is None else list(out[0])
    dbs: list[torch.Tensor | None] = [None] * n if out is None else list(out[1])
    dx = None
    for i in range(n - 1, -1, -1):
        h, w = hs[i], ws[i]
        if need_b[i]:
            dbs[i] = torch.sum(g, 2, keepdim=True, out=dbs[i])
        if need_w[i]:
            if w.shape[2] < w.shape[1]:  # fewer inputs than outputs: (h @ g^T)^T
                d = torch.bmm(h, g.transpose(1, 2)).transpose(1, 2)
                dws[i] = d if dws[i] is None else dws[i].copy_(d)
            else:
                dws[i] = torch.bmm(g, h.transpose(1, 2), out=dws[i])
        if i > 0:
            g = torch.ops.aten.threshold_backward(torch.bmm(w.transpose(1, 2), g), h, 0)
        elif need_x:
            dx = torch.bmm(w.transpose(1, 2), g).transpose(1, 2)
    return dx, dws, dbs


class _StackedMLP(torch.autograd.Function):
    """The stacked MLP's forward (feature-major, ``relu`` between layers) with a written-out
    backward: one autograd node for the whole network instead of two per layer, ReLU in
    place, and each weight-gradient product oriented the way the batched GEMM runs fastest.

    Autograd's own backward computes ``dW = g @ h^T`` whatever the shapes; with few inputs
    its transpose ``(h @ g^T)^T`` runs much faster, and the 2-action layer's products run
    faster on a contiguous copy of its transposed incoming gradient (same products, so the
    same values up to the GEMM's summation order; tested against autograd; figures in
    docs/performance.md).

    ``apply(x, x_sub, agents, *weights, *biases)``: besides every agent's values on ``x``
    (``[K, N, in]``), the values of the agents ``agents`` on ``x_sub`` (``[n, N, in]``;
    ``None`` for none). The subset's weight gradients are added into the rows of the full
    ones (``index_add_``), where a separate call on ``index_select``-ed weights made
    autograd zero-fill a full-size gradient per tensor, scatter into it and add it to the
    other (three passes over every weight tensor per update).
    """

    @staticmethod
    def forward(ctx, x, x_sub, agents, *params):  # noqa: D102
        n = len(params) // 2
        ws, bs = params[:n], params[n:]
        out, hs = _mlp_forward(x, ws, bs)
        saved = [*hs, *ws]
        out_sub = None
        if x_sub is not None:
            sub = StackedQ(list(ws), list(bs)).subset(agents)  # graph-free in here
            out_sub, hs_sub = _mlp_forward(x_sub, sub.weights, sub.biases)
            out_sub = out_sub.transpose(1, 2)
            saved += [*hs_sub, *sub.weights, agents]
        ctx.n, ctx.sub = n, x_sub is not None
        ctx.save_for_backward(*saved)
        return out.transpose(1, 2), out_sub

    @staticmethod
    def backward(ctx, grad, grad_sub):  # noqa: D102
        n, saved, need = ctx.n, ctx.saved_tensors, ctx.needs_input_grad
        need_w, need_b = need[3:3 + n], need[3 + n:]
        dx, dws, dbs = _mlp_backward(grad, saved[:n], saved[n:2 * n], need[0], need_w, need_b)
        dx_sub = None
        if ctx.sub and grad_sub is not None:
            agents = saved[-1]
            dx_sub, dws_sub, dbs_sub = _mlp_backward(grad_sub, saved[2 * n:3 * n],
                                                     saved[3 * n:4 * n], need[1], need_w, need_b)
            for full, part in zip(dws + dbs, dws_sub + dbs_sub, strict=True):
                if full is not None:
                    full.index_add_(0, agents, part)
        return (dx, dx_sub, None, *dws, *dbs)


class StackedQ:
    """K MLP Q networks as stacked tensors: ``weights[i]`` is ``[K, out, in]`` and
    ``biases[i]`` ``[K, out, 1]`` (agent k's slice is its ``nn.Linear`` weight and bias);
    agent k's values equal a :class:`evorl_nb.dqn.QNetwork`'s.

    Activations run feature-major (``[K, features, N]``): each layer is ``W @ h``, a batched
    product whose small dimensions (4 inputs, 2 actions) sit where the GEMM kernels handle
    them well (the ``[K, N, in] @ [K, in, out]`` orientation is slower; docs/performance.md).
    """

    def __init__(self, weights: list[torch.Tensor], biases: list[torch.Tensor]):
        self.weights, self.biases = weights, biases

    @classmethod
    def from_generators(cls, obs_dim: int, n_actions: int, hidden: tuple[int, ...],
                        generators: Sequence[torch.Generator], device: str = "cpu") -> StackedQ:
        """K networks, agent k initialised by ``QNetwork(..., generators[k])``."""
        nets = [QNetwork(obs_dim, n_actions, hidden, g) for g in generators]
        weights = [torch.stack([n.layers[i].weight.detach() for n in nets])
                   for i in range(len(nets[0].layers))]
        biases = [torch.stack([n.layers[i].bias.detach() for n in nets]).unsqueeze(2)
                  for i in range(len(nets[0].layers))]
        return cls([w.to(device).requires_grad_() for w in weights],
                   [b.to(device).requires_grad_() for b in biases])

    @property
    def parameters(self) -> list[torch.Tensor]:
        """Every stacked tensor (weights then biases, layer by layer)."""
        return [t for pair in zip(self.weights, self.biases, strict=True) for t in pair]

    @property
    def size(self) -> int:
        """Number of agents K."""
        return self.weights[0].shape[0]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Q-values ``[K, N, A]`` (a transposed view) of observations ``[K, N, obs_dim]``.

        One observation per agent (acting, N=1) runs row-major instead, ``h @ W^T`` as
        ``nn.Linear`` does: the batched GEMM runs a ``[K, 64, 64] @ [K, 64, 1]`` product
        far slower than its ``[K, 1, 64] @ [K, 64, 64]`` transpose.
        """
        last = len(self.weights) - 1
        if x.shape[1] == 1:
            h = x
            for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
                h = torch.baddbmm(b.transpose(1, 2), h, w.transpose(1, 2))
                if i < last:
                    h = torch.relu(h)
            return h
        if torch.is_grad_enabled():
            return _StackedMLP.apply(x, None, None, *self.weights, *self.biases)[0]
        return _mlp_forward(x, self.weights, self.biases)[0].transpose(1, 2)

    def with_subset(self, x: torch.Tensor, agents: torch.Tensor,
                    x_sub: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(self(x), self.subset(agents)(x_sub))`` in one differentiable call, the
        subset's weight gradients added straight into the rows of the full ones."""
        if torch.is_grad_enabled():
            return _StackedMLP.apply(x, x_sub, agents, *self.weights, *self.biases)
        return self(x), self.subset(agents)(x_sub)

    def subset(self, agents: torch.Tensor) -> StackedQ:
        """The networks of ``agents`` only (differentiable: gradients reach these tensors)."""
        return StackedQ([w.index_select(0, agents) for w in self.weights],
                        [b.index_select(0, agents) for b in self.biases])

    def copy_from(self, other: StackedQ) -> None:
        """Overwrite these tensors with ``other``'s values (a hard target update)."""
        with torch.no_grad():
            for mine, theirs in zip(self.parameters, other.parameters, strict=True):
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


def _take(x: torch.Tensor, who: slice | torch.Tensor) -> torch.Tensor:
    """Rows ``who`` of ``x``: a view for a slice, a gather for an index tensor."""
    return x[who] if isinstance(who, slice) else x.index_select(0, who)


def _classes(p: Program) -> list[str]:
    """The bank class of every node of ``p`` (inputs included)."""
    return [_CLASS.get(t, "-") for t in p.types]


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
    args: list[tuple[str, int]]  # (bank class, piece of the level's read) per input position
    size: int


@dataclass
class _Level:
    """A level's groups, and what it reads: per bank, the rows of every group input taken
    from it, gathered in one call and split into one piece per input. One gather per bank
    and level, where one per input made every input's backward a bank-sized zero fill,
    index_add and accumulation."""

    groups: list[_Group] = field(default_factory=list)
    reads: list[tuple[str, slice | torch.Tensor, list[int]]] = field(default_factory=list)


class LossPlan:
    """K programs compiled for grouped evaluation over stacked networks (see module docs).

    ``plan.losses(batch, online, target, gamma, generator)`` returns the ``[K]`` per-agent
    losses; agent k's equals ``programs[k].loss`` on its own slice of the batch. The nodes
    after the Q-network calls run in the compiled interpreter (:mod:`evorl_nb.lossvm`) or as
    grouped torch calls, as ``engine`` says.
    """

    def __init__(self, programs: Sequence[Program], engine: str | None = None):
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
        for c in self.combos:
            start = new_rows("L", len(users[c]))
            combo_row[c] = {k: start + j for j, k in enumerate(sorted(users[c]))}
        for k, p in enumerate(self.programs):
            w = where[k]
            for i, (cls, r) in list(w.items()):
                if cls == "R" and r < 0:
                    w[i] = ("R", const0 + (-1 - r))
            for i, n in enumerate(p.nodes, start=N_INPUTS):
                if n.op == "QValues" and i in level_of[k]:
                    combo = (n.inputs[0], n.inputs[1])
                    w[i] = ("L", combo_row[combo][k])
        # levels >= 1: one group per (op, input types, banks read, bank written); rows are
        # appended in group order
        self.levels: list[_Level] = []
        for depth in sorted(levels):
            level = _Level()
            reads: dict[str, tuple[list[int], list[int]]] = {}  # class -> (rows, sizes)
            for (op_name, types, in_cls, out_cls), members in levels[depth].items():
                args = []
                for m, c in enumerate(in_cls):
                    idx = [where[k][self.programs[k].node(i).inputs[m]][1] for k, i in members]
                    assert all(where[k][self.programs[k].node(i).inputs[m]][0] == c
                               for k, i in members)
                    rows_c, sizes_c = reads.setdefault(c, ([], []))
                    args.append((c, len(sizes_c)))
                    rows_c += idx
                    sizes_c.append(len(idx))
                start = new_rows(out_cls, len(members))
                for j, (k, i) in enumerate(members):
                    where[k][i] = (out_cls, start + j)
                level.groups.append(_Group(op_name, types, out_cls, args, len(members)))
            level.reads = [(c, _rows(r), sizes) for c, (r, sizes) in reads.items()]
            self.levels.append(level)
        # a Program's output is always an R node with a gradient (Program validates it)
        self._out_rows = torch.tensor([where[k][p.output][1] for k, p in enumerate(self.programs)],
                                      dtype=torch.long)
        self._device = torch.device("cpu")
        self.n_groups = sum(len(lv.groups) for lv in self.levels)
        """Batched op calls per evaluation (what the grouping costs, independent of K)."""
        # what the compiled interpreter needs: every node's bank row, the draws' and the
        # constants' order
        self._where, self._const_row = where, const_row
        self._draw_row = {(k, i): j for j, (k, i, _op) in enumerate(self.random_nodes)}
        self._vm: dict[tuple, Any] = {}  # interpreter code by (B, A, D), chunks by size
        self.engine = engine_setting() if engine is None else engine
        """``auto`` (the compiled interpreter where it can run: CPU, float32, a C compiler;
        else the grouped torch evaluation), ``c`` (the interpreter or an error) or
        ``torch`` (the grouped evaluation). Default: ``$EVORL_NB_LOSS_ENGINE`` or auto."""
        if self.engine not in ("auto", "c", "torch"):
            raise ValueError(f"engine must be auto, c or torch, not {self.engine!r}")

    def to(self, device: str | torch.device) -> LossPlan:
        """Move the index tensors to ``device``."""
        device = torch.device(device)
        if device != self._device:
            for level in self.levels:
                level.reads = [(c, idx if isinstance(idx, slice) else idx.to(device), sizes)
                               for c, idx, sizes in level.reads]
            self._out_rows = self._out_rows.to(device)
            self.combo_agents = {c: idx.to(device) for c, idx in self.combo_agents.items()}
            self._device = device
        return self

    def _interpreter(self, tensors: Sequence[torch.Tensor], n_actions: int) -> VMCode | None:
        """The interpreter's code for a batch (``tensors``: obs, reward, then any others it
        must read), or None where the torch groups run."""
        if self.engine == "torch":
            return None
        why = None
        if not all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors):
            why = "it runs on CPU float32 tensors only"
        elif lossvm.library() is None:
            why = "it could not be built (see the warning above)"
        vm = None
        if why is None:
            obs, reward = tensors[0], tensors[1]
            vm = self.vm_code(reward.shape[1], n_actions, math.prod(obs.shape[2:]))
            if vm is None:
                why = "some op has no interpreter form"
        if why is not None and self.engine == "c":
            raise RuntimeError(f"engine='c': the compiled loss interpreter cannot run: {why}")
        return vm

    def _sources(self, reward: torch.Tensor, generator) -> tuple[torch.Tensor | None,
                                                                 torch.Tensor | None]:
        """The random ops' draws ``[n, B]`` (agent by agent, node by node; see
        :meth:`losses`) and the constants ``[c, B]``; None where there are none."""
        B = reward.shape[1]
        like = {"dtype": reward.dtype, "device": reward.device}
        draws = consts = None
        if self.random_nodes:
            rows = []
            per_agent = isinstance(generator, (list, tuple))
            for k, _i, op_name in self.random_nodes:
                g = generator[k] if per_agent else generator
                if per_agent and g is None:
                    rows.append(torch.zeros(B, **like))
                    continue
                fn = torch.randn if op_name == "Normal" else torch.rand
                if g is not None and g.device != reward.device:  # CPU streams, as dqn.train
                    rows.append(fn(B, generator=g, dtype=reward.dtype).to(reward.device))
                else:
                    rows.append(fn(B, generator=g, **like))
            draws = torch.stack(rows)
        if self.constants:
            consts = torch.tensor(self.constants, **like).unsqueeze(1).expand(-1, B).contiguous()
        return draws, consts

    @staticmethod
    def _fixed(obs, action, reward, next_obs, discount, draws, consts) -> list:
        """The interpreter's read-only bases after the workspace (see lossvm.VMLoss)."""
        return [reward.contiguous(), discount.contiguous(), action.to(torch.float32),
                obs.contiguous(), next_obs.contiguous(), draws, consts]

    def _chunks(self, chunk: int) -> list[tuple]:
        """Per chunk of agents ``k0..k1``: per Q-network call, the L-bank rows it fills and
        the agents making it (a slice when they are ``k0..k1``, else an index tensor)."""
        key = ("chunks", chunk)
        if key not in self._vm:
            out = []
            starts = np.cumsum([0] + [len(self.combo_agents[c]) for c in self.combos])
            for k0 in range(0, self.K, chunk):
                k1 = min(self.K, k0 + chunk)
                calls = []
                for c, start in zip(self.combos, starts[:-1], strict=True):
                    agents = self.combo_agents[c].numpy()
                    p0, p1 = np.searchsorted(agents, [k0, k1])
                    if p1 == p0:
                        continue
                    who = (slice(k0, k1) if p1 - p0 == k1 - k0
                           else torch.as_tensor(agents[p0:p1]))
                    calls.append((c, slice(int(start + p0), int(start + p1)), who))
                out.append((k0, k1, calls))
            self._vm[key] = out
        return self._vm[key]

    def _agent_rows(self) -> np.ndarray:
        """``[K, 4]`` int64: each agent's row in the Q bank (L bank, level 0) for the calls
        in ``_COMBO_ORDER`` (online s_t, online s_{t+1}, target s_{t+1}, target s_t); -1
        where the agent does not make that call."""
        if "agent_rows" not in self._vm:
            table = np.full((self.K, len(_COMBO_ORDER)), -1, dtype=np.int64)
            start = 0
            for c in self.combos:
                agents = self.combo_agents[c].cpu().numpy()
                table[agents, _COMBO_ORDER.index(c)] = start + np.arange(len(agents))
                start += len(agents)
            self._vm["agent_rows"] = table
        return self._vm["agent_rows"]

    def fused_update(self, obs: torch.Tensor, action: torch.Tensor, reward: torch.Tensor,
                     next_obs: torch.Tensor, done: torch.Tensor, online: StackedQ,
                     target: StackedQ, gamma: float, generator, learn: torch.Tensor,
                     max_loss: float, chunk: int = 128, adam: tuple | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                torch.Tensor | None] | None:
        """The per-agent losses and their gradients without autograd; None where the
        interpreter cannot run (then use :meth:`losses`).

        Per agent: the Q-network calls, the interpreter's forward, the mask ``ok`` (loss
        finite, ``|loss| <= max_loss``, ``learn``), the interpreter's backward of the ``ok``
        losses' sum and the networks' written-out backward. Where
        :func:`evorl_nb.lossvm.networks_available` (AVX-512), one C call
        (:func:`evorl_nb.lossvm.fused_update`) does all of it one agent at a time, so an
        agent's weights and activations stay in cache from its forward to its backward.
        Elsewhere it runs chunk by chunk of ``chunk`` agents with torch's batched products
        (the A/B figures of both choices are in docs/performance.md). Sets ``p.grad`` of the online network's tensors; returns
        ``(losses [K], ok [K], online Q-values on s_t [K, B, A], grad_ok)``.

        ``adam=(moments, steps, lr, beta1, beta2, eps)`` (see
        :func:`evorl_nb.lossvm.fused_update`): where the kernel runs, the gradient check and
        Adam's step also happen in its pass, agent by agent, and ``grad_ok`` ``[K]`` is that
        check; elsewhere, and without ``adam``, ``grad_ok`` is None and the caller steps.
        """
        K, B = action.shape
        A = online.weights[-1].shape[1]
        vm = self._interpreter([obs, reward, next_obs, *online.parameters], A)
        if vm is None:
            return None
        discount = gamma * (1.0 - done.to(reward.dtype))
        draws, consts = self._sources(reward, generator)
        fixed = self._fixed(obs, action, reward, next_obs, discount, draws, consts)
        n_rows = sum(len(self.combo_agents[c]) for c in self.combos)
        q = torch.empty(n_rows, B, A)
        gq = torch.zeros(n_rows, B, A)
        ws, gws = torch.empty(vm.ws_size), torch.zeros(vm.ws_size)
        bases = lossvm.bases(ws, fixed, q)
        gbases = [gws] + [None] * (lossvm.N_BASES - 1)
        gbases[lossvm.QVAL] = gq
        losses = torch.empty(K)
        dloss = torch.empty(K)  # 1.0 where the agent's loss counts (ok), else 0.0
        learn_u8 = learn.to(torch.uint8).contiguous()
        if lossvm.networks_available():  # the whole update in one C call, agent by agent
            grads = [torch.empty_like(p) for p in online.parameters]
            k_on = lossvm.NetKernel(online.weights, online.biases)
            grad_ok = lossvm.fused_update(
                vm, k_on, lossvm.NetKernel(target.weights, target.biases), self._agent_rows(),
                bases, gbases, losses, learn_u8, max_loss, dloss, k_on.gradients(grads), adam)
            for p, g in zip(online.parameters, grads, strict=True):
                p.grad = g
            return losses, dloss.bool(), q[:K], grad_ok
        w_on = [w.detach() for w in online.weights]
        b_on = [b.detach() for b in online.biases]
        w_tg = [w.detach() for w in target.weights]
        b_tg = [b.detach() for b in target.biases]
        grads = [torch.empty_like(p) for p in online.parameters]
        n = len(w_on)
        states = {_S_T: obs, _S_TP1: next_obs}
        for k0, k1, calls in self._chunks(chunk):
            mine = slice(k0, k1)
            on_w, on_b = [w[mine] for w in w_on], [b[mine] for b in b_on]
            saved = []  # (rows, hs, weights, local agents or None) of each online call
            joint = None
            for c, rows, who in calls:
                net_slot, state_slot = c
                if c == (_ONLINE, _S_TP1) and isinstance(who, slice):
                    continue  # with s_t, below
                x = states[state_slot]
                if net_slot == TARGET:
                    out, _ = _mlp_forward(_take(x, who), [_take(w, who) for w in w_tg],
                                          [_take(b, who) for b in b_tg])
                    q[rows] = out.transpose(1, 2)
                elif state_slot == _S_T:  # every agent, first block: rows k0..k1
                    both = [r for cc, r, wh in calls
                            if cc == (_ONLINE, _S_TP1) and isinstance(wh, slice)]
                    if both:  # every agent of the chunk on both states: one call
                        out, hs = _mlp_forward(torch.cat([obs[mine], next_obs[mine]], 1),
                                               on_w, on_b)
                        q[rows] = out[:, :, :B].transpose(1, 2)
                        q[both[0]] = out[:, :, B:].transpose(1, 2)
                        joint = both[0]
                    else:
                        out, hs = _mlp_forward(obs[mine], on_w, on_b)
                        q[rows] = out.transpose(1, 2)
                    saved.append((rows, hs, on_w, None))
                else:  # the online net on s_{t+1}, some of the chunk's agents
                    sw = [_take(w, who) for w in w_on]
                    out, hs = _mlp_forward(_take(x, who), sw, [_take(b, who) for b in b_on])
                    q[rows] = out.transpose(1, 2)
                    saved.append((rows, hs, sw, who - k0))
            vm.forward(bases, losses, k0, k1, ok=(learn_u8, dloss, max_loss))
            vm.backward(bases, gbases, dloss, k0, k1)
            for i, (rows, hs, wl, local) in enumerate(saved):
                g = gq[rows]
                if i == 0 and joint is not None:
                    g = torch.cat([g, gq[joint]], 1)
                if local is None:  # every agent of the chunk: straight into its rows
                    _mlp_backward(g, hs, wl, False, [True] * n, [True] * n,
                                  out=([d[mine] for d in grads[0::2]],
                                       [d[mine] for d in grads[1::2]]))
                    continue
                _, dws, dbs = _mlp_backward(g, hs, wl, False, [True] * n, [True] * n)
                for full, d in zip(grads, [t for pair in zip(dws, dbs, strict=True)
                                           for t in pair], strict=True):
                    full[mine].index_add_(0, local, d)
        for p, g in zip(online.parameters, grads, strict=True):
            p.grad = g
        return losses, dloss.bool(), q[:K], None

    def needs(self, net_slot: int, state_slot: int) -> bool:
        """True if some program calls that network on that state."""
        return (net_slot, state_slot) in self.combos

    def vm_code(self, B: int, A: int, D: int) -> VMCode | None:
        """The programs as the compiled interpreter's instructions for batch size ``B``, ``A``
        actions and ``D`` state features (cached); None if some op has no VM form."""
        key = (B, A, D)
        if key not in self._vm:
            qvalues = set()  # (agent, node) of the Q-network calls
            agents, grads, outputs = [], [], []
            for k, p in enumerate(self.programs):
                nodes = []
                live = [i for i in p.live() if i >= N_INPUTS]
                for i in live:
                    n = p.node(i)
                    if n.op == "QValues":
                        qvalues.add((k, i))
                        continue
                    if OPS[n.op].arity == 0:
                        continue
                    nodes.append((n.op, tuple(p.types[j] for j in n.inputs), p.types[i],
                                  n.inputs, i))
                agents.append(nodes)
                has_grad = p.grad_nodes()
                grads.append({i for i in live if has_grad[i]})
                outputs.append(p.output)
            fixed = {_REWARD: (lossvm.REWARD, B), _DISCOUNT: (lossvm.DISCOUNT, B),
                     _ACTION: (lossvm.ACTION, B), _S_T: (lossvm.OBS, B * D),
                     _S_TP1: (lossvm.NEXT, B * D)}

            def locate(k: int, i: int) -> tuple[int, int]:
                if i in fixed:
                    base, size = fixed[i]
                    return base, k * size
                if (k, i) in qvalues:
                    return lossvm.QVAL, self._where[k][i][1] * B * A
                if (k, i) in self._draw_row:
                    return lossvm.DRAWS, self._draw_row[(k, i)] * B
                return lossvm.CONST, self._const_row[float(self.programs[k].node(i).value)] * B

            try:
                self._vm[key] = VMCode(self.K, B, A, D, agents, locate, outputs, grads)
            except NotImplementedError:
                self._vm[key] = None
        return self._vm[key]

    def losses(self, obs: torch.Tensor, action: torch.Tensor, reward: torch.Tensor,
               next_obs: torch.Tensor, done: torch.Tensor, online: StackedQ, target: StackedQ,
               gamma: float,
               generator: torch.Generator | Sequence[torch.Generator | None] | None = None,
               q_cache: dict[tuple[int, int], torch.Tensor] | None = None) -> torch.Tensor:
        """Per-agent losses ``[K]`` for a batch ``[K, B, ...]`` (obs float, action long).

        ``generator`` feeds the random ops (Normal, Uniform): one generator for all agents,
        or one per agent (agent k's draws come from ``generator[k]`` in its node order, as
        ``Program.loss`` draws them; ``None`` there: zeros, for an agent not learning now).
        ``q_cache`` may hold already computed stacked Q-values by (net slot, state slot);
        the ones computed here are added to it.
        """
        K, B = action.shape
        discount = gamma * (1.0 - done.to(reward.dtype))
        q_cache = {} if q_cache is None else q_cache
        states = {_S_T: obs, _S_TP1: next_obs}
        online_next = self.combo_agents.get((_ONLINE, _S_TP1))
        if online_next is not None and (_ONLINE, _S_T) not in q_cache:
            # both states through the online net in one call: every agent on both when all
            # use s_{t+1}, else s_t for all and s_{t+1} for its users (see _StackedMLP)
            if len(online_next) == K:
                both = online(torch.cat([obs, next_obs], 1))
                q_cache[(_ONLINE, _S_T)], q_cache[(_ONLINE, _S_TP1)] = both[:, :B], both[:, B:]
            else:
                q_cache[(_ONLINE, _S_T)], q_cache[(_ONLINE, _S_TP1)] = online.with_subset(
                    obs, online_next, next_obs.index_select(0, online_next))
        blocks: list[torch.Tensor] = []
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
            blocks.append(q_cache[key])
        vm = self._interpreter([obs, reward, *blocks], blocks[0].shape[-1])
        draws, consts = self._sources(reward, generator)
        if vm is not None:
            return VMLoss.apply(vm, self._fixed(obs, action, reward, next_obs, discount, draws,
                                                consts), *blocks)
        r_blocks = [reward, discount] + [t for t in (draws, consts) if t is not None]
        banks: dict[str, torch.Tensor] = {"R": torch.cat(r_blocks), "Z": action,
                                          "S": torch.cat([obs, next_obs]),
                                          "L": torch.cat(blocks)}
        for level in self.levels:
            pieces: dict[str, tuple[torch.Tensor, ...]] = {}
            for c, idx, sizes in level.reads:
                x = banks[c][idx] if isinstance(idx, slice) else banks[c].index_select(0, idx)
                pieces[c] = x.split(sizes) if len(sizes) > 1 else (x,)
            new: dict[str, list[torch.Tensor]] = defaultdict(list)
            for g in level.groups:
                args = [pieces[c][j] for c, j in g.args]
                new[g.out_class].append(_grouped(g.op, args, g.types))
            for cls, outs in new.items():
                banks[cls] = torch.cat([banks[cls], *outs]) if cls in banks else torch.cat(outs)
        return banks["R"].index_select(0, self._out_rows).mean(-1)


# --- the trainer -------------------------------------------------------------------------------


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
        self.episodes_budget, self.steps_budget = _budget(config, spec)
        self.decay = _eps_decay(config, spec)
        self.divisor = (None if self.env.obs_divisor is None else
                        torch.as_tensor(self.env.obs_divisor, dtype=torch.float32,
                                        device=self.device))
        self.replay = _Replay(S, min(config.buffer_size, self.steps_budget), self.obs_dim,
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
        with _threads(self.config.num_threads):
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

    def _eps(self, steps: np.ndarray) -> np.ndarray:
        c = self.config
        return c.eps_end + (c.eps_start - c.eps_end) * np.maximum(0.0, 1.0 - steps / self.decay)

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
        eps = self._eps(self.steps)
        draws = np.zeros((S, 2))
        draws[live] = self.explore.uniform(live, 2)  # explore?, which random action
        obs_t = _decode(self.raw[rows], self.divisor, self.device)
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
                and lossvm.networks_available()):
            return lossvm.NetKernel(self.online.weights, self.online.biases).act(obs)
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
            adam = (self.moments, self.adam_steps, cfg.lr, *_BETAS, _ADAM_EPS)
            fused = self.plan.fused_update(b["obs"], b["action"], b["reward"], b["next_obs"],
                                           b["done"], online, target, cfg.gamma, gens, learn_t,
                                           cfg.max_loss, self.chunk, adam)
            if fused is None:  # the grouped torch evaluation, through autograd
                q_cache: dict = {}
                losses = self.plan.losses(b["obs"], b["action"], b["reward"], b["next_obs"],
                                          b["done"], online, target, cfg.gamma, gens, q_cache)
        except Exception as e:  # a wild op must not kill the batch: every agent fails with it
            return {j: f"loss raised {type(e).__name__}: {e}" for j in np.flatnonzero(learn)}
        grad_ok = None  # set where the fused update checked the gradients and took Adam's step
        if fused is not None:
            values, ok, q_sa, grad_ok = fused
            differentiable = True
        else:
            q_sa = q_cache.get((_ONLINE, _S_T))
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
            v = values_np[j]
            if not math.isfinite(v):
                failed[j] = f"loss is {float(v)}"
            elif abs(v) > cfg.max_loss:
                failed[j] = f"loss exploded ({v:.3g} > max_loss {cfg.max_loss:g})"
            else:
                failed[j] = "gradient is not finite"
        stepped = learn.copy()
        stepped[list(failed)] = False
        if stepped_already:
            self.adam_steps[stepped] += 1
        elif differentiable:
            self._adam(stepped, learn)
        ks = rows[stepped]
        self.loss_sum[ks] += values_np[stepped]
        self.q_sum[ks] += q_taken.cpu().numpy().astype(np.float64)[stepped]
        self.n_updates[ks] += 1
        return failed

    def _adam(self, stepped: np.ndarray, learn: np.ndarray) -> None:
        """Adam on the learner rows in ``stepped``, each with its own step count (rows that
        train but did not learn this step, ``learn`` false, are left alone). Where the
        networks' kernel runs, Adam's step happens inside the update's C call instead (see
        :meth:`LossPlan.fused_update`); this is the step of every other path.

        Mostly torch's fused Adam kernel, the one the single trainer runs
        (``Adam(fused=True)``, default betas and eps), called directly
        (``torch._fused_adam_``: ``torch.optim.Adam.step`` costs as much again in Python).
        It takes one step count per tensor, so it runs over runs of consecutive rows with the
        same count, each a view of the stacked tensors; rows that no longer train, or failed
        this step, may ride along in a run (their values no longer matter). Agents that got
        their slots together sit in consecutive rows (``_relayout`` appends them and keeps
        the order), so a batch started together is one run, the stacked tensors themselves,
        and a population refilled in waves has about one run per wave. When the runs are
        short (slots refilled one agent at a time: every row its own count) the views cost
        more than the kernel, and :meth:`_adam_rows` does the same arithmetic on the stacked
        tensors with a column of bias corrections instead.
        """
        if not stepped.any():  # every learning row failed this step
            return
        frozen = self.active[self.rows] & ~learn
        counts = self.adam_steps + 1
        label = np.where(stepped, counts, np.where(frozen, -1, -2))
        # a row that may ride along joins the run before it (or, at the start, the one after)
        known = np.flatnonzero(label != -2)
        label = label[known[np.maximum(np.searchsorted(known, np.arange(len(label)),
                                                        side="right") - 1, 0)]]
        starts = np.flatnonzero(np.r_[True, label[1:] != label[:-1]])
        if len(starts) > max(4, len(label) // 8):
            self._adam_rows(stepped)
            return
        self.adam_steps[stepped] += 1
        lengths = np.diff(np.r_[starts, len(label)]).tolist()
        keep = [j for j, a in enumerate(starts.tolist()) if label[a] >= 0]
        steps = torch.as_tensor(label[starts[keep]], dtype=torch.float32,
                                device=self.device).unbind(0)
        if len(lengths) == 1:
            cut = lambda ts: list(ts)  # noqa: E731
        else:
            cut = lambda ts: [s[j] for t in ts for s in (t.split(lengths),) for j in keep]  # noqa: E731
        ps = self.online.parameters
        torch._fused_adam_(cut([p.detach() for p in ps]), cut([p.grad for p in ps]),
                           cut([m for m, _ in self.moments]), cut([v for _, v in self.moments]),
                           [], [c for _ in ps for c in steps], lr=self.config.lr,
                           beta1=_BETAS[0], beta2=_BETAS[1], weight_decay=0.0, eps=_ADAM_EPS,
                           amsgrad=False, maximize=False)

    def _adam_rows(self, stepped: np.ndarray) -> None:
        """Adam on the rows in ``stepped`` with a bias-correction column per row (the fused
        kernel's arithmetic, written out); the other rows are left alone."""
        idle = torch.as_tensor(np.flatnonzero(~stepped), dtype=torch.long, device=self.device)
        if len(idle):  # a row not learning may still have a NaN gradient (0 * inf backward)
            with torch.no_grad():
                for p in self.online.parameters:
                    p.grad.index_fill_(0, idle, 0.0)
        (b1, b2), lr = _BETAS, self.config.lr
        self.adam_steps[stepped] += 1
        t = self.adam_steps.astype(np.float64)
        bc1 = np.where(stepped, 1.0 - b1 ** t, 1.0)
        bc2 = np.where(stepped, 1.0 - b2 ** t, 1.0)
        dev, n = self.device, len(self.rows)
        col = lambda x: torch.as_tensor(x, dtype=torch.float32, device=dev).view(n, 1, 1)  # noqa: E731
        m = stepped.astype(np.float64)
        w1, keep2 = col((1.0 - b1) * m), col(np.where(stepped, b2, 1.0))
        size, root2 = col(-lr / bc1 * m), col(np.sqrt(bc2))
        with torch.no_grad():
            for p, (exp_avg, exp_avg_sq) in zip(self.online.parameters, self.moments,
                                                strict=True):
                g = p.grad
                exp_avg.lerp_(g, w1)
                exp_avg_sq.mul_(keep2).addcmul_(g, g, value=1.0 - b2)
                denom = (exp_avg_sq.sqrt() / root2).add_(_ADAM_EPS)
                p.add_(exp_avg / denom * size)


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


def _decode(raw: np.ndarray, divisor, device) -> torch.Tensor:
    x = torch.as_tensor(raw).to(device=device, dtype=torch.float32)
    return x / divisor if divisor is not None else x


class _Replay:
    """One uniform replay buffer per slot: ``[slots, n, ...]`` tensors that grow by doubling
    up to ``capacity``, raw observations (uint8 grid codes stay uint8), each slot with its
    own position and size.

    A transition is two rows: ``obs2[slot, i]`` holds s_t and s_{t+1} (``[2, D]``) and
    ``scalars[slot, i]`` the action, reward and done flag (float32), so sampling is two
    random-row gathers instead of five (at large K the buffers outgrow the cache, and each
    gathered row is a cache miss)."""

    def __init__(self, slots: int, capacity: int, obs_dim: int, obs_dtype, device):
        self.capacity = capacity
        self.size = np.zeros(slots, np.int64)
        self.pos = np.zeros(slots, np.int64)
        self.obs_dim, self.device = obs_dim, device
        self.obs_dtype = torch.from_numpy(np.zeros(0, dtype=obs_dtype)).dtype
        self.t: dict[str, torch.Tensor] = {}
        self._alloc(slots, min(capacity, 4096))

    def _alloc(self, slots: int, n: int) -> None:
        old = self.t
        d, dev = self.obs_dim, self.device
        self.t = {"obs2": torch.zeros(slots, n, 2, d, dtype=self.obs_dtype, device=dev),
                  "scalars": torch.zeros(slots, n, 3, dtype=torch.float32, device=dev)}
        if old:
            m = old["obs2"].shape[1]
            for k, v in old.items():
                self.t[k][:, :m] = v

    def reset(self, slot: int) -> None:
        """Empty one slot's buffer (a new agent took the slot)."""
        self.size[slot] = self.pos[slot] = 0

    def add(self, slots: np.ndarray, obs, action, reward, next_obs, terminated) -> None:
        """Store the transitions of ``slots`` (rows of the slot-indexed arrays)."""
        if not len(slots):
            return
        t = self.t
        n_slots, n = t["obs2"].shape[:2]
        pos = self.pos[slots]
        if pos.max() >= n and n < self.capacity:
            self._alloc(n_slots, min(2 * n, self.capacity))
            t = self.t
        dev = self.device
        fields = {"obs2": torch.from_numpy(np.stack([obs[slots], next_obs[slots]], 1)),
                  "scalars": torch.from_numpy(np.stack(
                      [action[slots], reward[slots], terminated[slots]], 1).astype(np.float32))}
        if len(slots) == n_slots and (pos == pos[0]).all():  # lockstep: one column
            i = int(pos[0])
            for k, v in fields.items():
                t[k][:, i] = v.to(dev)
        else:
            si = torch.as_tensor(slots, dtype=torch.long, device=dev)
            pi = torch.as_tensor(pos, dtype=torch.long, device=dev)
            for k, v in fields.items():
                t[k][si, pi] = v.to(dev)
        self.pos[slots] = (pos + 1) % self.capacity
        self.size[slots] = np.minimum(self.size[slots] + 1, self.capacity)

    def sample(self, slots: np.ndarray, learn: np.ndarray, batch_size: int, streams: Streams,
               divisor):
        """A batch per slot: obs/next_obs ``[n, B, D]`` float, action, reward, done ``[n, B]``.

        Where ``learn[j]``, slot ``slots[j]`` draws its indices from its stream in
        ``streams`` (as the single trainer's ``Replay.sample``); elsewhere index 0 and no
        draw (a row that is not learning now, whose batch is ignored)."""
        n, cap = len(slots), self.t["obs2"].shape[1]
        idx_np = np.zeros((n, batch_size), np.int64)
        drawing = slots[learn]
        idx_np[learn] = streams.integers(drawing, self.size[drawing], batch_size)
        idx = torch.from_numpy(idx_np).to(self.device)
        base = torch.as_tensor(slots, dtype=torch.long, device=self.device).unsqueeze(1) * cap
        flat = (idx + base).flatten()
        obs2, sc = (v.flatten(0, 1).index_select(0, flat).view(n, batch_size, *v.shape[2:])
                    for v in (self.t["obs2"], self.t["scalars"]))
        sc = sc.permute(2, 0, 1).contiguous()  # [3, n, B]: each field contiguous
        out = {"action": sc[0].long(), "reward": sc[1], "done": sc[2]}
        for j, k in enumerate(("obs", "next_obs")):
            x = obs2[:, :, j].to(torch.float32)
            out[k] = x / divisor if divisor is not None else x.contiguous()
        return out
