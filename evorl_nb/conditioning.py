"""The ill-conditioning rule: a loss whose float32 gradient is mostly rounding is failed.

Training runs in float32, and the toolkit has several engines for one loss (autograd in
``dqn.train``, the grouped torch evaluation and the compiled interpreter in the population
trainer). They add the same terms in different orders. For a well-conditioned loss that
changes the last bits; for a loss like ``x / (y - y + 1e-10)`` the backward pass adds
terms of size ``x * 1e20`` that cancel, so what is left is rounding noise, and each engine
leaves different noise: the same program would be scored differently by different
trainers.

The rule, applied before training by every trainer so that all of them agree: evaluate the
program's loss and its gradient with respect to a fixed network on a fixed batch (the
fingerprint's "rl" probe: states and rewards ~ N(0, 1)) once in float32 and once in
float64. Where float64 gives a finite loss and gradient and float32 departs from it by more
than :data:`TOLERANCE` (relative to ``1 + max |float64 value|``), the program is
*ill-conditioned*: it is recorded as failed at step 0 with the measured departure as its
reason. Programs whose float64 result is not finite are left to training's own NaN checks.

The probe sees structural cancellation (a value subtracted from itself and divided, ...);
a loss that only loses its precision on particular data (exact ties, a constant batch)
passes it, and there the engines may still differ in the last digits that rounding decides.
Programs with random ops (Normal, Uniform) are not probed: float32 and float64 draw
different numbers.
"""

from __future__ import annotations

import functools

import torch

from evorl_nb.fingerprint import probe_inputs
from evorl_nb.ops import OPS
from evorl_nb.program import Batch, Program

__all__ = ["TOLERANCE", "ill_conditioned", "departure"]

TOLERANCE = 1e-2
"""The largest float32-vs-float64 departure of the loss or of any gradient entry, relative
to ``1 + max |float64 value|``, that a program may show on the probe and still train.
Well-conditioned losses depart by ~1e-7; the ill-conditioned ones seen in random programs
by 1 to 1e10."""


def _loss_and_grad(program: Program, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    batch, q, q_targ = probe_inputs("rl")
    q, q_targ = q.cast(dtype, grad=True), q_targ.cast(dtype)
    params = q.weights()
    batch = Batch(*(x.to(dtype) if x.is_floating_point() else x for x in batch))
    loss = program.loss(batch, q, q_targ, gamma=1.0)
    if not loss.requires_grad:  # a loss that does not depend on the network has no gradient
        return loss.detach(), torch.zeros(1, dtype=dtype)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    flat = [torch.zeros(1, dtype=dtype) if g is None else g.flatten() for g in grads]
    return loss.detach(), torch.cat(flat)


@functools.lru_cache(maxsize=4096)
def _departure(text: str) -> float:
    program = Program.from_json(text)
    with torch.enable_grad():
        l64, g64 = _loss_and_grad(program, torch.float64)
        if not (torch.isfinite(l64) and torch.isfinite(g64).all()):
            return 0.0
        l32, g32 = _loss_and_grad(program, torch.float32)
    if not (torch.isfinite(l32) and torch.isfinite(g32).all()):
        return float("inf")
    loss_dep = float((l32.double() - l64).abs()) / (1.0 + float(l64.abs()))
    grad_dep = float((g32.double() - g64).abs().max()) / (1.0 + float(g64.abs().max()))
    return max(loss_dep, grad_dep)


def departure(program: Program) -> float:
    """How far the program's float32 loss and gradient on the probe depart from float64's,
    relative to ``1 + max |float64 value|`` (0 where float64 is not finite or the program
    has random ops; inf where only float32 is not finite)."""
    if any(OPS[n.op].random for n in program.prune().nodes):
        return 0.0
    return _departure(program.to_json())


def ill_conditioned(program: Program) -> str | None:
    """Why ``program`` may not train (the rule above), or None if it may."""
    d = departure(program)
    if d <= TOLERANCE:
        return None
    return (f"ill-conditioned loss: its float32 gradient departs from float64's by {d:.3g} "
            f"(> {TOLERANCE:g}) on the probe batch")
