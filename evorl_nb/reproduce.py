"""The paper's experiments at a chosen budget: ``evorl-nb reproduce EXPERIMENT --budget B``.

Each experiment trains the hand-designed and learned losses with the population trainer
(every algorithm x seed of one environment is one batch) and writes small files to
``OUT/EXPERIMENT/`` (by default ``docs/results/reproduce/BUDGET/EXPERIMENT/``):

* ``runs.csv``: one row per (algorithm, env, seed): normalized scores over all episodes
  (the paper's) and the last 50, failure, steps, episodes;
* ``summary.csv``: per (algorithm, env): mean and 95% confidence interval (Student t over
  seeds) of both scores;
* ``episodes.csv``: the training episodes (return, normalized return, the online net's
  max_a Q(s_0, a), the realized discounted return), at most :data:`EPISODE_ROWS` per run,
  evenly spaced and always the last (a MiniGrid run has thousands): learning curves and
  the Q-value overestimation study are drawn from it (:func:`evorl_nb.viz.experiments.figures`);
* ``meta.json``: the command, budget, trainer settings, seeds, versions and wall time.

The ``clipped_cases`` experiment also writes ``cases.csv`` (which side of each of
DQNClipped's max ops won, per training-step bin; :class:`BranchTracker`), and the search
experiments (``search``: bootstrapped from DQN; ``scratch``: from scratch) write the run
store ``run/runs.sqlite``, ``table.csv`` (the slides' table: raw and simplified equation,
score, rank, family) and ``convergence.csv`` instead of the training tables.
:func:`evorl_nb.viz.experiments.save_figures` exports every figure as PNG (kaleido, through
Chromium); this module draws nothing (figures live in ``evorl_nb.viz``).

Budgets: ``ci`` (seconds, for the test suite), ``quick`` (the ``quick`` trainer and
evolution preset, 5 seeds: this machine's scale), ``long`` (the quick network for the
paper's step budgets and exploration schedule, 3 seeds) and ``paper`` (the paper's
trainer, evolution preset and budgets, 5 seeds).

>>> sorted(EXPERIMENTS)
['clipped_cases', 'generalization', 'overestimation', 'scratch', 'search', 'training']
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from evorl_nb.presets import BUDGETS
from evorl_nb.stats import ci95

__all__ = ["EXPERIMENTS", "BUDGETS", "Experiment", "BranchTracker", "run", "load",
           "overestimation_bias", "case_summary", "program_table", "family",
           "write_search_tables",
           "trainer_config", "thin", "ci95"]

ALGORITHMS = ("dqn", "ddqn", "dqn_reg", "dqn_clipped", "cql", "mdqn")
"""The losses compared: the paper's four plus CQL and M-DQN (facts.md §4)."""


@dataclass(frozen=True)
class Experiment:
    """One of the paper's experiments: which losses, on which envs."""

    name: str
    """Its name on the command line."""
    algorithms: tuple[str, ...]
    """Library losses trained."""
    envs: tuple[str, ...]
    """Environments, each trained as one batch of algorithms x seeds."""
    claim: str
    """The paper's claim it checks (facts.md §4)."""
    kind: str = "train"
    """"train" (the algorithms x seeds with the population trainer), "cases" (one agent at
    a time with :class:`BranchTracker`) or "search" (an evolution run)."""
    space: str = "bootstrap"
    """A search's space: "bootstrap" (from the ``algorithms``) or "scratch"."""


