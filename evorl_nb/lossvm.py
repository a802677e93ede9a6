"""A compiled interpreter for :class:`evorl_nb.population.LossPlan`: all K loss programs,
forward and backward, in one C call each.

The grouped evaluation makes one batched torch call per (level, op, input types) group, and
with many distinct programs the per-call overhead on small tensors is a large share of a
training step (docs/performance.md). Here the same programs run as
a flat instruction list per agent over float rows (``_lossvm.c``, ~300 lines of C99 with
each op's PyTorch meaning and autograd derivative written out), called once forward and once
backward through ``ctypes``; autograd sees one node whose inputs are the stacked Q-values.

The C file is compiled on first use with the system C compiler (``$CC``, else ``cc``; no
torch headers, ~1 s) into a per-user cache (``$EVORL_NB_CACHE``, else
``~/.cache/evorl_nb``; a per-user temp folder where that cannot be written) keyed by the
source's hash, and loaded with ``ctypes``. Without a
compiler, or on a GPU, or for float64, :class:`LossPlan` uses the grouped torch evaluation
instead (same results to float rounding; tested against each other and against
``Program.loss``). ``EVORL_NB_LOSS_ENGINE=torch`` forces the torch evaluation.

The same library holds the networks' kernel (:class:`NetKernel`): an agent's whole MLP,
forward and backward, in AVX-512 register tiles, and :func:`fused_update`, the CPU update as
one call that takes the agents one at a time (its networks' forward, its loss program
forward and backward, its online network's backward). torch's stacked products (``bmm``)
sweep all K agents' weights and activations through the cache once per layer and pay a
fixed cost per small matrix; here an agent's weights (18 KiB for the 64-64 network) and its
activations stay in L1/L2 from its forward to its backward. On CPUs without AVX-512 torch's
products run instead; ``EVORL_NB_NET_ENGINE`` chooses (``auto``, ``c``, ``torch``).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evorl_nb.guards import c_defines
from evorl_nb.ops import Type

__all__ = ["library", "available", "engine_setting", "VMCode", "VMLoss", "bases",
           "net_setting", "networks_available", "NetKernel", "fused_update"]

_SOURCE = Path(__file__).with_name("_lossvm.c")
_FLAGS = ["-O3", "-std=c99", "-shared", "-fPIC", *c_defines()]
NF = 9  # int64 fields per instruction (see _lossvm.c)
BC_A, BC_B, GRAD_A, GRAD_B, GRAD_OUT = 1, 2, 4, 8, 16
# bases: where an operand lives (index into the pointer array passed to C)
WS, REWARD, DISCOUNT, ACTION, OBS, NEXT, QVAL, DRAWS, CONST = range(9)
N_BASES = 9

_OPCODES = {name: i for i, name in enumerate(
    "ADD SUB MAX MIN MUL DIV LOG EXP ABS TENTH SQUARE DOT L2 MAXLIST MINLIST ARGMAX MEANLIST "
    "VARLIST STDLIST SUMLIST LSE SELECT SOFTMAX KL ENTROPY MEANB STDB".split())}
# op name -> VM op for the ops whose VM op does not depend on the input types
_SIMPLE = {"Add": "ADD", "Subtract": "SUB", "Max": "MAX", "Min": "MIN", "MaxFloat": "MAX",
           "MultiplyFloat": "MUL", "Div": "DIV", "Log": "LOG", "Exp": "EXP", "Abs": "ABS",
           "MultiplyTenth": "TENTH", "L2Norm": "SQUARE", "L2Distance": "L2",
           "MaxList": "MAXLIST", "MinList": "MINLIST", "ArgMaxList": "ARGMAX",
           "MeanList": "MEANLIST", "VarianceList": "VARLIST", "StdList": "STDLIST",
           "SumList": "SUMLIST", "LogSumExpList": "LSE", "SelectList": "SELECT",
           "Softmax": "SOFTMAX", "KLDiv": "KL", "Entropy": "ENTROPY", "MeanBatch": "MEANB",
           "StdBatch": "STDB"}
_ELEMENTWISE = {"ADD", "SUB", "MAX", "MIN", "MUL", "DIV"}

_LIB: ctypes.CDLL | None = None
_LIB_ERROR: str | None = None


def engine_setting() -> str:
    """The loss engine asked for by ``$EVORL_NB_LOSS_ENGINE``: ``auto`` (default), ``c`` or
    ``torch``."""
    value = os.environ.get("EVORL_NB_LOSS_ENGINE", "auto").strip().lower() or "auto"
    if value not in ("auto", "c", "torch"):
        raise ValueError(f"EVORL_NB_LOSS_ENGINE must be auto, c or torch, not {value!r}")
    return value


def net_setting() -> str:
    """The networks' kernel asked for by ``$EVORL_NB_NET_ENGINE``: ``auto`` (default: the
    compiled kernel where the CPU has AVX-512, else torch's batched products), ``c`` or
    ``torch``."""
    value = os.environ.get("EVORL_NB_NET_ENGINE", "auto").strip().lower() or "auto"
    if value not in ("auto", "c", "torch"):
        raise ValueError(f"EVORL_NB_NET_ENGINE must be auto, c or torch, not {value!r}")
    return value


def _cache_dir() -> Path:
    if os.environ.get("EVORL_NB_CACHE"):
        return Path(os.environ["EVORL_NB_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "evorl_nb"


def _build(cc: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    # compile next to the target and rename: processes building at once never see half a file
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        done = subprocess.run([cc, *_FLAGS, "-o", tmp, str(_SOURCE), "-lm"],
                              capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{cc} failed: {done.stderr.strip()[-2000:]}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def library() -> ctypes.CDLL | None:
    """The compiled interpreter, built on first call; None (with one warning) if it cannot be
    built or loaded."""
    global _LIB, _LIB_ERROR
    if _LIB is not None or _LIB_ERROR is not None:
        return _LIB
    cc = os.environ.get("CC", "cc")
    source = _SOURCE.read_bytes()
    key = hashlib.sha256(source + " ".join([cc, *_FLAGS, sys.platform, platform.machine()])
                         .encode()).hexdigest()
    name = f"lossvm-{key[:16]}.so"
    # the cache, or where it cannot be written (a read-only home), a per-user temp folder
    user = getattr(os, "getuid", lambda: "user")()
    places = [_cache_dir() / name, Path(tempfile.gettempdir()) / f"evorl_nb-{user}" / name]
    try:
        for i, target in enumerate(places):
            try:
                if not target.exists():
                    _build(cc, target)
                break
            except OSError:  # cannot write there (a read-only home, a file in the way, ...)
                if i == len(places) - 1:
                    raise
        lib = ctypes.CDLL(str(target))
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        _LIB_ERROR = f"{type(e).__name__}: {e}"
        warnings.warn(f"evorl_nb: the compiled loss interpreter is unavailable ({_LIB_ERROR}); "
                      "the population trainer uses the grouped torch evaluation (slower at "
                      "small K, same results)", RuntimeWarning, stacklevel=2)
        return None
    p = ctypes.c_void_p
    lib.lossvm_forward.argtypes = [p, p, p, ctypes.c_int64, ctypes.c_int64, p, p, p,
                                   ctypes.c_float, p]
    lib.lossvm_backward.argtypes = [p, p, p, ctypes.c_int64, ctypes.c_int64, p, p, p]
    lib.lossvm_forward.restype = lib.lossvm_backward.restype = None
    lib.mlp_available.restype = ctypes.c_int
    if lib.mlp_available():  # the networks' functions exist only where they can run
        _network_functions(lib)
    _LIB = lib
    return lib


def _network_functions(lib: ctypes.CDLL) -> None:
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    lib.mlp_forward.argtypes = [i64, i64, p, p, p, p, i64, p, i64, p, p, p]
    lib.mlp_backward.argtypes = [i64, i64, p, p, p, i64, p, i64, p, p, p, ctypes.c_int, p]
    lib.mlp_act.argtypes = [i64, i64, p, p, p, i64, p, p, p]
    lib.fused_scratch.argtypes = [i64, p, i64]
    lib.fused_scratch.restype = i64
    lib.fused_update.argtypes = [i64, i64, p, i64, i64, p, p, p, p, p, p, p, p, p, p, p, p, p,
                                 p, p, p, ctypes.c_float, p, p, p, p, p, p, p, p]
    lib.fused_update.restype = None
    lib.mlp_forward.restype = lib.mlp_backward.restype = lib.mlp_act.restype = None


def available() -> bool:
    """True if the compiled interpreter can be used (built, loaded, and not switched off)."""
    return engine_setting() != "torch" and library() is not None


def _width(t: Type, A: int, D: int) -> int:
    if t in (Type.R, Type.Z):
        return 1
    if t in (Type.LIST, Type.P):
        return A
    if t is Type.S:
        return D
    raise NotImplementedError(f"the loss interpreter has no {t.label} values")


class VMCode:
    """K programs as instructions for batch size ``B``, ``A`` actions and ``D`` state
    features (built by :meth:`LossPlan.vm_code`; see ``_lossvm.c`` for the layout).

    ``agents[k]`` lists agent k's computed nodes in evaluation order as ``(op name, input
    types, output type, input node indices, node index)``; ``locate(k, node)`` gives an
    input's ``(base, offset)`` for nodes that are not computed (inputs, Q-values, draws,
    constants); ``outputs[k]`` is agent k's output node and ``grads[k]`` the nodes that
    depend on the online network's Q-values.
    """

    def __init__(self, K: int, B: int, A: int, D: int, agents: list[list[tuple]],
                 locate, outputs: list[int], grads: list[set[int]]):
        rows = []
        start = [0]
        out = []
        ws = 0
        for k, nodes in enumerate(agents):
            place: dict[int, tuple[int, int]] = {}
            for op_name, in_types, out_type, inputs, node in nodes:
                w_out = _width(out_type, A, D)
                vm_op = _SIMPLE.get(op_name)
                if op_name == "DotProduct":
                    vm_op = "DOT" if in_types[0] is Type.S else "MUL"
                if vm_op is None:
                    raise NotImplementedError(f"the loss interpreter has no op {op_name}")
                if vm_op in _ELEMENTWISE or vm_op in ("LOG", "EXP", "ABS", "TENTH", "SQUARE",
                                                      "MEANB", "STDB"):
                    width = w_out
                else:  # reductions and SELECT/SOFTMAX: the width of the first input
                    width = _width(in_types[0], A, D)
                flags = GRAD_OUT if node in grads[k] else 0
                operands = []
                for m, j in enumerate(inputs):
                    operands.append(place[j] if j in place else locate(k, j))
                    if j in grads[k]:
                        flags |= GRAD_A if m == 0 else GRAD_B
                    if vm_op in _ELEMENTWISE and in_types[m] is Type.R and w_out > 1:
                        flags |= BC_A if m == 0 else BC_B
                (ab, ao), (bb, bo) = operands[0], operands[1] if len(operands) > 1 else (-1, 0)
                rows.append((_OPCODES[vm_op], flags, B, width, ws, ab, ao, bb, bo))
                place[node] = (WS, ws)
                ws += B * w_out
            start.append(len(rows))
            out.extend(place[outputs[k]] if outputs[k] in place else locate(k, outputs[k]))
        self.K, self.B, self.A, self.D = K, B, A, D
        self.code = np.asarray(rows, dtype=np.int64).reshape(-1, NF)
        self.start = np.asarray(start, dtype=np.int64)
        self.out = np.asarray(out, dtype=np.int64)
        self.ws_size = ws
        """Floats of computed values per evaluation."""

    def forward(self, bases: list[torch.Tensor | None], losses: torch.Tensor, k0: int = 0,
                k1: int | None = None, ok: tuple[torch.Tensor, torch.Tensor, float] | None = None
                ) -> None:
        """Write agents ``k0..k1``'s losses into ``losses[k0:k1]`` (``[K]`` float32) and their
        computed values into ``bases[0]``. ``ok=(learn, out, max_loss)`` also writes
        ``out[k] = 1.0`` where the loss is finite, ``|loss| <= max_loss`` and ``learn[k]``
        (``[K]`` bool or uint8), else 0.0 (``out``: ``[K]`` float32)."""
        k1 = self.K if k1 is None else k1
        if k1 > k0:
            learn, out, max_loss = ok if ok is not None else (None, None, 0.0)
            library().lossvm_forward(
                self.code.ctypes.data, self.start.ctypes.data + 8 * k0,
                self.out.ctypes.data + 16 * k0, k1 - k0, self.B, _pointers(bases),
                losses.data_ptr() + 4 * k0, None if learn is None else learn.data_ptr() + k0,
                max_loss, None if out is None else out.data_ptr() + 4 * k0)

    def backward(self, bases: list[torch.Tensor | None], gbases: list[torch.Tensor | None],
                 dloss: torch.Tensor, k0: int = 0, k1: int | None = None) -> None:
        """Accumulate the gradients of ``sum_k dloss[k] * loss[k]`` over agents ``k0..k1``
        into ``gbases`` (zeroed by the caller; ``dloss`` ``[K]`` float32)."""
        k1 = self.K if k1 is None else k1
        if k1 > k0:
            library().lossvm_backward(self.code.ctypes.data, self.start.ctypes.data + 8 * k0,
                                      self.out.ctypes.data + 16 * k0, k1 - k0, self.B,
                                      _pointers(bases), _pointers(gbases),
                                      dloss.data_ptr() + 4 * k0)


def bases(workspace: torch.Tensor, fixed: list, q: torch.Tensor) -> list:
    """The pointer table's tensors in base order: the workspace, ``fixed`` (reward,
    discount, action, obs, next obs, draws, constants; see ``LossPlan._fixed``) with the
    Q-values ``q`` after the next obs."""
    return [workspace, *fixed[:5], q, *fixed[5:]]


def _pointers(tensors: list[torch.Tensor | None]):
    return (ctypes.c_void_p * N_BASES)(*[t.data_ptr() if t is not None else None
                                         for t in tensors])


class VMLoss(torch.autograd.Function):
    """The interpreter as one autograd node: inputs the Q-value blocks (in L-bank order),
    output the ``[K]`` losses. ``fixed`` holds the other bases (batch, draws, constants)."""

    @staticmethod
    def forward(ctx, vm: VMCode, fixed: list, *blocks):  # noqa: D102
        q = torch.cat(blocks) if len(blocks) > 1 else blocks[0]
        q = q.detach().contiguous()
        ws = torch.empty(vm.ws_size, dtype=torch.float32)
        table = bases(ws, fixed, q)
        losses = torch.empty(vm.K, dtype=torch.float32)
        vm.forward(table, losses)
        ctx.vm, ctx.bases = vm, table
        ctx.sizes = [len(b) for b in blocks]
        return losses

    @staticmethod
    def backward(ctx, dloss):  # noqa: D102
        vm, table = ctx.vm, ctx.bases
        gws = torch.zeros_like(table[WS])
        gq = torch.zeros_like(table[QVAL])
        gbases = [None] * N_BASES
        gbases[WS], gbases[QVAL] = gws, gq
        vm.backward(table, gbases, dloss.to(torch.float32).contiguous())
        pieces = gq.split(ctx.sizes)
        grads = [g if ctx.needs_input_grad[2 + i] else None for i, g in enumerate(pieces)]
        return (None, None, *grads)


# --- the networks' kernel ------------------------------------------------------------------


def networks_available() -> bool:
    """True if :class:`NetKernel` can run here: the library is built, the CPU has AVX-512,
    and ``$EVORL_NB_NET_ENGINE`` is not ``torch``. ``c`` makes its absence an error."""
    setting = net_setting()
    if setting == "torch":
        return False
    lib = library()
    ok = lib is not None and bool(lib.mlp_available())
    if not ok and setting == "c":
        raise RuntimeError("EVORL_NB_NET_ENGINE=c: the compiled networks' kernel needs the "
                           "compiled library and a CPU with AVX-512"
                           + ("" if lib is not None else f" ({_LIB_ERROR})"))
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
    out, as :class:`evorl_nb.population.StackedQ` gives them (its values and gradients to
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
        library().mlp_forward(n, self.n_layers, self._dims, self._w, self._b, agents, k0,
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
        library().mlp_act(len(x), self.n_layers, self._dims, self._w, self._b, 0, x.data_ptr(),
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
        library().mlp_backward(grad.shape[0], self.n_layers, self._dims, self._w, agents, k0,
                               _array([h.data_ptr() for h in saved]), grad.shape[1],
                               grad.data_ptr(), grads[0], grads[1], int(accumulate),
                               scratch.data_ptr())


def fused_update(vm: VMCode, online: NetKernel, target: NetKernel, rows: np.ndarray,
                 bases: list, gbases: list, losses: torch.Tensor, learn: torch.Tensor,
                 max_loss: float, ok: torch.Tensor, grads, adam: tuple | None = None
                 ) -> torch.Tensor | None:
    """The whole CPU update in one C call (see ``fused_update`` in ``_lossvm.c``), agent by
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
    lib = library()
    scratch = torch.empty(lib.fused_scratch(online.n_layers, online._dims, B))
    lib.fused_update(0, vm.K, rows.ctypes.data, vm.B, online.n_layers, online._dims, online._w,
                     online._b, target._w, target._b, bases[OBS].data_ptr(),
                     bases[NEXT].data_ptr(), bases[QVAL].data_ptr(), gbases[QVAL].data_ptr(),
                     vm.code.ctypes.data, vm.start.ctypes.data, vm.out.ctypes.data,
                     _pointers(bases), _pointers(gbases), losses.data_ptr(), learn.data_ptr(),
                     max_loss, ok.data_ptr(), grads[0], grads[1], scratch.data_ptr(), table,
                     None if steps is None else steps.ctypes.data,
                     None if hyper is None else hyper.ctypes.data,
                     None if grad_ok is None else grad_ok.data_ptr())
    return None if grad_ok is None else grad_ok.bool()
