"""Programs: a loss function as a typed DAG of ops over the RL inputs.

A :class:`Program` is a tuple of op :class:`Node` s in topological order over
seven fixed inputs (the paper's order): the online Q network ``q``, the action
``a_t``, the state ``s_t``, the target network ``q_targ``, the next state
``s_tp1``, the reward ``r_t`` and the ``discount`` (gamma * (1 - done)). Node
``k`` of the program has index ``len(INPUTS) + k``; a node may read the inputs
and any earlier node. The last node is the output: a per-transition loss of
type R whose batch mean the learner minimizes.

>>> from evorl_nb import library
>>> prog = library.get("dqn")
>>> prog.output_type.label
'R'
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from evorl_nb.inputs import INPUT_NAMES, INPUTS, N_INPUTS, ONLINE, TARGET, Batch  # noqa: F401
from evorl_nb.ops import OPS, Op, SourceContext, Type

if TYPE_CHECKING:
    import torch

__all__ = ["INPUTS", "Node", "Program", "ProgramError", "Batch", "FORMAT_VERSION",
           "MAX_PROGRAM_NODES", "MAX_JSON_CHARS", "MAX_CONSTANT"]

FORMAT_VERSION = 1
"""Version of the program JSON format written by :meth:`Program.to_json`."""

_NO_GRAD_OPS = frozenset({"ArgMaxList"})  # ops through which no gradient flows


class ProgramError(ValueError):
    """A program (or program file) that is not a valid typed loss graph."""


@dataclass(frozen=True)
class Node:
    """One op node: the op's name, the indices of its inputs, and a Constant's value."""

    op: str
    inputs: tuple[int, ...] = ()
    value: float | None = None

    def __post_init__(self):
        object.__setattr__(self, "inputs", tuple(self.inputs))

    def describe(self) -> str:
        """Short text such as ``Add(7, 9)`` or ``Constant(0.1)``."""
        if self.op == "Constant":
            return f"Constant({self.value:g})"
        return f"{self.op}({', '.join(map(str, self.inputs))})"


@dataclass(frozen=True)
class Program:
    """A loss program: op nodes after the seven inputs; the last node is the output.

    ``frozen`` leading op nodes are never mutated (a search space's fixed
    prefix); ``name`` is a label that plays no part in equality of losses.
    Construction validates the program and raises :class:`ProgramError`.
    """

    nodes: tuple[Node, ...]
    frozen: int = 0
    name: str | None = field(default=None, compare=False)
    types: tuple[Type, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "nodes", tuple(self.nodes))
        object.__setattr__(self, "types", _check(self.nodes, self.frozen))

    # --- structure -------------------------------------------------------

    @property
    def output(self) -> int:
        """Index of the output node (the last one)."""
        return N_INPUTS + len(self.nodes) - 1

    @property
    def output_type(self) -> Type:
        """Type of the output node (always R for a valid program)."""
        return self.types[-1]

    def node(self, index: int) -> Node:
        """The op node at graph index ``index`` (inputs are not nodes)."""
        return self.nodes[index - N_INPUTS]

    def live(self) -> list[int]:
        """Graph indices (inputs included) that the output depends on, ascending."""
        cached = self.__dict__.get("_live")
        if cached is not None:
            return list(cached)
        seen = {self.output}
        for i in range(self.output, N_INPUTS - 1, -1):
            if i in seen:
                seen.update(self.node(i).inputs)
        object.__setattr__(self, "_live", tuple(sorted(seen)))  # programs are immutable
        return sorted(seen)

    def prune(self) -> Program:
        """The same loss without dead nodes (those the output does not read)."""
        live = [i for i in self.live() if i >= N_INPUTS]
        remap = {i: i for i in range(N_INPUTS)}
        nodes = []
        for new, old in enumerate(live):
            n = self.node(old)
            nodes.append(Node(n.op, tuple(remap[j] for j in n.inputs), n.value))
            remap[old] = N_INPUTS + new
        frozen = sum(1 for i in live if i - N_INPUTS < self.frozen)
        return Program(tuple(nodes), frozen=frozen, name=self.name)

    def grad_nodes(self) -> list[bool]:
        """For each graph index, whether its value carries a gradient of the online network."""
        grad = [i == ONLINE for i in range(N_INPUTS)]
        for n in self.nodes:
            grad.append(n.op not in _NO_GRAD_OPS and any(grad[j] for j in n.inputs))
        return grad

    def label(self, index: int) -> str:
        """Display label of a graph index (an input's name or the op's label)."""
        if index < N_INPUTS:
            return INPUT_NAMES[index]
        n = self.node(index)
        return f"{n.value:g}" if n.op == "Constant" else OPS[n.op].label

    def to_networkx(self):
        """The graph as a ``networkx.DiGraph`` (node attributes: op, type, label, live, grad)."""
        import networkx as nx

        g = nx.DiGraph(name=self.name or "program")
        live, grad = set(self.live()), self.grad_nodes()
        for i, t in enumerate(self.types):
            op = INPUT_NAMES[i] if i < N_INPUTS else self.node(i).op
            g.add_node(i, op=op, type=t.label, label=self.label(i), live=i in live,
                       grad=grad[i], input=i < N_INPUTS, output=i == self.output)
        for i, n in enumerate(self.nodes, start=N_INPUTS):
            for slot, j in enumerate(n.inputs):
                g.add_edge(j, i, slot=slot)
        return g

    # --- meaning ---------------------------------------------------------

    def per_transition(self, batch: Batch, q_net: Callable, target_net: Callable,
                       gamma: float = 0.99, *, generator: torch.Generator | None = None,
                       trace: list | None = None) -> torch.Tensor:
        """The per-transition loss, shape [B]; differentiable in ``q_net``'s parameters.
        (To *evaluate* a program, Eval(L, E), is to train agents with it:
        :func:`evorl_nb.evaluate.evaluate`.)

        ``q_net`` and ``target_net`` map observations [B, ...] to Q-values
        [B, A]; the target network is run without gradient. ``generator``
        drives the Normal and Uniform ops. A ``trace`` list receives every graph
        index's value (None for dead nodes), e.g. to see which side of a max won.
        """
        reward = batch.reward
        discount = gamma * (1.0 - batch.done.to(reward.dtype))
        values: list[Any] = [q_net, batch.action.long(), batch.obs, target_net,
                             batch.next_obs, reward, discount]
        memo: dict[Node, Any] = {}
        live = self.__dict__.get("_live_set") or set(self.live())
        object.__setattr__(self, "_live_set", live)
        for i, n in enumerate(self.nodes, start=N_INPUTS):
            if i not in live:
                values.append(None)
                continue
            op = OPS[n.op]
            if not op.random and n in memo:  # identical sub-graphs are computed once
                values.append(memo[n])
                continue
            out = _run_torch(op, n, [values[j] for j in n.inputs], self.types, i, reward,
                             generator)
            memo[n] = out
            values.append(out)
        if trace is not None:
            trace.extend(values)
        return values[self.output]

    def loss(self, batch: Batch, q_net: Callable, target_net: Callable, gamma: float = 0.99,
             *, generator: torch.Generator | None = None) -> torch.Tensor:
        """The scalar loss: the batch mean of :meth:`per_transition`."""
        return self.per_transition(batch, q_net, target_net, gamma, generator=generator).mean()

    def evaluate(self, *args, **kwargs) -> torch.Tensor:
        """Deprecated name of :meth:`per_transition` (``evaluate`` means Eval(L, E), training
        agents, everywhere else); warns and calls it."""
        import warnings

        warnings.warn("Program.evaluate is now Program.per_transition", DeprecationWarning,
                      stacklevel=2)
        return self.per_transition(*args, **kwargs)

    def to_sympy(self, *, guards: bool = True):
        """The exact sympy expression of the per-transition loss (see ``evorl_nb.symbolic``)."""
        from evorl_nb.symbolic import to_sympy

        return to_sympy(self, guards=guards)

    def equation(self, *, latex: bool = False, simplify: bool = True) -> str:
        """The loss in the paper's notation, e.g. ``δ^2 + 0.1*Q(s_t, a_t)``."""
        from evorl_nb.symbolic import equation

        return equation(self, latex=latex, simplify=simplify)

    def to_torch_source(self, name: str | None = None) -> str:
        """This loss as a standalone PyTorch module defining ``loss(q_net, target_net, obs,
        action, reward, next_obs, done, gamma, generator)`` (see ``evorl_nb.export``)."""
        from evorl_nb.export import torch_source

        return torch_source(self, name)

    def fingerprint(self) -> str:
        """The functional-equivalence hash (equal for programs computing the same loss)."""
        from evorl_nb.fingerprint import fingerprint

        return fingerprint(self)

    def structural_hash(self) -> str:
        """A hash of the pruned graph's structure (commutative inputs unordered)."""
        from evorl_nb.fingerprint import structural_hash

        return structural_hash(self)

    # --- JSON ------------------------------------------------------------

    def to_dict(self) -> dict:
        """A JSON-ready dict of the program (see :meth:`from_dict`)."""
        nodes = []
        for n in self.nodes:
            d: dict[str, Any] = {"op": n.op, "inputs": list(n.inputs)}
            if n.op == "Constant":
                d["value"] = n.value
            nodes.append(d)
        out = {"format": "evorl_nb.program", "version": FORMAT_VERSION,
               "inputs": list(INPUT_NAMES), "frozen": self.frozen, "nodes": nodes}
        if self.name:
            out["name"] = self.name
        return out

    def to_json(self, indent: int | None = None) -> str:
        """The program as JSON text; :meth:`from_json` reads it back exactly."""
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Any) -> Program:
        """Read a program dict, validating every field; never evaluates code."""
        return cls(**_parse(data))

    @classmethod
    def from_json(cls, text: str) -> Program:
        """Read a program from JSON text; raises :class:`ProgramError` naming the bad field."""
        if len(text) > MAX_JSON_CHARS:
            raise ProgramError(f"program JSON is {len(text):,} characters; the limit is "
                               f"{MAX_JSON_CHARS:,} (a {MAX_PROGRAM_NODES:,}-node program "
                               "fits well within it)")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ProgramError(f"program file is not JSON: {e}") from None
        except RecursionError:
            raise ProgramError("program JSON is nested too deeply to be a program") from None
        return cls.from_dict(data)

    @classmethod
    def from_record(cls, text: str, where: str) -> Program:
        """Read a stored program (a run's candidate): like :meth:`from_json`, but the
        ProgramError says which stored program was damaged (``where``)."""
        try:
            return cls.from_json(text)
        except ProgramError as e:
            raise ProgramError(f"{where}: the stored program is damaged ({e})") from None

    def __repr__(self) -> str:
        body = "; ".join(f"{i}={n.describe()}" for i, n in enumerate(self.nodes, N_INPUTS))
        return f"Program({self.name or ''!s}: {body})"


