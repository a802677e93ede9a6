"""Sympy building blocks for the op table's symbolic column.

A per-transition value (type R) is a sympy expression in ``r_t``, ``gamma``
(the discount input, gamma * (1 - done)), ``Q(s, a)`` and ``Q_targ(s, a)``.
A per-action value (List[R] or P) is an expression in the free action symbol
:data:`a`; a reduction over actions binds it with a ``Lambda`` so that a later
``subs(a, a_t)`` (SelectList) never reaches inside a reduction.

The ``guards`` switch (see :func:`guards`) chooses between the exact guarded
meaning of Div/Log/Exp (``x/(y + 1e-10)``, ``log(|x| + 1e-12)``, exp clipped)
and the plain form used for reading equations.
"""

from __future__ import annotations

import contextlib
import contextvars

import sympy
from sympy.printing.latex import LatexPrinter
from sympy.printing.str import StrPrinter

from evorl_nb.guards import EPS_DIV, EPS_LOG, EXP_CLIP

a = sympy.Symbol("a", integer=True)
"""The free action slot of a per-action list."""
a_t = sympy.Symbol("a_t", integer=True)
s_t = sympy.Symbol("s_t")
s_tp1 = sympy.Symbol("s_{t+1}")
r_t = sympy.Symbol("r_t", real=True)
gamma = sympy.Symbol("gamma", real=True)
n_actions = sympy.Symbol("|A|", positive=True, integer=True)
Q = sympy.Function("Q", real=True)
Q_targ = sympy.Function("Q_targ", real=True)

_GUARDS: contextvars.ContextVar[bool] = contextvars.ContextVar("evorl_nb_guards", default=True)


@contextlib.contextmanager
def guards(on: bool):
    """Within the block, build exact guarded forms (True) or plain forms (False)."""
    token = _GUARDS.set(on)
    try:
        yield
    finally:
        _GUARDS.reset(token)


def _pow(tex: str, exp) -> str:
    return rf"\left({tex}\right)^{{{exp}}}" if exp else tex


def _p(printer, expr) -> str:
    return printer._print(expr)


class _ActionFunction(sympy.Function):
    """Base for functions whose first argument is ``Lambda(a, body)``."""

    text = "f_a"
    tex = r"f_{a}"

    def _eval_is_extended_real(self):
        return True

    @property
    def body(self):
        """The reduced expression, in the free action symbol :data:`a`."""
        lam = self.args[0]
        return lam.expr.xreplace({lam.variables[0]: a})

    def _sympystr(self, printer):
        return f"{self.text}({_p(printer, self.body)})"

    def _latex(self, printer, exp=None):
        return _pow(rf"{self.tex}\left({_p(printer, self.body)}\right)", exp)


def _bind(expr):
    return sympy.Lambda(a, expr)


def _no_action(lam) -> bool:
    return lam.variables[0] not in lam.expr.free_symbols


class _Reduction(_ActionFunction):
    const = None  # what the reduction of a constant-in-a body is

    @classmethod
    def eval(cls, lam):
        if isinstance(lam, sympy.Lambda) and _no_action(lam) and cls.const is not None:
            return cls.const(lam.expr)
        return None


def _reduction_class(name: str, text: str, tex: str, const):
    return type(name, (_Reduction,), {"text": text, "tex": tex, "const": staticmethod(const)})


_REDUCTIONS = {
    "max": _reduction_class("ListMax", "max_a", r"\max_{a}", lambda x: x),
    "min": _reduction_class("ListMin", "min_a", r"\min_{a}", lambda x: x),
    "mean": _reduction_class("ListMean", "mean_a", r"\operatorname{mean}_{a}", lambda x: x),
    "var": _reduction_class("ListVar", "var_a", r"\operatorname{Var}_{a}",
                            lambda x: sympy.Integer(0)),
    "std": _reduction_class("ListStd", "std_a", r"\operatorname{std}_{a}",
                            lambda x: sympy.Integer(0)),
    "sum": _reduction_class("ListSum", "sum_a", r"\sum_{a}", lambda x: n_actions * x),
    "logsumexp": _reduction_class("ListLogSumExp", "logsumexp_a", r"\operatorname{logsumexp}_{a}",
                                  lambda x: x + sympy.log(n_actions)),
}


def reduction(kind: str):
    """The sympy meaning of a reduction over actions (max, min, mean, var, std, sum, logsumexp)."""
    cls = _REDUCTIONS[kind]
    return lambda x: cls(_bind(x))


