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
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sympy
import torch

from evorl_nb import symbols as sym

__all__ = ["Type", "Op", "OPS", "get_op", "SEARCH_CONSTANTS", "EPS_DIV", "EPS_LOG", "EXP_CLIP"]

EPS_DIV = 1e-10
"""Div computes ``x / (y + EPS_DIV)`` (the authors' guard)."""
EPS_LOG = 1e-12
"""Log computes ``log(|x| + EPS_LOG)`` (the authors' guard)."""
EPS_PROB = 1e-8
"""Entropy and KLDiv use ``log(p + EPS_PROB)`` (the authors' guard)."""
EXP_CLIP = 1e10
"""Exp is clipped to ``[-EXP_CLIP, EXP_CLIP]``."""
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

    ``torch`` takes the input tensors (or, for a source op with no inputs, a
    :class:`SourceContext`) and returns a tensor; ``sympy`` does the same on
    sympy expressions; a ``typed`` op's functions also get ``types=``, its
    input types. ``signatures`` lists every accepted tuple of input types
    with the output type; no input tuple matches two signatures.
    """

    name: str
    signatures: tuple[Signature, ...]
    torch: Callable[..., Any] = field(repr=False)
    sympy: Callable[..., Any] = field(repr=False)
    label: str
    commutative: bool = False
    random: bool = False
    typed: bool = False
    doc: str = ""

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


# --- torch helpers -----------------------------------------------------------


def _bc(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad the lower-rank tensor on the right, as the authors' code does."""
    while x.dim() < y.dim():
        x = x.unsqueeze(-1)
    while y.dim() < x.dim():
        y = y.unsqueeze(-1)
    return x, y


def _elementwise(fn):
    def run(x, y):
        x, y = _bc(x, y)
        return fn(x, y)

    return run


def _sum_last(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).sum(-1) if x.dim() > 1 else x


def _dot(x, y, types):
    return _sum_last(x * y) if types[0] in (V, S) else x * y


def _batch_mean(x):
    return x.mean(0, keepdim=True).expand_as(x)


def _batch_std(x):
    return x.std(0, unbiased=False, keepdim=True).expand_as(x)


def _select(x, z):
    return x.gather(-1, z.long().unsqueeze(-1)).squeeze(-1)


def _kl(p, q):
    return (p * (torch.log(p + EPS_PROB) - torch.log(q + EPS_PROB))).sum(-1)


def _entropy(p):
    return -(p * torch.log(p + EPS_PROB)).sum(-1)


def _const(ctx: SourceContext):
    return torch.full((ctx.batch_size,), float(ctx.value), dtype=ctx.like.dtype, device=ctx.like.device)


def _normal(ctx: SourceContext):
    return torch.randn(ctx.batch_size, generator=ctx.generator, dtype=ctx.like.dtype,
                       device=ctx.like.device)


def _uniform(ctx: SourceContext):
    return torch.rand(ctx.batch_size, generator=ctx.generator, dtype=ctx.like.dtype,
                      device=ctx.like.device)


# --- the table ---------------------------------------------------------------

_VEC = (V, S)  # types reduced over their trailing axis by DotProduct / L2Distance


