"""LossPlan: K loss programs compiled once for evaluation over stacked networks.

Every Q-network call of a program becomes one of four precomputed stacked values (the
online or the target net on ``s_t`` or ``s_{t+1}``); the remaining nodes are sorted into
levels and groups (:mod:`evorl_nb.batched.grouped`) and given rows in four value banks (R,
List/P, Z, S). The plan then evaluates the K losses by the compiled interpreter
(:mod:`evorl_nb.batched.lossvm`) or the grouped torch calls, with autograd
(:meth:`LossPlan.losses`), or computes losses and gradients without it
(:meth:`LossPlan.fused_update`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from evorl_nb.batched import lossvm
from evorl_nb.batched.fused import fused_update
from evorl_nb.batched.grouped import Group, Level, run_levels
from evorl_nb.batched.lossvm import VMCode, VMLoss, engine_setting
from evorl_nb.batched.stacked import StackedQ
from evorl_nb.inputs import ACTION, DISCOUNT, N_INPUTS, ONLINE, REWARD, S_T, S_TP1, TARGET
from evorl_nb.ops import OPS, Type
from evorl_nb.program import Program

__all__ = ["LossPlan", "COMBO_ORDER"]

# the Q-network calls a program can make, in the order their values fill the L bank
COMBO_ORDER = ((ONLINE, S_T), (ONLINE, S_TP1), (TARGET, S_TP1), (TARGET, S_T))

# value classes of the grouped evaluation: which bank a type's values live in
_CLASS = {Type.R: "R", Type.LIST: "L", Type.P: "L", Type.Z: "Z", Type.S: "S"}
# a bank holds the values of one class, with and without a gradient alike: a group whose
# inputs need no gradient (r_t, gamma, the target net's Q, a TD target built from them)
# records no autograd graph anyway, and one group where there were two (one per gradient
# class) saves a batched call (docs/performance.md)


def _classes(p: Program) -> list[str]:
    """The bank class of every node of ``p`` (inputs included)."""
    return [_CLASS.get(t, "-") for t in p.types]


def _rows(idx: list[int]) -> slice | torch.Tensor:
    """Bank rows to read: a slice (a view, no copy) when they are consecutive."""
    if idx == list(range(idx[0], idx[0] + len(idx))):
        return slice(idx[0], idx[0] + len(idx))
    return torch.tensor(idx, dtype=torch.long)


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
            w.update({REWARD: ("R", reward0 + k), DISCOUNT: ("R", discount0 + k),
                      ACTION: ("Z", action0 + k), S_T: ("S", obs0 + k),
                      S_TP1: ("S", next0 + k)})
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
        users[(ONLINE, S_T)] = set(range(K))
        self.combos = [c for c in COMBO_ORDER if users.get(c)]
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
        self.levels: list[Level] = []
        for depth in sorted(levels):
            level = Level()
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
                level.groups.append(Group(op_name, types, out_cls, args, len(members)))
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

    def interpreter(self, tensors: Sequence[torch.Tensor], n_actions: int) -> VMCode | None:
        """The interpreter's code for a batch (``tensors``: obs, reward, then any others it
        must read), or None where the torch groups run."""
        if self.engine == "torch":
            return None
        why = None
        if not all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors):
            why = "it runs on CPU float32 tensors only"
        elif lossvm.compiled() is None:
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

    def sources(self, reward: torch.Tensor, generator) -> tuple[torch.Tensor | None,
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
    def fixed_bases(obs, action, reward, next_obs, discount, draws, consts) -> list:
        """The interpreter's read-only bases after the workspace (see lossvm.VMLoss)."""
        return [reward.contiguous(), discount.contiguous(), action.to(torch.float32),
                obs.contiguous(), next_obs.contiguous(), draws, consts]

    def chunks(self, chunk: int) -> list[tuple]:
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

    def agent_rows(self) -> np.ndarray:
        """``[K, 4]`` int64: each agent's row in the Q bank (L bank, level 0) for the calls
        in ``COMBO_ORDER`` (online s_t, online s_{t+1}, target s_{t+1}, target s_t); -1
        where the agent does not make that call."""
        if "agent_rows" not in self._vm:
            table = np.full((self.K, len(COMBO_ORDER)), -1, dtype=np.int64)
            start = 0
            for c in self.combos:
                agents = self.combo_agents[c].cpu().numpy()
                table[agents, COMBO_ORDER.index(c)] = start + np.arange(len(agents))
                start += len(agents)
            self._vm["agent_rows"] = table
        return self._vm["agent_rows"]

    def fused_update(self, obs: torch.Tensor, action: torch.Tensor, reward: torch.Tensor,
                     next_obs: torch.Tensor, done: torch.Tensor, online: StackedQ,
                     target: StackedQ, gamma: float, generator, learn: torch.Tensor,
                     max_loss: float, chunk: int = 128, adam: tuple | None = None):
        """The per-agent losses and their gradients without autograd, or None where the
        interpreter cannot run (then use :meth:`losses`); see
        :func:`evorl_nb.batched.fused.fused_update`."""
        return fused_update(self, obs, action, reward, next_obs, done, online, target, gamma,
                            generator, learn, max_loss, chunk, adam)

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
            fixed = {REWARD: (lossvm.REWARD, B), DISCOUNT: (lossvm.DISCOUNT, B),
                     ACTION: (lossvm.ACTION, B), S_T: (lossvm.OBS, B * D),
                     S_TP1: (lossvm.NEXT, B * D)}

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
        states = {S_T: obs, S_TP1: next_obs}
        online_next = self.combo_agents.get((ONLINE, S_TP1))
        if online_next is not None and (ONLINE, S_T) not in q_cache:
            # both states through the online net in one call: every agent on both when all
            # use s_{t+1}, else s_t for all and s_{t+1} for its users (see _StackedMLP)
            if len(online_next) == K:
                both = online(torch.cat([obs, next_obs], 1))
                q_cache[(ONLINE, S_T)], q_cache[(ONLINE, S_TP1)] = both[:, :B], both[:, B:]
            else:
                q_cache[(ONLINE, S_T)], q_cache[(ONLINE, S_TP1)] = online.with_subset(
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
        vm = self.interpreter([obs, reward, *blocks], blocks[0].shape[-1])
        draws, consts = self.sources(reward, generator)
        if vm is not None:
            fixed = self.fixed_bases(obs, action, reward, next_obs, discount, draws, consts)
            return VMLoss.apply(vm, fixed, *blocks)
        r_blocks = [reward, discount] + [t for t in (draws, consts) if t is not None]
        banks: dict[str, torch.Tensor] = {"R": torch.cat(r_blocks), "Z": action,
                                          "S": torch.cat([obs, next_obs]),
                                          "L": torch.cat(blocks)}
        banks = run_levels(self.levels, banks)
        return banks["R"].index_select(0, self._out_rows).mean(-1)
