"""K Q networks as stacked tensors, with the stacked MLP's written-out backward.

Layer ``i`` of all K agents is one ``[K, out, in]`` weight, so a forward pass is one
``baddbmm`` per layer; agent k's values equal a :class:`evorl_nb.dqn.QNetwork`'s.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from evorl_nb.dqn import QNetwork

__all__ = ["StackedQ", "mlp_forward", "mlp_backward"]



def mlp_forward(x: torch.Tensor, ws, bs) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Stacked MLP forward, feature-major: the output ``[K, out, N]`` and every layer's
    input (``x`` transposed, then the ReLU outputs), as the backward needs them."""
    h = x.transpose(1, 2)
    hs = [h]
    for i, (w, b) in enumerate(zip(ws, bs, strict=True)):
        h = torch.baddbmm(b, w, h)
        if i < len(ws) - 1:
            h.relu_()
            hs.append(h)
    return h, hs


def mlp_backward(grad: torch.Tensor, hs, ws, need_x: bool, need_w, need_b, out=None):
    """The written-out backward of :func:`mlp_forward`: (dx, [dW], [db]) for the gradient
    ``grad`` ``[K, N, out]`` of its (transposed) output. ``out=(dws, dbs)``: contiguous
    tensors to write the gradients into (then returned)."""
    n = len(ws)
    g = grad.transpose(1, 2).contiguous()
    dws: list[torch.Tensor | None] = [None] * n if out is None else list(out[0])
    dbs: list[torch.Tensor | None] = [None] * n if out is None else list(out[1])
    dx = None
    for i in range(n - 1, -1, -1):
        h, w = hs[i], ws[i]
        if need_b[i]:
            dbs[i] = torch.sum(g, 2, keepdim=True, out=dbs[i])
        if need_w[i]:
            if w.shape[2] < w.shape[1]:  # fewer inputs than outputs: (h @ g^T)^T
                d = torch.bmm(h, g.transpose(1, 2)).transpose(1, 2)
                dws[i] = d if dws[i] is None else dws[i].copy_(d)
            else:
                dws[i] = torch.bmm(g, h.transpose(1, 2), out=dws[i])
        if i > 0:
            g = torch.ops.aten.threshold_backward(torch.bmm(w.transpose(1, 2), g), h, 0)
        elif need_x:
            dx = torch.bmm(w.transpose(1, 2), g).transpose(1, 2)
    return dx, dws, dbs


class _StackedMLP(torch.autograd.Function):
    """The stacked MLP's forward (feature-major, ``relu`` between layers) with a written-out
    backward: one autograd node for the whole network instead of two per layer, ReLU in
    place, and each weight-gradient product oriented the way the batched GEMM runs fastest.

    Autograd's own backward computes ``dW = g @ h^T`` whatever the shapes; with few inputs
    its transpose ``(h @ g^T)^T`` runs much faster, and the 2-action layer's products run
    faster on a contiguous copy of its transposed incoming gradient (same products, so the
    same values up to the GEMM's summation order; tested against autograd; figures in
    docs/performance.md).

    ``apply(x, x_sub, agents, *weights, *biases)``: besides every agent's values on ``x``
    (``[K, N, in]``), the values of the agents ``agents`` on ``x_sub`` (``[n, N, in]``;
    ``None`` for none). The subset's weight gradients are added into the rows of the full
    ones (``index_add_``), where a separate call on ``index_select``-ed weights made
    autograd zero-fill a full-size gradient per tensor, scatter into it and add it to the
    other (three passes over every weight tensor per update).
    """

    @staticmethod
    def forward(ctx, x, x_sub, agents, *params):  # noqa: D102
        n = len(params) // 2
        ws, bs = params[:n], params[n:]
        out, hs = mlp_forward(x, ws, bs)
        saved = [*hs, *ws]
        out_sub = None
        if x_sub is not None:
            sub = StackedQ(list(ws), list(bs)).subset(agents)  # graph-free in here
            out_sub, hs_sub = mlp_forward(x_sub, sub.weights, sub.biases)
            out_sub = out_sub.transpose(1, 2)
            saved += [*hs_sub, *sub.weights, agents]
        ctx.n, ctx.sub = n, x_sub is not None
        ctx.save_for_backward(*saved)
        return out.transpose(1, 2), out_sub

    @staticmethod
    def backward(ctx, grad, grad_sub):  # noqa: D102
        n, saved, need = ctx.n, ctx.saved_tensors, ctx.needs_input_grad
        need_w, need_b = need[3:3 + n], need[3 + n:]
        dx, dws, dbs = mlp_backward(grad, saved[:n], saved[n:2 * n], need[0], need_w, need_b)
        dx_sub = None
        if ctx.sub and grad_sub is not None:
            agents = saved[-1]
            dx_sub, dws_sub, dbs_sub = mlp_backward(grad_sub, saved[2 * n:3 * n],
                                                     saved[3 * n:4 * n], need[1], need_w, need_b)
            for full, part in zip(dws + dbs, dws_sub + dbs_sub, strict=True):
                if full is not None:
                    full.index_add_(0, agents, part)
        return (dx, dx_sub, None, *dws, *dbs)


