"""The numeric guards of the op table, in one place for every engine.

The torch meaning of an op (:mod:`evorl_nb.ops`), its sympy meaning (:mod:`evorl_nb.symbols`)
and the compiled loss interpreter (``batched/csrc/interp.c``, built with these values as
``-D`` flags by :mod:`evorl_nb.batched.lossvm`) all read them from here, so a changed guard
changes every engine.
"""

from __future__ import annotations

__all__ = ["EPS_DIV", "EPS_LOG", "EPS_PROB", "EXP_CLIP", "c_defines"]

EPS_DIV = 1e-10
"""Div computes ``x / (y + EPS_DIV)`` (the authors' guard)."""
EPS_LOG = 1e-12
"""Log computes ``log(|x| + EPS_LOG)`` (the authors' guard)."""
EPS_PROB = 1e-8
"""Entropy and KLDiv use ``log(p + EPS_PROB)`` (the authors' guard)."""
EXP_CLIP = 1e10
"""Exp is clipped to ``[-EXP_CLIP, EXP_CLIP]``."""


def c_defines() -> list[str]:
    """The guards as C compiler flags (``-DEPS_DIV=1e-10f``, ...) for the interpreter."""
    return [f"-D{name}={value!r}f" for name, value in
            (("EPS_DIV", EPS_DIV), ("EPS_LOG", EPS_LOG), ("EPS_PROB", EPS_PROB),
             ("EXP_CLIP", EXP_CLIP))]