EXPERIMENTS: dict[str, Experiment] = {
    "training": Experiment(
        "training", ALGORITHMS,
        ("CartPole-v0", "MiniGrid-KeyCorridorS3R1-v0", "MiniGrid-Dynamic-Obstacles-6x6-v0",
         "MiniGrid-DoorKey-5x5-v0"),
        "On the training environments the learned losses (DQNReg, DQNClipped) match or "
        "beat DQN and DDQN."),
    "generalization": Experiment(
        "generalization", ALGORITHMS,
        ("Acrobot-v1", "MountainCar-v0", "LunarLander-v3", "MiniGrid-SimpleCrossingS9N1-v0",
         "MiniGrid-DoorKey-6x6-v0", "MiniGrid-Unlock-v0", "MiniGrid-LavaGapS5-v0"),
        "DQNReg generalizes to environments it was not evolved on, beating DQN and DDQN."),
    "overestimation": Experiment(
        "overestimation", ("dqn", "ddqn", "dqn_clipped", "dqn_reg"),
        ("CartPole-v0", "MiniGrid-Dynamic-Obstacles-6x6-v0"),
        "DQN overestimates Q-values; DDQN and DQNClipped underestimate, DQNReg underestimates "
        "strongly."),
    "clipped_cases": Experiment(
        "clipped_cases", ("dqn_clipped",),
        ("CartPole-v0", "MiniGrid-Dynamic-Obstacles-6x6-v0"),
        "DQNClipped: the plain-TD case is active ~95% of the time; the Q-minimizing case is "
        "more active early in training.", kind="cases"),
    "search": Experiment(
        "search", ("dqn",), ("CartPole-v0",),
        "Top bootstrapped programs all have the form δ^2 + k*Q(s_t, a_t); terms with no "
        "gradient path to the online network drop out when simplified.", kind="search"),
    "scratch": Experiment(
        "scratch", (), ("CartPole-v0",),
        "From scratch with CartPole the search rediscovers the TD loss.", kind="search",
        space="scratch"),
}
"""The experiments by name."""

EPISODE_ROWS = 300
"""At most this many episodes of one run are kept in ``episodes.csv`` (evenly spaced)."""


def thin(n: int, limit: int = EPISODE_ROWS) -> np.ndarray:
    """Indices of at most ``limit`` of ``n`` episodes, evenly spaced, first and last kept.

    >>> thin(5, 3).tolist()
    [0, 2, 4]
    """
    if n <= limit:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, limit).round().astype(int))


RESULTS = Path("docs/results/reproduce")
"""Where results go by default: ``RESULTS/BUDGET/EXPERIMENT/``."""


def run(experiment: str, budget: str = "ci", out: str | Path | None = None, *,
        seeds: int | None = None, envs: tuple[str, ...] | None = None,
        algorithms: tuple[str, ...] | None = None, progress: bool = True,
        workers: int | None = None) -> Path:
    """Run one experiment at a budget; returns the folder its files were written to,
    ``OUT/EXPERIMENT`` (``out`` defaults to ``RESULTS/BUDGET``).

    ``seeds``, ``envs`` and ``algorithms`` (library names) override the budget's and the
    experiment's; ``workers`` is the number of local worker processes of a search (default:
    one per core; the ci budget searches in-process).
    """
    from evorl_nb.envs import get_spec

    if experiment not in EXPERIMENTS:
        raise KeyError(f"unknown experiment {experiment!r}; known: {', '.join(EXPERIMENTS)}")
    if budget not in BUDGETS:
        raise KeyError(f"unknown budget {budget!r}; known: {', '.join(BUDGETS)}")
    exp = EXPERIMENTS[experiment]
    for env_id in envs or ():
        get_spec(env_id)  # an unknown env id fails here, before any training
    n_seeds = seeds or BUDGETS[budget]["seeds"]
    config = trainer_config(budget)
    if algorithms:
        from evorl_nb import library

        unknown = [a for a in algorithms if a not in library.names() and not Path(a).is_file()]
        if unknown:
            raise KeyError(f"unknown algorithm(s) {', '.join(unknown)}; known: "
                           f"{', '.join(library.names())}, or a program .json file")
        if exp.kind != "search":
            for a in algorithms:
                loss_program(a)  # a bad program file fails here, before any training
        exp = replace(exp, algorithms=tuple(algorithms))
    env_ids = tuple(get_spec(e).env_id for e in (envs or exp.envs))
    folder = Path(out if out is not None else RESULTS / budget) / experiment
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    meta: dict[str, Any] = {
        "experiment": experiment, "claim": exp.claim, "budget": budget,
        "command": f"evorl-nb reproduce {experiment} --budget {budget}"
                   + (f" --seeds {seeds}" if seeds else "")
                   + (f" --envs {' '.join(envs)}" if envs else "")
                   + (f" --algorithms {' '.join(algorithms)}" if algorithms else ""),
        "envs": list(env_ids), "algorithms": [label(a) for a in exp.algorithms]}
    if exp.kind == "search":
        # the paper budget searches on the paper's envs with its hurdle, unless told otherwise
        search_envs = None if budget == "paper" and not envs else env_ids
        meta.update(_search(exp, budget, folder, search_envs, progress, workers))
        meta["envs"] = list(meta["evolution"]["envs"])
    else:
        meta.update({"seeds": n_seeds, "episode_rows_per_run": EPISODE_ROWS,
                     "trainer": {k: (list(v) if isinstance(v, tuple) else v)
                                 for k, v in config.__dict__.items()}})
        _train(exp, config, env_ids, n_seeds, folder, progress)
    import torch

    meta.update({"wall_time_s": time.perf_counter() - start,
                 "python": platform.python_version(), "torch": torch.__version__,
                 "machine": platform.machine(), "cpus": os.cpu_count()})
    (folder / "meta.json").write_text(json.dumps(meta, indent=1))
    return folder


