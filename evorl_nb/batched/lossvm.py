"""A compiled interpreter for :class:`evorl_nb.batched.plan.LossPlan`: all K loss programs,
forward and backward, in one C call each.

The grouped evaluation makes one batched torch call per (level, op, input types) group, and
with many distinct programs the per-call overhead on small tensors is a large share of a
training step (docs/performance.md). Here the same programs run as
a flat instruction list per agent over float rows (``csrc/interp.c``, C99 with
each op's PyTorch meaning and autograd derivative written out), called once forward and once
backward through ``ctypes``; autograd sees one node whose inputs are the stacked Q-values.

The C files are compiled on first use with the system C compiler (``$CC``, else ``cc``; no
torch headers, ~1 s) into a per-user cache (``$EVORL_NB_CACHE``, else
``~/.cache/evorl_nb``; a per-user temp folder where that cannot be written) keyed by the
source's hash, and loaded with ``ctypes``. Without a
compiler, or on a GPU, or for float64, :class:`LossPlan` uses the grouped torch evaluation
instead (same results to float rounding; tested against each other and against
``Program.loss``). ``EVORL_NB_LOSS_ENGINE=torch`` forces the torch evaluation.

The same library holds the networks' kernel (``csrc/netkernel.c``), which
:mod:`evorl_nb.batched.netkernel` binds.
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

import numpy as np
import torch

from evorl_nb.guards import c_defines
from evorl_nb.ops import OPS, Type

__all__ = ["compiled", "available", "build_error", "engine_choice", "engine_setting", "VMCode",
           "VMLoss", "bases", "pointers"]

_CSRC = Path(__file__).with_name("csrc")
_SOURCES = [_CSRC / "interp.c", _CSRC / "netkernel.c"]
_HEADERS = [_CSRC / "lossvm.h"]
_FLAGS = ["-O3", "-std=c99", "-shared", "-fPIC", *c_defines()]
NF = 9  # int64 fields per instruction (see csrc/interp.c)
BC_A, BC_B, GRAD_A, GRAD_B, GRAD_OUT = 1, 2, 4, 8, 16
# bases: where an operand lives (index into the pointer array passed to C)
WS, REWARD, DISCOUNT, ACTION, OBS, NEXT, QVAL, DRAWS, CONST = range(9)
N_BASES = 9

# the interpreter's instructions, numbered as interp.c's OP_ enum (the op table's ``vm`` and
# ``vm_reduced`` name them)
OPCODES = {name: i for i, name in enumerate(
    "ADD SUB MAX MIN MUL DIV LOG EXP ABS TENTH SQUARE DOT L2 MAXLIST MINLIST ARGMAX MEANLIST "
    "VARLIST STDLIST SUMLIST LSE SELECT SOFTMAX KL ENTROPY MEANB STDB".split())}
_ELEMENTWISE = {"ADD", "SUB", "MAX", "MIN", "MUL", "DIV"}

_LIB: ctypes.CDLL | None = None
_LIB_ERROR: str | None = None


def engine_choice(variable: str) -> str:
    """An engine switch read from the environment variable ``variable``: ``auto`` (the
    default, also for an empty value), ``c`` or ``torch``; anything else is an error."""
    value = os.environ.get(variable, "auto").strip().lower() or "auto"
    if value not in ("auto", "c", "torch"):
        raise ValueError(f"{variable} must be auto, c or torch, not {value!r}")
    return value


def engine_setting() -> str:
    """The loss engine asked for by ``$EVORL_NB_LOSS_ENGINE``: ``auto`` (default), ``c`` or
    ``torch``."""
    return engine_choice("EVORL_NB_LOSS_ENGINE")


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
        done = subprocess.run([cc, *_FLAGS, "-o", tmp, *map(str, _SOURCES), "-lm"],
                              capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{cc} failed: {done.stderr.strip()[-2000:]}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def compiled() -> ctypes.CDLL | None:
    """The compiled library (the loss interpreter and the networks' kernel), built on first
    call; None (with one warning) if it cannot be built or loaded."""
    global _LIB, _LIB_ERROR
    if _LIB is not None or _LIB_ERROR is not None:
        return _LIB
    cc = os.environ.get("CC", "cc")
    source = b"".join(p.read_bytes() for p in _SOURCES + _HEADERS)
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
    return engine_setting() != "torch" and compiled() is not None


def build_error() -> str | None:
    """Why the library could not be built or loaded (after :func:`compiled` failed)."""
    return _LIB_ERROR


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
    features (built by :meth:`LossPlan.vm_code`; see ``csrc/interp.c`` for the layout).

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
                vm_op = OPS[op_name].vm_op(in_types)  # the op table says which instruction
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
                rows.append((OPCODES[vm_op], flags, B, width, ws, ab, ao, bb, bo))
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
            compiled().lossvm_forward(
                self.code.ctypes.data, self.start.ctypes.data + 8 * k0,
                self.out.ctypes.data + 16 * k0, k1 - k0, self.B, pointers(bases),
                losses.data_ptr() + 4 * k0, None if learn is None else learn.data_ptr() + k0,
                max_loss, None if out is None else out.data_ptr() + 4 * k0)

    def backward(self, bases: list[torch.Tensor | None], gbases: list[torch.Tensor | None],
                 dloss: torch.Tensor, k0: int = 0, k1: int | None = None) -> None:
        """Accumulate the gradients of ``sum_k dloss[k] * loss[k]`` over agents ``k0..k1``
        into ``gbases`` (zeroed by the caller; ``dloss`` ``[K]`` float32)."""
        k1 = self.K if k1 is None else k1
        if k1 > k0:
            compiled().lossvm_backward(self.code.ctypes.data, self.start.ctypes.data + 8 * k0,
                                      self.out.ctypes.data + 16 * k0, k1 - k0, self.B,
                                      pointers(bases), pointers(gbases),
                                      dloss.data_ptr() + 4 * k0)


def bases(workspace: torch.Tensor, fixed: list, q: torch.Tensor) -> list:
    """The pointer table's tensors in base order: the workspace, ``fixed`` (reward,
    discount, action, obs, next obs, draws, constants; see ``LossPlan.fixed_bases``) with the
    Q-values ``q`` after the next obs."""
    return [workspace, *fixed[:5], q, *fixed[5:]]


def pointers(tensors: list[torch.Tensor | None]):
    """The ``bases`` as the C pointer table (NULL for None)."""
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
