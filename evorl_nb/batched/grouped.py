"""The grouped torch evaluation of K loss programs: one batched call per group of nodes.

:class:`evorl_nb.batched.plan.LossPlan` sorts the programs' nodes into levels (a node's
level is one more than its deepest input) and, within a level, into groups of the same
(op, input types, banks read, bank written). Here a level runs as one gather per value bank
and one batched call per group, the values carrying a leading group axis. This is the
engine of every device; on CPU the compiled interpreter (:mod:`evorl_nb.batched.lossvm`)
runs the same nodes faster.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import torch

from evorl_nb.ops import OPS, Type

__all__ = ["Group", "Level", "run_levels"]


@dataclass
class Group:
    """One batched call: ``size`` nodes of the same op, input types and banks, one per agent
    that has such a node at this level."""

    op: str
    types: tuple[Type, ...]
    out_class: str
    args: list[tuple[str, int]]  # (bank class, piece of the level's read) per input position
    size: int


@dataclass
class Level:
    """A level's groups, and what it reads: per bank, the rows of every group input taken
    from it, gathered in one call and split into one piece per input. One gather per bank
    and level, where one per input made every input's backward a bank-sized zero fill,
    index_add and accumulation."""

    groups: list[Group] = field(default_factory=list)
    reads: list[tuple[str, slice | torch.Tensor, list[int]]] = field(default_factory=list)


def group_op(op_name: str, args: list[torch.Tensor], types: tuple[Type, ...]) -> torch.Tensor:
    """``op`` on values with a leading group axis: ``[G, B]`` / ``[G, B, A]`` / ``[G, B, D]``
    (the op table's meaning with the batch on axis 1, :attr:`evorl_nb.ops.Op.grouped`)."""
    op = OPS[op_name]
    return op.grouped(*args, types=types) if op.typed else op.grouped(*args)


def run_levels(levels: list[Level], banks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Evaluate ``levels`` in order over the value ``banks`` (class -> stacked rows),
    appending each group's outputs to its bank; returns the banks."""
    for level in levels:
        pieces: dict[str, tuple[torch.Tensor, ...]] = {}
        for c, idx, sizes in level.reads:
            x = banks[c][idx] if isinstance(idx, slice) else banks[c].index_select(0, idx)
            pieces[c] = x.split(sizes) if len(sizes) > 1 else (x,)
        new: dict[str, list[torch.Tensor]] = defaultdict(list)
        for g in level.groups:
            args = [pieces[c][j] for c, j in g.args]
            new[g.out_class].append(group_op(g.op, args, g.types))
        for cls, outs in new.items():
            banks[cls] = torch.cat([banks[cls], *outs]) if cls in banks else torch.cat(outs)
    return banks
