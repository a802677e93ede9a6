"""The networks' kernel: K stacked MLPs run by compiled AVX-512 code, one agent at a time.

torch's stacked products (``bmm``) sweep all K agents' weights and activations through the
cache once per layer and pay a fixed cost per small matrix; here an agent's weights (18 KiB
for the 64-64 network) and its activations stay in L1/L2 from its forward to its backward.
:func:`fused_update` runs the CPU update as one call that takes the agents one at a time
(its networks' forward, its loss program forward and backward through the interpreter, its
online network's backward, Adam). The C is ``csrc/netkernel.c``, built with the interpreter
into one library by :func:`evorl_nb.batched.lossvm.compiled`. On CPUs without AVX-512
torch's products run instead; ``EVORL_NB_NET_ENGINE`` chooses (``auto``, ``c``, ``torch``).
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np
import torch

from evorl_nb.batched.lossvm import (
    NEXT,
    OBS,
    QVAL,
    VMCode,
    build_error,
    compiled,
    engine_choice,
    pointers,
)

__all__ = ["net_setting", "networks_available", "NetKernel", "fused_update"]


def net_setting() -> str:
    """The networks' kernel asked for by ``$EVORL_NB_NET_ENGINE``: ``auto`` (default: the
    compiled kernel where the CPU has AVX-512, else torch's batched products), ``c`` or
    ``torch``."""
    return engine_choice("EVORL_NB_NET_ENGINE")


def networks_available() -> bool:
    """True if :class:`NetKernel` can run here: the library is built, the CPU has AVX-512,
    and ``$EVORL_NB_NET_ENGINE`` is not ``torch``. ``c`` makes its absence an error."""
    setting = net_setting()
    if setting == "torch":
        return False
    lib = compiled()
    ok = lib is not None and bool(lib.mlp_available())
    if not ok and setting == "c":
        raise RuntimeError("EVORL_NB_NET_ENGINE=c: the compiled networks' kernel needs the "
                           "compiled library and a CPU with AVX-512"
                           + ("" if lib is not None else f" ({build_error()})"))
    return ok


def _array(values, ctype=ctypes.c_void_p):
    return (ctype * len(values))(*values)


def _check(t: torch.Tensor, lead: tuple, numel: int, name: str) -> None:
    """The C side reads and writes by pointer: a tensor of the wrong type, layout or size
    would crash or corrupt memory there, so it is an error here. ``lead``: the leading
    dimensions; ``numel``: the element count (trailing dimensions may be split, as an
    observation ``[H, W, C]`` is ``H * W * C`` features)."""
    if not (t.dtype == torch.float32 and t.is_cpu and t.is_contiguous()
            and t.numel() == numel and t.shape[:len(lead)] == tuple(lead)):
        raise ValueError(f"{name}: expected a contiguous CPU float32 tensor {tuple(lead)}+ "
                         f"of {numel} elements, got {tuple(t.shape)} {t.dtype} on {t.device}")


class NetKernel:
    """K stacked MLPs (``weights[l]`` ``[K, out, in]``, ``biases[l]`` ``[K, out, 1]``, CPU
    float32, contiguous; ReLU between layers) run by the compiled kernel, one agent's whole
    network at a time. Activations are batch-major: ``x`` ``[n, N, in]`` in, ``[n, N, A]``
    out, as :class:`evorl_nb.batched.stacked.StackedQ` gives them (its values and gradients to
    float rounding; tested against it).

    ``who`` picks the agents: a slice ``k0:k1`` or an int64 tensor of agent indices, whose
    weights are read in place (no gather)."""

    def __init__(self, weights: list[torch.Tensor], biases: list[torch.Tensor]):
        self.weights = [w.detach() for w in weights]
        self.biases = [b.detach() for b in biases]
        for t in self.weights + self.biases:
            if t.dtype != torch.float32 or t.device.type != "cpu" or not t.is_contiguous():
                raise ValueError("NetKernel needs contiguous CPU float32 tensors")
        self.dims = [self.weights[0].shape[2]] + [w.shape[1] for w in self.weights]
        self.size = self.weights[0].shape[0]
        """Number of agents K."""
        for w, b, i, o in zip(self.weights, self.biases, self.dims[:-1], self.dims[1:],
                              strict=True):
            if tuple(w.shape) != (self.size, o, i) or b.numel() != self.size * o:
                raise ValueError(f"layer shapes {tuple(w.shape)}, {tuple(b.shape)} do not chain")
        self._dims = _array(self.dims, ctypes.c_int64)
        self._w = _array([w.data_ptr() for w in self.weights])
        self._b = _array([b.data_ptr() for b in self.biases])
        self.n_layers = len(self.weights)

    def scratch(self, N: int) -> torch.Tensor:
        """A work buffer for batches of ``N`` rows (forward and backward)."""
        widest = max(self.dims)
        biggest = max(a * b for a, b in zip(self.dims[:-1], self.dims[1:], strict=True))
        return torch.empty(2 * N * widest + biggest)

    def _who(self, who, n: int) -> tuple[Any, int, torch.Tensor | None]:
        """(index pointer or None, first agent, the index tensor to keep alive)."""
        if isinstance(who, slice):
            k0, k1, step = who.indices(self.size)
            if step != 1 or k1 - k0 != n:
                raise ValueError(f"who={who} does not pick {n} consecutive agents of {self.size}")
            return None, k0, None
        idx = who.to(torch.int64).contiguous()
        if len(idx) != n or (n and (int(idx.min()) < 0 or int(idx.max()) >= self.size)):
            raise ValueError(f"who: {n} agent indices in 0..{self.size - 1} expected")
        return idx.data_ptr(), 0, idx

    def forward(self, x: torch.Tensor, who, out: torch.Tensor,
                scratch: torch.Tensor) -> list[torch.Tensor]:
        """Write the Q-values of agents ``who`` on ``x`` (``[n, N, in]``) into ``out``
        (``[n, N, A]``, contiguous); returns what :meth:`backward` needs (``x`` and the
        hidden layers' ReLU outputs)."""
        x = x.contiguous()
        n, N = x.shape[0], x.shape[1]
        _check(x, (n, N), n * N * self.dims[0], "x")
        _check(out, (n, N), n * N * self.dims[-1], "out")
        _check(scratch, (), scratch.numel(), "scratch")
        if scratch.numel() < self.scratch(N).numel():
            raise ValueError(f"scratch: {scratch.numel()} floats, {N} rows need more")
        hs = [x] + [torch.empty(n, N, d) for d in self.dims[1:-1]]
        agents, k0, _keep = self._who(who, n)
        compiled().mlp_forward(n, self.n_layers, self._dims, self._w, self._b, agents, k0,
                              x.data_ptr(), N, _array([h.data_ptr() for h in hs]),
                              out.data_ptr(), scratch.data_ptr())
        return hs

    def act(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Every agent's Q-values ``[K, A]`` on its one observation ``x[k]`` (``[K, in]``):
        dot products with the weights' rows, read in place (acting)."""
        x = x.contiguous()
        out = torch.empty(len(x), self.dims[-1]) if out is None else out
        _check(x, (self.size,), self.size * self.dims[0], "x")
        _check(out, (self.size,), self.size * self.dims[-1], "out")
        scratch = torch.empty(2 * max(self.dims))
        compiled().mlp_act(len(x), self.n_layers, self._dims, self._w, self._b, 0, x.data_ptr(),
                          out.data_ptr(), scratch.data_ptr())
        return out

    def gradients(self, grads: list[torch.Tensor]):
        """The pointer tables :meth:`backward` writes into: ``grads`` are tensors shaped like
        the weights and biases, interleaved (``[dW0, db0, dW1, db1, ...]``)."""
        if len(grads) != 2 * self.n_layers:
            raise ValueError(f"{len(grads)} gradient tensors for {self.n_layers} layers")
        for g, p in zip(grads, [t for pair in zip(self.weights, self.biases, strict=True)
                                for t in pair], strict=True):
            _check(g, tuple(p.shape), p.numel(), "gradient")
        return _array([g.data_ptr() for g in grads[0::2]]), _array(
            [g.data_ptr() for g in grads[1::2]])

    def backward(self, grad: torch.Tensor, saved: list[torch.Tensor], who, grads,
                 accumulate: bool, scratch: torch.Tensor) -> None:
        """The weight and bias gradients of ``sum(grad * out)`` for agents ``who`` (``grad``
        ``[n, N, A]``; ``saved`` from :meth:`forward`), written (or added, ``accumulate``)
        into their rows of ``grads`` (from :meth:`gradients`)."""
        grad = grad.contiguous()
        n, N = grad.shape[0], grad.shape[1]
        _check(grad, (n, N), n * N * self.dims[-1], "grad")
        if len(saved) != self.n_layers or any(h.shape[:2] != (n, N) for h in saved):
            raise ValueError("saved: not what forward returned for this batch")
        if scratch.numel() < self.scratch(N).numel():
            raise ValueError(f"scratch: {scratch.numel()} floats, {N} rows need more")
        agents, k0, _keep = self._who(who, n)
        compiled().mlp_backward(grad.shape[0], self.n_layers, self._dims, self._w, agents, k0,
                               _array([h.data_ptr() for h in saved]), grad.shape[1],
                               grad.data_ptr(), grads[0], grads[1], int(accumulate),
                               scratch.data_ptr())


def fused_update(vm: VMCode, online: NetKernel, target: NetKernel, rows: np.ndarray,
                 bases: list, gbases: list, losses: torch.Tensor, learn: torch.Tensor,
                 max_loss: float, ok: torch.Tensor, grads, adam: tuple | None = None
                 ) -> torch.Tensor | None:
    """The whole CPU update in one C call (see ``fused_update`` in ``csrc/netkernel.c``), agent by
    agent: the online network on s_t (with s_{t+1} in the same call where the agent's loss
    reads it), the target network where read, the interpreter's forward and backward, the
    online network's backward. ``rows`` ``[K, 4]`` int64: each agent's row in the Q bank for
    online s_t, online s_{t+1}, target s_{t+1}, target s_t (-1: not made). ``bases`` and
    ``gbases`` as for :meth:`VMCode.forward`/:meth:`VMCode.backward` (gradients zeroed);
    writes ``losses``, ``ok`` (as ``VMCode.forward``'s ``ok``) and the gradients ``grads``
    (:meth:`NetKernel.gradients` of the online network's tensors).

    ``adam=(moments, steps, lr, beta1, beta2, eps)`` (``moments``: ``(exp_avg, exp_avg_sq)``
    per online tensor, in :attr:`StackedQ.parameters` order; ``steps``: ``[K]`` int64 Adam
    steps taken so far) also takes Adam's step on each agent whose loss counts (``ok``) and
    whose gradient passes the trainer's check (the sum of its entries is finite), in the
    same pass, and returns that check as a ``[K]`` bool tensor; the caller advances
    ``steps`` where ``ok`` and the check hold. Without ``adam`` returns None."""
    K, B, D, A = vm.K, vm.B, online.dims[0], online.dims[-1]
    if target.dims != online.dims or online.size != K or target.size != K:
        raise ValueError(f"networks {online.dims} x {online.size} and {target.dims} x "
                         f"{target.size} for {K} programs")
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    q = bases[QVAL]
    if rows.shape != (K, 4) or rows[:, 0].min() < 0 or rows.max() >= len(q):
        raise ValueError("rows: a [K, 4] table of Q-bank rows, every agent on s_t")
    for name, t, n in (("obs", bases[OBS], K * B * D), ("next_obs", bases[NEXT], K * B * D),
                       ("q", q, len(q) * B * A), ("gq", gbases[QVAL], len(q) * B * A),
                       ("losses", losses, K), ("ok", ok, K)):
        _check(t, (len(t),), n, name)
    if learn.dtype != torch.uint8 or learn.numel() != K or not learn.is_contiguous():
        raise ValueError("learn: [K] contiguous uint8")
    table, steps, hyper, grad_ok = None, None, None, None
    if adam is not None:
        moments, steps, lr, beta1, beta2, eps = adam
        if len(moments) != 2 * online.n_layers:
            raise ValueError(f"{len(moments)} moment pairs for {online.n_layers} layers")
        shapes = [t for pair in zip(online.weights, online.biases, strict=True) for t in pair]
        for (m, v), p in zip(moments, shapes, strict=True):
            _check(m, tuple(p.shape), p.numel(), "exp_avg")
            _check(v, tuple(p.shape), p.numel(), "exp_avg_sq")
        steps = np.ascontiguousarray(steps, dtype=np.int64)
        if steps.shape != (K,):
            raise ValueError(f"steps: [K] Adam step counts, got {steps.shape}")
        table = _array([t.data_ptr() for pair in moments for t in pair])
        hyper = np.array([lr, beta1, beta2, eps], dtype=np.float64)
        grad_ok = torch.zeros(K, dtype=torch.uint8)
    lib = compiled()
    scratch = torch.empty(lib.fused_scratch(online.n_layers, online._dims, B))
    lib.fused_update(0, vm.K, rows.ctypes.data, vm.B, online.n_layers, online._dims, online._w,
                     online._b, target._w, target._b, bases[OBS].data_ptr(),
                     bases[NEXT].data_ptr(), bases[QVAL].data_ptr(), gbases[QVAL].data_ptr(),
                     vm.code.ctypes.data, vm.start.ctypes.data, vm.out.ctypes.data,
                     pointers(bases), pointers(gbases), losses.data_ptr(), learn.data_ptr(),
                     max_loss, ok.data_ptr(), grads[0], grads[1], scratch.data_ptr(), table,
                     None if steps is None else steps.ctypes.data,
                     None if hyper is None else hyper.ctypes.data,
                     None if grad_ok is None else grad_ok.data_ptr())
    return None if grad_ok is None else grad_ok.bool()
