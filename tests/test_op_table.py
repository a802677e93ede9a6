"""Every engine covers the op table and agrees with it, op by op and typing by typing.

For each op and each of its signatures whose input types a program can make, a smallest
program applies the op to those inputs (with the gradient of q flowing into it) and reduces
the result to the loss. The op's torch meaning (``Program.per_transition``) is the reference: its
sympy meaning, evaluated numerically by ``tests/symeval.py``, gives the same per-transition
values; the compiled interpreter and the grouped torch evaluation of the population trainer
give the same losses and gradients. A new op, or a changed meaning or guard, that one engine
lacks fails here by name.
"""

from __future__ import annotations

import re

import pytest
import torch
from symeval import SymEval
from test_lossvm import _close

from evorl_nb.batched import LossPlan, StackedQ, lossvm
from evorl_nb.guards import EPS_DIV, EPS_LOG, EXP_CLIP
from evorl_nb.ops import OPS, Type
from evorl_nb.program import ProgramBuilder

B, D, A = 16, 4, 3
T = Type

# two values of each type a program can make, the first on q's gradient path
MAKERS = {
    T.R: (lambda b: b.MaxList(b.QValues(b.q, b.s_t)), lambda b: b.r_t),
    T.LIST: (lambda b: b.QValues(b.q, b.s_t), lambda b: b.QValues(b.q_targ, b.s_tp1)),
    T.P: (lambda b: b.Softmax(b.QValues(b.q, b.s_t)),
          lambda b: b.Softmax(b.QValues(b.q_targ, b.s_tp1))),
    T.Z: (lambda b: b.a_t, lambda b: b.ArgMaxList(b.QValues(b.q_targ, b.s_tp1))),
    T.S: (lambda b: b.s_t, lambda b: b.s_tp1),
    T.PARAM: (lambda b: b.q, lambda b: b.q_targ),
}
# ... and a reduction of each output type to the loss (R), keeping q's gradient
REDUCE = {
    T.R: lambda b, x: b.Add(x, b.MaxList(b.QValues(b.q, b.s_t))),
    T.LIST: lambda b, x: b.Add(b.MeanList(x), b.MaxList(b.QValues(b.q, b.s_t))),
    T.P: lambda b, x: b.Add(b.MeanList(x), b.MaxList(b.QValues(b.q, b.s_t))),
    T.Z: lambda b, x: b.SelectList(b.QValues(b.q, b.s_t), x),
}


def _typings():
    """(op, input types) for every signature; those no program can feed are listed apart."""
    made, unmade = [], []
    for name, op in OPS.items():
        for ins, _out in op.signatures:
            (made if all(t in MAKERS for t in ins) else unmade).append((name, ins))
    return made, unmade


MADE, UNMADE = _typings()


def _program(name: str, ins: tuple[Type, ...]):
    b = ProgramBuilder()
    if name == "Constant":
        x = b.constant(0.5)
    else:
        x = getattr(b, name)(*(MAKERS[t][k](b) for k, t in enumerate(ins)))
    out = OPS[name].output_type(ins)
    return b.build(REDUCE[out](b, x), name=f"{name}{tuple(t.value for t in ins)}")


def test_every_op_is_covered_and_only_the_v_typings_cannot_be_made():
    # V values have no op that makes them from the inputs: those typings exist in the table
    # (the authors' grammar) but no program can reach them
    assert {ins for _, ins in UNMADE} and all(T.V in ins for _, ins in UNMADE)
    assert {name for name, _ in MADE} == set(OPS)
    # every op the interpreter computes names its instruction, and the interpreter has it;
    # the others (Q-network calls, constants, draws) are read from the batch
    read = {"QValues", "Constant", "Normal", "Uniform"}
    lacking = sorted(name for name, op in OPS.items() if op.vm is None and name not in read)
    assert not lacking, f"ops the interpreter lacks: {lacking}"
    for op in OPS.values():
        for name in (op.vm, op.vm_reduced):
            assert name is None or name in lossvm.OPCODES, (op.name, name)
    # and the instructions are numbered as the C interpreter's enum numbers them
    enum = re.search(r"enum \{\s*(OP_ADD.*?)\};", lossvm._SOURCES[0].read_text(), re.S).group(1)
    names = [w[3:] for w in re.findall(r"OP_\w+", re.sub(r"/\*.*?\*/", "", enum, flags=re.S))]
    assert names == list(lossvm.OPCODES), names


