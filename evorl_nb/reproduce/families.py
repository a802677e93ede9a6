"""The family of a found loss, for the search experiments' ``table.csv``.

The paper's claims are about families of programs (the TD loss, its scalings, the learned
δ^2 + k*Q), not exact graphs, so :func:`family` names the family a simplified program
belongs to.
"""

from __future__ import annotations

__all__ = ["family"]


def family(program) -> str:
    """Which family a loss belongs to: "δ^2" (the TD loss with DQN's target), "c*δ^2",
    "δ^2 + k*Q" (the paper's learned family, k printed), each with "(other Y)" when its target
    is not DQN's, or "other".

    >>> from evorl_nb import library
    >>> family(library.get("dqn")), family(library.get("dqn_reg"))
    ('δ^2', 'δ^2 + 0.1*Q')
    """
    import sympy

    from evorl_nb.symbolic import DQN_TARGET, Q_SA, delta, notation, simplify

    def simp(x):  # sympy.simplify raises on some evolved terms (e.g. max of a batch mean)
        try:
            return sympy.simplify(x)
        except Exception:
            return None

    try:
        out, target = notation(simplify(program))
    except Exception:
        return "other"
    if target is None:
        return "other"
    suffix = "" if simp(target - DQN_TARGET) == 0 else " (other Y)"
    rest = sympy.expand(out - delta**2)
    if rest == 0:
        return "δ^2" + suffix
    k = simp(rest / Q_SA)
    if k is not None and k.is_number:
        return f"δ^2 + {float(k):g}*Q" + suffix
    c = simp(out / delta**2)
    if c is not None and c.is_number:
        return f"{float(c):g}*δ^2" + suffix
    return "other"
