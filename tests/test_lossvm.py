"""The compiled loss interpreter (evorl_nb.lossvm) against the grouped torch evaluation:
same losses, same gradients, same NaN/inf where the result does not hinge on rounding, and
a clear fallback or error where it cannot run."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from test_population import _programs, _td_loss

from evorl_nb import conditioning, dqn, library
from evorl_nb.batched import lossvm, netkernel
from evorl_nb.batched import LossPlan, Population, StackedQ
from evorl_nb.program import ProgramBuilder

K_PROGRAMS, B, D, A = 96, 16, 4, 3


def _nets(seed: int, dtype=torch.float32) -> tuple[StackedQ, StackedQ]:
    online = StackedQ.from_generators(
        D, A, (8,), [torch.Generator().manual_seed(100 * seed + k) for k in range(K_PROGRAMS)])
    target = StackedQ.from_generators(
        D, A, (8,), [torch.Generator().manual_seed(7 + 100 * seed + k)
                     for k in range(K_PROGRAMS)])
    for net in (online, target):
        for b in net.biases:
            b.data.zero_()  # a zero state gives every action Q = 0: exact ties below
        net.weights = [w.detach().to(dtype).requires_grad_() for w in net.weights]
        net.biases = [b.detach().to(dtype).requires_grad_() for b in net.biases]
    return online, target


def _batch(seed: int, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    obs, next_obs = torch.randn(K_PROGRAMS, B, D, generator=g), torch.randn(K_PROGRAMS, B, D,
                                                                            generator=g)
    obs[:, : B // 4] = 0.0  # ties in max/argmax, zero std over actions, log|0|, ...
    next_obs[:, B // 4: B // 2] = 0.0
    action = torch.randint(0, A, (K_PROGRAMS, B), generator=g)
    reward = torch.randn(K_PROGRAMS, B, generator=g)
    reward[: K_PROGRAMS // 4] = 1.0  # constant columns: std over the batch is 0
    done = (torch.rand(K_PROGRAMS, B, generator=g) < 0.2).float()
    return [x.to(dtype) if x.is_floating_point() else x
            for x in (obs, action, reward, next_obs, done)]


def _evaluate(progs, engine: str, seed: int, dtype=torch.float32):
    online, target = _nets(seed, dtype)
    obs, action, reward, next_obs, done = _batch(seed, dtype)
    gens = [torch.Generator().manual_seed(1000 * seed + k) for k in range(len(progs))]
    losses = LossPlan(progs, engine=engine).losses(obs, action, reward, next_obs, done,
                                                   online, target, 0.99, gens)
    losses.sum().backward()
    return losses.detach().double(), [p.grad.double() for p in online.parameters]


def _close(x, y, rtol=1e-4):
    return bool(((x - y).abs() <= rtol * (1 + y.abs())).all())


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_interpreter_equals_the_torch_evaluation(seed, monkeypatch):
    progs = _programs(K_PROGRAMS, seed)
    c_loss, c_grads = _evaluate(progs, "c", seed)
    t_loss, t_grads = _evaluate(progs, "torch", seed)
    # the float64 evaluation tells which results hinge on float32 rounding (a guard dividing
    # by a difference that is 0 in exact arithmetic, ...): torch itself gives them different
    # values on different layouts, so the engines need not agree there. Its random draws are
    # the float32 ones, cast.
    for name in ("randn", "rand"):
        draw = getattr(torch, name)

        def float32_draw(*args, _draw=draw, dtype=None, **kwargs):
            return _draw(*args, dtype=torch.float32, **kwargs).to(dtype or torch.float32)

        monkeypatch.setattr(torch, name, float32_draw)
    x_loss, x_grads = _evaluate(progs, "torch", seed, torch.float64)
    monkeypatch.undo()
    stable = nan_checked = grads_checked = 0
    for k, p in enumerate(progs):
        eq = p.equation(simplify=False)
        finite = torch.isfinite(t_loss[k]) and torch.isfinite(x_loss[k])
        if not torch.isfinite(t_loss[k]) and not torch.isfinite(x_loss[k]):
            assert not torch.isfinite(c_loss[k]), (k, eq)
            nan_checked += 1
            continue
        if not (finite and _close(t_loss[k], x_loss[k], 1e-5)):
            continue  # rounding decides this one
        stable += 1
        assert _close(c_loss[k], t_loss[k]), (k, float(c_loss[k]), float(t_loss[k]), eq)
        cg, tg, xg = ([g[k] for g in grads] for grads in (c_grads, t_grads, x_grads))
        if all(torch.isfinite(g).all() for g in tg + xg) and all(
                _close(t, x, 1e-3) for t, x in zip(tg, xg, strict=True)):
            for c, t in zip(cg, tg, strict=True):
                scale = 1 + t.abs().max()
                assert ((c - t).abs() <= 1e-4 * scale).all(), (k, eq)
            grads_checked += 1
        elif all(not torch.isfinite(g).all() for g in tg + xg):
            assert not all(torch.isfinite(g).all() for g in cg), (k, eq)  # NaN where torch's
    assert stable >= 0.7 * K_PROGRAMS and grads_checked >= 0.5 * K_PROGRAMS, (stable,
                                                                             grads_checked)


def _one(make):
    b = ProgramBuilder()
    q = b.QValues(b.q, b.s_t)
    return b.build(make(b, q, b.SelectList(q, b.a_t)))


# losses whose float32 gradient is mostly rounding: each engine leaves different noise
# (scaled by 0.01 to stay under max_loss, where a trainer would fail them anyway)
ILL_CONDITIONED = [
    _one(lambda b, q, qa: b.DotProduct(b.constant(0.01), b.Div(qa, b.Subtract(qa, qa)))),
    _one(lambda b, q, qa: b.Div(b.Div(qa, qa), b.discount)),           # (Q / Q) / γ
    _one(lambda b, q, qa: b.DotProduct(b.constant(0.01), b.Div(         # max Q / (max Q - max Q)
        b.MaxList(q), b.Subtract(b.MaxList(q), b.MaxList(q))))),
]


def test_the_conditioning_rule_fails_ill_conditioned_losses_and_passes_the_library():
    for p in ILL_CONDITIONED:
        why = conditioning.ill_conditioned(p)
        assert why and why.startswith("ill-conditioned loss"), p.equation(simplify=False)
    for name in library.names():  # float32 departs from float64 only in its last bits
        assert conditioning.departure(library.get(name)) < 1e-5, name
    random_progs = _programs(300, 5)
    flagged = sum(conditioning.ill_conditioned(p) is not None for p in random_progs)
    assert flagged <= 0.03 * len(random_progs), flagged  # rare among random programs


def _training_like(seed: int):
    """Nets and a batch as training sees them: no exact ties, no constant columns."""
    g = torch.Generator().manual_seed(seed)
    nets = []
    for offset in (0, 7):
        net = StackedQ.from_generators(D, A, (8,), [torch.Generator().manual_seed(
            offset + 100 * seed + k) for k in range(K_PROGRAMS)])
        for b in net.biases:
            b.data.normal_(generator=g)
        nets.append(net)
    obs, next_obs = torch.randn(K_PROGRAMS, B, D, generator=g), torch.randn(K_PROGRAMS, B, D,
                                                                            generator=g)
    action = torch.randint(0, A, (K_PROGRAMS, B), generator=g)
    reward = torch.randn(K_PROGRAMS, B, generator=g)
    done = (torch.rand(K_PROGRAMS, B, generator=g) < 0.2).float()
    return nets, (obs, action, reward, next_obs, done)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_where_the_engines_part_on_training_data_the_rule_has_failed_the_loss(seed):
    # random programs and mutants, with the ill-conditioned ones in among them: wherever the
    # interpreter and torch give a different loss or gradient, the conditioning rule has
    # already failed that program in every trainer, so no trainer scores it differently
    progs = _programs(K_PROGRAMS - len(ILL_CONDITIONED), 100 + seed) + ILL_CONDITIONED
    out = {}
    for engine in ("c", "torch"):
        (online, target), batch = _training_like(seed)
        gens = [torch.Generator().manual_seed(1000 * seed + k) for k in range(len(progs))]
        losses = LossPlan(progs, engine=engine).losses(*batch, online, target, 0.99, gens)
        losses.sum().backward()
        out[engine] = losses.detach().double(), [p.grad.double() for p in online.parameters]
    (c_loss, c_grads), (t_loss, t_grads) = out["c"], out["torch"]
    parted = []
    for k in range(len(progs)):
        c_ok, t_ok = bool(torch.isfinite(c_loss[k])), bool(torch.isfinite(t_loss[k]))
        if c_ok != t_ok or (c_ok and not _close(c_loss[k], t_loss[k])):
            parted.append(k)
            continue
        if not c_ok or abs(float(t_loss[k])) > 1e10:  # failed in both: non-finite or max_loss
            continue
        cg, tg = [g[k] for g in c_grads], [g[k] for g in t_grads]
        c_fin, t_fin = (all(torch.isfinite(g).all() for g in gs) for gs in (cg, tg))
        if c_fin != t_fin:
            parted.append(k)
        elif c_fin:
            scale = 1 + max(float(g.abs().max()) for g in tg)
            if max(float((c - t).abs().max()) for c, t in zip(cg, tg, strict=True)) > 1e-4 * scale:
                parted.append(k)
    unflagged = [progs[k].equation(simplify=False) for k in parted
                 if conditioning.ill_conditioned(progs[k]) is None]
    assert not unflagged, unflagged
    assert any(k >= len(progs) - len(ILL_CONDITIONED) for k in parted)  # the rule is needed


def test_both_trainers_fail_an_ill_conditioned_loss_at_step_0_with_one_reason():
    p = ILL_CONDITIONED[0]
    single = dqn.train(p, "CartPole-v1", "ci", seed=3)
    pop = Population("CartPole-v1", "ci", slots=2)
    key = pop.add(p, seed=3)
    assert not pop.idle  # its result waits for advance()
    (got_key, batched), = pop.advance()
    pop.close()
    assert got_key == key and pop.idle
    for run in (single, batched):
        assert run.failed and run.steps == 0 and not run.episodes
        assert run.reason.startswith("ill-conditioned loss") and run.reason.endswith("at step 0")
    assert single.reason == batched.reason


def test_interpreter_ties_and_guards_follow_torchs_derivatives():
    # each op where torch's derivative has a special case, on values that hit it exactly:
    # Q(s) = (x, x, 0) for the state's first feature x, which is 0 in half the transitions
    # (a three-way tie, Q = 0) and 0.5 in the others (a two-way tie); s_{t+1} is all zeros
    def loss(make):
        b = ProgramBuilder()
        return b.build(make(b, b.QValues(b.q, b.s_t), b.QValues(b.q, b.s_tp1)))

    progs = [
        loss(lambda b, q, qn: b.MaxList(q)),                       # the first index gets it all
        loss(lambda b, q, qn: b.SelectList(q, b.ArgMaxList(q))),   # argmax: the first index
        loss(lambda b, q, qn: b.SumList(b.Max(q, qn))),            # elementwise: halves
        loss(lambda b, q, qn: b.SumList(b.Min(q, qn))),
        loss(lambda b, q, qn: b.StdList(q)),                       # std 0: gradient 0
        loss(lambda b, q, qn: b.MeanList(b.Log(q))),               # log|0|, sign(0) = 0
        loss(lambda b, q, qn: b.MeanList(b.Abs(q))),
        loss(lambda b, q, qn: b.Exp(b.Div(b.MaxList(q), b.r_t))),  # exp = inf, clamped: NaN
        loss(lambda b, q, qn: b.Entropy(b.Softmax(q))),
        loss(lambda b, q, qn: b.KLDiv(b.Softmax(q), b.Softmax(qn))),
        loss(lambda b, q, qn: b.StdBatch(b.MaxList(qn))),          # a constant column
        loss(lambda b, q, qn: b.LogSumExpList(q)),
        loss(lambda b, q, qn: b.LogSumExpList(b.L2Norm(b.L2Norm(b.Div(q, qn))))),  # max = inf
        loss(lambda b, q, qn: b.VarianceList(b.MaxFloat(b.r_t, q))),  # r vs Q ties, broadcast
    ]
    K = len(progs)
    online = StackedQ.from_generators(D, A, (), [torch.Generator().manual_seed(k)
                                                  for k in range(K)])
    with torch.no_grad():
        online.weights[0].zero_()
        online.weights[0][:, :2, 0] = 1.0
        online.biases[0].zero_()
    obs = torch.randn(K, B, D)
    obs[:, : B // 2, 0] = 0.0
    obs[:, B // 2:, 0] = 0.5
    reward = torch.full((K, B), 1e-12)  # max Q / r = 5e11: exp overflows
    reward[:, -1] = 0.5  # ties with Q = (0.5, 0.5, 0) in MaxFloat
    out = {}
    for engine in ("c", "torch"):
        for p in online.parameters:
            p.grad = None
        losses = LossPlan(progs, engine=engine).losses(
            obs, torch.zeros(K, B, dtype=torch.long), reward, torch.zeros(K, B, D),
            torch.zeros(K, B), online, online, 0.99)
        losses.sum().backward()
        out[engine] = losses.detach(), online.weights[0].grad[:, :, 0].clone()
    (c_loss, c_grad), (t_loss, t_grad) = out["c"], out["torch"]
    for k in range(K):
        assert torch.equal(torch.isfinite(c_loss[k]), torch.isfinite(t_loss[k])), k
        assert torch.equal(torch.isfinite(c_grad[k]), torch.isfinite(t_grad[k])), k
        assert torch.allclose(c_loss[k], t_loss[k], rtol=1e-5, equal_nan=True), k
        assert torch.allclose(c_grad[k], t_grad[k], rtol=1e-5, atol=1e-6, equal_nan=True), (
            k, c_grad[k], t_grad[k])
    assert c_grad[0].tolist() == [0.25, 0.0, 0.0]  # every tie to the first action (x = 0.5)
    assert c_grad[2].tolist() == [0.25, 0.25, 0.125]  # the third action's tie: half each
    assert torch.isfinite(c_grad[4]).all() and not torch.isfinite(c_grad[7]).all()


def test_engines_are_chosen_and_refused_clearly():
    progs = [library.get("dqn"), library.get("ddqn")]
    with pytest.raises(ValueError, match="engine must be auto, c or torch"):
        LossPlan(progs, engine="fast")
    nets = [StackedQ.from_generators(D, A, (8,), [torch.Generator().manual_seed(k)
                                                  for k in range(2)]) for _ in "ot"]
    online, target = (StackedQ([w.detach().double().requires_grad_() for w in net.weights],
                               [b.detach().double().requires_grad_() for b in net.biases])
                      for net in nets)
    obs = torch.randn(2, B, D, dtype=torch.float64)
    args = (obs, torch.zeros(2, B, dtype=torch.long), torch.zeros(2, B, dtype=torch.float64),
            obs, torch.zeros(2, B, dtype=torch.float64), online, target, 0.99)
    with pytest.raises(RuntimeError, match="CPU float32 tensors only"):
        LossPlan(progs, engine="c").losses(*args)
    want = LossPlan(progs, engine="torch").losses(*args)
    assert torch.equal(LossPlan(progs, engine="auto").losses(*args), want)  # torch runs it


def test_without_a_compiler_the_torch_evaluation_runs_with_one_warning(tmp_path):
    code = """