def loss_program(spec: str):
    """An experiment's loss: a library name, or the path of a program JSON file (a program
    found by a search, written by ``evorl-nb export RUN --format json``)."""
    from evorl_nb import library
    from evorl_nb.program import Program

    if spec in library.names():
        return library.get(spec)
    return Program.from_record(Path(spec).read_text(), spec)


def label(spec: str) -> str:
    """The name an experiment's tables and figures give a loss: the library name, or the
    program file's stem."""
    from evorl_nb import library

    return spec if spec in library.names() else Path(spec).stem


def trainer_config(budget: str):
    """The :class:`~evorl_nb.presets.DQNConfig` a budget trains with."""
    from evorl_nb.presets import trainer_config as resolve

    return resolve(BUDGETS[budget]["trainer"])


def _train(exp: Experiment, config, env_ids, n_seeds: int, folder: Path, progress: bool) -> None:
    """Train the experiment's algorithms x seeds on each env; write runs, summary, episodes
    (and, for the "cases" kind, cases.csv)."""
    from evorl_nb.dqn import train
    from evorl_nb.envs import get_spec
    from evorl_nb.evaluate import env_seed
    from evorl_nb.batched import train_population

    runs, episodes, cases = [], [], []
    jobs = [(a, s) for a in exp.algorithms for s in range(n_seeds)]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        total = len(env_ids) * (len(jobs) if exp.kind == "cases" else 1)
        bar = tqdm(total=total, desc=f"{exp.name}", unit="run" if exp.kind == "cases" else "env")
    for env_id in env_ids:
        spec = get_spec(env_id)
        seeds = [env_seed(s, spec.env_id) for _, s in jobs]
        if exp.kind == "cases":  # one agent at a time, its loss wrapped to record the cases
            results = []
            for (alg, seed), train_seed in zip(jobs, seeds, strict=True):
                tracker = BranchTracker(loss_program(alg))
                results.append(train(tracker, spec.env_id, config, seed=train_seed))
                cases += tracker.rows(config, alg=label(alg), env=spec.env_id, seed=seed)
                if bar is not None:
                    bar.update(1)
        else:  # every algorithm x seed of this env as one batch
            results = train_population([loss_program(a) for a, _ in jobs], spec.env_id, config,
                                       seeds=seeds)
            if bar is not None:
                bar.update(1)
        for (alg, seed), r in zip(jobs, results, strict=True):
            fs = config.failure_score
            runs.append({"algorithm": label(alg), "env": spec.env_id, "seed": seed,
                         "score_all": r.score(spec, "all", fs),
                         "score_last50": r.score(spec, "last50", fs),
                         "failed": r.failed, "reason": r.reason or "", "steps": r.steps,
                         "episodes": len(r.episodes)})
            norm = spec.normalize(r.returns) if r.episodes else []
            for i in thin(len(r.episodes)):
                e, n = r.episodes[i], norm[i]
                episodes.append({"algorithm": label(alg), "env": spec.env_id, "seed": seed,
                                 "episode": e.episode, "step": e.step, "return": e.ret,
                                 "normalized": float(n), "q_initial": e.q_initial,
                                 "discounted_return": e.discounted_return})
    if bar is not None:
        bar.close()
    summary = []
    for alg in map(label, exp.algorithms):
        for env_id in env_ids:
            rows = [r for r in runs if r["algorithm"] == alg and r["env"] == env_id]
            m_all, c_all = ci95([r["score_all"] for r in rows])
            m_last, c_last = ci95([r["score_last50"] for r in rows])
            summary.append({"algorithm": alg, "env": env_id, "seeds": len(rows),
                            "score_all": m_all, "ci95_all": c_all,
                            "score_last50": m_last, "ci95_last50": c_last,
                            "failed": sum(r["failed"] for r in rows)})
    _write_csv(folder / "runs.csv", runs)
    _write_csv(folder / "summary.csv", summary)
    _write_csv(folder / "episodes.csv", episodes)
    if exp.kind == "cases":
        _write_csv(folder / "cases.csv", cases)


