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
# # 4. Analysing a run
#
# A finished (or still running) search is a SQLite store of every candidate: its program,
# parent, mutation, status and fitness. This notebook reads one and looks at what evolution
# found: the top programs as raw and simplified equations, the best one's graph and lineage, the
# search's progress, and how the best loss does on an environment it never trained on.
#
# **Budget.** At `ci` a small search is made first (seconds, in a temporary folder). Otherwise
# `RUN` names a run folder; by default the newest folder under `runs/` (a ci search is made if
# there is none). `BUDGET` also picks the trainer for the re-evaluation at the end.

# %% tags=["parameters"]
import os

BUDGET = os.environ.get("EVORL_BUDGET", "quick")  # ci | quick | paper
RUN = None  # a run folder (or .sqlite file); None: see above
TEST_ENV = "Acrobot-v1"  # an environment no preset searches on

# %%
import tempfile
from pathlib import Path

import pandas as pd
from IPython.display import display

import evorl_nb.runner
from evorl_nb import Program, get_preset, load_run
from evorl_nb.evaluate import evaluate
from evorl_nb.viz.evolution import fitness_figure, lineage, lineage_figure, rates_figure
from evorl_nb.viz.graph import program_figure
from evorl_nb.viz.style import table

if RUN is None and BUDGET != "ci":
    found = sorted((p for p in Path("runs").glob("*") if evorl_nb.runner.store_path(p).exists()),
                   key=lambda p: evorl_nb.runner.store_path(p).stat().st_mtime)
    RUN = found[-1] if found else None
if RUN is None:  # make a small run, in a temporary folder: nothing is left in the repository
    tmp = tempfile.TemporaryDirectory()
    RUN = evorl_nb.runner.start(Path(tmp.name) / "run", get_preset("ci"), progress=False,
                                verbose=False)
data = load_run(evorl_nb.runner.store_path(RUN))
print(evorl_nb.runner.summary(RUN))

# %% [markdown]
# ## The top programs, raw and simplified
#
# Evolution writes programs as graphs of operations; many are cluttered with dead ends and
# redundant steps. The raw equation is the program read as it is; the simplified one is what
# it computes (equivalent programs share a fingerprint, so each loss is listed once).

# %%
best = data.best(5, distinct=True)
top = pd.DataFrame([{
    "rank": rank, "id": int(row["id"]), "fitness": float(row["fitness"]),
    "simplified equation": Program.from_json(row["program"]).equation(),
    "raw equation (as evolved)": Program.from_json(row["program"]).equation(simplify=False)}
    for rank, (_, row) in enumerate(best.iterrows(), 1)])
if (top["raw equation (as evolved)"] == top["simplified equation"]).all():
    top = top.drop(columns="raw equation (as evolved)")
    print("(each program's raw equation is already its simplified one)")
table(top)

# %% [markdown]
# ## Re-scored on fresh seeds
#
# The search scored each candidate on one training seed, so its top is partly luck.
# Re-scoring trains the top distinct programs, DQN and DQNReg again on seeds the search
# never used, on every fitness environment (`evorl-nb rescore RUN`; a search started from
# the command line does it at its end). Ranked by the re-scored mean fitness with its 95%
# interval; **beats DQN** means the per-seed difference to DQN (same seeds) is above zero
# outside its 95% interval. If the run has no re-scores yet, a small one is made here
# (top 3, 2 seeds: enough to show the table, not to judge anything).

# %%
from evorl_nb.rescore import ranking, rescore

if data.rescores.empty:
    rescore(RUN, top=3, seeds=2, progress=False)
ranked = ranking(RUN)
show = ranked[["rank", "entry", "mean", "ci95", "vs_dqn", "vs_dqn_ci95", "beats_dqn",
               "fitness", "equation"]].rename(columns={
                   "mean": "re-scored mean", "ci95": "± 95% CI", "vs_dqn": "vs DQN",
                   "vs_dqn_ci95": "± CI", "beats_dqn": "beats DQN",
                   "fitness": "search fitness"})
table(show)

# %% [markdown]
# ## The best program's graph

# %%
best_row = best.iloc[0]
best_program = Program.from_json(best_row["program"])
program_figure(best_program, title=f"best of the run: candidate {int(best_row['id'])}")

# %% [markdown]
# ## Its lineage
#
# Following `parent_id` back to the initial population: each step is one mutation.

# %%
steps = lineage(data, int(best_row["id"]))
display(table(pd.DataFrame(steps)[["id", "fitness", "mutation", "equation"]]))
lineage_figure(data, int(best_row["id"]))

# %% [markdown]
# ## How the search went
#
# Every candidate's fitness (coloured by what happened to it), the best so far and the
# population's mean; then how often children were duplicates, fell below the hurdle or failed.

# %%
fitness_figure(data)

# %%
rates_figure(data, window=max(5, len(data.candidates) // 10))

# %% [markdown]
# ## The best loss on an unseen environment
#
# Fitness came from the run's environments only. Training with the best loss on `TEST_ENV`
# tells whether it generalizes (at `ci` budget the agent barely learns: this is a smoke test).

# %%
BUDGET_TRAINER = "ci" if BUDGET == "ci" else "quick" if BUDGET == "quick" else "paper"
result = evaluate(best_program, [TEST_ENV], BUDGET_TRAINER, hurdle=None)
print(f"{TEST_ENV}: normalized score {result.fitness:.3f} "
      f"({result.steps} steps, {result.wall_time:.1f} s)")
