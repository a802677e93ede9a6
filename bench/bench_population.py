"""Population trainer vs a CleanRL-style sequential DQN loop, timed in the same run.

    .venv/bin/python bench/bench_population.py            # CartPole, 64-64, K up to 512
    .venv/bin/python bench/bench_population.py --quick    # a smoke run (seconds)
    .venv/bin/python bench/bench_population.py --paper-net  # also the 256-256 network
    .venv/bin/python bench/bench_population.py --ks 128 --device cuda  # K=1024-4096 on a GPU

What is timed (all on CartPole-v1, batch 32, one gradient step per env step, Adam):

* ``sequential``: a plain single-agent DQN loop written here in the CleanRL style (the
  same network, batch, update ratio; a hand-written TD loss, numpy replay, gymnasium env).
  Whole machine = one such process per core, run at the same time.
* ``population K``: a :class:`evorl_nb.batched.Population` training K *distinct*
  losses (DQN and mutants of it, as a bootstrapped search proposes them). Whole machine =
  one process per core, each with K / cores agents and one torch thread, run at the same
  time (and, for comparison, one process with as many torch threads as cores). Only steps
  that learn are timed (the first 100 update-free ones are not: they would flatter the
  rate, while the baseline's 4,000 timed steps include its 100, in its favour).
* ``copies of DQN``: the largest K again with one loss for every agent (what the prototype
  behind the issue's figures trained), to show what the losses' diversity costs.
* ``env only`` / ``update only``: the batched environment step alone, and one batched
  update (sample, grouped losses, backward, Adam) alone.
* ``--paper-net``: the 256-256 network, where the work is matmuls: the FLOP rate reached
  (over steps that all learn) against the machine's dense matmul rate measured here
  (torch.mm, 2048^2, all threads), for both whole-machine layouts (one process per core,
  and one process with all threads); the better one is the figure.
* ``--device cuda``: the population in one process on the GPU at K = 1024-4096
  (``--device-ks``), copies of DQN at the largest K, and the 256-256 network's FLOP rate
  against the GPU's dense matmul rate; ratios against the CPU baseline of the whole machine.

Every figure is agent-steps (or env steps) per second of wall time, and the ratios are
against the sequential baseline measured in the same run, because absolute timings on a
shared machine are noisy (the baseline is the best of three runs, so noise can only make
the ratios smaller). Results go to stdout and, with ``--json FILE``, to a JSON file.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import time

import numpy as np
import torch

STEPS_LEARN = 100  # transitions before the first update: the timed phase is steady state


def distinct_losses(k: int, seed: int = 0) -> list:
    """DQN and distinct mutants of it (different fingerprints), as a search proposes them."""
    from evorl_nb import library, search_space

    rng = np.random.default_rng(seed)
    space = search_space.get_space("bootstrap")
    progs, seen = [library.get("dqn")], {library.get("dqn").fingerprint()}
    while len(progs) < k:
        parent = progs[int(rng.integers(len(progs)))]
        child = search_space.mutate(parent, space, rng)
        fp = child.fingerprint()
        if fp not in seen:
            seen.add(fp)
            progs.append(child)
    return progs[:k]


# --- the baseline -------------------------------------------------------------------------


def sequential_dqn(steps: int, hidden=(64, 64), seed: int = 0) -> float:
    """A CleanRL-style DQN loop on CartPole-v1; returns agent-steps per second."""
    import gymnasium as gym
    import torch.nn as nn

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    env = gym.make("CartPole-v1")
    obs, _ = env.reset(seed=seed)
    sizes = [4, *hidden, 2]
    layers: list[nn.Module] = []
    for a, b in zip(sizes, sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    q = nn.Sequential(*layers[:-1])
    target = nn.Sequential(*[type(m)(m.in_features, m.out_features) if isinstance(m, nn.Linear)
                             else nn.ReLU() for m in layers[:-1]])
    target.load_state_dict(q.state_dict())
    opt = torch.optim.Adam(q.parameters(), lr=1e-3)
    cap = steps
    b_obs = np.zeros((cap, 4), np.float32)
    b_next = np.zeros((cap, 4), np.float32)
    b_act = np.zeros(cap, np.int64)
    b_rew = np.zeros(cap, np.float32)
    b_done = np.zeros(cap, np.float32)
    start = time.perf_counter()
    for t in range(steps):
        eps = max(0.05, 1.0 - t / 1000)
        if rng.random() < eps:
            action = int(rng.integers(2))
        else:
            with torch.no_grad():
                action = int(q(torch.as_tensor(obs).unsqueeze(0)).argmax(1))
        nxt, r, term, trunc, _ = env.step(action)
        b_obs[t], b_next[t], b_act[t], b_rew[t], b_done[t] = obs, nxt, action, r, term
        obs = nxt
        if term or trunc:
            obs, _ = env.reset()
        if t >= STEPS_LEARN:
            idx = rng.integers(0, t + 1, 32)
            o, n = torch.from_numpy(b_obs[idx]), torch.from_numpy(b_next[idx])
            a, rw, d = (torch.from_numpy(b_act[idx]), torch.from_numpy(b_rew[idx]),
                        torch.from_numpy(b_done[idx]))
            with torch.no_grad():
                y = rw + 0.99 * target(n).max(1).values * (1 - d)
            pred = q(o).gather(1, a.unsqueeze(1)).squeeze(1)
            loss = ((pred - y) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            if t % 100 == 0:
                target.load_state_dict(q.state_dict())
    return steps / (time.perf_counter() - start)


# --- the population trainer ---------------------------------------------------------------


def filled_population(k: int, learning_starts: int, hidden=(64, 64), threads: int = 1,
                      seed: int = 0, env_id: str = "CartPole-v1", same: bool = False,
                      device: str = "cpu"):
    """A :class:`~evorl_nb.batched.Population` of k distinct losses (``same``: k copies
    of DQN's) with seeds seed, seed+1, ... on the quick preset, no step or episode budget,
    on ``device``, added but not stepped yet."""
    from evorl_nb import library
    from evorl_nb.dqn import get_config
    from evorl_nb.batched import Population

    cfg = get_config("quick", hidden=hidden, learning_starts=learning_starts,
                     max_steps=10**9, budget_steps=10**9, num_threads=threads,
                     eps_decay_steps=1000, device=device)
    pop = Population(env_id, cfg, slots=k)
    progs = [library.get("dqn")] * k if same else distinct_losses(k, seed)
    for i, prog in enumerate(progs):
        pop.add(prog, seed=seed + i)
    return pop


def population(k: int, steps: int, hidden=(64, 64), threads: int = 1, seed: int = 0,
               env_id: str = "CartPole-v1", same: bool = False, device: str = "cpu") -> float:
    """A population of k distinct losses; agent-steps per second over ``steps`` batched
    steps that all learn (one update each): the first ``STEPS_LEARN`` update-free steps are
    run untimed, since they cost a fraction of a learning step and would flatter the rate.
    (Every step waits for the device: acting reads the greedy actions back to the host.)"""
    pop = filled_population(k, STEPS_LEARN, hidden, threads, seed, env_id, same, device)
    pop.advance(max_steps=STEPS_LEARN + 5)
    before = int(pop.steps.sum())
    start = time.perf_counter()
    pop.advance(max_steps=steps)
    rate = (int(pop.steps.sum()) - before) / (time.perf_counter() - start)
    pop.close()
    return rate


def env_only(k: int, steps: int, env_id: str = "CartPole-v1") -> float:
    """Batched environment steps per second (random actions, auto-resets)."""
    from evorl_nb.envs.vector import make_vector_env

    env = make_vector_env(env_id, k)
    env.reset(list(range(k)))
    rng = np.random.default_rng(0)
    acts = rng.integers(0, env.n_actions, (steps, k))
    start = time.perf_counter()
    for t in range(steps):
        env.step(acts[t])
    return k * steps / (time.perf_counter() - start)


def update_only(k: int, updates: int, hidden=(64, 64), threads: int = 1) -> float:
    """Batched updates per second times k (agent-updates/s): sample, losses, backward, Adam."""
    torch.set_num_threads(threads)  # _update runs outside the trainer's thread setting
    pop = filled_population(k, 10**9, hidden, threads)
    pop.advance(max_steps=2000)  # fills every replay buffer, no learning yet
    learn = pop.active[pop.rows].copy()

    def update() -> int:  # a loss that fails stops learning, as in the trainer's loop
        n = int(learn.sum())
        failed = list(pop._update(learn))
        learn[failed] = False
        pop.active[pop.rows[failed]] = False
        return n

    for _ in range(3):
        update()
    start = time.perf_counter()
    done = sum(update() for _ in range(updates))
    rate = done / (time.perf_counter() - start)
    pop.close()
    return rate


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def mm_rate(device: str = "cpu", n: int = 2048, reps: int = 10) -> float:
    """Dense float32 ``n x n`` matmul FLOP/s on ``device`` (CPU: the current torch threads)."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    torch.mm(a, b)
    _sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        torch.mm(a, b)
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - start)