class BranchTracker:
    """A program's loss that also records, at every update, which side of each live Max and
    Min node won: the fraction of the batch's elements where the node took its first input.

    Pass it to :func:`evorl_nb.dqn.train` as the loss; it trains exactly as the program does.

    >>> from evorl_nb import library
    >>> tracker = BranchTracker(library.get("dqn_clipped"))
    >>> list(tracker.labels.values())  # max[Q, δ^2 + Y] + max[δ, γ*(max_a Q_targ)^2]
    [('Q(s_t, a_t)', 'Y + δ^2'), ('δ', 'γ*max_a(Q_targ(s_{t+1}, a))^2')]
    """

    def __init__(self, program):
        from evorl_nb.program import N_INPUTS

        self.program = program
        """The program whose loss is computed."""
        self.name = program.name
        """The program's name (the trainer's progress bar shows it)."""
        self.nodes = [i for i in program.live()
                      if i >= N_INPUTS and program.node(i).op in ("Max", "Min")]
        """Graph indices of the live Max and Min nodes, in graph order."""
        self.labels = {i: tuple(_sub_equation(program, j) for j in program.node(i).inputs)
                       for i in self.nodes}
        """Per tracked node: the equations of its two inputs."""
        self.history: list[list[float]] = []
        """Per update: per tracked node, the fraction of elements that took the first input."""

    def loss(self, batch, q_net, target_net, gamma: float = 0.99, *, generator=None):
        """The program's scalar loss; records the branch fractions of this batch."""
        import torch

        trace: list = []
        value = self.program.evaluate(batch, q_net, target_net, gamma, generator=generator,
                                      trace=trace).mean()
        row = []
        with torch.no_grad():
            for i in self.nodes:
                a, b = (trace[j] for j in self.program.node(i).inputs)
                first = a >= b if self.program.node(i).op == "Max" else a <= b
                row.append(float(torch.as_tensor(first).float().mean()))
        self.history.append(row)
        return value

    def rows(self, config, **columns) -> list[dict]:
        """The history in at most 50 bins of updates, one row per (bin, node): the bin's
        last environment step and its mean fraction; ``columns`` are added to every row."""
        out = []
        h = np.asarray(self.history, dtype=float).reshape(len(self.history), len(self.nodes))
        if not len(h):
            return out
        for chunk in np.array_split(np.arange(len(h)), min(50, len(h))):
            step = config.learning_starts + int(chunk[-1]) * config.train_every
            for k, i in enumerate(self.nodes):
                first, second = self.labels[i]
                out.append({**columns, "node": i, "op": self.program.node(i).op,
                            "first": first, "second": second, "step": step,
                            "updates": len(chunk), "fraction_first": float(h[chunk, k].mean())})
        return out


