"""Value types and the op table: every op is one row of data.

A row gives an op's name, the input types it accepts and the type it returns
(its *signatures*), its PyTorch meaning, its sympy meaning and its display
label. Nothing else in the package defines what an op does, so the torch loss,
the symbolic equation and the DAG drawing cannot drift apart.

Shapes per batch of B transitions with A actions:
R ``(B,)``, List[R] ``(B, A)``, P ``(B, A)``, V ``(B, D)``, S ``(B, ...)``,
Z ``(B,)`` of int64, Param a Q network ``S -> List[R]``.

A P (a distribution over actions) is also a List[R]: any input slot that takes
a List[R] accepts a P, and the op then returns a List[R].
"""

from __future__ import annotations

import enum
import functools
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import sympy

from evorl_nb import symbols as sym
from evorl_nb.guards import EPS_DIV, EPS_LOG, EPS_PROB, EXP_CLIP  # noqa: F401 - re-exported

if TYPE_CHECKING:
    import torch

__all__ = ["Type", "Op", "OPS", "get_op", "SEARCH_CONSTANTS", "EPS_DIV", "EPS_LOG", "EPS_PROB",
           "EXP_CLIP"]

SEARCH_CONSTANTS = (1.0, 0.5, 0.2, 0.1, 0.01)
"""The paper's constants: the values a search space may draw for a Constant node."""


class Type(enum.Enum):
    """A value type of the typed loss graph (paper notation in ``label``)."""

    R = "R"
    LIST = "List[R]"
    P = "P"
    V = "V"
    S = "S"
    Z = "Z"
    PARAM = "Param"

    @property
    def label(self) -> str:
        """The paper's name of the type, e.g. ``List[R]``."""
        return self.value

    def fits(self, slot: Type) -> bool:
        """True if a value of this type may fill an input slot of type ``slot``."""
        return self is slot or (self is Type.P and slot is Type.LIST)


R, LIST, P, V, S, Z, PARAM = Type.R, Type.LIST, Type.P, Type.V, Type.S, Type.Z, Type.PARAM

Signature = tuple[tuple[Type, ...], Type]


@dataclass(frozen=True)
class Op:
    """One row of the op table.

    ``code`` is the op's PyTorch meaning as one line of source over ``{x}`` and ``{y}``
    (a source op's over ``{like}``, ``{value}`` and ``{generator}``); a ``typed`` op's
    ``reduced`` line is used where it reduces the inputs' trailing axes to an R.
    ``torch`` is that source compiled: it takes the input tensors (a source op a
    :class:`SourceContext`; a typed op also ``types=``, its input types) and returns a
    tensor. ``sympy`` does the same on sympy expressions. ``signatures`` lists every
    accepted tuple of input types with the output type; no input tuple matches two.
    """

    name: str
    signatures: tuple[Signature, ...]
    code: str = field(repr=False)
    sympy: Callable[..., Any] = field(repr=False)
    label: str
    commutative: bool = False
    random: bool = False
    typed: bool = False
    reduced: str | None = field(default=None, repr=False)
    broadcast: bool = False
    doc: str = ""
    vm: str | None = None
    """The compiled interpreter's instruction for this op (``batched/csrc/interp.c``); None
    for the ops it reads instead of computing (Q-network calls, constants, random draws)."""
    vm_reduced: str | None = None
    """The instruction where a typed op sums its inputs' trailing axes into an R (else
    :attr:`vm`)."""

    @functools.cached_property
    def torch(self) -> Callable[..., Any]:
        """The op's source line compiled into a function (on first use: importing the op
        table does not import torch)."""
        return _compile(self, axis=0)

    @functools.cached_property
    def grouped(self) -> Callable[..., Any]:
        """:attr:`torch` for values with a leading group axis (``[G, B, ...]``: the batch on
        axis 1), as the population trainer's grouped evaluation stacks them."""
        return _compile(self, axis=1)

    @property
    def arity(self) -> int:
        """Number of inputs the op takes."""
        return len(self.signatures[0][0])

    def output_type(self, input_types: tuple[Type, ...]) -> Type | None:
        """The output type for these input types, or None if they do not type-check."""
        for ins, out in self.signatures:
            if len(ins) == len(input_types) and all(t.fits(s) for t, s in zip(input_types, ins)):
                return out
        return None

    def reduces(self, input_types: tuple[Type, ...]) -> bool:
        """True if this typed op sums its inputs' trailing axes into an R for these types."""
        return bool(self.reduced) and input_types[0] in _reducing(self)

    def source(self, input_types: tuple[Type, ...] = (), axis: int = 0) -> str:
        """The source line for these input types: ``reduced`` where a typed op sums its
        inputs' trailing axes into an R, else ``code``; the batch on axis ``axis``."""
        return _on_axis(self.reduced if self.reduces(input_types) else self.code, axis)

    def vm_op(self, input_types: tuple[Type, ...]) -> str | None:
        """The interpreter's instruction for these input types (None: none)."""
        return self.vm_reduced if self.vm_reduced and self.reduces(input_types) else self.vm


