"""Search spaces, random programs and mutation (facts.md §2).

A :class:`SearchSpace` is a *template*: a fixed number of op-node slots, each
either a fixed node or a random one, and a frozen prefix that mutation never
touches. Two presets:

- ``scratch``: the frozen prefix ``Q(s_t, a_t)`` (QValues then SelectList)
  followed by 18 random nodes; the last node is the output.
- ``bootstrap``: a library program's nodes (all mutable; DQN by default),
  preceded by random nodes up to 20 op nodes. The random nodes start dead (the
  library program's output reads none of them) so the seed program is exactly
  the library loss, and a mutation can bring them to life.

A random node is drawn uniformly over every (op, inputs) pair that type-checks
against the nodes before it (the output node among those of type R); a
program whose output has no gradient path to the online network is drawn
again. Unlike the
authors' code, a node may read the node directly before it (their off-by-one
is fixed). Every draw comes from the ``numpy.random.Generator`` passed in.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> space = get_space("bootstrap")
>>> parent = random_program(space, rng)
>>> parent.equation()
'δ^2'
>>> child = mutate(parent, space, rng)
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from evorl_nb import library
from evorl_nb.ops import OPS, SEARCH_CONSTANTS, Type
from evorl_nb.program import INPUTS, N_INPUTS, Node, Program, ProgramError

__all__ = ["SearchSpace", "get_space", "space_names", "random_program", "randomize", "mutate",
           "mutate_explained", "Mutation", "MAX_NODES"]

MAX_NODES = 20
"""The paper's limit on op nodes in a program (inputs not counted)."""
DEFAULT_OPS = tuple(name for name in OPS)
"""Ops a search space draws from unless told otherwise: the whole op table."""


class SearchError(RuntimeError):
    """No valid program or mutation could be drawn within the allowed tries."""


@dataclass(frozen=True)
class SearchSpace:
    """Where random programs and mutations come from.

    ``template`` has one entry per op node: a fixed :class:`Node` (its inputs
    are graph indices) or None for a random node. The first ``frozen`` nodes
    are never mutated.
    """

    name: str
    template: tuple[Node | None, ...]
    frozen: int = 0
    ops: tuple[str, ...] = DEFAULT_OPS
    """Op names random nodes are drawn from."""
    constants: tuple[float, ...] = SEARCH_CONSTANTS
    """Values a random Constant node draws from."""
    p_point: float = 0.95
    """Probability that a mutation is a point mutation (else the program is redrawn)."""
    max_tries: int = 2000
    """Draws before giving up with a SearchError."""

    def __post_init__(self):
        unknown = [op for op in self.ops if op not in OPS]
        if unknown:
            raise ValueError(f"unknown op(s) {unknown}; known ops: {', '.join(sorted(OPS))}")
        if len(self.template) > MAX_NODES:
            raise ValueError(f"a search space has at most {MAX_NODES} op nodes, "
                             f"got {len(self.template)}")


def scratch(n_nodes: int = MAX_NODES) -> SearchSpace:
    """Search from scratch: frozen Q(s_t, a_t) prefix, then random nodes."""
    prefix = (Node("QValues", (0, 2)), Node("SelectList", (N_INPUTS, 1)))
    return SearchSpace("scratch", prefix + (None,) * (n_nodes - len(prefix)), frozen=len(prefix))


def bootstrap(program: str | Program = "dqn", n_nodes: int = MAX_NODES) -> SearchSpace:
    """Search from a known loss: its nodes, all mutable, after random (initially dead) nodes."""
    prog = library.get(program) if isinstance(program, str) else program.prune()
    k = n_nodes - len(prog.nodes)
    if k < 0:
        raise ValueError(f"{prog.name or 'program'} has {len(prog.nodes)} nodes, more than {n_nodes}")
    shift = [*range(N_INPUTS)] + [i + k for i in range(N_INPUTS, N_INPUTS + len(prog.nodes))]
    fixed = tuple(Node(n.op, tuple(shift[j] for j in n.inputs), n.value) for n in prog.nodes)
    return SearchSpace(f"bootstrap:{prog.name or 'program'}", (None,) * k + fixed)


_PRESETS = {"scratch": scratch, "bootstrap": bootstrap}


def space_names() -> list[str]:
    """Names of the search-space presets."""
    return list(_PRESETS)


def get_space(name: str, **kwargs) -> SearchSpace:
    """A search-space preset by name (``scratch``, ``bootstrap``); kwargs go to its builder."""
    if name not in _PRESETS:
        raise KeyError(f"unknown search space {name!r}; known: {', '.join(_PRESETS)}")
    return _PRESETS[name](**kwargs)


# --- drawing nodes ------------------------------------------------------------


def _candidates(types: Sequence[Type]) -> dict[Type, list[int]]:
    """For each slot type, the graph indices whose value may fill it."""
    out: dict[Type, list[int]] = {t: [] for t in Type}
    for i, t in enumerate(types):
        for slot in Type:
            if t.fits(slot):
                out[slot].append(i)
    return out


