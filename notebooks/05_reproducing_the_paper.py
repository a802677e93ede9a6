# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 5. Reproducing the paper's findings
#
# Co-Reyes et al. make five claims that a machine of our size can check (the sixth, the
# Atari table, is out of reach here). Each has an experiment in `evorl_nb.reproduce`, also
# runnable from a shell as `evorl-nb reproduce NAME --budget quick`:
#
# | experiment | the paper's claim |
# |---|---|
# | `training` | on the training envs, the learned losses (DQNReg, DQNClipped) match or beat DQN and DDQN |
# | `generalization` | DQNReg does well on envs it was not evolved on, where the baselines fail |
# | `overestimation` | DQN overestimates Q-values; DDQN and DQNClipped underestimate; DQNReg strongly |
# | `clipped_cases` | in DQNClipped the plain TD case is active ~95% of the time |
# | `search` / `scratch` | bootstrapped searches find δ² + k·Q(s_t, a_t); from scratch, the TD loss |
#
# Every experiment writes small CSV files and a `meta.json` (the command, budget, seeds,
# versions, wall time). This notebook **reads the committed results** in
# `docs/results/reproduce/BUDGET/` when they were made at the budget you ask for, and runs
# the experiment otherwise. `docs/REPRODUCTION.md` sets each result next to the paper's.
#
# **Budget.** `ci` runs every experiment in seconds (the agents barely learn; that is the
# notebook's own test), `quick` is this project's laptop scale (about an hour and a half for
# all of them on 2 cores), `long` trains the quick network for the paper's step budgets (hours
# per MiniGrid environment), `paper` uses the paper's settings (days on a laptop).

# %% tags=["parameters"]
import os

BUDGET = os.environ.get("EVORL_BUDGET", "quick")  # ci | quick | long | paper
RERUN = False  # True: run every experiment again even where results at BUDGET exist
OUT = None  # results folder; None: docs/results/reproduce/BUDGET (a temporary folder at ci)

# %%
import json
import tempfile
from pathlib import Path

import pandas as pd
from IPython.display import display

from evorl_nb import reproduce
from evorl_nb.viz.experiments import figures


def _repo_root() -> Path:
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").exists() and (folder / "evorl_nb").is_dir():
            return folder
    return here


if OUT is None:
    OUT = (Path(tempfile.mkdtemp(prefix="evorl-reproduce-")) if BUDGET == "ci"
           else _repo_root() / reproduce.RESULTS / BUDGET)
OUT = Path(OUT)


def experiment(name: str) -> dict:
    """An experiment's results at BUDGET (the stored ones, or a fresh run), read once with
    ``reproduce.load``; the reproduce functions below take them as they are."""
    folder = OUT / name
    meta = folder / "meta.json"
    if not RERUN and meta.exists():
        stored = json.loads(meta.read_text())
        if stored["budget"] == BUDGET:
            print(f"{name}: stored results ({stored['command']})")
            return reproduce.load(folder)
    print(f"{name}: running at the {BUDGET!r} budget into {folder}")
    return reproduce.load(reproduce.run(name, BUDGET, OUT))


def scores(data: dict) -> pd.DataFrame:
    """The summary as algorithms x envs: mean normalized score ± 95% CI over seeds."""
    s = data["summary"].copy()
    s["score"] = [f"{m:.2f} ± {c:.2f}" for m, c in zip(s.score_all, s.ci95_all)]
    table = s.pivot(index="algorithm", columns="env", values="score")
    return table.loc[list(dict.fromkeys(s.algorithm))]


# %% [markdown]
# ## 1. The training environments
#
# Every algorithm x seed of one environment is trained as one batch by the population
# trainer. The score is the paper's: the normalized return averaged over *all* training
# episodes, exploration included, so it rewards learning fast as well as learning well.

# %%
training = experiment("training")
display(scores(training))
figs = figures(training)
display(figs["scores"])
figs["curves"]

# %% [markdown]
# ## 2. Generalization to unseen environments
#
# The same losses on environments no search ever saw. The paper's headline: DQNReg solves
# SimpleCrossingS9N1, DoorKey-6x6 and Unlock where DQN and DDQN score about zero.

# %%
generalization = experiment("generalization")
display(scores(generalization))
figs = figures(generalization)
display(figs["scores"])
figs["curves"]

# %% [markdown]
# ## 3. Q-value overestimation
#
# Each episode, the network's estimate of its start, `max_a Q(s_0, a)` (solid), against what
# the agent then collected from there, the discounted return (dotted). The table gives the
# gap over the second half of training: positive is overestimation.
#
# On CartPole read the gap with care: an episode is cut at 200 steps, so the realized
# discounted return can never exceed 1 - 0.99^200 / (1 - 0.99) ≈ 86.6, while the trainer
# bootstraps through the time limit, so a perfect Q-function is worth 100 there.

