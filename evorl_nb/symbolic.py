"""Programs as sympy expressions: the exact loss, its gradient-aware simplification,
and text / LaTeX in the paper's notation.

Simplification keeps the gradient: an additive term of the loss with no
gradient path to the online network (no ``Q(...)`` outside an argmax, e.g.
``+ r_t - gamma*max_a Q_targ(s_{t+1}, a)``) only shifts the loss by a constant
per transition, so it is dropped. The slides' table row
``δ^2 + 0.1*Q + r - (γ*Q_targ - 0.1*Q)`` thus reads ``δ^2 + 0.2*Q(s_t, a_t)``.

>>> from evorl_nb import library
>>> library.get("dqn_reg").equation()
'δ^2 + 0.1*Q(s_t, a_t)'
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import sympy

from evorl_nb import symbols as S
from evorl_nb.inputs import INPUT_NAMES, N_INPUTS
from evorl_nb.ops import OPS, SourceContext

if TYPE_CHECKING:
    from evorl_nb.program import Program

__all__ = ["to_sympy", "simplify", "has_gradient", "equation", "notation", "DQN_TARGET", "opaque",
           "structural",
           "delta", "Y", "td_target"]

delta = sympy.Symbol("delta", real=True)
"""δ = Q(s_t, a_t) - Y, the TD error."""
Y = sympy.Symbol("Y", real=True)
"""Y = r_t + γ max_a Q_targ(s_{t+1}, a), the DQN target."""
DQN_TARGET = S.r_t + S.gamma * S._REDUCTIONS["max"](sympy.Lambda(S.a, S.Q_targ(S.s_tp1, S.a)))
"""The DQN target ``r_t + gamma * max_a Q_targ(s_{t+1}, a)`` as a sympy expression."""
Q_SA = S.Q(S.s_t, S.a_t)


def to_sympy(program: Program, *, guards: bool = True) -> sympy.Expr:
    """The program's per-transition loss as a sympy expression.

    With ``guards=True`` it is exact, epsilon guards included; with False,
    Div, Log and Exp read as plain x/y, log|x| and exp(x).
    """
    return node_expressions(program, guards=guards)[program.output]


def node_expressions(program: Program, *, guards: bool = True) -> list:
    """The sympy expression of every graph index (inputs first; None for dead nodes)."""
    values = [S.Q, S.a_t, S.s_t, S.Q_targ, S.s_tp1, S.r_t, S.gamma]
    live = set(program.live())
    with S.guards(guards):
        for i, n in enumerate(program.nodes, start=N_INPUTS):
            if i not in live:
                values.append(None)
                continue
            op = OPS[n.op]
            if op.arity == 0:
                values.append(op.sympy(SourceContext(0, None, None, n.value, i)))
                continue
            args = [values[j] for j in n.inputs]
            try:
                if op.typed:
                    value = op.sympy(*args, types=tuple(program.types[j] for j in n.inputs))
                else:
                    value = op.sympy(*args)
            except Exception:  # sympy refuses a valid combination (see opaque)
                value = opaque(n.op, args)
            values.append(value)
    return values


def opaque(op_name: str, args) -> sympy.Expr:
    """An op applied to its arguments, unevaluated: ``op_name(arg, ...)``.

    Used where sympy cannot build an op's meaning for a valid program (a Max of terms it
    cannot order, a bound variable that is itself an expression): the rest of the loss stays
    exact, that node reads structurally, and a Q inside it still counts as a gradient path."""
    return sympy.Function(op_name)(*args)


def has_gradient(expr) -> bool:
    """True if ``expr`` contains the online network outside an argmax (so carries a gradient)."""
    if isinstance(expr, S.ArgMax):
        return False
    if isinstance(expr, sympy.Function) and expr.func == S.Q:
        return True
    return any(has_gradient(arg) for arg in expr.args)


def _additive_terms(expr) -> list:
    """Split a sum into terms, distributing numeric factors over inner sums."""
    if isinstance(expr, sympy.Add):
        return [t for arg in expr.args for t in _additive_terms(arg)]
    if isinstance(expr, sympy.Mul):
        coeff, rest = expr.as_coeff_Mul()
        if coeff != 1 and isinstance(rest, sympy.Add):
            return [coeff * t for t in _additive_terms(rest)]
    return [expr]


def simplify(program_or_expr, *, guards: bool = False) -> sympy.Expr:
    """The loss with gradient-free additive terms dropped (same gradient, simpler form)."""
    expr = program_or_expr
    if hasattr(program_or_expr, "nodes"):
        expr = to_sympy(program_or_expr, guards=guards)
    return sympy.Add(*[t for t in _additive_terms(expr) if has_gradient(t)])


_simplify = simplify


def td_target(expr):
    """The target T of the first squared TD error (Q(s_t, a_t) - T)^2 in ``expr``, or None.

    T must carry no gradient, as a target does (DQN's, DDQN's, M-DQN's...).
    """
    for sub in sympy.preorder_traversal(expr):
        if isinstance(sub, sympy.Pow) and sub.exp == 2 and isinstance(sub.base, sympy.Add):
            coeff = sub.base.coeff(Q_SA)
            if coeff in (1, -1):
                target = Q_SA - sub.base if coeff == 1 else sub.base + Q_SA
                if not has_gradient(target):
                    return sympy.expand(target, deep=False)
    return None


def notation(expr, target=None) -> tuple[sympy.Expr, sympy.Expr | None]:
    """Rewrite with the paper's shorthands Y (the TD target) and δ = Q(s_t, a_t) - Y.

    Returns the rewritten expression and the target that Y stands for (None
    if the loss has no TD error). ``target`` defaults to :func:`td_target`.
    """
    target = td_target(expr) if target is None else target
    if target is None:
        return expr, None
    out = expr.subs(target, Y)
    out = out.subs({Q_SA - Y: delta, Y - Q_SA: -delta})
    return out, target


def equation(program: Program, *, latex: bool = False, simplify: bool = True) -> str:
    """The program's loss in the paper's notation, as text or LaTeX.

    Y stands for DQN's target unless the program's TD target differs, in which
    case the equation says what Y is, e.g. for DDQN
    ``δ^2, Y = r_t + γ*Q_targ(s_{t+1}, argmax_a(Q(s_{t+1}, a)))``.
    """
    show = S.to_latex if latex else S.to_text
    try:
        expr = _simplify(program) if simplify else to_sympy(program, guards=False)
    except Exception:  # sympy cannot build it: the program's structure instead
        return structural(program)
    try:
        expr, target = notation(expr)
        text = show(expr)
        if (target is not None and sympy.expand(target - DQN_TARGET) != 0
                and (Y in expr.free_symbols or delta in expr.free_symbols)):
            text += f", Y = {show(target)}"
        return text
    except Exception:  # a substitution sympy cannot re-evaluate: the form before notation
        try:
            return show(expr)
        except Exception:
            return structural(program)


def structural(program: Program) -> str:
    """The program's live nodes as a chain of op applications, e.g. ``v7 = QValues(q, s_t);
    v8 = SelectList(v7, a_t); loss = v8``: what :func:`equation` shows when sympy cannot
    build a program's expression (it never fails, and it is linear in the program's size)."""
    def name(i: int) -> str:
        return INPUT_NAMES[i] if i < N_INPUTS else f"v{i}"

    parts = []
    for i in sorted(program.live()):
        if i < N_INPUTS:
            continue
        n = program.nodes[i - N_INPUTS]
        args = [name(j) for j in n.inputs] if OPS[n.op].arity else [repr(n.value)]
        parts.append(f"{name(i)} = {n.op}({', '.join(args)})")
    return "; ".join(parts + [f"loss = {name(program.output)}"])