def _rows() -> list[Op]:
    s = sym
    return [
        Op("Add", _broadcast(), _elementwise(torch.add), lambda x, y: x + y, "+",
           commutative=True, doc="x + y"),
        Op("Subtract", _broadcast(), _elementwise(torch.sub), lambda x, y: x - y, "-",
           doc="x - y"),
        Op("Max", _same(), _elementwise(torch.maximum), s.smax, "max", commutative=True,
           doc="elementwise max(x, y)"),
        Op("Min", _same(), _elementwise(torch.minimum), s.smin, "min", commutative=True,
           doc="elementwise min(x, y)"),
        Op("DotProduct", (((R, R), R), ((LIST, LIST), LIST)) + tuple(((t, t), R) for t in _VEC),
           _dot, s.dot, "·", commutative=True, typed=True,
           doc="x * y for R and List[R]; summed over the last axis for V and S"),
        Op("Div", _same(), lambda x, y: x / (y + EPS_DIV), lambda x, y: s.div(x, y), "/",
           doc="x / (y + 1e-10)"),
        Op("L2Distance", (((R, R), R), ((LIST, LIST), R)) + tuple(((t, t), R) for t in _VEC),
           lambda x, y, types: 0.5 * _sum_last((x - y) ** 2), s.l2distance, "½(x−y)²",
           commutative=True, typed=True, doc="0.5 * (x - y)^2, summed over the last axis"),
        Op("MaxList", (((LIST,), R),), lambda x: x.max(-1).values, s.reduction("max"), "max_a",
           doc="max over actions"),
        Op("MinList", (((LIST,), R),), lambda x: x.min(-1).values, s.reduction("min"), "min_a",
           doc="min over actions"),
        Op("ArgMaxList", (((LIST,), Z),), lambda x: x.argmax(-1), s.argmax, "argmax_a",
           doc="the action with the largest value (no gradient)"),
        Op("SelectList", (((LIST, Z), R),), _select, s.select, "[a]",
           doc="the entry of a per-action list at an action index"),
        Op("MeanList", (((LIST,), R),), lambda x: x.mean(-1), s.reduction("mean"), "mean_a",
           doc="mean over actions"),
        Op("VarianceList", (((LIST,), R),), lambda x: x.var(-1, unbiased=False),
           s.reduction("var"), "var_a", doc="variance over actions"),
        Op("StdList", (((LIST,), R),), lambda x: x.std(-1, unbiased=False),
           s.reduction("std"), "std_a", doc="standard deviation over actions"),
        Op("SumList", (((LIST,), R),), lambda x: x.sum(-1), s.reduction("sum"), "Σ_a",
           doc="sum over actions"),
        Op("LogSumExpList", (((LIST,), R),), lambda x: torch.logsumexp(x, -1),
           s.reduction("logsumexp"), "logΣexp_a", doc="log sum_a exp(x_a)"),
        Op("Log", _unary(), lambda x: torch.log(x.abs() + EPS_LOG), s.log, "log",
           doc="log(|x| + 1e-12)"),
        Op("Exp", _unary(), lambda x: torch.exp(x).clamp(-EXP_CLIP, EXP_CLIP), s.exp, "exp",
           doc="exp(x) clipped to +-1e10"),
        Op("Abs", _unary(), torch.abs, sympy.Abs, "|x|", doc="|x|"),
        Op("QValues", (((PARAM, S), LIST),), lambda net, x: net(x), s.qvalues, "Q(s,·)",
           doc="the Q network's values of every action in a state"),
        Op("Softmax", (((LIST,), P),), lambda x: torch.softmax(x, -1), s.softmax, "softmax",
           doc="softmax over actions"),
        Op("KLDiv", (((P, P), R),), _kl, s.kl, "KL", doc="sum_a p log(p/q) (1e-8 guards)"),
        Op("Entropy", (((P,), R),), _entropy, s.entropy, "H",
           doc="-sum_a p log(p + 1e-8) (the authors' code returns the negative)"),
        Op("Constant", (((), R),), _const, s.constant, "c",
           doc="a constant; search spaces draw it from 1, 0.5, 0.2, 0.1, 0.01"),
        Op("MultiplyTenth", _unary(), lambda x: 0.1 * x, lambda x: sympy.Float(0.1) * x, "×0.1",
           doc="0.1 * x"),
        Op("Normal", (((), R),), _normal, s.normal, "N(0,1)", random=True,
           doc="a fresh N(0, 1) sample per transition, at every call"),
        Op("Uniform", (((), R),), _uniform, s.uniform, "U(0,1)", random=True,
           doc="a fresh U(0, 1) sample per transition, at every call"),
        Op("MeanBatch", _unary(), _batch_mean, s.batch("mean"), "mean_B",
           doc="mean over the batch, broadcast back to every transition"),
        Op("StdBatch", _unary(), _batch_std, s.batch("std"), "std_B",
           doc="standard deviation over the batch, broadcast back"),
        Op("MaxFloat", (((R, LIST), LIST), ((R, V), V)), _elementwise(torch.maximum), s.smax,
           "max", doc="max of a float and each entry of a list or vector"),
        Op("MultiplyFloat", (((R, LIST), LIST), ((R, V), V)), _elementwise(torch.mul),
           lambda x, y: x * y, "×", doc="a float times a list or vector"),
        Op("L2Norm", _unary(), lambda x: x * x, lambda x: x**2, "x²", doc="x^2"),
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