# %%
overestimation = experiment("overestimation")
display(reproduce.overestimation_bias(overestimation).round(3))
figures(overestimation)["overestimation"]

# %% [markdown]
# ## 4. Inside DQNClipped
#
# DQNClipped is `max[Q(s_t, a_t), δ² + Y] + max[δ, γ·(max_a Q_targ(s_{t+1}, a))²]`. When
# `δ² + Y` wins the first max, it is a TD loss; when `Q(s_t, a_t)` wins, the gradient pushes
# Q down. `BranchTracker` records, at every update, which side each max took for the
# transitions of the batch.

# %%
cases = experiment("clipped_cases")
display(reproduce.case_summary(cases)[["env", "first", "second", "first_all", "first_early",
                                       "first_late", "seeds"]].round(3))
figures(cases)["cases"]

# %% [markdown]
# ## 5. What a search finds
#
# A search bootstrapped from DQN on CartPole, then its top losses the way the slides show
# them: the raw equation as evolved, the simplified one (terms with no gradient path to the
# online network dropped), the score, the rank among every candidate, and its family.

# %%
search = experiment("search")
display(search["table"].head(6))
figures(search)["convergence"]

# %% [markdown]
# And from scratch: programs built from random ops only. Did the search find the TD loss?

# %%
scratch = experiment("scratch")
table = scratch["table"]
display(table.head(6))
found = table[table.family.str.startswith("δ^2")]
print("a TD-like loss among the top 10:", "yes" if len(found) else "no")
figures(scratch)["convergence"]

# %% [markdown]
# ## 6. The paper's two searches, at a laptop budget
#
# The quick searches above score on CartPole alone. The `dqnreg` and `scratch` presets of
# `evorl-nb evolve` use the paper's fitness environments (with the CartPole hurdle) and were
# run on this project's 2-core machine; their run stores are committed under
# `docs/results/search/` (searches that long are read here, not re-run, at any budget).
# Each ended by re-training its top programs, DQN and DQNReg on 5 seeds the search never
# used: the table ranks by that re-scored mean; `vs_dqn` is the paired difference to DQN
# with its 95% interval, and `beats_dqn` says whether it is above zero outside the noise.

# %%
from evorl_nb import load_run
from evorl_nb.rescore import ranking
from evorl_nb.viz.evolution import fitness_figure

SEARCHES = _repo_root() / "docs" / "results" / "search"
runs = {name: SEARCHES / name for name in ("dqnreg", "scratch")  # run.sqlite, or committed .gz
        if any((SEARCHES / name).glob("run.sqlite*"))}
for name, run in runs.items():
    data = load_run(run)
    rates = data.rates()
    print(f"{name}: {len(data.candidates):,} candidates, {rates['duplicate']:.0%} duplicates, "
          f"{rates['below_hurdle']:.0%} below the hurdle")
    display(ranking(run)[["rank", "entry", "mean", "ci95", "vs_dqn", "vs_dqn_ci95",
                          "beats_dqn", "equation"]].head(8).round(3))

# %% [markdown]
# Fitness of every candidate of the from-scratch search (grey: duplicates, scored from the
# cache; orange: stopped at the CartPole hurdle) and the best so far. A broken loss scores
# like a random policy on CartPole (about 0.1).

# %%
fitness_figure(runs["scratch"]) if "scratch" in runs else None

# %% [markdown]
# ### The best found losses on unseen environments
#
# The `dqnreg` search's two best re-scored programs (exported with
# `evorl-nb export docs/results/search/dqnreg --rank N --format json`) trained on the
# `generalization` experiment's environments with the same seeds and trainer as DQN, DDQN
# and DQNReg in section 2 (`evorl-nb reproduce generalization --budget quick --algorithms
# FILE.json ...`).

# %%
found_folder = _repo_root() / reproduce.RESULTS / "quick-found" / "generalization"
if BUDGET == "quick" and (found_folder / "meta.json").exists():
    both = dict(generalization)
    found = reproduce.load(found_folder)
    both["summary"] = pd.concat([generalization["summary"][generalization["summary"]
                                 .algorithm.isin(["dqn", "ddqn", "dqn_reg"])],
                                 found["summary"]])
    display(scores(both))
else:
    print("the found programs' generalization run is stored for the quick budget only")

# %% [markdown]
# ## Where this leaves the paper's claims
#
# `docs/REPRODUCTION.md` puts each of these results beside the paper's number, with a
# verdict (agrees, disagrees, out of reach) and the command that made it. To make the
# figures at a larger budget, run for instance
# `evorl-nb reproduce generalization --budget paper` (or set `BUDGET = "paper"` and
# `RERUN = True` here), and `evorl_nb.viz.experiments.save_figures(folder)` exports them as PNG.
