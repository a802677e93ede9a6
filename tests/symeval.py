"""Evaluate evorl_nb's sympy expressions numerically over a batch, independently of torch.

Used to check that ``Program.to_sympy()`` is the exact loss: every node of the
sympy tree is computed here with numpy, per transition, from the same batch
and networks the torch evaluator sees.
"""

from __future__ import annotations

import numpy as np
import sympy

from evorl_nb import symbols as S
from evorl_nb.ops import EPS_PROB


def logsumexp(v, axis):
    m = v.max(axis, keepdims=True)
    return (m + np.log(np.exp(v - m).sum(axis, keepdims=True))).squeeze(axis)


class SymEval:
    """Numeric meaning of a sympy loss on a batch: arrays of shape [B] (or [B, D] for states)."""

    def __init__(self, batch, q, q_targ, gamma):
        to = lambda t: t.detach().double().numpy()  # noqa: E731
        self.states = {S.s_t: to(batch.obs), S.s_tp1: to(batch.next_obs)}
        self.qtab = {S.Q: {k: to(q(batch.obs if k == S.s_t else batch.next_obs))
                          for k in (S.s_t, S.s_tp1)},
                     S.Q_targ: {k: to(q_targ(batch.obs if k == S.s_t else batch.next_obs))
                                for k in (S.s_t, S.s_tp1)}}
        self.env = {S.r_t: to(batch.reward), S.gamma: gamma * (1 - to(batch.done)),
                    S.a_t: to(batch.action).astype(int)}
        self.n_actions = self.qtab[S.Q][S.s_t].shape[1]
        self.env[S.n_actions] = float(self.n_actions)

    def __call__(self, expr, env=None):
        env = dict(self.env, **(env or {}))
        with np.errstate(all="ignore"):
            return self._ev(expr, env)

    def _per_action(self, lam, env):
        var = lam.variables[0]
        cols = [np.broadcast_to(self._ev(lam.expr, {**env, var: np.full_like(env[S.a_t], k)}),
                                env[S.r_t].shape) for k in range(self.n_actions)]
        return np.stack(cols, axis=-1)

    def _ev(self, e, env):  # noqa: C901 - one branch per sympy node kind
        if e in env:
            return env[e]
        if e in self.states:
            return self.states[e]
        if e.is_Number:
            return float(e)
        if isinstance(e, sympy.Add):
            return sum(self._ev(x, env) for x in e.args)
        if isinstance(e, sympy.Mul):
            out = 1.0
            for x in e.args:
                out = out * self._ev(x, env)
            return out
        if isinstance(e, sympy.Pow):
            return np.power(self._ev(e.base, env), self._ev(e.exp, env))
        if isinstance(e, sympy.Max):
            return np.maximum.reduce([np.broadcast_to(self._ev(x, env), env[S.r_t].shape)
                                      for x in e.args])
        if isinstance(e, sympy.Min):
            return np.minimum.reduce([np.broadcast_to(self._ev(x, env), env[S.r_t].shape)
                                      for x in e.args])
        if isinstance(e, sympy.Abs):
            return np.abs(self._ev(e.args[0], env))
        if isinstance(e, sympy.log):
            return np.log(self._ev(e.args[0], env))
        if isinstance(e, sympy.exp):
            return np.exp(self._ev(e.args[0], env))
        if e.func in (S.Q, S.Q_targ):
            state, act = e.args
            table = self.qtab[e.func][state]
            act = np.broadcast_to(self._ev(act, env), env[S.r_t].shape).astype(int)
            return np.take_along_axis(table, act[:, None], axis=1)[:, 0]
        if isinstance(e, S._Reduction):
            vals = self._per_action(e.args[0], env)
            kind = type(e).__name__
            return {"ListMax": lambda v: v.max(-1), "ListMin": lambda v: v.min(-1),
                    "ListMean": lambda v: v.mean(-1), "ListVar": lambda v: v.var(-1),
                    "ListStd": lambda v: v.std(-1), "ListSum": lambda v: v.sum(-1),
                    "ListLogSumExp": lambda v: logsumexp(v, axis=-1)}[kind](vals)
        if isinstance(e, S.ArgMax):
            return self._per_action(e.args[0], env).argmax(-1)
        if isinstance(e, S.SoftmaxAt):
            logits = self._per_action(e.args[0], env)
            p = np.exp(logits - logits.max(-1, keepdims=True))
            p = p / p.sum(-1, keepdims=True)
            at = np.broadcast_to(self._ev(e.args[1], env), env[S.r_t].shape).astype(int)
            return np.take_along_axis(p, at[:, None], axis=1)[:, 0]
        if isinstance(e, S.Entropy):
            p = self._per_action(e.args[0], env)
            return -(p * np.log(p + EPS_PROB)).sum(-1)
        if isinstance(e, S.KL):
            p, q = (self._per_action(lam, env) for lam in e.args)
            return (p * (np.log(p + EPS_PROB) - np.log(q + EPS_PROB))).sum(-1)
        if isinstance(e, S.Dot):
            x, y = (self._ev(v, env) for v in e.args)
            return (x * y).reshape(x.shape[0], -1).sum(-1)
        if isinstance(e, S.SqDist):
            x, y = (self._ev(v, env) for v in e.args)
            return 0.5 * ((x - y) ** 2).reshape(x.shape[0], -1).sum(-1)
        if isinstance(e, S._BatchAtFunction):
            vals = self._per_action(e.args[0], env)
            stat = vals.mean(0) if isinstance(e, S.BatchMeanAt) else vals.std(0)
            at = np.broadcast_to(self._ev(e.args[1], env), env[S.r_t].shape).astype(int)
            return stat[at]
        if isinstance(e, S.BatchMean):
            x = np.broadcast_to(self._ev(e.args[0], env), env[S.r_t].shape)
            return np.full_like(x, x.mean())
        if isinstance(e, S.BatchStd):
            x = np.broadcast_to(self._ev(e.args[0], env), env[S.r_t].shape)
            return np.full_like(x, x.std())
        raise NotImplementedError(f"no numeric meaning for {type(e).__name__}: {e}")