class StackedQ:
    """K MLP Q networks as stacked tensors: ``weights[i]`` is ``[K, out, in]`` and
    ``biases[i]`` ``[K, out, 1]`` (agent k's slice is its ``nn.Linear`` weight and bias);
    agent k's values equal a :class:`evorl_nb.dqn.QNetwork`'s.

    Activations run feature-major (``[K, features, N]``): each layer is ``W @ h``, a batched
    product whose small dimensions (4 inputs, 2 actions) sit where the GEMM kernels handle
    them well (the ``[K, N, in] @ [K, in, out]`` orientation is slower; docs/performance.md).
    """

    def __init__(self, weights: list[torch.Tensor], biases: list[torch.Tensor]):
        self.weights, self.biases = weights, biases

    @classmethod
    def from_generators(cls, obs_dim: int, n_actions: int, hidden: tuple[int, ...],
                        generators: Sequence[torch.Generator], device: str = "cpu") -> StackedQ:
        """K networks, agent k initialised by ``QNetwork(..., generators[k])``."""
        nets = [QNetwork(obs_dim, n_actions, hidden, g) for g in generators]
        weights = [torch.stack([n.layers[i].weight.detach() for n in nets])
                   for i in range(len(nets[0].layers))]
        biases = [torch.stack([n.layers[i].bias.detach() for n in nets]).unsqueeze(2)
                  for i in range(len(nets[0].layers))]
        return cls([w.to(device).requires_grad_() for w in weights],
                   [b.to(device).requires_grad_() for b in biases])

    @property
    def parameters(self) -> list[torch.Tensor]:
        """Every stacked tensor (weights then biases, layer by layer)."""
        return [t for pair in zip(self.weights, self.biases, strict=True) for t in pair]

    @property
    def size(self) -> int:
        """Number of agents K."""
        return self.weights[0].shape[0]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Q-values ``[K, N, A]`` (a transposed view) of observations ``[K, N, obs_dim]``.

        One observation per agent (acting, N=1) runs row-major instead, ``h @ W^T`` as
        ``nn.Linear`` does: the batched GEMM runs a ``[K, 64, 64] @ [K, 64, 1]`` product
        far slower than its ``[K, 1, 64] @ [K, 64, 64]`` transpose.
        """
        last = len(self.weights) - 1
        if x.shape[1] == 1:
            h = x
            for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
                h = torch.baddbmm(b.transpose(1, 2), h, w.transpose(1, 2))
                if i < last:
                    h = torch.relu(h)
            return h
        if torch.is_grad_enabled():
            return _StackedMLP.apply(x, None, None, *self.weights, *self.biases)[0]
        return mlp_forward(x, self.weights, self.biases)[0].transpose(1, 2)

    def with_subset(self, x: torch.Tensor, agents: torch.Tensor,
                    x_sub: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(self(x), self.subset(agents)(x_sub))`` in one differentiable call, the
        subset's weight gradients added straight into the rows of the full ones."""
        if torch.is_grad_enabled():
            return _StackedMLP.apply(x, x_sub, agents, *self.weights, *self.biases)
        return self(x), self.subset(agents)(x_sub)

    def subset(self, agents: torch.Tensor) -> StackedQ:
        """The networks of ``agents`` only (differentiable: gradients reach these tensors)."""
        return StackedQ([w.index_select(0, agents) for w in self.weights],
                        [b.index_select(0, agents) for b in self.biases])

    def copy_from(self, other: StackedQ) -> None:
        """Overwrite these tensors with ``other``'s values (a hard target update)."""
        with torch.no_grad():
            for mine, theirs in zip(self.parameters, other.parameters, strict=True):
                mine.copy_(theirs)


