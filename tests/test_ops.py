"""The op table (``evorl_nb.ops``): presence, exact torch semantics, type rules.

Semantics are checked on small hand-made float64 tensors against the values
written in the paper's table and the authors' code (facts.md section 1).
"""

from __future__ import annotations

import itertools
import math

import pytest

torch = pytest.importorskip("torch")

from evorl_nb import ops  # noqa: E402
from evorl_nb.ops import OPS, SourceContext, Type  # noqa: E402

F64 = torch.float64

PAPER_OPS = (
    "Add", "Subtract", "Max", "Min", "DotProduct", "Div", "L2Distance", "MaxList", "MinList",
    "ArgMaxList", "SelectList", "MeanList", "VarianceList", "Log", "Exp", "Abs", "QValues",
    "Softmax", "KLDiv", "Entropy", "Constant", "MultiplyTenth", "Normal", "Uniform",
)
AUTHOR_EXTRAS = (
    "SumList", "StdList", "LogSumExpList", "MeanBatch", "StdBatch", "MaxFloat",
    "MultiplyFloat", "L2Norm",
)


def t(values, dtype=F64):
    return torch.tensor(values, dtype=dtype)


# --- the table ---------------------------------------------------------------


@pytest.mark.parametrize("name", PAPER_OPS + AUTHOR_EXTRAS)
def test_op_present_and_complete(name):
    assert name in OPS
    op = OPS[name]
    assert op.name == name
    assert isinstance(op.label, str) and op.label.strip()
    assert isinstance(op.doc, str) and op.doc.strip()
    assert callable(op.torch)
    assert callable(op.sympy)
    assert op.signatures, name
    # every signature of an op has the same arity
    assert len({len(ins) for ins, _ in op.signatures}) == 1


def test_get_op_unknown_lists_known_ops():
    assert ops.get_op("Add") is OPS["Add"]
    with pytest.raises(KeyError, match="known ops:.*Add"):
        ops.get_op("NoSuchOp")


def test_signature_overlaps_empty():
    assert ops.signature_overlaps() == []


def test_random_and_source_flags():
    assert OPS["Normal"].random and OPS["Uniform"].random
    assert not OPS["Constant"].random
    for name in ("Constant", "Normal", "Uniform"):
        assert OPS[name].arity == 0
    assert {n for n, op in OPS.items() if op.typed} == {"DotProduct", "L2Distance"}


# --- exact torch semantics ---------------------------------------------------


def test_div_guard():
    div = OPS["Div"].torch
    assert div(t([1.0]), t([0.0])).item() == pytest.approx(1e10, rel=1e-12)
    assert div(t([6.0]), t([3.0])).item() == pytest.approx(6.0 / (3.0 + 1e-10), rel=1e-15)
    # the guard is added, not clamped: y == -1e-10 divides by exactly zero
    assert torch.isinf(div(t([1.0]), t([-1e-10]))).all()


def test_div_exact_formula():
    x, y = t([1.0, -2.0, 3.0]), t([0.0, 4.0, -0.5])
    assert torch.equal(OPS["Div"].torch(x, y), x / (y + 1e-10))


def test_log_guard():
    log = OPS["Log"].torch
    assert log(t([-math.e])).item() == pytest.approx(1.0, abs=1e-12)
    assert log(t([math.e])).item() == pytest.approx(1.0, abs=1e-12)
    zero = log(t([0.0]))
    assert torch.isfinite(zero).all()
    assert zero.item() == pytest.approx(math.log(1e-12), rel=1e-12)


def test_exp_clip():
    exp = OPS["Exp"].torch
    assert exp(t([100.0])).item() == 1e10
    assert exp(t([1.0])).item() == pytest.approx(math.e, rel=1e-15)
    assert exp(t([-1000.0])).item() == 0.0
    out32 = exp(torch.tensor([100.0, 1000.0], dtype=torch.float32))
    assert torch.isfinite(out32).all()
    assert out32.tolist() == [1e10, 1e10]