# --- validation --------------------------------------------------------------


MAX_PROGRAM_NODES = 1_000
"""Most op nodes a program may have (a search's programs have at most 20; the limit keeps a
hostile or corrupt file from stalling type checks, sympy and the display)."""
MAX_JSON_CHARS = 1_000_000
"""Longest program JSON text read (a 1,000-node program is about 50,000 characters)."""
MAX_CONSTANT = 1e30
"""Largest magnitude of a Constant (well inside float32, which training uses)."""


def _constant_ok(value) -> bool:
    """A Constant's value: a real number (not a bool), finite, of magnitude <= MAX_CONSTANT."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(float(value)) and abs(float(value)) <= MAX_CONSTANT
    except OverflowError:  # an int too large for a float
        return False


def _types_text(types: Sequence[Type]) -> str:
    return "(" + ", ".join(t.label for t in types) + ")"


def _check(nodes: tuple[Node, ...], frozen: int) -> tuple[Type, ...]:
    """Type-check every node; return the type of every graph index."""
    if not nodes:
        raise ProgramError("a program needs at least one op node (its output)")
    if len(nodes) > MAX_PROGRAM_NODES:
        raise ProgramError(f"a program has at most {MAX_PROGRAM_NODES:,} op nodes, got "
                           f"{len(nodes):,}")
    if not 0 <= frozen <= len(nodes):
        raise ProgramError(f"frozen={frozen} must be between 0 and the {len(nodes)} op nodes")
    types = [t for _, t in INPUTS]
    for i, n in enumerate(nodes, start=N_INPUTS):
        if not isinstance(n, Node):
            raise ProgramError(f"node {i}: expected a Node, got {type(n).__name__}")
        op = OPS.get(n.op)
        if op is None:
            raise ProgramError(f"node {i}: unknown op {n.op!r}; known ops: {', '.join(sorted(OPS))}")
        if len(n.inputs) != op.arity:
            raise ProgramError(f"node {i} ({n.op}): takes {op.arity} inputs, got {len(n.inputs)}")
        for j in n.inputs:
            if not isinstance(j, int) or isinstance(j, bool) or not 0 <= j < i:
                raise ProgramError(
                    f"node {i} ({n.op}): input {j!r} must be an earlier node index 0..{i - 1} "
                    "(programs are in topological order, so no cycles)")
        if n.op == "Constant":
            if not _constant_ok(n.value):
                shown = repr(n.value) if len(repr(n.value)) < 40 else repr(n.value)[:37] + "..."
                raise ProgramError(f"node {i} (Constant): needs a finite number of magnitude at "
                                   f"most {MAX_CONSTANT:g}, got {shown}")
        elif n.value is not None:
            raise ProgramError(f"node {i} ({n.op}): only Constant nodes take a value")
        got = tuple(types[j] for j in n.inputs)
        out = op.output_type(got)
        if out is None:
            accepted = " or ".join(_types_text(ins) for ins, _ in op.signatures)
            raise ProgramError(
                f"node {i} ({n.op}): got input types {_types_text(got)}; {n.op} accepts {accepted}")
        types.append(out)
    out_index = len(types) - 1
    if types[-1] is not Type.R:
        raise ProgramError(
            f"node {out_index} ({nodes[-1].op}): the output must be of type R, got {types[-1].label}")
    grad = [i == ONLINE for i in range(N_INPUTS)]
    for n in nodes:
        grad.append(n.op not in _NO_GRAD_OPS and any(grad[j] for j in n.inputs))
    if not grad[-1]:
        raise ProgramError(
            f"node {out_index} ({nodes[-1].op}): the output has no gradient path to the online "
            "Q network (input 0, 'q'), so the loss could not train it")
    return tuple(types)


def _parse(data: Any) -> dict:
    """Check a program dict field by field; return Program's constructor arguments."""
    if not isinstance(data, dict):
        raise ProgramError(f"a program must be a JSON object, got {type(data).__name__}")
    if data.get("format", "evorl_nb.program") != "evorl_nb.program":
        raise ProgramError(f"format: expected 'evorl_nb.program', got {data.get('format')!r}")
    version = data.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ProgramError(f"version: expected an integer, got {version!r}")
    if version < 1:
        raise ProgramError(f"version: expected a format version >= 1, got {version}")
    if version > FORMAT_VERSION:
        raise ProgramError(f"version: {version} is newer than this evorl_nb reads "
                           f"({FORMAT_VERSION}); upgrade evorl_nb")
    if data.get("inputs", list(INPUT_NAMES)) != list(INPUT_NAMES):
        raise ProgramError(f"inputs: expected {list(INPUT_NAMES)}, got {data.get('inputs')!r}")
    unknown = set(data) - {"format", "version", "inputs", "frozen", "nodes", "name"}
    if unknown:
        raise ProgramError(f"unknown field(s): {', '.join(sorted(unknown))}")
    raw = data.get("nodes")
    if not isinstance(raw, list):
        raise ProgramError(f"nodes: expected a list, got {type(raw).__name__}")
    if len(raw) > MAX_PROGRAM_NODES:
        raise ProgramError(f"nodes: a program has at most {MAX_PROGRAM_NODES:,} op nodes, got "
                           f"{len(raw):,}")
    nodes = []
    for k, d in enumerate(raw):
        where = f"nodes[{k}]"
        if not isinstance(d, dict):
            raise ProgramError(f"{where}: expected an object, got {type(d).__name__}")
        extra = set(d) - {"op", "inputs", "value"}
        if extra:
            raise ProgramError(f"{where}: unknown field(s): {', '.join(sorted(extra))}")
        if not isinstance(d.get("op"), str) or d["op"] not in OPS:
            raise ProgramError(f"{where}.op: unknown op {d.get('op')!r}; known ops: "
                               f"{', '.join(sorted(OPS))}")
        ins = d.get("inputs", [])
        if not isinstance(ins, list) or not all(
                isinstance(j, int) and not isinstance(j, bool) for j in ins):
            raise ProgramError(f"{where}.inputs: expected a list of integer node indices, got {ins!r}")
        for m, j in enumerate(ins):
            if not 0 <= j < N_INPUTS + k:
                raise ProgramError(
                    f"{where}.inputs[{m}]: index {j} is not an earlier node (node {N_INPUTS + k} "
                    f"may read 0..{N_INPUTS + k - 1}; later indices would make a cycle)")
        nodes.append(Node(d["op"], tuple(ins), d.get("value")))
    frozen = data.get("frozen", 0)
    if not isinstance(frozen, int) or isinstance(frozen, bool):
        raise ProgramError(f"frozen: expected an integer, got {frozen!r}")
    name = data.get("name")
    if name is not None and not isinstance(name, str):
        raise ProgramError(f"name: expected a string, got {name!r}")
    return {"nodes": tuple(nodes), "frozen": frozen, "name": name}