def _sub_equation(program, index: int) -> str:
    """The sub-graph ending at ``index`` in the paper's notation (δ, Y: DQN's target)."""
    from evorl_nb import symbols
    from evorl_nb.symbolic import DQN_TARGET, node_expressions, notation

    expr, _ = notation(node_expressions(program, guards=False)[index], DQN_TARGET)
    return symbols.to_text(expr)


def case_summary(folder: str | Path | dict):
    """Per (env, node): the fraction of elements that took each side of the max, over all of
    training, over its first 10% and its second half (mean and 95% CI over seeds). ``folder``
    may also be what :func:`load` returned."""
    import pandas as pd

    cases = load(folder)["cases"]
    rows = []
    for (env, node), g in cases.groupby(["env", "node"], sort=False):
        row = {"env": env, "node": int(node), "op": g.op.iloc[0], "first": g["first"].iloc[0],
               "second": g["second"].iloc[0]}
        for part, pick in (("all", lambda s: s),
                           ("early", lambda s: s[s.step <= s.step.min()
                                                 + 0.1 * (s.step.max() - s.step.min())]),
                           ("late", lambda s: s[s.step >= (s.step.min() + s.step.max()) / 2])):
            per_seed = [float(np.average(p.fraction_first, weights=p.updates))
                        for _, s in g.groupby("seed") if len(p := pick(s))]
            row[f"first_{part}"], row[f"ci95_{part}"] = ci95(per_seed)
        row["seeds"] = g.seed.nunique()
        rows.append(row)
    return pd.DataFrame(rows)


def _search(exp: Experiment, budget: str, folder: Path, env_ids, progress: bool,
            workers: int | None) -> dict:
    """Run the experiment's search into ``folder/run``; write table.csv and convergence.csv.
    ``env_ids`` None keeps the evolution preset's envs and hurdle."""
    import shutil

    from evorl_nb import runner
    from evorl_nb.evolve import get_preset

    overrides: dict[str, Any] = {"space": exp.space}
    if env_ids is not None:
        overrides.update(envs=tuple(env_ids), hurdle=None)
    if exp.algorithms:
        overrides["seed_programs"] = tuple(exp.algorithms)
    config = get_preset(BUDGETS[budget]["evolution"], **overrides)
    run_dir = folder / "run"
    if run_dir.exists():  # a new search each time: the folder holds this command's results
        shutil.rmtree(run_dir)
    backend = "inprocess" if budget == "ci" else "local"
    runner.start(run_dir, config, seed=0, backend=backend,
                 workers=None if backend == "inprocess" else (workers or os.cpu_count()),
                 progress=progress, verbose=False)
    out = write_search_tables(folder, runner.store_path(run_dir))
    return {"evolution": config.to_dict(), "backend": backend, **out}


def write_search_tables(folder: str | Path, store: str | Path) -> dict:
    """Write ``table.csv`` and ``convergence.csv`` of a search's run store into ``folder``;
    returns its rates and the store's path relative to ``folder`` (for meta.json)."""
    from evorl_nb.store import load_run

    folder = Path(folder)
    data = load_run(store)
    _write_csv(folder / "table.csv", program_table(data))
    df = data.candidates
    fit = df["fitness"].where(df["status"] != "failed").astype(float)
    conv = [{"id": int(i), "status": st, "fitness": None if math.isnan(f) else float(f),
             "best_so_far": None if math.isnan(b) else float(b)}
            for i, st, f, b in zip(df["id"], df["status"], fit, fit.cummax(), strict=True)]
    _write_csv(folder / "convergence.csv", conv)
    return {"rates": data.rates(), "run": str(Path(store).resolve().relative_to(folder.resolve()))}