def test_l2distance_r_and_list():
    l2 = OPS["L2Distance"].torch
    x, y = t([1.0, 3.0, -2.0]), t([0.0, 1.0, 2.0])
    assert torch.equal(l2(x, y, types=(Type.R, Type.R)), t([0.5, 2.0, 8.0]))
    xl = t([[1.0, 2.0], [3.0, 4.0]])
    yl = t([[0.0, 0.0], [1.0, 1.0]])
    out = l2(xl, yl, types=(Type.LIST, Type.LIST))
    assert out.shape == (2,)
    assert torch.equal(out, t([0.5 * (1 + 4), 0.5 * (4 + 9)]))


def test_l2distance_and_dot_vectors_and_states():
    l2, dot = OPS["L2Distance"].torch, OPS["DotProduct"].torch
    v, w = t([[1.0, 2.0, 3.0]]), t([[1.0, 0.0, 1.0]])
    assert torch.equal(l2(v, w, types=(Type.V, Type.V)), t([0.5 * (0 + 4 + 4)]))
    assert torch.equal(dot(v, w, types=(Type.V, Type.V)), t([4.0]))
    s = torch.arange(18, dtype=F64).reshape(2, 3, 3)
    assert torch.equal(dot(s, s, types=(Type.S, Type.S)), (s * s).flatten(1).sum(-1))
    # R and List[R]: elementwise, no reduction
    assert torch.equal(dot(t([2.0, 3.0]), t([4.0, 5.0]), types=(Type.R, Type.R)), t([8.0, 15.0]))
    xl = t([[1.0, 2.0], [3.0, 4.0]])
    assert torch.equal(dot(xl, xl, types=(Type.LIST, Type.LIST)), xl * xl)


def test_entropy_uniform_is_log_num_actions():
    p = torch.full((3, 4), 0.25, dtype=F64)
    h = OPS["Entropy"].torch(p)
    assert h.shape == (3,)
    # Positive: the true entropy. (The authors' code returns sum p*log(p+1e-8),
    # i.e. the NEGATIVE entropy; this package deliberately returns +H.)
    assert torch.allclose(h, torch.full((3,), math.log(4), dtype=F64), rtol=1e-7, atol=0)
    assert (h > 0).all()
    onehot = t([[1.0, 0.0, 0.0, 0.0]])
    assert OPS["Entropy"].torch(onehot).item() == pytest.approx(0.0, abs=1e-7)


def test_kldiv():
    kl = OPS["KLDiv"].torch
    p = torch.softmax(t([[1.0, 2.0, 3.0], [0.0, -1.0, 5.0]]), -1)
    assert torch.equal(kl(p, p), torch.zeros(2, dtype=F64))
    q = torch.full((2, 3), 1 / 3, dtype=F64)
    expected = (p * (p.log() - q.log())).sum(-1)
    got = kl(p, q)
    assert torch.allclose(got, expected, rtol=1e-6, atol=1e-7)
    assert (got > 0).all()


