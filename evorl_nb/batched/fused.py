"""The population trainer's CPU update without autograd: losses, gradients (and Adam).

Per agent: the Q-network calls, the interpreter's forward, the mask of losses that count,
the interpreter's backward and the networks' written-out backward. Where the networks'
kernel runs (:mod:`evorl_nb.batched.netkernel`, AVX-512) all of it is one C call that takes
the agents one at a time; elsewhere it runs chunk by chunk of agents on torch's batched
products.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from evorl_nb.batched import lossvm, netkernel
from evorl_nb.batched.stacked import StackedQ, mlp_backward, mlp_forward
from evorl_nb.inputs import ONLINE, S_T, S_TP1, TARGET

if TYPE_CHECKING:
    from evorl_nb.batched.plan import LossPlan

__all__ = ["fused_update", "take"]


def take(x: torch.Tensor, who: slice | torch.Tensor) -> torch.Tensor:
    """Rows ``who`` of ``x``: a view for a slice, a gather for an index tensor."""
    return x[who] if isinstance(who, slice) else x.index_select(0, who)


def fused_update(plan: LossPlan, obs: torch.Tensor, action: torch.Tensor, reward: torch.Tensor,
                 next_obs: torch.Tensor, done: torch.Tensor, online: StackedQ,
                 target: StackedQ, gamma: float, generator, learn: torch.Tensor,
                 max_loss: float, chunk: int = 128, adam: tuple | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                            torch.Tensor | None] | None:
    """The per-agent losses and their gradients without autograd; None where the
    interpreter cannot run (then use :meth:`LossPlan.losses`).

    Per agent: the Q-network calls, the interpreter's forward, the mask ``ok`` (loss
    finite, ``|loss| <= max_loss``, ``learn``), the interpreter's backward of the ``ok``
    losses' sum and the networks' written-out backward. Where
    :func:`evorl_nb.batched.netkernel.networks_available` (AVX-512), one C call
    (:func:`evorl_nb.batched.netkernel.fused_update`) does all of it one agent at a time, so an
    agent's weights and activations stay in cache from its forward to its backward.
    Elsewhere it runs chunk by chunk of ``chunk`` agents with torch's batched products
    (the A/B figures of both choices are in docs/performance.md). Sets ``p.grad`` of the
    online network's tensors; returns
    ``(losses [K], ok [K], online Q-values on s_t [K, B, A], grad_ok)``.

    ``adam=(moments, steps, lr, beta1, beta2, eps)`` (see
    :func:`evorl_nb.batched.netkernel.fused_update`): where the kernel runs, the gradient check and
    Adam's step also happen in its pass, agent by agent, and ``grad_ok`` ``[K]`` is that
    check; elsewhere, and without ``adam``, ``grad_ok`` is None and the caller steps.
    """
    K, B = action.shape
    A = online.weights[-1].shape[1]
    vm = plan.interpreter([obs, reward, next_obs, *online.parameters], A)
    if vm is None:
        return None
    discount = gamma * (1.0 - done.to(reward.dtype))
    draws, consts = plan.sources(reward, generator)
    fixed = plan.fixed_bases(obs, action, reward, next_obs, discount, draws, consts)
    n_rows = sum(len(plan.combo_agents[c]) for c in plan.combos)
    q = torch.empty(n_rows, B, A)
    gq = torch.zeros(n_rows, B, A)
    ws, gws = torch.empty(vm.ws_size), torch.zeros(vm.ws_size)
    bases = lossvm.bases(ws, fixed, q)
    gbases = [gws] + [None] * (lossvm.N_BASES - 1)
    gbases[lossvm.QVAL] = gq
    losses = torch.empty(K)
    dloss = torch.empty(K)  # 1.0 where the agent's loss counts (ok), else 0.0
    learn_u8 = learn.to(torch.uint8).contiguous()
    if netkernel.networks_available():  # the whole update in one C call, agent by agent
        grads = [torch.empty_like(p) for p in online.parameters]
        k_on = netkernel.NetKernel(online.weights, online.biases)
        grad_ok = netkernel.fused_update(
            vm, k_on, netkernel.NetKernel(target.weights, target.biases), plan.agent_rows(),
            bases, gbases, losses, learn_u8, max_loss, dloss, k_on.gradients(grads), adam)
        for p, g in zip(online.parameters, grads, strict=True):
            p.grad = g
        return losses, dloss.bool(), q[:K], grad_ok
    w_on = [w.detach() for w in online.weights]
    b_on = [b.detach() for b in online.biases]
    w_tg = [w.detach() for w in target.weights]
    b_tg = [b.detach() for b in target.biases]
    grads = [torch.empty_like(p) for p in online.parameters]
    n = len(w_on)
    states = {S_T: obs, S_TP1: next_obs}
    for k0, k1, calls in plan.chunks(chunk):
        mine = slice(k0, k1)
        on_w, on_b = [w[mine] for w in w_on], [b[mine] for b in b_on]
        saved = []  # (rows, hs, weights, local agents or None) of each online call
        joint = None
        for c, rows, who in calls:
            net_slot, state_slot = c
            if c == (ONLINE, S_TP1) and isinstance(who, slice):
                continue  # with s_t, below
            x = states[state_slot]
            if net_slot == TARGET:
                out, _ = mlp_forward(take(x, who), [take(w, who) for w in w_tg],
                                      [take(b, who) for b in b_tg])
                q[rows] = out.transpose(1, 2)
            elif state_slot == S_T:  # every agent, first block: rows k0..k1
                both = [r for cc, r, wh in calls
                        if cc == (ONLINE, S_TP1) and isinstance(wh, slice)]
                if both:  # every agent of the chunk on both states: one call
                    out, hs = mlp_forward(torch.cat([obs[mine], next_obs[mine]], 1),
                                           on_w, on_b)
                    q[rows] = out[:, :, :B].transpose(1, 2)
                    q[both[0]] = out[:, :, B:].transpose(1, 2)
                    joint = both[0]
                else:
                    out, hs = mlp_forward(obs[mine], on_w, on_b)
                    q[rows] = out.transpose(1, 2)
                saved.append((rows, hs, on_w, None))
            else:  # the online net on s_{t+1}, some of the chunk's agents
                sw = [take(w, who) for w in w_on]
                out, hs = mlp_forward(take(x, who), sw, [take(b, who) for b in b_on])
                q[rows] = out.transpose(1, 2)
                saved.append((rows, hs, sw, who - k0))
        vm.forward(bases, losses, k0, k1, ok=(learn_u8, dloss, max_loss))
        vm.backward(bases, gbases, dloss, k0, k1)
        for i, (rows, hs, wl, local) in enumerate(saved):
            g = gq[rows]
            if i == 0 and joint is not None:
                g = torch.cat([g, gq[joint]], 1)
            if local is None:  # every agent of the chunk: straight into its rows
                mlp_backward(g, hs, wl, False, [True] * n, [True] * n,
                              out=([d[mine] for d in grads[0::2]],
                                   [d[mine] for d in grads[1::2]]))
                continue
            _, dws, dbs = mlp_backward(g, hs, wl, False, [True] * n, [True] * n)
            for full, d in zip(grads, [t for pair in zip(dws, dbs, strict=True)
                                       for t in pair], strict=True):
                full[mine].index_add_(0, local, d)
    for p, g in zip(online.parameters, grads, strict=True):
        p.grad = g
    return losses, dloss.bool(), q[:K], None