def matmul_rate(threads: int) -> float:
    """Dense float32 matmul FLOP/s with ``threads`` torch threads."""
    torch.set_num_threads(threads)
    return mm_rate()


def flops_per_agent_step(hidden, obs_dim=4, n_actions=2, batch=32, n_online=2, n_target=1):
    """Matmul FLOPs of one agent-step: acting (1 row), the loss's forward passes (online on
    n_online batches, target on n_target) and the backward of the online ones (2x)."""
    sizes = [obs_dim, *hidden, n_actions]
    macs = sum(a * b for a, b in zip(sizes, sizes[1:]))
    rows = 1 + batch * (n_online * 3 + n_target)
    return 2 * macs * rows


# --- whole-machine runs: one process per core ---------------------------------------------------


def core_seeds(cores: int) -> list[int]:
    """The first agent seed of each process of a whole-machine population run."""
    return [1000 * i for i in range(cores)]


def population_per_core(k: int, steps: int, cores: int, hidden=(64, 64),
                        same: bool = False) -> float:
    """K agents on the whole machine: one process per core with k / cores agents and one
    torch thread each, run at the same time; the sum of their agent-steps per second."""
    return parallel(population, [(k // cores, steps, hidden, 1, s, "CartPole-v1", same)
                                 for s in core_seeds(cores)])


def loss_flops(k: int, seed: int, hidden=(256, 256)) -> float:
    """Matmul FLOPs of one agent-step, averaged over the k distinct losses of ``seed``
    (a loss calls the online net on s_{t+1}, or the target net, or neither)."""
    from evorl_nb.batched import LossPlan

    plan = LossPlan(distinct_losses(k, seed))
    n_online = sum(len(a) for c, a in plan.combo_agents.items() if c[0] == 0) / k
    n_target = sum(len(a) for c, a in plan.combo_agents.items() if c[0] != 0) / k
    return flops_per_agent_step(hidden, n_online=n_online, n_target=n_target)


def paper_net(k: int, steps: int, cores: int) -> dict:
    """The 256-256 network, K=k on the whole machine: FLOP utilization against the dense
    matmul rate, for one process per core (k / cores agents each, 1 thread) and for one
    process with ``cores`` threads."""
    peak = matmul_rate(cores)
    torch.set_num_threads(1)
    # only steps that learn are timed: every one of them pays the FLOPs counted here
    procs = population_per_core(k, steps, cores, hidden=(256, 256))
    procs_flops = procs * sum(loss_flops(k // cores, s) for s in core_seeds(cores)) / cores
    threads = population(k, steps, hidden=(256, 256), threads=cores)
    threads_flops = threads * loss_flops(k, 0)
    torch.set_num_threads(1)
    print(f"\n256-256, K={k}; dense mm peak {peak / 1e9:.1f} GFLOP/s ({cores} threads)")
    for what, rate, flops in ((f"{cores} procs", procs, procs_flops),
                              (f"{cores} threads", threads, threads_flops)):
        print(f"  {what:10} {rate:>8,.0f} agent-steps/s = {flops / 1e9:.1f} GFLOP/s of matmul "
              f"-> {flops / peak:.0%} utilization")
    best = max(procs_flops, threads_flops)
    return {"k": k, "agent_steps_per_s": max(procs, threads), "flops": best,
            "matmul_peak": peak, "utilization": best / peak,
            "procs": {"agent_steps_per_s": procs, "utilization": procs_flops / peak},
            "threads": {"agent_steps_per_s": threads, "utilization": threads_flops / peak}}


def on_device(device: str, ks: list[int], steps: int, base_all: float) -> dict:
    """The population trainer on an accelerator, one process: K distinct losses for each
    K in ``ks``, the largest K as copies of DQN's loss, and the 256-256 network's FLOP rate
    against the device's dense matmul rate."""
    cuda = torch.device(device).type == "cuda"
    name = torch.cuda.get_device_name(device) if cuda else platform.processor() or device
    out: dict = {"name": name, "population": {}}
    print(f"\n{name} ({device}), one process")
    population(8, 20, device=device)  # first kernels, allocator
    for k in ks:
        rate = population(k, steps, device=device)
        out["population"][k] = rate
        print_row(f"population K={k}, {device}", rate, base_all)
    same = population(ks[-1], steps, device=device, same=True)
    out["same_loss"] = {"k": ks[-1], "rate": same}
    print_row(f"K={ks[-1]} copies of DQN, {device}", same, base_all)
    peak = mm_rate(device, 8192, 20)
    k = ks[-1]
    rate = population(k, max(30, steps // 4), hidden=(256, 256), device=device)
    flops = rate * loss_flops(k, 0)
    out["paper_net"] = {"k": k, "agent_steps_per_s": rate, "flops": flops,
                        "matmul_peak": peak, "utilization": flops / peak}
    print(f"  256-256, K={k}: {rate:,.0f} agent-steps/s = {flops / 1e12:.2f} TFLOP/s of "
          f"matmul, {flops / peak:.0%} of the dense mm rate {peak / 1e12:.1f} TFLOP/s")
    return out


def print_row(what: str, rate: float, base: float) -> None:
    """One line of the table: what, agent-steps/s, and the ratio to ``base``."""
    print(f"{what:34} {rate:>14,.0f} {rate / base:>11.2f}")


def warm_up() -> None:
    """Pay the one-off costs (imports, first kernels, env registration) before timing."""
    sequential_dqn(STEPS_LEARN + 20)
    population(2, 20)


def _in_process(fn, args, out):
    torch.set_num_threads(1)
    warm_up()
    out.put(fn(*args))


def parallel(fn, args_per_proc) -> float:
    """Run fn(*args) in one spawned process per entry at the same time; sum of the rates."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_in_process, args=(fn, a, q)) for a in args_per_proc]
    for p in procs:
        p.start()
    rates = [q.get() for _ in procs]
    for p in procs:
        p.join()
    return sum(rates)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    ap.add_argument("--ks", default="1,8,32,128,512", help="population sizes to time (CPU)")
    ap.add_argument("--device", help="also time the population on this device (e.g. cuda)")
    ap.add_argument("--device-ks", default="1024,2048,4096",
                    help="population sizes to time on --device")
    ap.add_argument("--steps", type=int, default=600, help="env steps per agent per timing")
    ap.add_argument("--paper-net", action="store_true", help="also time the 256-256 network")
    ap.add_argument("--json", help="write the results to this JSON file")
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    ks = [int(k) for k in args.ks.split(",")]
    steps = args.steps
    if args.quick:
        ks, steps = [1, 8, 32], 200
    torch.set_num_threads(1)
    warm_up()
    res: dict = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": cores,
                             "torch": torch.__version__, "python": platform.python_version()},
                 "steps": steps}
    print(f"{cores} cores, torch {torch.__version__}; CartPole-v1, 64-64, batch 32, "
          f"1 update/step, {steps} steps per agent\n")
    # the baseline gets the benefit of the doubt: long runs (the first 100 update-free steps
    # vanish), best of three, so noise on a shared machine can only shrink the ratios
    base_steps = max(steps, 4000)
    base1 = max(sequential_dqn(base_steps, (64, 64), i) for i in range(3))
    base_all = max(parallel(sequential_dqn, [(base_steps, (64, 64), 10 * r + i)
                                             for i in range(cores)]) for r in range(3))
    res["sequential"] = {"one_core": base1, "machine": base_all}
    print(f"{'what':34} {'agent-steps/s':>14} {'x baseline':>11}")
    print_row("sequential, 1 core", base1, base1)
    print_row(f"sequential, {cores} procs (machine)", base_all, base_all)
    res["population"] = {}
    for k in ks:
        one = population(k, steps)
        row = {"one_core": one}
        print_row(f"population K={k}, 1 core", one, base1)
        if k >= cores:
            machine = population_per_core(k, steps, cores)
            threads = population(k, steps, threads=cores)
            row.update(machine_procs=machine, machine_threads=threads)
            print_row(f"population K={k}, {cores} procs (machine)", machine, base_all)
            print_row(f"population K={k}, {cores} threads", threads, base_all)
        res["population"][k] = row
    # what the losses' diversity costs: the largest K again, every agent with DQN's loss
    # (copies share their grouped calls: a handful per update instead of ~100-300)
    k = ks[-1]
    if k >= cores:
        same = population_per_core(k, steps, cores, same=True)
        res["same_loss"] = {"k": k, "machine_procs": same}
        print_row(f"K={k} copies of DQN, {cores} procs", same, base_all)
    print("\nparts (1 core)")
    res["env_only"], res["update_only"] = {}, {}
    for k in ks:
        e = env_only(k, max(50, steps // 2))
        u = update_only(k, max(20, steps // 10))
        res["env_only"][k], res["update_only"][k] = e, u
        print(f"  K={k:<5} env only {e:>12,.0f} env-steps/s   update only {u:>10,.0f} "
              f"agent-updates/s")
    if args.paper_net:
        res["paper_net"] = paper_net(32 if args.quick else 128, max(30, steps // 10), cores)
    if args.device:
        dks = [64, 256] if args.quick else [int(k) for k in args.device_ks.split(",")]
        res["device"] = on_device(args.device, dks, steps, base_all)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
