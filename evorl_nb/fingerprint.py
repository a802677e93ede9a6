"""Hashing programs: the functional-equivalence fingerprint and a structural hash.

The fingerprint is the paper's duplicate detector (facts.md §2): run the
program on fixed random inputs and hash its output rounded to 4 decimals (to 11
significant digits from 1e9 up, where 4 decimals is finer than float64 reliably resolves).
Besides the paper's probe (values ~ U(-100, 100)) two more probes draw values
at unit scale (~ U(-1, 1)) and like training data (discount 0.99 or 0, rewards
and states ~ N(0, 1)), 64 transitions each: at the paper's scale alone, a max/min can mask a whole
term (``max(Q, gamma - <s_t, s_{t+1}>^2)`` is just Q when states are ~100),
and two different losses would share a fingerprint. Programs computing the same loss (up to dead nodes, the argument
order of commutative ops, or any rewriting) share it, so evolution trains them
once. The inputs are made in float64 on the CPU from a fixed seed, so the
fingerprint is the same in every process and run.
"""

from __future__ import annotations

import copy
import functools
import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from evorl_nb.inputs import N_INPUTS, Batch

if TYPE_CHECKING:
    import torch

    from evorl_nb.program import Program

__all__ = ["fingerprint", "fingerprint_values", "structural_hash", "probe_inputs", "PROBE",
           "stable_round"]

PROBE = {
    "batch_size": 10,
    "extra_batch_size": 64,
    "state_dim": 4,
    "n_actions": 3,
    "probes": ("paper", "unit", "rl"),
    "hidden": 8,
    "seed": 20210108,
    "decimals": 4,
    "digits": 11,
    "relative_from": 1e9,
}
"""The fixed probes, each with 4-d states, actions in {0, 1, 2} and fixed random 4-8-3
MLPs. "paper" (the paper's, batch 10): rewards, discounts and states ~ U(-100, 100);
"unit" (batch 64): the same ~ U(-1, 1); "rl" (batch 64): discount 0.99 or 0 (done),
rewards and states ~ N(0, 1). Outputs are rounded to ``decimals`` decimals, and from
``relative_from`` up to ``digits`` significant digits."""

_NAN, _POSINF, _NEGINF = 1.2345678e300, 9.8765432e300, -9.8765432e300


class _ProbeNet:
    """A fixed random d-h-a ReLU MLP in float64 (its weights plain tensors)."""

    def __init__(self, gen: torch.Generator, d: int, h: int, a: int):
        import torch

        self.w1 = torch.randn(d, h, generator=gen, dtype=torch.float64) / d**0.5
        self.b1 = torch.randn(h, generator=gen, dtype=torch.float64)
        self.w2 = torch.randn(h, a, generator=gen, dtype=torch.float64) / h**0.5
        self.b2 = torch.randn(a, generator=gen, dtype=torch.float64)

    def __call__(self, x):
        return (x @ self.w1 + self.b1).clamp_min(0.0) @ self.w2 + self.b2

    def weights(self) -> list:
        """The weight and bias tensors, layer by layer."""
        return [self.w1, self.b1, self.w2, self.b2]

    def cast(self, dtype, grad: bool = False) -> _ProbeNet:
        """A copy with its weights in ``dtype``, as new leaf tensors that track gradients
        if ``grad`` (the probe's own tensors stay as they are)."""
        out = copy.copy(self)
        out.w1, out.b1, out.w2, out.b2 = (w.detach().to(dtype).requires_grad_(grad)
                                          for w in self.weights())
        return out


