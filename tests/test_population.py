"""The population trainer: grouped loss evaluation equals each program's own loss, K=1
reproduces dqn.train, agents stay independent, failures stay per agent."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from fakes import nan_program

from evorl_nb import library, search_space
from evorl_nb.dqn import QNetwork, get_config, train
from evorl_nb.batched import LossPlan, Population, StackedQ, train_population
from evorl_nb.batched.adam import adam_step
from evorl_nb.program import ProgramBuilder


def _programs(n: int, seed: int) -> list:
    """Library losses plus random programs and mutants from both search spaces."""
    rng = np.random.default_rng(seed)
    progs = [library.get(name) for name in library.names()]
    spaces = [search_space.get_space("scratch"), search_space.get_space("bootstrap")]
    while len(progs) < n:
        space = spaces[len(progs) % 2]
        p = search_space.random_program(space, rng)
        progs.append(search_space.mutate(p, space, rng) if rng.random() < 0.5 else p)
    return progs


@pytest.mark.parametrize("engine", ["c", "torch"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_grouped_losses_equal_each_programs_own_loss(seed, engine):
    progs = _programs(48, seed)
    K, B, D, A = len(progs), 16, 4, 3
    gens = [torch.Generator().manual_seed(100 * seed + k) for k in range(K)]
    online = StackedQ.from_generators(D, A, (8,), gens)
    gens_t = [torch.Generator().manual_seed(7 + 100 * seed + k) for k in range(K)]
    target = StackedQ.from_generators(D, A, (8,), gens_t)
    g = torch.Generator().manual_seed(seed)
    obs, next_obs = torch.randn(K, B, D, generator=g), torch.randn(K, B, D, generator=g)
    action = torch.randint(0, A, (K, B), generator=g)
    reward = torch.randn(K, B, generator=g)
    done = (torch.rand(K, B, generator=g) < 0.2).float()
    plan = LossPlan(progs, engine=engine)
    # random ops draw agent by agent, node by node: the reference below draws in that order
    losses = plan.losses(obs, action, reward, next_obs, done, online, target, 0.99,
                         torch.Generator().manual_seed(42))
    ref_gen = torch.Generator().manual_seed(42)
    assert losses.shape == (K,)
    losses.sum().backward()
    from evorl_nb.program import Batch

    checked = 0
    for k, p in enumerate(progs):
        q_k = QNetwork(D, A, (8,), torch.Generator().manual_seed(100 * seed + k))
        t_k = QNetwork(D, A, (8,), torch.Generator().manual_seed(7 + 100 * seed + k))
        batch = Batch(obs[k], action[k], reward[k], next_obs[k], done[k])
        want = p.loss(batch, q_k, t_k, 0.99, generator=ref_gen)
        got = losses[k].detach()
        if not torch.isfinite(want):
            assert not torch.isfinite(got), (k, p.equation(simplify=False))
            continue
        assert torch.allclose(got, want.detach(), rtol=1e-4, atol=1e-5), (
            k, float(got), float(want.detach()), p.equation(simplify=False))
        if not want.requires_grad:
            continue
        want.backward()
        for layer_i, layer in enumerate(q_k.layers):
            gw = online.weights[layer_i].grad[k]
            if not (torch.isfinite(gw).all() and torch.isfinite(layer.weight.grad).all()):
                continue
            scale = 1e-4 * (1 + layer.weight.grad.abs().max())
            assert torch.allclose(gw, layer.weight.grad, rtol=1e-3, atol=float(scale)), k
        checked += 1
    assert checked >= K // 2  # most programs are finite and differentiable


@pytest.mark.parametrize("hidden", [(), (8,), (8, 5), (3, 16, 16)])
@pytest.mark.parametrize("n", [1, 6])
@pytest.mark.parametrize("joint", [False, True])
def test_stacked_networks_equal_each_agents_qnetwork_values_and_gradients(hidden, n, joint):
    """The stacked MLP's written-out backward (and its row-major path for one observation
    per agent) gives every agent its own QNetwork's values and gradients, inputs included,
    through a subset of the agents too: as a separate call on the subset's networks, or
    ``joint`` with the full call (the subset's gradients added into the full ones')."""
    K, D, A = 5, 4, 3
    net = StackedQ.from_generators(D, A, hidden, [torch.Generator().manual_seed(k)
                                                  for k in range(K)])
    refs = [QNetwork(D, A, hidden, torch.Generator().manual_seed(k)) for k in range(K)]
    g = torch.Generator().manual_seed(1)
    x = torch.randn(K, n, D, generator=g, requires_grad=True)
    coef = torch.randn(K, n, A, generator=g)
    sub = torch.tensor([0, 3])
    x2 = torch.randn(len(sub), n, D, generator=g)
    q, q_sub = net.with_subset(x, sub, x2) if joint else (net(x), net.subset(sub)(x2))
    ((q * coef).sum() + q_sub.square().sum()).backward()
    for k, ref in enumerate(refs):
        xk = x.detach()[k].clone().requires_grad_()
        qk = ref(xk)
        loss = (qk * coef[k]).sum()
        if k in sub.tolist():
            loss = loss + ref(x2[sub.tolist().index(k)]).square().sum()
        loss.backward()
        assert torch.allclose(q[k].detach(), qk.detach(), atol=1e-6)
        assert torch.allclose(x.grad[k], xk.grad, atol=1e-6)
        for i, layer in enumerate(ref.layers):
            assert torch.allclose(net.weights[i].grad[k], layer.weight.grad, atol=1e-5), (k, i)
            assert torch.allclose(net.biases[i].grad[k, :, 0], layer.bias.grad, atol=1e-5), (k, i)
    with torch.no_grad():  # the graph-free path (acting, the target net) gives the same
        assert torch.allclose(net(x), q, atol=1e-6)


@pytest.mark.parametrize("counts", [[0, 7, 3, 7, 7, 7],  # few runs: the fused kernel
                                    [0, 7, 3, 5, 7, 2]])  # a count per row: the columns
def test_per_row_adam_is_torchs_fused_adam_for_each_agent(counts):
    """Rows at different Adam step counts (slots refilled at different times), a row not
    learning yet and a row that failed this step: each stepped row gets what torch's
    fused Adam (the single trainer's optimizer) gives that agent alone, with its own step
    count; the row not learning yet is left untouched (the failed one no longer
    matters)."""
    pop = Population("CartPole-v1", "ci", slots=6)
    for k in range(6):
        pop.add(library.get("dqn"), seed=k)
    pop._settle()
    gen = torch.Generator().manual_seed(0)
    params = pop.online.parameters
    for (m, v), p in zip(pop.moments, params, strict=True):
        m.copy_(torch.randn(p.shape, generator=gen))
        v.copy_(torch.rand(p.shape, generator=gen))
        p.grad = torch.randn(p.shape, generator=gen)
    for p in params:  # the failed row's gradient is NaN: it must not reach its neighbours
        p.grad[4] = float("nan")
    pop.adam_steps[:] = counts
    learn = np.array([True, True, False, True, True, True])
    stepped = np.array([True, True, False, True, False, True])  # row 4 failed this step
    before = [(p.detach().clone(), m.clone(), v.clone())
              for p, (m, v) in zip(params, pop.moments, strict=True)]
    adam_step(params, pop.moments, pop.adam_steps, stepped, pop.active[pop.rows] & ~learn,
              pop.config.lr)
    assert pop.adam_steps.tolist() == [c + s for c, s in zip(counts, stepped, strict=True)]
    for row, count in enumerate(counts):
        if row == 4:
            continue
        ref = [t[row].clone().requires_grad_() for t, _, _ in before]
        opt = torch.optim.Adam(ref, lr=pop.config.lr, fused=True)
        for r, p, (_, m, v) in zip(ref, params, before, strict=True):
            r.grad = p.grad[row].clone()
            opt.state[r] = {"step": torch.tensor(float(count)), "exp_avg": m[row].clone(),
                            "exp_avg_sq": v[row].clone()}
        if stepped[row]:
            opt.step()
        for r, p, (m, v) in zip(ref, params, pop.moments, strict=True):
            got = (p[row].detach(), m[row], v[row])
            want = (r.detach(), opt.state[r]["exp_avg"], opt.state[r]["exp_avg_sq"])
            for a, b in zip(got, want, strict=True):
                # the same kernel; a run of rows is one tensor, so where a row's elements
                # fall in the kernel's vector lanes may differ: at most the last bit
                assert torch.allclose(a, b, rtol=1e-6, atol=0), row
                if not stepped[row]:
                    assert torch.equal(a, b), row  # left alone
    pop.close()


def test_plan_groups_ops_across_agents():
    progs = [library.get("dqn")] * 64
    plan = LossPlan(progs)
    single = LossPlan(progs[:1])
    assert plan.n_groups == single.n_groups  # 64 copies cost as many batched calls as one
    assert plan.combos == [(0, 2), (3, 4)]  # online on s_t, target on s_{t+1}


def _td_loss(net_next: str):
    from evorl_nb.program import ProgramBuilder

    b = ProgramBuilder()
    q_sa = b.SelectList(b.QValues(b.q, b.s_t), b.a_t)
    y = b.Add(b.r_t, b.DotProduct(b.discount, b.MaxList(b.QValues(getattr(b, net_next),
                                                                   b.s_tp1))))
    return b.build(b.L2Norm(b.Subtract(q_sa, y)))


def test_values_with_and_without_a_gradient_share_groups_and_reads():
    # the same TD target from the target net (no gradient) and from the online net (a
    # gradient flows through it): one group per op, not one per gradient class
    frozen_target, live_target = _td_loss("q_targ"), _td_loss("q")
    assert not frozen_target.grad_nodes()[-4] and live_target.grad_nodes()[-4]  # the Adds
    plan = LossPlan([frozen_target, live_target])
    assert plan.n_groups == LossPlan([frozen_target]).n_groups == 6
    for level in plan.levels:  # each level gathers from each bank once
        banks = [c for c, _, _ in level.reads]
        assert len(banks) == len(set(banks))
        assert sum(len(sizes) for _, _, sizes in level.reads) == sum(
            len(g.args) for g in level.groups)


@pytest.mark.parametrize("name", ["dqn", "ddqn", "dqn_reg", "cql", "mdqn"])
def test_k1_reproduces_the_single_agent_trainer(name):
    cfg = get_config("ci")
    single = train(library.get(name), "CartPole-v1", cfg, seed=5)
    (batched,) = train_population([library.get(name)], "CartPole-v1", cfg, seeds=[5])
    assert (batched.steps, batched.updates, batched.failed) == (single.steps, single.updates,
                                                                 single.failed)
    assert np.array_equal(batched.returns, single.returns)
    for a, b in zip(single.episodes, batched.episodes):
        assert (a.step, a.length, a.epsilon) == (b.step, b.length, b.epsilon)
        assert math.isclose(a.q_initial, b.q_initial, rel_tol=1e-4, abs_tol=1e-5)
        assert math.isclose(a.discounted_return, b.discounted_return, rel_tol=1e-12)
        if not math.isnan(a.loss_mean):
            assert math.isclose(a.loss_mean, b.loss_mean, rel_tol=1e-3, abs_tol=1e-5)
            assert math.isclose(a.batch_q_mean, b.batch_q_mean, rel_tol=1e-3, abs_tol=1e-5)


def test_k1_reproduces_the_single_agent_trainer_on_minigrid():
    cfg = get_config("ci")
    single = train(library.get("dqn"), "MiniGrid-DoorKey-5x5-v0", cfg, seed=2)
    (batched,) = train_population([library.get("dqn")], "MiniGrid-DoorKey-5x5-v0", cfg,
                                  seeds=[2])
    assert batched.steps == single.steps == 400
    assert np.array_equal(batched.returns, single.returns)
    assert [e.length for e in batched.episodes] == [e.length for e in single.episodes]


def test_an_agent_does_not_depend_on_its_companions():
    """Swapping the other agents' losses leaves agent 0 and 2 unchanged: losses are summed
    (each agent gets its own gradient) and nothing else is shared."""
    cfg = get_config("ci")
    a = train_population([library.get("dqn"), library.get("cql"), library.get("ddqn")],
                         "CartPole-v1", cfg, seeds=[1, 2, 3], compact=False)
    b = train_population([library.get("dqn"), library.get("mdqn"), library.get("ddqn")],
                         "CartPole-v1", cfg, seeds=[1, 2, 3], compact=False)
    for k in (0, 2):
        assert np.array_equal(a[k].returns, b[k].returns)
        qa = [e.q_initial for e in a[k].episodes]
        qb = [e.q_initial for e in b[k].episodes]
        assert np.allclose(qa, qb, rtol=1e-5, atol=1e-6)
    assert not np.array_equal([e.loss_mean for e in a[1].episodes[-3:]],
                              [e.loss_mean for e in b[1].episodes[-3:]])


def test_a_failing_agent_stops_alone_with_the_single_trainers_reason():
    bad = nan_program()
    cfg = get_config("ci")
    single = train(bad, "CartPole-v1", cfg, seed=4)
    assert single.failed, "the test program must fail under the single trainer too"
    runs = train_population([library.get("dqn"), bad, library.get("dqn")], "CartPole-v1", cfg,
                            seeds=[3, 4, 5], compact=False)
    ref = train_population([library.get("dqn"), library.get("ddqn"), library.get("dqn")],
                           "CartPole-v1", cfg, seeds=[3, 4, 5], compact=False)
    assert runs[1].failed and runs[1].reason == single.reason
    assert runs[1].steps == single.steps and runs[1].updates == single.updates
    assert not runs[0].failed and not runs[2].failed
    for k in (0, 2):
        assert np.array_equal(runs[k].returns, ref[k].returns)
        assert runs[k].steps == 400


def test_episode_budgets_end_agents_separately_and_compaction_keeps_training():
    # learning starts early enough that the NaN agent fails before its 6 episodes are over
    cfg = get_config("ci", budget_episodes=6, max_steps=3000, learning_starts=40)
    progs = [library.get("dqn"), nan_program(), library.get("ddqn"), library.get("dqn_reg")]
    runs = train_population(progs, "CartPole-v1", cfg, seeds=[0, 1, 2, 3])
    assert runs[1].failed
    for k in (0, 2, 3):
        r = runs[k]
        assert not r.failed and len(r.episodes) == 6
        assert r.steps == r.episodes[-1].step  # stopped right after its last episode
        assert [e.episode for e in r.episodes] == list(range(6))
    assert len({runs[k].steps for k in (0, 2, 3)}) > 1  # they did stop at different steps


def test_callback_sees_every_episode_of_every_agent():
    seen: dict[int, int] = {}

    def count(k, _record):
        seen[k] = seen.get(k, 0) + 1

    runs = train_population([library.get("dqn"), library.get("ddqn")], "CartPole-v1", "ci",
                            seeds=[0, 1], callback=count)
    assert seen == {0: len(runs[0].episodes), 1: len(runs[1].episodes)}


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="one seed per program"):
        train_population([library.get("dqn")], "CartPole-v1", "ci", seeds=[1, 2])
    with pytest.raises(TypeError, match="Programs"):
        train_population([lambda *a: 0], "CartPole-v1", "ci")
    with pytest.raises(KeyError, match="unknown environment"):
        train_population([library.get("dqn")], "NoSuchEnv-v9", "ci")
    assert train_population([], "CartPole-v1", "ci") == []


def test_scores_match_the_single_trainer_distribution_over_seeds():
    """At K>1 each agent is a draw from the single trainer's distribution: compare the
    all-episode scores of 6 DQN agents trained together with 6 trained alone."""
    cfg = get_config("quick", max_steps=4000, learning_starts=500)
    seeds = list(range(6))
    alone = [train(library.get("dqn"), "CartPole-v1", cfg, seed=s).score() for s in seeds]
    together = [r.score() for r in
                train_population([library.get("dqn")] * 6, "CartPole-v1", cfg, seeds=seeds)]
    assert together[0] == pytest.approx(alone[0], abs=0.02)  # agent 0 is the K=1 run's twin
    diff = abs(np.mean(alone) - np.mean(together))
    spread = np.sqrt(np.var(alone, ddof=1) / 6 + np.var(together, ddof=1) / 6)
    assert diff < 4 * spread + 0.01, (alone, together)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device on this machine"))])
def test_runs_on_each_device(device):
    """On the CPU and on a GPU: K=1 is dqn.train on that device, and slots refilled while
    others train (Adam at per-row step counts, subset network calls, a loss that fails
    while its only companion is not learning yet, so no row steps) run to their budgets."""
    cfg = get_config("ci", device=device)
    single = train(library.get("ddqn"), "CartPole-v1", cfg, seed=5)
    (batched,) = train_population([library.get("ddqn")], "CartPole-v1", cfg, seeds=[5])
    assert (batched.steps, batched.updates, batched.failed) == (single.steps, single.updates,
                                                                 single.failed)
    assert np.array_equal(batched.returns, single.returns)
    progs = [library.get(n) for n in ("dqn", "ddqn", "dqn_reg", "cql")] + [nan_program()]
    runs = train_population(progs, "CartPole-v1", cfg, seeds=range(5), slots=2)
    assert [r.steps for r in runs[:4]] == [400] * 4 and not any(r.failed for r in runs[:4])
    assert runs[4].failed and "loss is nan" in runs[4].reason


@pytest.mark.parametrize("env_id", ["CartPole-v0", "Acrobot-v1", "MiniGrid-DoorKey-5x5-v0"])
def test_batched_envs_train_exactly_like_gymnasium_envs(env_id):
    progs = [library.get("dqn"), library.get("ddqn"), library.get("dqn_reg")]
    fast = train_population(progs, env_id, "ci", seeds=[0, 1, 2])
    plain = train_population(progs, env_id, "ci", seeds=[0, 1, 2], vectorized=False)
    for a, b in zip(fast, plain):
        assert np.array_equal(a.returns, b.returns)
        assert [e.q_initial for e in a.episodes] == [e.q_initial for e in b.episodes]


def test_evaluate_batch_is_evaluate_at_one_program_and_applies_the_hurdle():
    from evorl_nb.evaluate import evaluate, evaluate_batch
    from evorl_nb.evolve import ProgramEvaluator

    envs = ["CartPole-v0", "Acrobot-v1"]
    one = evaluate(library.get("dqn"), envs, "ci", seed=3, hurdle=None)
    (same,) = evaluate_batch([library.get("dqn")], envs, "ci", seeds=3, hurdle=None)
    assert same.fitness == pytest.approx(one.fitness, abs=1e-12)
    assert same.steps == one.steps
    # a hurdle no ci-budget agent passes: everyone stops after CartPole, scored there alone
    rs = evaluate_batch([library.get("dqn"), library.get("ddqn")], envs, "ci", seeds=[1, 2],
                        hurdle=("CartPole-v0", 0.99))
    for r in rs:
        assert r.hurdle_passed is False and list(r.scores) == ["CartPole-v0"]
        assert r.fitness == r.scores["CartPole-v0"].score
    ev = ProgramEvaluator(("CartPole-v0",), None, "ci")
    (alone,) = ev.batch([library.get("dqn")], 0)
    assert alone.fitness == pytest.approx(ev(library.get("dqn"), 0).fitness, abs=1e-12)
    outs = ev.batch([library.get("dqn"), library.get("cql")], 0)
    assert [o.status for o in outs] == ["trained", "trained"]
    assert all(0 < o.fitness <= 1 and o.steps == 400 for o in outs)


def _same_run(a, b, tol=1e-5):
    """Two TrainResults are the same run: episodes, counters, failure; Q to float rounding."""
    assert (a.steps, a.updates, a.failed, a.reason) == (b.steps, b.updates, b.failed, b.reason)
    assert np.array_equal(a.returns, b.returns)
    qa = np.array([e.q_initial for e in a.episodes])
    qb = np.array([e.q_initial for e in b.episodes])
    assert np.allclose(qa, qb, rtol=tol, atol=tol, equal_nan=True)


def test_continuous_batching_gives_every_agent_its_single_trainer_run():
    """With fewer slots than programs, a finished agent's slot goes to the next program at
    once (its network, replay, epsilon, Adam and target schedule start afresh). Every agent
    has its own random streams and counters, so each run equals dqn.train's with its seed
    whatever the slot count: the batch an agent trains in does not change its score."""
    cfg = get_config("ci", budget_episodes=10, max_steps=800, learning_starts=60)
    b = ProgramBuilder()  # random ops draw from each agent's own generator
    q_sa = b.SelectList(b.QValues(b.q, b.s_t), b.a_t)
    noisy = b.build(b.L2Norm(b.Add(q_sa, b.Subtract(b.Normal(), b.Uniform()))), name="noisy")
    progs = [library.get(n) for n in ("dqn", "ddqn", "dqn_reg", "cql", "dqn_clipped")]
    progs += [nan_program(), noisy]
    seeds = [3, 4, 5, 6, 7, 8, 9]
    alone = [train(p, "CartPole-v1", cfg, seed=s) for p, s in zip(progs, seeds)]
    assert len({r.steps for r in alone}) > 3  # they finish at different steps: slots free up
    for slots in (7, 2):
        runs = train_population(progs, "CartPole-v1", cfg, seeds=seeds, slots=slots)
        for a, r in zip(alone, runs):
            _same_run(a, r)


def test_population_takes_agents_while_training_and_reports_them_as_they_finish():
    """The streaming interface a search worker uses: advance a little, add more agents
    (on MiniGrid, whose slots restart from the new agent's seed), collect finished ones."""
    cfg = get_config("ci", max_steps=300, learning_starts=50)
    env = "MiniGrid-Dynamic-Obstacles-5x5-v0"
    pop = Population(env, cfg, slots=2)
    assert pop.idle and pop.advance() == []
    pop.add(library.get("dqn"), seed=1, key="a")
    pop.add(library.get("dqn_reg"), seed=2, key="b")
    assert pop.advance(max_steps=120) == [] and pop.running == 2
    pop.add(library.get("ddqn"), seed=3, key="c")  # waits for a free slot
    assert pop.pending == 1
    first = pop.advance(max_steps=181)  # a and b end at step 300; c takes a slot at once
    assert sorted(k for k, _ in first) == ["a", "b"] and pop.running == 1 and pop.pending == 0
    rest = pop.advance()
    pop.close()
    assert [k for k, _ in rest] == ["c"] and pop.idle
    done = dict(first + rest)
    for key, name, seed in (("a", "dqn", 1), ("b", "dqn_reg", 2), ("c", "ddqn", 3)):
        _same_run(done[key], train(library.get(name), env, cfg, seed=seed))
    with pytest.raises(TypeError, match="Programs"):
        pop.add(lambda *a: 0)
    with pytest.raises(ValueError, match="slots"):
        Population(env, cfg, slots=0)


_FAULTS = """
import resource, sys, torch
from evorl_nb.batched import Population
Population("CartPole-v1", "ci", slots=2)  # applies keep_freed_memory() unless opted out
from evorl_nb.batched import memory
x = torch.randn(256, 64, 64)  # 4 MiB: above glibc's default mmap threshold
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(50):  # the pattern of a batched step: big temporaries made and freed
    a = x * 2; b = a + 1; del a; c = b * 3; del b; float(c.sum()); del c
print(memory._MALLOC_TUNED, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_populations_keep_freed_memory_instead_of_refaulting_it():
    def run(**env):
        out = subprocess.run([sys.executable, "-c", _FAULTS], capture_output=True, text=True,
                             env={**os.environ, **env}, check=True).stdout.split()
        return out[0], int(out[1])

    tuned, tuned_faults = run()
    plain, plain_faults = run(EVORL_NB_MALLOC="default")
    assert (tuned, plain) == ("True", "False")
    # glibc's defaults re-map the freed 4 MiB blocks: ~1,000 page faults per reuse
    assert tuned_faults < plain_faults / 2, (tuned_faults, plain_faults)


def test_an_update_that_raises_fails_its_agents_and_says_so_once(monkeypatch):
    """An exception inside the update (a wild op, or a bug of evorl_nb's own) fails every
    agent learning in it, with the reason, and training goes on; a warning says it aloud
    once, because a bug looks exactly like this in the records."""
    from evorl_nb.batched import plan, trainer

    def broken(self, *args, **kwargs):
        raise AttributeError("boom")

    monkeypatch.setattr(plan.LossPlan, "fused_update", broken)
    monkeypatch.setattr(plan.LossPlan, "losses", broken)
    monkeypatch.setattr(trainer, "_WARNED", set())
    with pytest.warns(RuntimeWarning, match="update of 2 agents raised AttributeError: boom"
                      ) as seen:
        runs = train_population([library.get("dqn"), library.get("ddqn")], "CartPole-v1", "ci",
                                seeds=[0, 1])
    assert len([w for w in seen if "boom" in str(w.message)]) == 1
    step = get_config("ci").learning_starts
    for r in runs:
        assert r.failed and r.reason == f"loss raised AttributeError: boom at step {step}"