def _draw_node(types: Sequence[Type], space: SearchSpace, rng: np.random.Generator,
               out_type: Type | None = None) -> tuple[Node, Type]:
    """Draw uniformly over all type-valid (op, inputs) pairs reading ``types``."""
    cands = _candidates(types)
    choices, cumulative, total = [], [], 0
    for name in space.ops:
        op = OPS[name]
        for ins, out in op.signatures:
            if out_type is not None and out is not out_type:
                continue
            count = math.prod(len(cands[t]) for t in ins)
            if name == "Constant":
                count *= len(space.constants)
            if count:
                total += count
                choices.append((name, ins, out))
                cumulative.append(total)
    if not choices:
        raise SearchError(f"no op of the search space yields type {out_type.label if out_type else '?'}")
    name, ins, out = choices[bisect.bisect_right(cumulative, rng.random() * total)]
    if name == "Constant":
        return Node(name, (), float(space.constants[rng.integers(len(space.constants))])), out
    inputs = tuple(int(cands[t][rng.integers(len(cands[t]))]) for t in ins)
    return Node(name, inputs), out


def _fill(space: SearchSpace, rng: np.random.Generator, keep: Sequence[Node | None]) -> Program:
    """Draw every None slot of ``keep`` in order; retry until the program is valid."""
    for _ in range(space.max_tries):
        types = [t for _, t in INPUTS]
        nodes: list[Node] = []
        for k, slot in enumerate(keep):
            if slot is None:
                # the output must be R: draw it among R-typed choices rather than redraw
                need = Type.R if k == len(keep) - 1 else None
                node, out = _draw_node(types, space, rng, out_type=need)
            else:
                node = slot
                out = OPS[slot.op].output_type(tuple(types[j] for j in slot.inputs))
                if out is None:
                    raise ValueError(f"search space {space.name}: fixed node {slot.describe()} "
                                     "does not type-check")
            nodes.append(node)
            types.append(out)
        try:
            return Program(tuple(nodes), frozen=space.frozen)
        except ProgramError:
            continue
    raise SearchError(f"no valid program drawn from {space.name} in {space.max_tries} tries")


def random_program(space: SearchSpace, rng: np.random.Generator) -> Program:
    """A random program of the search space (its fixed nodes kept, random slots drawn)."""
    return _fill(space, rng, space.template)


def randomize(program: Program, space: SearchSpace, rng: np.random.Generator) -> Program:
    """Redraw every mutable node of ``program`` (the frozen prefix stays)."""
    keep = list(program.nodes[: program.frozen]) + [None] * (len(program.nodes) - program.frozen)
    return _fill(space, rng, keep)


# --- mutation -----------------------------------------------------------------


class Mutation(NamedTuple):
    """What a mutation did: ``kind`` is "point" or "randomize"; for a point
    mutation, the graph index of the changed node and the node before and after."""

    kind: str
    index: int | None = None
    before: Node | None = None
    after: Node | None = None

    def describe(self) -> str:
        """Text such as ``node 12: Add(7, 9) -> Max(7, 9)``."""
        if self.kind != "point":
            return "redrew every mutable node"
        return f"node {self.index}: {self.before.describe()} -> {self.after.describe()}"


def mutate_explained(parent: Program, space: SearchSpace,
                     rng: np.random.Generator) -> tuple[Program, Mutation]:
    """Mutate ``parent``; return the child and what changed.

    With probability ``space.p_point`` one mutable node, chosen uniformly, gets
    a new (op, inputs) drawn uniformly among those of the same output type
    (any type if no node reads it; R for the output); otherwise every mutable
    node is redrawn. Draws that give an invalid program or the parent itself
    are retried.
    """
    n = len(parent.nodes)
    if parent.frozen >= n or rng.random() >= space.p_point:
        return randomize(parent, space, rng), Mutation("randomize")
    readers: dict[int, int] = {}
    for node in parent.nodes:
        for j in node.inputs:
            readers[j] = readers.get(j, 0) + 1
    for _ in range(space.max_tries):
        k = int(rng.integers(parent.frozen, n))
        index = N_INPUTS + k
        if index == parent.output:
            need = Type.R
        else:
            need = parent.types[index] if readers.get(index) else None
        node, _ = _draw_node(parent.types[:index], space, rng, out_type=need)
        if node == parent.nodes[k]:
            continue
        nodes = list(parent.nodes)
        nodes[k] = node
        try:
            child = Program(tuple(nodes), frozen=parent.frozen)
        except ProgramError:
            continue
        return child, Mutation("point", index, parent.nodes[k], node)
    raise SearchError(f"no valid mutation of the parent found in {space.max_tries} tries")


def mutate(parent: Program, space: SearchSpace, rng: np.random.Generator) -> Program:
    """A mutated child of ``parent`` (see :func:`mutate_explained`)."""
    return mutate_explained(parent, space, rng)[0]