def program_table(data, k: int = 10) -> list[dict]:
    """The slides' table for a run: its ``k`` best distinct losses with raw and simplified
    equation, score (fitness), rank among all candidates, times proposed, and family."""
    from evorl_nb.program import Program

    df = data.candidates
    rank = {int(i): r for r, i in enumerate(data.best(len(df))["id"], start=1)}
    counts = df["fingerprint"].value_counts()
    rows = []
    for _, row in data.best(k, distinct=True).iterrows():
        program = Program.from_json(row["program"])
        rows.append({"rank": rank[int(row["id"])], "id": int(row["id"]),
                     "score": float(row["fitness"]),
                     "proposed": int(counts.get(row["fingerprint"], 1)),
                     "raw": program.equation(simplify=False),
                     "simplified": program.equation(), "family": family(program)})
    return rows


def family(program) -> str:
    """Which family a loss belongs to: "δ^2" (the TD loss with DQN's target), "c*δ^2",
    "δ^2 + k*Q" (the paper's learned family, k printed), each with "(other Y)" when its target
    is not DQN's, or "other".

    >>> from evorl_nb import library
    >>> family(library.get("dqn")), family(library.get("dqn_reg"))
    ('δ^2', 'δ^2 + 0.1*Q')
    """
    import sympy

    from evorl_nb.symbolic import DQN_TARGET, Q_SA, delta, notation, simplify

    def simp(x):  # sympy.simplify raises on some evolved terms (e.g. max of a batch mean)
        try:
            return sympy.simplify(x)
        except Exception:
            return None

    try:
        out, target = notation(simplify(program))
    except Exception:
        return "other"
    if target is None:
        return "other"
    suffix = "" if simp(target - DQN_TARGET) == 0 else " (other Y)"
    rest = sympy.expand(out - delta**2)
    if rest == 0:
        return "δ^2" + suffix
    k = simp(rest / Q_SA)
    if k is not None and k.is_number:
        return f"δ^2 + {float(k):g}*Q" + suffix
    c = simp(out / delta**2)
    if c is not None and c.is_number:
        return f"{float(c):g}*δ^2" + suffix
    return "other"


def _write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        if not rows:
            return
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def load(folder: str | Path | dict) -> dict:
    """An experiment folder's tables as pandas DataFrames (those it has of runs, summary,
    episodes, cases, table, convergence), its meta and the folder. Given what ``load``
    returned, returns it as it is (so callers can read a folder once and pass it around)."""
    import pandas as pd

    if isinstance(folder, dict):
        return folder
    folder = Path(folder)
    out: dict[str, Any] = {"meta": json.loads((folder / "meta.json").read_text()),
                           "folder": folder}
    for name in ("runs", "summary", "episodes", "cases", "table", "convergence"):
        path = folder / f"{name}.csv"
        if path.exists() and path.stat().st_size:
            out[name] = pd.read_csv(path)
    return out


def overestimation_bias(folder: str | Path | dict):
    """Per (algorithm, env): mean of Q(s_0) - realized discounted return over the second half
    of training (after exploration and early learning), with a 95% CI over seeds. ``folder``
    may also be what :func:`load` returned."""
    data = load(folder)
    ep = data["episodes"]
    rows = []
    for (alg, env), g in ep.groupby(["algorithm", "env"], sort=False):
        per_seed = []
        for _, s in g.groupby("seed"):
            late = s[s.step >= s.step.max() / 2]
            per_seed.append(float((late.q_initial - late.discounted_return).mean()))
        m, c = ci95(per_seed)
        rows.append({"algorithm": alg, "env": env, "bias": m, "ci95": c, "seeds": len(per_seed)})
    import pandas as pd

    return pd.DataFrame(rows)


