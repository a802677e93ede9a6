"""The paper's experiments and :func:`run`, which runs one at a budget.

The table of experiments (which losses, on which envs, checking which claim) and the
driver live together so the command line, the notebook and the tests name one place;
the training and the search themselves are in :mod:`~evorl_nb.reproduce.training` and
:mod:`~evorl_nb.reproduce.search`.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from evorl_nb.presets import BUDGETS
from evorl_nb.reproduce.search import run_search
from evorl_nb.reproduce.training import EPISODE_ROWS, label, loss_program, run_training

__all__ = ["ALGORITHMS", "Experiment", "EXPERIMENTS", "RESULTS", "run", "trainer_config"]

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
    a time with :class:`~evorl_nb.reproduce.tracking.BranchTracker`) or "search" (an
    evolution run)."""
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
        meta.update(run_search(exp, budget, folder, search_envs, progress, workers))
        meta["envs"] = list(meta["evolution"]["envs"])
    else:
        meta.update({"seeds": n_seeds, "episode_rows_per_run": EPISODE_ROWS,
                     "trainer": {k: (list(v) if isinstance(v, tuple) else v)
                                 for k, v in config.__dict__.items()}})
        run_training(exp, config, env_ids, n_seeds, folder, progress)
    import torch

    meta.update({"wall_time_s": time.perf_counter() - start,
                 "python": platform.python_version(), "torch": torch.__version__,
                 "machine": platform.machine(), "cpus": os.cpu_count()})
    (folder / "meta.json").write_text(json.dumps(meta, indent=1))
    return folder


def trainer_config(budget: str):
    """The :class:`~evorl_nb.presets.DQNConfig` a budget trains with."""
    from evorl_nb.presets import trainer_config as resolve

    return resolve(BUDGETS[budget]["trainer"])