class ArgMax(_ActionFunction):
    """argmax over actions of a per-action list: an action, carrying no gradient."""

    def _eval_is_integer(self):
        return True

    text = "argmax_a"
    tex = r"\operatorname{argmax}_{a}"


class _ReadAtAction(sympy.Function):
    """A function of a whole per-action list ``Lambda(a, body)``, read at the action ``args[1]``;
    ``text`` and ``tex`` are templates over ``{body}`` and ``{at}``."""

    text = "f({body})[{at}]"
    tex = "f({body})[{at}]"

    def _eval_is_extended_real(self):
        return True

    def _parts(self, printer) -> dict:
        lam, at = self.args
        return {"body": _p(printer, lam.expr.xreplace({lam.variables[0]: a})),
                "at": _p(printer, at)}

    def _sympystr(self, printer):
        return self.text.format(**self._parts(printer))

    def _latex(self, printer, exp=None):
        return _pow(self.tex.format(**self._parts(printer)), exp)


class SoftmaxAt(_ReadAtAction):
    """softmax over actions of ``Lambda(a, body)``, read at the action ``args[1]``."""

    text = "softmax_a({body})[{at}]"
    tex = r"\pi_{{{body}}}({at})"


class KL(sympy.Function):
    """KL divergence between two distributions over actions (each ``Lambda(a, p)``)."""

    def _eval_is_extended_real(self):
        return True

    def _sympystr(self, printer):
        p, q = (lam.expr.xreplace({lam.variables[0]: a}) for lam in self.args)
        return f"KL({_p(printer, p)} || {_p(printer, q)})"

    def _latex(self, printer, exp=None):
        p, q = (lam.expr.xreplace({lam.variables[0]: a}) for lam in self.args)
        return _pow(rf"\mathrm{{KL}}\left({_p(printer, p)} \,\|\, {_p(printer, q)}\right)", exp)


class Entropy(_ActionFunction):
    """Entropy of a distribution over actions."""

    text = "H_a"
    tex = r"\mathcal{H}_{a}"


class Dot(sympy.Function):
    """Dot product of two vectors or states, summed over their last axis."""

    def _eval_is_extended_real(self):
        return True

    def _sympystr(self, printer):
        return f"<{_p(printer, self.args[0])}, {_p(printer, self.args[1])}>"

    def _latex(self, printer, exp=None):
        return _pow(rf"\langle {_p(printer, self.args[0])}, {_p(printer, self.args[1])} \rangle",
                    exp)


class SqDist(sympy.Function):
    """0.5 * squared Euclidean distance between two vectors or states."""

    def _eval_is_extended_real(self):
        return True

    def _sympystr(self, printer):
        return f"0.5*||{_p(printer, self.args[0])} - {_p(printer, self.args[1])}||^2"

    def _latex(self, printer, exp=None):
        x, y = (_p(printer, v) for v in self.args)
        return _pow(rf"\tfrac{{1}}{{2}}\lVert {x} - {y} \rVert^2", exp)


class _BatchFunction(sympy.Function):

    def _eval_is_extended_real(self):
        return True
    text = "E_B"
    tex = r"\mathbb{E}_{B}"

    def _sympystr(self, printer):
        return f"{self.text}[{_p(printer, self.args[0])}]"

    def _latex(self, printer, exp=None):
        return _pow(rf"{self.tex}\left[{_p(printer, self.args[0])}\right]", exp)


class BatchMean(_BatchFunction):
    """Mean over the batch, broadcast back to each transition."""


class BatchStd(_BatchFunction):
    """Standard deviation over the batch, broadcast back to each transition."""

    text = "std_B"
    tex = r"\operatorname{std}_{B}"


class _BatchAtFunction(_ReadAtAction):
    """A batch statistic of a per-action list, read at the action ``args[1]``:
    the statistic over the batch's states of the list's entry at that action."""

    text = "E_B[{body}]({at})"
    tex = r"\mathbb{{E}}_{{B}}\left[{body}\right]_{{a={at}}}"


class BatchMeanAt(_BatchAtFunction):
    """Mean over the batch of a per-action list, at one action."""


class BatchStdAt(_BatchAtFunction):
    """Standard deviation over the batch of a per-action list, at one action."""

    text = "std_B[{body}]({at})"
    tex = r"\operatorname{{std}}_{{B}}\left[{body}\right]_{{a={at}}}"


def batch(kind: str):
    """The sympy meaning of MeanBatch / StdBatch (bound per action for a list)."""
    plain, at = {"mean": (BatchMean, BatchMeanAt), "std": (BatchStd, BatchStdAt)}[kind]

    def make(x):
        return at(_bind(x), a) if a in x.free_symbols else plain(x)

    return make