def test_add_broadcasts_r_over_actions():
    add, sub = OPS["Add"].torch, OPS["Subtract"].torch
    r = t([10.0, 20.0])
    lst = t([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    expected = t([[11.0, 12.0, 13.0], [24.0, 25.0, 26.0]])
    out = add(r, lst)
    assert out.shape == (2, 3)
    assert torch.equal(out, expected)
    assert torch.equal(add(lst, r), expected)
    assert torch.equal(sub(r, lst), t([[9.0, 8.0, 7.0], [16.0, 15.0, 14.0]]))
    assert torch.equal(sub(lst, r), -sub(r, lst))


def test_maxfloat_multiplyfloat_broadcast():
    r = t([2.0, -1.0])
    lst = t([[1.0, 3.0], [-2.0, 0.5]])
    assert torch.equal(OPS["MaxFloat"].torch(r, lst), t([[2.0, 3.0], [-1.0, 0.5]]))
    assert torch.equal(OPS["MultiplyFloat"].torch(r, lst), t([[2.0, 6.0], [2.0, -0.5]]))


def test_batch_reductions_broadcast_back():
    x = t([[1.0, 2.0], [3.0, 6.0]])
    mb = OPS["MeanBatch"].torch(x)
    sb = OPS["StdBatch"].torch(x)
    assert mb.shape == x.shape and sb.shape == x.shape
    assert torch.equal(mb, t([[2.0, 4.0], [2.0, 4.0]]))
    assert torch.equal(sb, t([[1.0, 2.0], [1.0, 2.0]]))  # population std over the batch
    r = t([1.0, 3.0, 5.0])
    assert torch.equal(OPS["MeanBatch"].torch(r), t([3.0, 3.0, 3.0]))
    assert torch.allclose(OPS["StdBatch"].torch(r), torch.full((3,), math.sqrt(8 / 3), dtype=F64))


def test_list_reductions():
    x = t([[1.0, 2.0, 6.0], [4.0, -5.0, 1.0]])
    assert torch.equal(OPS["MaxList"].torch(x), t([6.0, 4.0]))
    assert torch.equal(OPS["MinList"].torch(x), t([1.0, -5.0]))
    assert torch.equal(OPS["ArgMaxList"].torch(x), torch.tensor([2, 0]))
    assert torch.equal(OPS["MeanList"].torch(x), t([3.0, 0.0]))
    assert torch.equal(OPS["SumList"].torch(x), t([9.0, 0.0]))
    assert torch.allclose(OPS["VarianceList"].torch(x), t([14 / 3, 14.0]))
    assert torch.allclose(OPS["StdList"].torch(x), t([math.sqrt(14 / 3), math.sqrt(14.0)]))
    assert torch.allclose(OPS["LogSumExpList"].torch(x), x.exp().sum(-1).log())


def test_select_list_gathers_by_action():
    x = t([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
    z = torch.tensor([2, 0, 1])
    out = OPS["SelectList"].torch(x, z)
    assert out.shape == (3,)
    assert torch.equal(out, t([3.0, 4.0, 8.0]))


def test_elementwise_unaries_and_binaries():
    x, y = t([-1.5, 2.0]), t([3.0, -4.0])
    assert torch.equal(OPS["Abs"].torch(x), t([1.5, 2.0]))
    assert torch.equal(OPS["MultiplyTenth"].torch(x), 0.1 * x)
    assert torch.equal(OPS["L2Norm"].torch(x), t([2.25, 4.0]))
    assert torch.equal(OPS["Max"].torch(x, y), t([3.0, 2.0]))
    assert torch.equal(OPS["Min"].torch(x, y), t([-1.5, -4.0]))
    p = OPS["Softmax"].torch(t([[0.0, 0.0], [0.0, math.log(3.0)]]))
    assert torch.allclose(p, t([[0.5, 0.5], [0.25, 0.75]]))


def test_qvalues_calls_net():
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(9, 4)).to(F64)
    s = torch.zeros(5, 3, 3, dtype=F64)
    out = OPS["QValues"].torch(net, s)
    assert out.shape == (5, 4)
    assert torch.equal(out, net(s))


def test_source_ops():
    like = torch.zeros(4, dtype=F64)
    c = OPS["Constant"].torch(SourceContext(batch_size=4, like=like, value=0.5))
    assert c.dtype == F64 and torch.equal(c, torch.full((4,), 0.5, dtype=F64))

    def sample(name, seed):
        g = torch.Generator().manual_seed(seed)
        return OPS[name].torch(SourceContext(batch_size=4, like=like, generator=g))

    for name in ("Normal", "Uniform"):
        a, b, other = sample(name, 0), sample(name, 0), sample(name, 1)
        assert a.shape == (4,) and a.dtype == F64
        assert torch.equal(a, b)
        assert not torch.equal(a, other)
    u = sample("Uniform", 3)
    assert ((u >= 0) & (u < 1)).all()
    assert torch.equal(sample("Normal", 7),
                       torch.randn(4, generator=torch.Generator().manual_seed(7), dtype=F64))


# --- type rules --------------------------------------------------------------


def test_type_rules():
    R, LIST, P, V, S, Z, PARAM = (Type.R, Type.LIST, Type.P, Type.V, Type.S, Type.Z, Type.PARAM)
    add = OPS["Add"]
    assert add.output_type((R, LIST)) is LIST
    assert add.output_type((LIST, R)) is LIST
    assert add.output_type((R, V)) is V
    assert add.output_type((R, R)) is R
    assert add.output_type((Z, R)) is None
    assert add.output_type((R, Z)) is None
    assert add.output_type((LIST, V)) is None
    assert add.output_type((R,)) is None  # wrong arity
    # a P fits a List[R] slot, and the op returns a List[R]
    assert OPS["SelectList"].output_type((P, Z)) is R
    assert OPS["SelectList"].output_type((LIST, Z)) is R
    assert OPS["SelectList"].output_type((LIST, R)) is None
    assert OPS["MaxList"].output_type((P,)) is R
    assert add.output_type((P, P)) is LIST
    # ...but a List[R] does not fit a P slot
    assert OPS["KLDiv"].output_type((P, P)) is R
    assert OPS["KLDiv"].output_type((LIST, LIST)) is None
    assert OPS["Entropy"].output_type((LIST,)) is None
    assert OPS["Softmax"].output_type((LIST,)) is P
    # QValues: (Param, S) -> List[R]
    q = OPS["QValues"]
    assert q.arity == 2
    assert q.output_type((PARAM, S)) is LIST
    assert q.output_type((S, PARAM)) is None
    assert q.output_type((PARAM, V)) is None
    # reductions and typed ops
    assert OPS["L2Distance"].output_type((LIST, LIST)) is R
    assert OPS["DotProduct"].output_type((S, S)) is R
    assert OPS["DotProduct"].output_type((LIST, LIST)) is LIST
    assert OPS["ArgMaxList"].output_type((LIST,)) is Z
    assert OPS["Constant"].output_type(()) is R
    assert OPS["MaxFloat"].output_type((LIST, R)) is None
    assert OPS["MaxFloat"].output_type((R, LIST)) is LIST


def test_type_fits():
    assert Type.P.fits(Type.LIST)
    assert not Type.LIST.fits(Type.P)
    assert Type.R.fits(Type.R)
    assert not Type.Z.fits(Type.R)
    assert Type.LIST.label == "List[R]"


def test_every_typing_gives_a_tensor_of_its_output_types_shape():
    """Each input-type tuple an op accepts (a P in a List[R] slot included) yields the
    rank its output type promises: an R is (B,), a List[R] or P (B, A), a V (B, D)."""
    B, A, D = 3, 4, 5
    make = {
        Type.R: lambda: torch.randn(B, dtype=F64),
        Type.LIST: lambda: torch.randn(B, A, dtype=F64),
        Type.P: lambda: torch.softmax(torch.randn(B, A, dtype=F64), -1),
        Type.V: lambda: torch.randn(B, D, dtype=F64),
        Type.S: lambda: torch.randn(B, 2, 3, dtype=F64),
        Type.Z: lambda: torch.randint(0, A, (B,)),
    }
    shape = {Type.R: (B,), Type.Z: (B,), Type.LIST: (B, A), Type.P: (B, A), Type.V: (B, D)}
    checked = 0
    for op in OPS.values():
        if op.arity == 0 or op.name == "QValues":
            continue
        for ins in itertools.product(make, repeat=op.arity):
            out = op.output_type(ins)
            if out is None:
                continue
            args = [make[t]() for t in ins]
            got = op.torch(*args, types=ins) if op.typed else op.torch(*args)
            assert tuple(got.shape) == shape[out], (op.name, ins, tuple(got.shape))
            checked += 1
    assert checked > 60