@dataclass(frozen=True)
class SourceContext:
    """What a source op (Constant, Normal, Uniform) needs to make a value."""

    batch_size: int
    like: torch.Tensor
    generator: torch.Generator | None = None
    value: float | None = None
    index: int = 0


# --- signature helpers -------------------------------------------------------

NUMERIC = (R, LIST, V)


def _same(types=NUMERIC, out=None) -> tuple[Signature, ...]:
    """(X, X) -> X (or -> out) for each X in types."""
    return tuple(((t, t), out or t) for t in types)


def _unary(types=NUMERIC) -> tuple[Signature, ...]:
    return tuple(((t,), t) for t in types)


def _broadcast() -> tuple[Signature, ...]:
    """(X, X) -> X plus R broadcast against List[R] and V, either side."""
    mixed = [((R, t), t) for t in (LIST, V)] + [((t, R), t) for t in (LIST, V)]
    return _same() + tuple(mixed)


# --- torch source ----------------------------------------------------------
#
# An op's PyTorch meaning is one line of source over its inputs ``{x}`` and ``{y}`` (and,
# for a source op, ``{like}`` (a [B] tensor giving shape, dtype and device), ``{value}`` and
# ``{generator}``). ``{b}`` is the batch axis and ``{t}`` the first axis after it: 0 and 1
# for one program's values (``Op.torch``), 1 and 2 for the grouped evaluation's, which
# stacks groups of values on a leading axis (``Op.grouped``). The table compiles the line;
# ``evorl_nb.export`` writes it into a standalone loss file. Ops marked ``broadcast`` first
# pad the lower-rank input on the right, as the authors' code does (an R against a List[R]
# or V).


def _on_axis(line: str, axis: int) -> str:
    """``line`` with its batch axis ``{b}`` (and the axis after it, ``{t}``) filled in."""
    return line.replace("{b}", str(axis)).replace("{t}", str(axis + 1))


