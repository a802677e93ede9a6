"""Adam over stacked tensors: every agent (row) with its own step count.

Adam is elementwise, so each agent's slice of a stacked ``[K, ...]`` tensor follows exactly
the update it would get alone. The hyperparameters are the single trainer's
(:data:`evorl_nb.dqn.ADAM_BETAS`, :data:`evorl_nb.dqn.ADAM_EPS`, the config's ``lr``); the
C networks' kernel runs the same arithmetic inside its update
(:func:`evorl_nb.batched.netkernel.fused_update`) and takes them from the caller.
"""

from __future__ import annotations

import numpy as np
import torch

from evorl_nb.dqn import ADAM_BETAS, ADAM_EPS

__all__ = ["adam_step", "adam_rows"]

Moments = list[tuple[torch.Tensor, torch.Tensor]]


def adam_step(params: list[torch.Tensor], moments: Moments, steps: np.ndarray,
              stepped: np.ndarray, frozen: np.ndarray, lr: float) -> None:
    """Adam on the rows in ``stepped``, each with its own step count ``steps`` (one per row,
    incremented here for the stepped rows); ``frozen`` rows (training, but not learning this
    step) are left alone. ``params`` carry their gradients in ``.grad``; ``moments`` are
    Adam's first and second moments of each, stacked like it.

    Mostly torch's fused Adam kernel, the one the single trainer runs
    (``Adam(fused=True)``), called directly (``torch._fused_adam_``:
    ``torch.optim.Adam.step`` costs as much again in Python). It takes one step count per
    tensor, so it runs over runs of consecutive rows with the same count, each a view of the
    stacked tensors; rows that no longer train, or failed this step, may ride along in a run
    (their values no longer matter). Agents that got their slots together sit in consecutive
    rows (the population trainer appends them and keeps the order), so a batch started
    together is one run, the stacked tensors themselves, and a population refilled in waves
    has about one run per wave. When the runs are short (slots refilled one agent at a time:
    every row its own count) the views cost more than the kernel, and :func:`adam_rows`
    does the same arithmetic on the stacked tensors with a column of bias corrections.
    """
    if not stepped.any():  # every learning row failed this step
        return
    counts = steps + 1
    label = np.where(stepped, counts, np.where(frozen, -1, -2))
    # a row that may ride along joins the run before it (or, at the start, the one after)
    known = np.flatnonzero(label != -2)
    label = label[known[np.maximum(np.searchsorted(known, np.arange(len(label)),
                                                    side="right") - 1, 0)]]
    starts = np.flatnonzero(np.r_[True, label[1:] != label[:-1]])
    if len(starts) > max(4, len(label) // 8):
        adam_rows(params, moments, steps, stepped, lr)
        return
    steps[stepped] += 1
    lengths = np.diff(np.r_[starts, len(label)]).tolist()
    keep = [j for j, a in enumerate(starts.tolist()) if label[a] >= 0]
    counts_t = torch.as_tensor(label[starts[keep]], dtype=torch.float32,
                               device=params[0].device).unbind(0)
    if len(lengths) == 1:
        cut = lambda ts: list(ts)  # noqa: E731
    else:
        cut = lambda ts: [s[j] for t in ts for s in (t.split(lengths),) for j in keep]  # noqa: E731
    torch._fused_adam_(cut([p.detach() for p in params]), cut([p.grad for p in params]),
                       cut([m for m, _ in moments]), cut([v for _, v in moments]),
                       [], [c for _ in params for c in counts_t], lr=lr,
                       beta1=ADAM_BETAS[0], beta2=ADAM_BETAS[1], weight_decay=0.0,
                       eps=ADAM_EPS, amsgrad=False, maximize=False)


def adam_rows(params: list[torch.Tensor], moments: Moments, steps: np.ndarray,
              stepped: np.ndarray, lr: float) -> None:
    """Adam on the rows in ``stepped`` with a bias-correction column per row (the fused
    kernel's arithmetic, written out); the other rows are left alone. Arguments as
    :func:`adam_step`'s."""
    dev, n = params[0].device, len(steps)
    idle = torch.as_tensor(np.flatnonzero(~stepped), dtype=torch.long, device=dev)
    if len(idle):  # a row not learning may still have a NaN gradient (0 * inf backward)
        with torch.no_grad():
            for p in params:
                p.grad.index_fill_(0, idle, 0.0)
    b1, b2 = ADAM_BETAS
    steps[stepped] += 1
    t = steps.astype(np.float64)
    bc1 = np.where(stepped, 1.0 - b1 ** t, 1.0)
    bc2 = np.where(stepped, 1.0 - b2 ** t, 1.0)
    col = lambda x: torch.as_tensor(x, dtype=torch.float32, device=dev).view(n, 1, 1)  # noqa: E731
    m = stepped.astype(np.float64)
    w1, keep2 = col((1.0 - b1) * m), col(np.where(stepped, b2, 1.0))
    size, root2 = col(-lr / bc1 * m), col(np.sqrt(bc2))
    with torch.no_grad():
        for p, (exp_avg, exp_avg_sq) in zip(params, moments, strict=True):
            g = p.grad
            exp_avg.lerp_(g, w1)
            exp_avg_sq.mul_(keep2).addcmul_(g, g, value=1.0 - b2)
            denom = (exp_avg_sq.sqrt() / root2).add_(ADAM_EPS)
            p.add_(exp_avg / denom * size)