# --- torch execution ---------------------------------------------------------


def _run_torch(op: Op, n: Node, args: list, types, index: int, like: torch.Tensor, generator):
    import torch  # here, not at the top: reading and printing programs needs no torch

    if op.arity == 0:
        return op.torch(SourceContext(like.shape[0], like, generator, n.value, index))
    if op.name == "QValues" and n.inputs[0] == TARGET:  # by slot: q and q_targ may be one net
        with torch.no_grad():
            return op.torch(*args)
    if op.typed:
        return op.torch(*args, types=tuple(types[j] for j in n.inputs))
    return op.torch(*args)


# --- building programs by hand -----------------------------------------------


class Ref(int):
    """A handle on a node while building a program with :class:`ProgramBuilder`."""


class ProgramBuilder:
    """Write a loss by hand: ``b.Add(x, y)`` appends an Add node and returns its handle.

    >>> b = ProgramBuilder()
    >>> q_sa = b.SelectList(b.QValues(b.q, b.s_t), b.a_t)
    >>> y = b.Add(b.r_t, b.DotProduct(b.discount, b.MaxList(b.QValues(b.q_targ, b.s_tp1))))
    >>> prog = b.build(b.L2Norm(b.Subtract(q_sa, y)), name="td")
    >>> len(prog.nodes)
    8
    """

    def __init__(self):
        self._nodes: list[Node] = []
        for i, name in enumerate(INPUT_NAMES):
            setattr(self, name, Ref(i))

    def constant(self, value: float) -> Ref:
        """Append a Constant node."""
        self._nodes.append(Node("Constant", (), float(value)))
        return Ref(N_INPUTS + len(self._nodes) - 1)

    def __getattr__(self, op_name: str):
        if op_name.startswith("_") or op_name not in OPS:
            raise AttributeError(f"unknown op {op_name!r}; known ops: {', '.join(sorted(OPS))}")

        def add(*inputs: int) -> Ref:
            self._nodes.append(Node(op_name, tuple(int(j) for j in inputs)))
            return Ref(N_INPUTS + len(self._nodes) - 1)

        return add

    def build(self, output: int, *, name: str | None = None, frozen: int = 0) -> Program:
        """The program computing node ``output`` (nodes it does not read are dropped)."""
        full = self._nodes[: int(output) - N_INPUTS + 1]
        return Program(tuple(full), frozen=frozen, name=name).prune()