def _bc(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad the lower-rank tensor on the right, as the authors' code does."""
    while x.dim() < y.dim():
        x = x.unsqueeze(-1)
    while y.dim() < x.dim():
        y = y.unsqueeze(-1)
    return x, y


def _reducing(op: Op) -> frozenset:
    """The first-input types (a P included wherever a List[R] is) for which a typed op
    sums trailing axes into an R."""
    return frozenset(t for ins, out in op.signatures if ins and out is R and ins[0] is not R
                     for t in Type if t.fits(ins[0]))


def _compile(op: Op, axis: int) -> Callable[..., Any]:
    """``Op.torch`` (``axis`` 0) or ``Op.grouped`` (1): the op's source line(s), the batch
    on ``axis``, compiled into a function."""
    import torch

    if op.arity == 0:
        body = op.code.format(like="like", value="value", generator="generator")
        text = (f"def {op.name}(ctx):\n    like, value, generator = ctx.like, ctx.value, "
                f"ctx.generator\n    return {body}\n")
    else:
        names = ("x", "y")[:op.arity]
        fill = dict(zip(names, names))
        text = f"def {op.name}({', '.join(names)}" + (", types" if op.typed else "") + "):\n"
        if op.broadcast:
            text += "    x, y = _bc(x, y)\n"
        if op.typed and op.reduced:
            text += (f"    if types[0] in reducing:\n"
                     f"        return {_on_axis(op.reduced, axis).format(**fill)}\n")
        text += f"    return {_on_axis(op.code, axis).format(**fill)}\n"
    scope = {"torch": torch, "_bc": _bc, "reducing": _reducing(op)}
    exec(compile(text, f"<op {op.name}>", "exec"), scope)  # noqa: S102 - the table's own source
    return scope[op.name]


# --- the table ---------------------------------------------------------------

_VEC = (V, S)  # types DotProduct sums over their trailing axes
_SUM_TRAILING = ".flatten({t}).sum(-1)"


def _rows() -> list[Op]:
    s = sym
    return [
        Op("Add", _broadcast(), "{x} + {y}", lambda x, y: x + y, "+", commutative=True,
           broadcast=True, doc="x + y", vm="ADD"),
        Op("Subtract", _broadcast(), "{x} - {y}", lambda x, y: x - y, "-", broadcast=True,
           doc="x - y", vm="SUB"),
        Op("Max", _same(), "torch.maximum({x}, {y})", s.smax, "max", commutative=True,
           broadcast=True, doc="elementwise max(x, y)", vm="MAX"),
        Op("Min", _same(), "torch.minimum({x}, {y})", s.smin, "min", commutative=True,
           broadcast=True, doc="elementwise min(x, y)", vm="MIN"),
        Op("DotProduct", (((R, R), R), ((LIST, LIST), LIST)) + tuple(((t, t), R) for t in _VEC),
           "{x} * {y}", s.dot, "·", commutative=True, typed=True,
           reduced="({x} * {y})" + _SUM_TRAILING,
           doc="x * y for R and List[R]; summed over the last axis for V and S", vm="MUL",
           vm_reduced="DOT"),
        Op("Div", _same(), f"{{x}} / ({{y}} + {EPS_DIV!r})", lambda x, y: s.div(x, y), "/",
           doc="x / (y + 1e-10)", vm="DIV"),
        Op("L2Distance", (((R, R), R), ((LIST, LIST), R)) + tuple(((t, t), R) for t in _VEC),
           "0.5 * ({x} - {y}) ** 2", s.l2distance, "½(x−y)²", commutative=True, typed=True,
           reduced="0.5 * (({x} - {y}) ** 2)" + _SUM_TRAILING,
           doc="0.5 * (x - y)^2, summed over the last axis", vm="L2"),
        Op("MaxList", (((LIST,), R),), "{x}.max(-1).values", s.reduction("max"), "max_a",
           doc="max over actions", vm="MAXLIST"),
        Op("MinList", (((LIST,), R),), "{x}.min(-1).values", s.reduction("min"), "min_a",
           doc="min over actions", vm="MINLIST"),
        Op("ArgMaxList", (((LIST,), Z),), "{x}.argmax(-1)", s.argmax, "argmax_a",
           doc="the action with the largest value (no gradient)", vm="ARGMAX"),
        Op("SelectList", (((LIST, Z), R),), "{x}.gather(-1, {y}.long().unsqueeze(-1)).squeeze(-1)",
           s.select, "[a]", doc="the entry of a per-action list at an action index", vm="SELECT"),
        Op("MeanList", (((LIST,), R),), "{x}.mean(-1)", s.reduction("mean"), "mean_a",
           doc="mean over actions", vm="MEANLIST"),
        Op("VarianceList", (((LIST,), R),), "{x}.var(-1, unbiased=False)",
           s.reduction("var"), "var_a", doc="variance over actions", vm="VARLIST"),
        Op("StdList", (((LIST,), R),), "{x}.std(-1, unbiased=False)",
           s.reduction("std"), "std_a", doc="standard deviation over actions", vm="STDLIST"),
        Op("SumList", (((LIST,), R),), "{x}.sum(-1)", s.reduction("sum"), "Σ_a",
           doc="sum over actions", vm="SUMLIST"),
        Op("LogSumExpList", (((LIST,), R),), "torch.logsumexp({x}, -1)",
           s.reduction("logsumexp"), "logΣexp_a", doc="log sum_a exp(x_a)", vm="LSE"),
        Op("Log", _unary(), f"torch.log({{x}}.abs() + {EPS_LOG!r})", s.log, "log",
           doc="log(|x| + 1e-12)", vm="LOG"),
        Op("Exp", _unary(), f"torch.exp({{x}}).clamp({-EXP_CLIP!r}, {EXP_CLIP!r})", s.exp, "exp",
           doc="exp(x) clipped to +-1e10", vm="EXP"),
        Op("Abs", _unary(), "{x}.abs()", sympy.Abs, "|x|", doc="|x|", vm="ABS"),
        Op("QValues", (((PARAM, S), LIST),), "{x}({y})", s.qvalues, "Q(s,·)",
           doc="the Q network's values of every action in a state"),
        Op("Softmax", (((LIST,), P),), "torch.softmax({x}, -1)", s.softmax, "softmax",
           doc="softmax over actions", vm="SOFTMAX"),
        Op("KLDiv", (((P, P), R),),
           f"({{x}} * (torch.log({{x}} + {EPS_PROB!r}) - torch.log({{y}} + {EPS_PROB!r})))"
           ".sum(-1)", s.kl, "KL", doc="sum_a p log(p/q) (1e-8 guards)", vm="KL"),
        Op("Entropy", (((P,), R),), f"-({{x}} * torch.log({{x}} + {EPS_PROB!r})).sum(-1)",
           s.entropy, "H", doc="-sum_a p log(p + 1e-8) (the authors' code returns the negative)",
           vm="ENTROPY"),
        Op("Constant", (((), R),), "torch.full_like({like}, {value})", s.constant, "c",
           doc="a constant; search spaces draw it from 1, 0.5, 0.2, 0.1, 0.01"),
        Op("MultiplyTenth", _unary(), "0.1 * {x}", lambda x: sympy.Float(0.1) * x, "×0.1",
           doc="0.1 * x", vm="TENTH"),
        Op("Normal", (((), R),), "torch.randn({like}.shape, generator={generator}, "
           "dtype={like}.dtype, device={like}.device)", s.normal, "N(0,1)", random=True,
           doc="a fresh N(0, 1) sample per transition, at every call"),
        Op("Uniform", (((), R),), "torch.rand({like}.shape, generator={generator}, "
           "dtype={like}.dtype, device={like}.device)", s.uniform, "U(0,1)", random=True,
           doc="a fresh U(0, 1) sample per transition, at every call"),
        Op("MeanBatch", _unary(), "{x}.mean({b}, keepdim=True).expand_as({x})", s.batch("mean"),
           "mean_B", doc="mean over the batch, broadcast back to every transition", vm="MEANB"),
        Op("StdBatch", _unary(), "{x}.std({b}, unbiased=False, keepdim=True).expand_as({x})",
           s.batch("std"), "std_B", doc="standard deviation over the batch, broadcast back",
           vm="STDB"),
        Op("MaxFloat", (((R, LIST), LIST), ((R, V), V)), "torch.maximum({x}, {y})", s.smax,
           "max", broadcast=True, doc="max of a float and each entry of a list or vector",
           vm="MAX"),
        Op("MultiplyFloat", (((R, LIST), LIST), ((R, V), V)), "{x} * {y}",
           lambda x, y: x * y, "×", broadcast=True, doc="a float times a list or vector",
           vm="MUL"),
        Op("L2Norm", _unary(), "{x} * {x}", lambda x: x**2, "x²", doc="x^2", vm="SQUARE"),
    ]


OPS: dict[str, Op] = {op.name: op for op in _rows()}
"""The op table, keyed by op name."""


def get_op(name: str) -> Op:
    """The op called ``name``; raises KeyError listing the known ops."""
    try:
        return OPS[name]
    except KeyError:
        raise KeyError(f"unknown op {name!r}; known ops: {', '.join(sorted(OPS))}") from None


def signature_overlaps() -> list[tuple[str, tuple[Type, ...]]]:
    """Input-type tuples that match two signatures of one op (should be empty)."""
    bad = []
    types = [t for t in Type]
    for op in OPS.values():
        for ins in itertools.product(types, repeat=op.arity):
            hits = [sig for sig in op.signatures
                    if all(t.fits(s) for t, s in zip(ins, sig[0]))]
            if len(hits) > 1:
                bad.append((op.name, ins))
    return bad


def describe_ops() -> list[dict]:
    """The op table as rows of plain data (name, signatures, label, meaning) for docs and notebooks."""
    rows = []
    for op in OPS.values():
        sigs = [f"({', '.join(t.label for t in ins)}) -> {out.label}" for ins, out in op.signatures]
        rows.append({"op": op.name, "signatures": "; ".join(sigs), "label": op.label,
                     "meaning": op.doc, "commutative": op.commutative})
    return rows
