"""The training experiments: every algorithm x seed of each env, and the tables they write.

:func:`run_training` trains an experiment's losses (with the population trainer, or one
agent at a time with a :class:`~evorl_nb.reproduce.tracking.BranchTracker` for the
"cases" kind) and writes ``runs.csv``, ``summary.csv``, ``episodes.csv`` (thinned by
:func:`thin`) and ``cases.csv``. :func:`loss_program` and :func:`label` resolve the
losses an experiment names, a library name or a program file.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from evorl_nb.reproduce.tables import write_csv
from evorl_nb.reproduce.tracking import BranchTracker
from evorl_nb.stats import ci95

if TYPE_CHECKING:
    from evorl_nb.reproduce.experiments import Experiment

__all__ = ["EPISODE_ROWS", "thin", "loss_program", "label", "run_training"]

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


def run_training(exp: Experiment, config, env_ids, n_seeds: int, folder: Path,
                 progress: bool) -> None:
    """Train the experiment's algorithms x seeds on each env; write runs, summary, episodes
    (and, for the "cases" kind, cases.csv)."""
    from evorl_nb.batched import train_population
    from evorl_nb.dqn import train
    from evorl_nb.envs import get_spec
    from evorl_nb.evaluate import env_seed

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
    write_csv(folder / "runs.csv", runs)
    write_csv(folder / "summary.csv", summary)
    write_csv(folder / "episodes.csv", episodes)
    if exp.kind == "cases":
        write_csv(folder / "cases.csv", cases)