@functools.lru_cache(maxsize=None)  # noqa: UP033 - explicit about the cache having no bound
def probe_inputs(kind: str = "paper") -> tuple[Batch, Callable, Callable]:
    """A fixed random batch and networks (see :data:`PROBE`); the same in every process.

    The discount is fed through ``done`` so that ``gamma * (1 - done)`` is the
    probe's discount with gamma = 1.
    """
    import torch

    p = PROBE
    if kind not in p["probes"]:
        raise KeyError(f"unknown probe {kind!r}; known: {p['probes']}")
    g = torch.Generator().manual_seed(p["seed"] + p["probes"].index(kind))
    b = p["batch_size"] if kind == "paper" else p["extra_batch_size"]
    d = p["state_dim"]

    def draw(*shape):
        if kind == "rl":
            return torch.randn(*shape, generator=g, dtype=torch.float64)
        scale = 100.0 if kind == "paper" else 1.0
        return (torch.rand(*shape, generator=g, dtype=torch.float64) * 2 - 1) * scale

    obs, next_obs, reward = draw(b, d), draw(b, d), draw(b)
    if kind == "rl":
        discount = 0.99 * (torch.rand(b, generator=g, dtype=torch.float64) > 0.3).double()
    else:
        discount = draw(b)
    action = torch.randint(0, p["n_actions"], (b,), generator=g)
    q = _ProbeNet(g, d, p["hidden"], p["n_actions"])
    q_targ = _ProbeNet(g, d, p["hidden"], p["n_actions"])
    return Batch(obs, action, reward, next_obs, 1.0 - discount), q, q_targ


def fingerprint_values(program: Program) -> np.ndarray:
    """The program's rounded outputs on the probes, concatenated (NaN/inf mapped to fixed values)."""
    import torch

    outs = []
    for kind in PROBE["probes"]:
        batch, q, q_targ = probe_inputs(kind)
        gen = torch.Generator().manual_seed(PROBE["seed"] + 1)
        with torch.no_grad():
            values = program.per_transition(batch, q, q_targ, gamma=1.0, generator=gen)
            outs.append(values.double().numpy())
    out = np.concatenate(outs)
    finite = np.isfinite(out)
    out = np.where(finite, stable_round(np.where(finite, out, 0.0)), out)
    # NaN and inf as fixed values (rounded as they always were, so their hashes stay)
    for bad, value in ((np.isnan(out), _NAN), (np.isposinf(out), _POSINF),
                       (np.isneginf(out), _NEGINF)):
        out = np.where(bad, np.round(value, PROBE["decimals"]), out)
    return out


def stable_round(x: np.ndarray) -> np.ndarray:
    """Round to ``PROBE["decimals"]`` decimals, or from ``PROBE["relative_from"]`` (1e9) up
    to ``PROBE["digits"]`` significant digits.

    Four decimals of a value of 1e13 are finer than float64 resolves there (a unit in the
    last place is ~0.002), so any change in how the value is computed (summation order,
    a torch build, an op's implementation) moves the hash of a program with huge outputs,
    and a resumed search stops seeing its duplicates (docs/programs.md, "Fingerprint"). A
    relative step keeps such a fingerprint stable; below 1e9 the rounding is the paper's,
    so only programs with such huge outputs changed fingerprint with this rule.
    """
    x = np.asarray(x, dtype=np.float64)
    big = np.abs(x) >= PROBE["relative_from"]
    with np.errstate(all="ignore"):
        exponent = np.floor(np.log10(np.abs(np.where(big, x, 1.0))))
        step = 10.0 ** (exponent - (PROBE["digits"] - 1))
        out = np.where(big, np.round(x / step) * step, np.round(x, PROBE["decimals"]))
    return out + 0.0  # + 0.0 turns -0.0 into 0.0


def fingerprint(program: Program) -> str:
    """The functional-equivalence hash of a program, 16 hex digits."""
    data = fingerprint_values(program).astype("<f8").tobytes()
    return hashlib.sha256(data).hexdigest()[:16]


def structural_hash(program: Program) -> str:
    """A hash of the pruned graph: equal for graphs equal up to dead nodes, node order
    and the argument order of commutative ops; 16 hex digits."""
    from evorl_nb.ops import OPS

    forms: list[str] = [f"in{i}" for i in range(N_INPUTS)]
    for n in program.nodes:
        args = [forms[j] for j in n.inputs]
        if OPS[n.op].commutative:
            args.sort()
        head = f"{n.op}[{n.value!r}]" if n.op == "Constant" else n.op
        form = f"{head}({','.join(args)})"
        # keep forms short: name each sub-graph by its digest
        forms.append(hashlib.sha256(form.encode()).hexdigest()[:24])
    return forms[program.output][:16]