import warnings, torch
from evorl_nb import library
from evorl_nb.batched import lossvm, netkernel
from evorl_nb.batched import LossPlan, StackedQ
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    assert lossvm.compiled() is None and lossvm.compiled() is None
print(len(caught), str(caught[0].message))
nets = [StackedQ.from_generators(4, 2, (8,), [torch.Generator().manual_seed(0)]) for _ in "ab"]
obs = torch.randn(1, 8, 4)
args = (obs, torch.zeros(1, 8, dtype=torch.long), torch.ones(1, 8), obs, torch.zeros(1, 8),
        *nets, 0.99)
a = LossPlan([library.get("dqn")]).losses(*args)
b = LossPlan([library.get("dqn")], engine="torch").losses(*args)
assert torch.equal(a, b)
try:
    LossPlan([library.get("dqn")], engine="c").losses(*args)
except RuntimeError as e:
    print("refused:", e)
"""
    env = dict(os.environ, CC=str(tmp_path / "no-such-cc"), EVORL_NB_CACHE=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    first, *rest = done.stdout.splitlines()
    assert first.startswith("1 ") and "compiled loss interpreter is unavailable" in first
    assert "no-such-cc" in first
    assert rest and rest[0].startswith("refused:") and "could not be built" in rest[0]


def test_without_the_networks_kernel_torch_products_train_the_same_runs(tmp_path):
    """A library built without the AVX-512 kernel (as on other CPUs) says so, and the
    population trains with torch's products: the very runs EVORL_NB_NET_ENGINE=torch gives."""
    code = """
import os, torch
from evorl_nb import library
from evorl_nb.batched import lossvm, netkernel
from evorl_nb.dqn import get_config
from evorl_nb.batched import train_population
print(netkernel.networks_available())
runs = train_population([library.get("dqn"), library.get("ddqn")], "CartPole-v1",
                        get_config("ci", budget_steps=300), seeds=[1, 2])
print([r.returns.tolist() for r in runs], [r.episodes[-1].q_initial for r in runs])
os.environ["EVORL_NB_NET_ENGINE"] = "c"
try:
    netkernel.networks_available()
except RuntimeError as e:
    print("refused:", e)
"""
    cc = tmp_path / "cc-no-avx512"
    cc.write_text('#!/bin/sh\nexec "${REAL_CC:-cc}" -DEVORL_NB_NO_AVX512 "$@"\n')
    cc.chmod(0o755)
    outs = []
    for extra in ({"CC": str(cc), "EVORL_NB_CACHE": str(tmp_path / "no-avx")},
                  {"EVORL_NB_NET_ENGINE": "torch"}):
        env = dict(os.environ, **extra)
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        outs.append(done.stdout.splitlines())
    assert outs[0][0] == "False" and outs[1][0] == "False"
    assert outs[0][1] == outs[1][1]  # identical returns and Q-values
    assert outs[0][2].startswith("refused:") and "AVX-512" in outs[0][2]