# --- op meanings -------------------------------------------------------------


def smax(x, y):
    """Elementwise max (left unevaluated when sympy cannot compare the arguments, e.g. zoo)."""
    try:
        return sympy.Max(x, y)
    except ValueError:
        return sympy.Max(x, y, evaluate=False)


def smin(x, y):
    """Elementwise min (left unevaluated when sympy cannot compare the arguments)."""
    try:
        return sympy.Min(x, y)
    except ValueError:
        return sympy.Min(x, y, evaluate=False)


def div(x, y):
    """x / (y + 1e-10), or x / y without guards."""
    return x / (y + sympy.Float(EPS_DIV)) if _GUARDS.get() else x / y


def log(x):
    """log(|x| + 1e-12), or log|x| without guards."""
    return sympy.log(sympy.Abs(x) + sympy.Float(EPS_LOG)) if _GUARDS.get() else sympy.log(
        sympy.Abs(x))


def exp(x):
    """exp(x) clipped to 1e10, or exp(x) without guards."""
    return sympy.Min(sympy.exp(x), sympy.Float(EXP_CLIP)) if _GUARDS.get() else sympy.exp(x)


def dot(x, y, types):
    """Product for R/List[R]; a dot product for V and S."""
    return Dot(x, y) if types[0].name in ("V", "S") else x * y


def l2distance(x, y, types):
    """0.5 * (x - y)^2, summed over actions for List[R], a norm for V and S."""
    name = types[0].name
    if name in ("V", "S"):
        return SqDist(x, y)
    sq = sympy.Rational(1, 2) * (x - y) ** 2
    return _REDUCTIONS["sum"](_bind(sq)) if name in ("LIST", "P") else sq


def argmax(x):
    """argmax over actions."""
    return ArgMax(_bind(x))


def select(x, z):
    """A per-action list read at action ``z``."""
    return x.subs(a, z)


def qvalues(net, state):
    """Q(state, a) for the free action ``a``."""
    return net(state, a)


def softmax(x):
    """softmax over actions, as a per-action list."""
    return SoftmaxAt(_bind(x), a)


def kl(p, q):
    """KL(p || q) over actions."""
    return KL(_bind(p), _bind(q))


def entropy(p):
    """Entropy over actions."""
    return Entropy(_bind(p))


def constant(ctx):
    """A constant, as an exact integer when it is one."""
    v = float(ctx.value)
    return sympy.Integer(int(v)) if v.is_integer() else sympy.Float(v)


def normal(ctx):
    """A standard normal sample, one symbol per node."""
    return sympy.Symbol(f"N_{ctx.index}", real=True)


def uniform(ctx):
    """A U(0,1) sample, one symbol per node."""
    return sympy.Symbol(f"U_{ctx.index}", real=True)


# --- printing in the paper's notation ---------------------------------------

_NAMES = {"gamma": "γ", "delta": "δ", "s_{t+1}": "s_{t+1}"}


class PaperStrPrinter(StrPrinter):
    """Plain text in the paper's notation: ``^`` for powers, Greek letters."""

    def _print_Pow(self, expr, rational=False):
        return super()._print_Pow(expr, rational).replace("**", "^")

    def _print_Symbol(self, expr):
        return _NAMES.get(expr.name, expr.name)

    def _print_Float(self, expr):
        return f"{float(expr):g}"

    def _print_Max(self, expr):
        return "max(" + ", ".join(self._print(x) for x in expr.args) + ")"

    def _print_Min(self, expr):
        return "min(" + ", ".join(self._print(x) for x in expr.args) + ")"


class PaperLatexPrinter(LatexPrinter):
    """LaTeX in the paper's notation (Q_{targ}, \\delta, \\gamma)."""

    def _print_Float(self, expr):
        return f"{float(expr):g}"

    def _print_Function(self, expr, exp=None):
        if expr.func.__name__ == "Q_targ":
            args = ", ".join(self._print(x) for x in expr.args)
            out = rf"Q_{{targ}}\left({args}\right)"
            return rf"{out}^{{{exp}}}" if exp else out
        return super()._print_Function(expr, exp)


def to_text(expr) -> str:
    """Plain-text rendering of a symbolic loss in the paper's notation."""
    return PaperStrPrinter({"order": "none"}).doprint(expr)


def to_latex(expr) -> str:
    """LaTeX rendering of a symbolic loss in the paper's notation."""
    return PaperLatexPrinter({"order": "none"}).doprint(expr)