def _probe(dtype=torch.float64):
    g = torch.Generator().manual_seed(7)
    net = lambda: torch.nn.Sequential(  # noqa: E731
        torch.nn.Linear(D, 8), torch.nn.ReLU(), torch.nn.Linear(8, A)).to(dtype)
    torch.manual_seed(3)
    from evorl_nb import Batch

    batch = Batch(torch.randn(B, D, generator=g, dtype=dtype),
                  torch.randint(0, A, (B,), generator=g),
                  torch.randn(B, generator=g, dtype=dtype),
                  torch.randn(B, D, generator=g, dtype=dtype),
                  (torch.rand(B, generator=g) < 0.2).to(dtype))
    return batch, net(), net()


@pytest.mark.parametrize("name, ins", [t for t in MADE if not OPS[t[0]].random],
                         ids=lambda v: v if isinstance(v, str) else "-".join(t.value for t in v))
def test_sympy_meaning_equals_torch_meaning(name, ins):
    prog = _program(name, ins)
    batch, q, qt = _probe()
    want = prog.per_transition(batch, q, qt, 0.99).detach().numpy()
    got = SymEval(batch, q, qt, 0.99)(prog.to_sympy())
    assert got.shape == want.shape
    assert ((abs(got - want) <= 1e-7 * (1 + abs(want))) | ((got != got) & (want != want))).all(), \
        (prog.equation(simplify=False), got, want)


def test_the_interpreter_and_the_grouped_evaluation_agree_on_every_op():
    if not lossvm.available():
        pytest.skip("no C compiler: the interpreter is not built here")
    progs = [_program(name, ins) for name, ins in MADE]
    K = len(progs)
    g = torch.Generator().manual_seed(11)
    batch = (torch.randn(K, B, D, generator=g), torch.randint(0, A, (K, B), generator=g),
             torch.randn(K, B, generator=g), torch.randn(K, B, D, generator=g),
             (torch.rand(K, B, generator=g) < 0.2).float())
    out = {}
    for engine in ("c", "torch"):
        nets = []
        for offset in (0, 50):
            net = StackedQ.from_generators(D, A, (8,), [torch.Generator().manual_seed(offset + k)
                                                         for k in range(K)])
            for bias in net.biases:
                bias.data.normal_(generator=torch.Generator().manual_seed(offset))
            nets.append(net)
        online, target = nets
        gens = [torch.Generator().manual_seed(100 + k) for k in range(K)]
        losses = LossPlan(progs, engine=engine).losses(*batch, online, target, 0.99, gens)
        losses.sum().backward()
        out[engine] = losses.detach(), [p.grad for p in online.parameters]
    (c_loss, c_grads), (t_loss, t_grads) = out["c"], out["torch"]
    for k, prog in enumerate(progs):
        assert _close(c_loss[k], t_loss[k]), (prog.name, float(c_loss[k]), float(t_loss[k]))
        for c, t in zip(c_grads, t_grads, strict=True):
            scale = 1 + t[k].abs().max()
            assert ((c[k] - t[k]).abs() <= 1e-4 * scale).all(), prog.name


def test_the_guards_are_what_every_engine_uses():
    """One place: the torch source lines, the sympy meanings and the C build read
    evorl_nb/guards.py."""
    assert repr(EPS_DIV) in OPS["Div"].code and repr(EPS_LOG) in OPS["Log"].code
    assert repr(EXP_CLIP) in OPS["Exp"].code
    assert f"-DEPS_DIV={EPS_DIV!r}f" in lossvm._FLAGS
    source = lossvm._SOURCES[0].read_text()
    assert "#define EPS_DIV" not in source and "-DEPS_DIV" in source