def test_the_library_is_built_once_into_the_cache(tmp_path):
    code = "from evorl_nb.batched import lossvm; print(lossvm.compiled() is not None)"
    env = dict(os.environ, EVORL_NB_CACHE=str(tmp_path))
    for _ in range(2):
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                              text=True, timeout=120)
        assert done.stdout.strip() == "True", done.stderr
    built = list(tmp_path.glob("lossvm-*.so"))
    assert len(built) == 1 and not list(tmp_path.glob("*.tmp*"))  # no half-written file left


def test_an_unwritable_cache_falls_back_to_a_temp_folder(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")  # the cache path runs through a file: it cannot be made
    code = ("import warnings; warnings.simplefilter('error'); from evorl_nb.batched import lossvm; "
            "print(lossvm.compiled() is not None)")
    env = dict(os.environ, EVORL_NB_CACHE=str(blocker / "cache"), TMPDIR=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.stdout.strip() == "True", done.stderr  # no warning either
    assert len(list(tmp_path.glob("evorl_nb-*/lossvm-*.so"))) == 1


def test_engine_setting_reads_the_environment(monkeypatch):
    monkeypatch.setenv("EVORL_NB_LOSS_ENGINE", "torch")
    assert lossvm.engine_setting() == "torch" and LossPlan([library.get("dqn")]).engine == "torch"
    monkeypatch.setenv("EVORL_NB_LOSS_ENGINE", "gpu")
    with pytest.raises(ValueError, match="EVORL_NB_LOSS_ENGINE"):
        lossvm.engine_setting()


def _net_engine(monkeypatch, nets: str) -> None:
    monkeypatch.setenv("EVORL_NB_NET_ENGINE", nets)
    if nets == "c" and not (lossvm.compiled() and lossvm.compiled().mlp_available()):
        pytest.skip("the networks' kernel needs a CPU with AVX-512 (torch's products run)")


@pytest.mark.parametrize("nets", ["c", "torch"])
@pytest.mark.parametrize("chunk", [1, 7, 64, 500])
def test_fused_update_equals_autograd_through_the_interpreter(chunk, nets, monkeypatch):
    _net_engine(monkeypatch, nets)
    assert netkernel.networks_available() == (nets == "c")
    # chunk by chunk without autograd (LossPlan.fused_update) against one autograd pass; the
    # first 14 agents all differentiate through the online net on s_{t+1} (chunks of 7 make
    # it one joint call with s_t), the others sometimes (a subset, index-added into the
    # gradients)
    progs = [_td_loss("q")] * 14 + _programs(K_PROGRAMS - 14, 5)
    obs, action, reward, next_obs, done = _batch(5)
    learn = torch.rand(K_PROGRAMS, generator=torch.Generator().manual_seed(3)) < 0.8
    gens = [torch.Generator().manual_seed(k) for k in range(K_PROGRAMS)]
    plan = LossPlan(progs, engine="c")
    assert 0 < len(plan.combo_agents[(0, 4)]) < K_PROGRAMS  # some agents use the subset
    assert len(plan.combos) == 4  # online and target net on s_t and s_{t+1} all made

    online, target = _nets(5)
    losses = plan.losses(obs, action, reward, next_obs, done, online, target, 0.99, gens)
    values = losses.detach()
    ok = torch.isfinite(values) & ~(values.abs() > 1e6) & learn
    torch.where(ok, losses, torch.zeros_like(losses)).sum().backward()
    want = [p.grad for p in online.parameters]

    online, target = _nets(5)
    gens = [torch.Generator().manual_seed(k) for k in range(K_PROGRAMS)]
    got_values, got_ok, q_sa, _ = plan.fused_update(obs, action, reward, next_obs, done, online,
                                                 target, 0.99, gens, learn, 1e6, chunk)
    assert torch.equal(got_ok, ok) and 0 < int(ok.sum()) < K_PROGRAMS
    assert torch.allclose(got_values, values, rtol=1e-6, atol=1e-7, equal_nan=True)
    with torch.no_grad():
        assert torch.allclose(q_sa, online(obs), rtol=1e-6, atol=1e-6)
    for got, ref in zip((p.grad for p in online.parameters), want, strict=True):
        assert torch.equal(torch.isfinite(got), torch.isfinite(ref))
        scale = 1 + ref.nan_to_num(0, 0, 0).abs().amax(dim=(1, 2), keepdim=True)
        assert ((got - ref).nan_to_num(0).abs() <= 1e-5 * scale).all()
    auto = LossPlan(progs, engine="auto")  # float64: the autograd path's turn
    assert auto.fused_update(obs.double(), action, reward.double(), next_obs.double(), done,
                             online, target, 0.99, gens, learn, 1e6, chunk) is None


@pytest.mark.parametrize("dims", [(4, 64, 64, 2), (3, 17, 33, 5), (75, 100, 7), (6, 4),
                                  (4, 256, 256, 2), (130, 16, 1)])
@pytest.mark.parametrize("n_rows", [1, 5, 64])
def test_network_kernel_equals_stacked_torch_networks(dims, n_rows, monkeypatch):
    """NetKernel's values and gradients against StackedQ's (autograd) for widths that do and
    do not fill the kernel's 16-float vectors and 6x64 tiles, agents picked by a slice or an
    index tensor, and gradients written or added."""
    _net_engine(monkeypatch, "c")
    K = 9
    gens = [torch.Generator().manual_seed(k) for k in range(K)]
    net = StackedQ.from_generators(dims[0], dims[-1], dims[1:-1], gens)
    g = torch.Generator().manual_seed(len(dims) + n_rows)
    x = torch.randn(K, n_rows, dims[0], generator=g)
    x[:, 0] = 0.0  # zero hidden pre-activations where biases are small: ReLU's edge
    upstream = torch.randn(K, n_rows, dims[-1], generator=g)
    want = net(x)
    (want * upstream).sum().backward()
    kern = netkernel.NetKernel(net.weights, net.biases)
    scratch = kern.scratch(n_rows)
    # acting: one observation per agent, every agent
    assert torch.allclose(kern.act(x[:, 0]), want.detach()[:, 0], rtol=1e-5, atol=1e-5)
    for who in (slice(0, K), slice(3, 7), torch.tensor([0, 2, 8])):
        idx = torch.arange(K)[who]
        out = torch.full((len(idx), n_rows, dims[-1]), float("nan"))
        saved = kern.forward(x[idx], who, out, scratch)
        assert torch.allclose(out, want.detach()[idx], rtol=1e-5, atol=1e-5)
        grads = [torch.full_like(p, 0.5) for p in net.parameters]
        kern.backward(upstream[idx], saved, who, kern.gradients(grads), False, scratch)
        kern.backward(upstream[idx], saved, who, kern.gradients(grads), True, scratch)
        for got, p in zip(grads, net.parameters, strict=True):
            ref = p.grad[idx]
            scale = 1 + ref.abs().amax()
            assert ((got[idx] - 2 * ref).abs() <= 1e-5 * scale).all()  # written, then added
            rest = torch.ones(K, dtype=torch.bool)
            rest[idx] = False
            assert (got[rest] == 0.5).all()  # other agents' rows untouched


def test_network_engine_setting_reads_the_environment(monkeypatch):
    monkeypatch.setenv("EVORL_NB_NET_ENGINE", "torch")
    assert netkernel.net_setting() == "torch" and not netkernel.networks_available()
    monkeypatch.setenv("EVORL_NB_NET_ENGINE", "gpu")
    with pytest.raises(ValueError, match="EVORL_NB_NET_ENGINE"):
        netkernel.net_setting()
    monkeypatch.delenv("EVORL_NB_NET_ENGINE")
    assert netkernel.net_setting() == "auto"
    with pytest.raises(ValueError, match="contiguous CPU float32"):
        netkernel.NetKernel([torch.zeros(2, 3, 4, dtype=torch.float64)],
                         [torch.zeros(2, 3, 1, dtype=torch.float64)])



def test_network_kernel_refuses_tensors_it_would_read_or_write_out_of_bounds(monkeypatch):
    """The C side works by pointer: shapes that do not fit are clear errors, not a crash."""
    _net_engine(monkeypatch, "c")
    net = StackedQ.from_generators(4, 2, (8,), [torch.Generator().manual_seed(k)
                                                 for k in range(3)])
    kern = netkernel.NetKernel(net.weights, net.biases)
    scratch = kern.scratch(5)
    x, out = torch.zeros(3, 5, 4), torch.zeros(3, 5, 2)
    kern.forward(x, slice(0, 3), out, scratch)  # fits
    bad = [
        (torch.zeros(3, 5, 6), slice(0, 3), out, scratch, "x"),  # 6 features, not 4
        (x, slice(0, 3), torch.zeros(3, 5, 3), scratch, "out"),
        (x, slice(0, 3), out.transpose(0, 1).contiguous().transpose(0, 1), scratch, "out"),
        (x, slice(1, 4), out, scratch, "who"),  # past the last agent
        (x, torch.tensor([0, 1, 3]), out, scratch, "who"),
        (x, slice(0, 3), out, torch.zeros(4), "scratch"),
    ]
    for args in bad:
        with pytest.raises(ValueError, match=args[-1]):
            kern.forward(*args[:-1])
    with pytest.raises(ValueError, match="gradient"):
        kern.gradients([torch.zeros_like(p) for p in net.parameters][:-1])
    with pytest.raises(ValueError, match="x"):
        kern.act(torch.zeros(2, 4))  # one observation per agent: 3, not 2
    with pytest.raises(ValueError, match="do not chain"):
        netkernel.NetKernel([net.weights[0], net.weights[0]], net.biases)


def test_adam_in_the_kernels_pass_equals_the_trainers_adam_step(monkeypatch):
    """With the networks' kernel, the gradient check and Adam's step happen inside the
    update's C call. One update of a population with rows at different Adam step counts, a
    row not learning, a NaN loss and a non-finite gradient under a finite loss (an infinite
    weight under a saturating loss) gives the same failures, step counts, parameters and
    moments as the torch products followed by the trainer's own check and Adam."""
    from fakes import nan_program

    from evorl_nb.dqn import get_config
    from evorl_nb.batched import Population

    b = ProgramBuilder()  # exp(-|Q(s, a)|): finite (0) where Q is infinite, gradient 0
    q_sa = b.SelectList(b.QValues(b.q, b.s_t), b.a_t)
    saturating = b.build(b.Exp(b.Subtract(b.Subtract(b.r_t, b.r_t), b.Abs(q_sa))))
    progs = [library.get("dqn"), library.get("ddqn"), saturating, nan_program(),
             library.get("dqn"), library.get("cql")]
    learn = np.array([True, True, True, True, False, True])
    cfg = get_config("quick", hidden=(16, 16), learning_starts=10**6,
                     eps_decay_steps=10**9)  # exploration ~1: the same replay either way
    states = {}
    for nets in ("c", "torch"):
        _net_engine(monkeypatch, nets)
        pop = Population("CartPole-v1", cfg, slots=len(progs))
        for k, prog in enumerate(progs):
            pop.add(prog, seed=k)
        pop.advance(max_steps=80)  # fills the replay buffers, no update yet
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for (m, v), p in zip(pop.moments, pop.online.parameters, strict=True):
                m.copy_(torch.randn(p.shape, generator=gen) * 1e-2)
                v.copy_(torch.rand(p.shape, generator=gen) * 1e-4)
            # agent 2: one infinite last-layer weight on a unit that is always on, so Q of
            # action 0 is inf, the loss stays finite, and the backward's inf * 0 is NaN
            pop.online.weights[-1][2, 0, 0] = float("inf")
            pop.online.biases[-2][2, 0] = 1e3
        pop.adam_steps[:] = [0, 7, 3, 5, 2, 9]
        failed = pop._update(learn)
        states[nets] = (failed, pop.adam_steps.copy(),
                        [p.detach().clone() for p in pop.online.parameters],
                        [t.clone() for pair in pop.moments for t in pair])
        pop.close()
    (f_c, s_c, p_c, m_c), (f_t, s_t, p_t, m_t) = states["c"], states["torch"]
    assert f_c == f_t and f_c[2] == "gradient is not finite" and f_c[3].startswith("loss is")
    assert s_c.tolist() == s_t.tolist() == [1, 8, 3, 5, 2, 10]  # stepped rows advance
    for got, want in zip(p_c + m_c, p_t + m_t, strict=True):
        keep = torch.ones(len(got), dtype=torch.bool)
        keep[2] = keep[3] = False  # failed rows: their values no longer matter (the torch
        # path's Adam may carry them along in a run of rows)
        assert torch.allclose(got[keep], want[keep], rtol=1e-4, atol=1e-6)
        assert torch.equal(got[4], want[4])  # not learning: left alone by both
