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
# # 3. Running an evolution, with a live dashboard
#
# A search is *regularized evolution* over loss programs: a population of the most recent
# candidates, tournaments to pick a parent, one mutation per child, and a cache that spots
# children whose loss is equivalent to one already scored (a *duplicate*: no training needed).
# Every finished candidate lands in the run's SQLite store, so anything can read the run while it
# goes: here an `EvolutionDashboard` follows a search running in a background thread.
#
# **Budget.** `ci` runs the whole loop in seconds (the ci trainer: agents barely learn),
# `quick` is the laptop preset (600 candidates: the whole notebook ran in 91 s on this
# project's 2-core machine, measured 2026-12-06). Set `BUDGET` here or through the
# `EVORL_BUDGET` environment variable.

# %% tags=["parameters"]
import os

BUDGET = os.environ.get("EVORL_BUDGET", "quick")  # ci | quick: a preset of evolve.get_preset
OUT = None  # folder of the run; None: a temporary folder at ci budget, runs/ otherwise

# %%
import tempfile
import threading
import time
from pathlib import Path

from IPython.display import display

import evorl_nb.runner
from evorl_nb import Evolution, get_preset
from evorl_nb.evolve import ProgramEvaluator, iterate
from evorl_nb.viz.evolution import EvolutionDashboard

config = get_preset("ci" if BUDGET == "ci" else "quick")
if OUT is None and BUDGET == "ci":
    tmp = tempfile.TemporaryDirectory()  # nothing is left in the repository
    OUT = Path(tmp.name) / "run"
elif OUT is None:
    OUT = Path("runs") / f"notebook-{time.strftime('%Y%m%d-%H%M%S')}"
config

# %% [markdown]
# ## The dashboard
#
# Made before the run exists, it says "waiting for the run to start"; `start()` refreshes it
# every few seconds in a background thread, so the kernel stays free.

# %%
dashboard = EvolutionDashboard(OUT, window=20)
display(dashboard)
dashboard.start(interval=1.0 if BUDGET == "ci" else 5.0)

# %% [markdown]
# ## The search, in a background thread
#
# `evorl_nb.runner.start` runs the search to its budget (`config.candidates`), recording every
# candidate. Run in a thread, it leaves this notebook free: the dashboard above keeps up.

# %%
errors = []


def search():
    try:
        evorl_nb.runner.start(OUT, config, backend="inprocess", progress=False, verbose=False)
    except BaseException as e:  # shown below rather than lost in the thread
        errors.append(e)


thread = threading.Thread(target=search, name="evolution", daemon=True)
thread.start()

# %% [markdown]
# Wait for it (at `quick` budget about a minute and a half; the dashboard moves meanwhile),
# then stop the dashboard's refreshing and take one last look.

# %%
thread.join()
dashboard.stop()
if errors:
    raise errors[0]
dashboard.refresh()
print(evorl_nb.runner.summary(OUT))

# %% [markdown]
# ## Stepping an evolution by hand
#
# The same search, cell by cell: `Evolution` is the ask/tell core and `iterate` steps it
# in-process, scoring each child with `ProgramEvaluator` (training a DQN agent per
# environment). Each step shows where the child came from and what became of it.

# %%
evo = Evolution(config, seed=1)
evaluator = ProgramEvaluator.from_config(config)
steps = iterate(evo, evaluator)
initial = [next(steps) for _ in range(config.population)]  # the initial population
kinds = sorted({prop.program.equation() for prop, _ in initial})
statuses = sorted({outcome.status for _, outcome in initial})
fits = [outcome.fitness for _, outcome in initial]
print(f"initial population: {len(initial)} programs computing {len(kinds)} loss(es) "
      f"({'; '.join(kinds)}), {'/'.join(statuses)}, fitness "
      + (f"{fits[0]:.3f}" if min(fits) == max(fits) else f"{min(fits):.3f} to {max(fits):.3f}"))
for _ in range(2):  # then two children, each a mutation of a tournament's winner
    prop, outcome = next(steps)
    print(f"{evo.recorded:>3}  parent {prop.parent_id!s:>4}  {outcome.status:<12} "
          f"fitness {outcome.fitness:6.3f}  {prop.mutation}")

# %%
prop, outcome = next(steps)  # one more child
print(prop.mutation)
print(prop.program.equation())
outcome.status, outcome.fitness
