"""Known RL algorithms as programs: DQN, DDQN, the learned DQNReg and DQNClipped,
a CQL-style loss and Munchausen DQN.

Every loss is the batch mean of a per-transition value, with
``delta = Q(s_t, a_t) - Y`` and ``d = gamma * (1 - done)`` (the discount input).

Where the authors' code differs: it builds DQN with L2Distance, i.e.
``0.5 * delta^2``, and DQNReg as ``0.5 * delta^2 + 0.1 * Q``. Here DQN is
``delta^2`` (Subtract then L2Norm), as written in the paper and the slides;
``dqn_half`` is the authors' 7-node L2Distance form for comparison.

>>> from evorl_nb import library
>>> library.names()[:3]
['dqn', 'ddqn', 'dqn_reg']
>>> library.get("dqn").equation()
'δ^2'
"""

from __future__ import annotations

from collections.abc import Callable

from evorl_nb.program import Program, ProgramBuilder, Ref

__all__ = ["get", "names", "describe", "MDQN_TAU", "MDQN_ALPHA", "CQL_BETA"]

MDQN_TAU = 0.03
"""M-DQN's softmax temperature (Vieillard et al. 2020)."""
MDQN_ALPHA = 0.9
"""M-DQN's Munchausen scaling (Vieillard et al. 2020)."""
CQL_BETA = 0.5
"""The weight of the CQL-style regularizer logsumexp_a Q(s_t, a) - Q(s_t, a_t)."""


def _q_sa(b: ProgramBuilder) -> Ref:
    return b.SelectList(b.QValues(b.q, b.s_t), b.a_t)


def _dqn_target(b: ProgramBuilder) -> Ref:
    return b.Add(b.r_t, b.DotProduct(b.discount, b.MaxList(b.QValues(b.q_targ, b.s_tp1))))


def _td_squared(b: ProgramBuilder, q_sa: Ref, y: Ref) -> Ref:
    return b.L2Norm(b.Subtract(q_sa, y))


def _dqn(b):
    return _td_squared(b, _q_sa(b), _dqn_target(b))


def _dqn_half(b):
    return b.L2Distance(_q_sa(b), _dqn_target(b))


def _ddqn(b):
    greedy = b.ArgMaxList(b.QValues(b.q, b.s_tp1))
    y = b.Add(b.r_t, b.DotProduct(b.discount, b.SelectList(b.QValues(b.q_targ, b.s_tp1), greedy)))
    return _td_squared(b, _q_sa(b), y)


def _dqn_reg(b):
    q_sa = _q_sa(b)
    return b.Add(_td_squared(b, q_sa, _dqn_target(b)), b.MultiplyTenth(q_sa))


def _dqn_clipped(b):
    q_sa, y = _q_sa(b), _dqn_target(b)
    max_targ = b.MaxList(b.QValues(b.q_targ, b.s_tp1))
    first = b.Max(q_sa, b.Add(_td_squared(b, q_sa, y), y))
    second = b.Max(b.Subtract(q_sa, y), b.DotProduct(b.discount, b.L2Norm(max_targ)))
    return b.Add(first, second)


def _cql(b):
    q_sa = _q_sa(b)
    gap = b.Subtract(b.LogSumExpList(b.QValues(b.q, b.s_t)), q_sa)
    return b.Add(_td_squared(b, q_sa, _dqn_target(b)), b.DotProduct(b.constant(CQL_BETA), gap))


def _mdqn(b):
    inv_tau = b.constant(1.0 / MDQN_TAU)

    def log_pi(state: Ref) -> tuple[Ref, Ref]:
        logits = b.MultiplyFloat(inv_tau, b.QValues(b.q_targ, state))
        return logits, b.Subtract(logits, b.LogSumExpList(logits))  # log-softmax, exactly

    _, log_pi_s = log_pi(b.s_t)
    logits_next, log_pi_next = log_pi(b.s_tp1)
    bonus = b.DotProduct(b.constant(MDQN_ALPHA * MDQN_TAU), b.SelectList(log_pi_s, b.a_t))
    soft_value = b.SumList(b.DotProduct(
        b.Softmax(logits_next),
        b.Subtract(b.QValues(b.q_targ, b.s_tp1), b.MultiplyFloat(b.constant(MDQN_TAU), log_pi_next))))
    target = b.Add(b.Add(b.r_t, bonus), b.DotProduct(b.discount, soft_value))
    return _td_squared(b, _q_sa(b), target)


_LIBRARY: dict[str, tuple[Callable[[ProgramBuilder], Ref], str]] = {
    "dqn": (_dqn, "DQN: delta^2, Y = r + d * max_a Q_targ(s', a)"),
    "ddqn": (_ddqn, "Double DQN: delta^2, Y = r + d * Q_targ(s', argmax_a Q(s', a))"),
    "dqn_reg": (_dqn_reg, "DQNReg (learned): delta^2 + 0.1 * Q(s_t, a_t)"),
    "dqn_clipped": (_dqn_clipped, "DQNClipped (learned): max[Q, delta^2 + Y] + "
                                  "max[Q - Y, d * (max_a Q_targ(s', a))^2]"),
    "cql": (_cql, "CQL-style: delta^2 + 0.5 * (logsumexp_a Q(s_t, a) - Q(s_t, a_t))"),
    "mdqn": (_mdqn, "Munchausen DQN (alpha=0.9, tau=0.03), squared error to the M-DQN target"),
    "dqn_half": (_dqn_half, "DQN as the authors' code builds it: 0.5 * delta^2 (L2Distance)"),
}


def names() -> list[str]:
    """Names of the library programs, in a fixed order."""
    return list(_LIBRARY)


def describe(name: str) -> str:
    """One line saying what the library program ``name`` computes."""
    return _LIBRARY[_known(name)][1]


def get(name: str) -> Program:
    """The library program ``name`` (see :func:`names`)."""
    build, _ = _LIBRARY[_known(name)]
    b = ProgramBuilder()
    return b.build(build(b), name=name)


def _known(name: str) -> str:
    if name not in _LIBRARY:
        raise KeyError(f"unknown library program {name!r}; known: {', '.join(_LIBRARY)}")
    return name
