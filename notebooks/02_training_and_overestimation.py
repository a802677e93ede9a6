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
# # 2. Training with a loss, and watching Q-values overestimate
#
# Every candidate loss in `evorl_nb` is judged the same way: train a DQN agent with it and
# measure how much return the agent collects while it learns. This notebook does that by hand
# for the four algorithms of the paper's overestimation study: DQN, Double DQN, and the two
# losses evolution found, DQNReg and DQNClipped, each on several seeds.
#
# Along the way we watch, live, what the network believes the start of an episode is worth,
# `max_a Q(s_0, a)`, next to what the agent actually collected from there (the discounted
# return). The gap between the two is the *overestimation* the paper measures.
#
# **Budget.** `BUDGET` picks a trainer preset: `ci` runs in seconds and only checks that the
# cells run (400 steps: the agents have not learned anything yet, so the four algorithms'
# numbers are nearly the same); `quick` (a 64-64 network, 50,000 steps per run) trains the
# 4 algorithms x 3 seeds at once on the population trainer: 58 s for the twelve agents and
# 75 s for the whole notebook, measured on this project's 2-core machine; `paper` uses the
# paper's exact settings (hours). Set it here or through the `EVORL_BUDGET` environment
# variable.

# %% tags=["parameters"]
import os

BUDGET = os.environ.get("EVORL_BUDGET", "quick")  # ci | quick | paper: a trainer preset
ENV = "CartPole-v1"
SEEDS = 3  # training runs per algorithm, all trained at once

# %%
import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from evorl_nb import get_config, get_spec, library, train, train_population
from evorl_nb.stats import ci95
from evorl_nb.viz.style import TEMPLATE, algorithm_color
from evorl_nb.viz.training import QValueMonitor, learning_curves, score_bars

config = get_config(BUDGET)
spec = get_spec(ENV)
steps = f"at most {config.max_steps} steps" if config.max_steps else "the paper's budget"
print(f"preset {BUDGET!r}: network {config.hidden}, lr {config.lr}, {steps} per run")
print(f"{spec.env_id}: returns are normalized with Rmin={spec.rmin}, Rmax={spec.rmax}")

# %% [markdown]
# ## Train one agent with a program's loss
#
# A loss is a program (see notebook 1). The library holds the known ones; `dqn` is the
# classic squared TD error, `δ² = (Q(s_t, a_t) - (r_t + γ max_a Q_targ(s_{t+1}, a)))²`.
# `train` runs the paper's inner loop with it: epsilon-greedy acting, a replay buffer, one
# gradient step per environment step, and a target network copied every few updates. Here a
# short run (at most 5,000 steps) to see what it returns; the comparison below trains the
# preset's full budget.

# %%
dqn = library.get("dqn")
print("loss:", dqn.equation())
short = get_config(BUDGET, max_steps=min(5_000, config.max_steps or 5_000))
run = train(dqn, ENV, short, seed=0, progress=True)
print(f"{len(run.episodes)} episodes, {run.steps} steps, {run.updates} gradient steps, "
      f"{run.wall_time:.1f} s, failed: {run.failed}")

# %% [markdown]
# The program's **score** on this environment is the mean normalized return over all training
# episodes, `(clip(R, Rmin, Rmax) - Rmin) / (Rmax - Rmin)`: it rewards learning fast, not only
# learning well. The authors' code used the last 50 episodes instead; both are kept.

# %%
print(f"score (all episodes): {run.score():.3f}   (last 50): {run.score(window='last50'):.3f}")

fig = go.Figure(go.Scatter(x=[e.step for e in run.episodes], y=run.returns, mode="lines+markers",
                           marker_size=4, name="return", line_color=algorithm_color("dqn")))
fig.update_layout(title=f"DQN on {spec.env_id}: return of each training episode",
                  xaxis_title="environment steps", yaxis_title="return", template=TEMPLATE,
                  height=350)
fig

# %% [markdown]
# Each episode also carries the Q-value tracking: the network's `q_initial = max_a Q(s_0, a)`
# when the episode started, the `discounted_return` it actually got from `s_0`, and the mean
# Q of the training batches (`NaN` until learning starts).

# %%
pd.DataFrame([vars(e) for e in run.episodes]).tail()

# %% [markdown]
# ## The live overestimation plot
#
# `QValueMonitor` draws, per algorithm, `Q(s_0)` as a solid line and the realized discounted
# return as a dashed line of the same colour (the colour each algorithm has in every figure of
# `evorl_nb`). A solid line above its dashed line means the network thinks the start state is
# worth more than what the agent gets: overestimation. With several seeds the lines are the
# mean over seeds and the shaded band spans the seeds' lowest and highest `Q(s_0)`.
#
# Run the next cell to show the (empty) figure, then the one after it: the population trainer
# trains every algorithm and seed at once, and the figure fills in as episodes end.

# %%
ALGORITHMS = {"DQN": "dqn", "DDQN": "ddqn", "DQNReg": "dqn_reg", "DQNClipped": "dqn_clipped"}
monitor = QValueMonitor(smoothing=1 if BUDGET == "ci" else 10, min_interval=0.5)
monitor.figure

# %%
jobs = [(name, seed) for name in ALGORITHMS for seed in range(SEEDS)]
results = train_population([library.get(ALGORITHMS[name]) for name, _ in jobs], ENV, config,
                           seeds=[seed for _, seed in jobs], progress=True,
                           callback=lambda k, record: monitor.add(jobs[k][0], record,
                                                                  run=jobs[k][1]))
monitor.refresh()
runs = {name: [r for (n, _), r in zip(jobs, results) if n == name] for name in ALGORITHMS}
for name, rs in runs.items():
    m, h = ci95([r.score() for r in rs])
    print(f"{name:>11}: score {m:.3f} ± {h:.3f} over {len(rs)} seeds   "
          f"loss {library.get(ALGORITHMS[name]).equation()}")

# %% [markdown]
# The **bias** of a run is the mean of `Q(s_0) - discounted return` over its episodes in the
# second half of training (after exploration has settled): positive is overestimation,
# negative underestimation. Below, each algorithm's mean over seeds with its 95% confidence
# interval, and how that compares with what the paper reports.

# %%
PAPER = {"DQN": "over", "DDQN": "under", "DQNReg": "under", "DQNClipped": "under"}


def late_bias(r):
    late = [e for e in r.episodes if e.step >= r.steps / 2 and not math.isnan(e.batch_q_mean)]
    return np.mean([e.q_initial - e.discounted_return for e in late]) if late else np.nan


rows = []
for name, rs in runs.items():
    m, h = ci95([late_bias(r) for r in rs])
    measured = ("over" if m - h > 0 else "under" if m + h < 0 else "inside the noise") \
        if h == h else ("over" if m > 0 else "under")
    rows.append({"algorithm": name, "bias": round(m, 2), "± 95% CI": round(h, 2),
                 "measured": measured, "paper": PAPER[name] + "estimates",
                 "agrees": measured == PAPER[name]})
bias_table = pd.DataFrame(rows)
bias_table

# %%
agree = [r["algorithm"] for r in rows if r["agrees"]]
print(f"Measured here ({BUDGET!r} budget, {ENV}, {SEEDS} seeds): "
      + "; ".join(f"{r['algorithm']} {r['bias']:+.1f} ± {r['± 95% CI']:.1f}" for r in rows))
print(f"Agrees with the paper for: {', '.join(agree) or 'none'}.")
if BUDGET == "ci":
    print(f"At the {BUDGET!r} budget ({config.max_steps} steps) the agents have barely learned: "
          "these numbers only show that the cells run. Run with BUDGET = 'quick'.")

# %% [markdown]
# **Reading it honestly.** The paper reports that DQN overestimates while DDQN, DQNClipped
# and DQNReg underestimate, DQNReg strongly. On CartPole at the `quick` budget we measured
# every algorithm's mean bias positive (3 seeds, second half of training: DQN +23.6 ± 31.2,
# DDQN +24.3 ± 26.9, DQNReg +20.0 ± 11.1, DQNClipped +32.1 ± 87.2). Only DQNReg's is outside
# the noise, and it is an overestimate where the paper has DQNReg underestimating strongly;
# DQN's sign is the paper's, but three seeds cannot tell it from zero. So on this
# environment and budget the paper's claim is not reproduced. Part of the lopsidedness is
# arithmetic: an episode of CartPole-v1 is cut at 500 steps, so the realized discounted
# return can never exceed (1 - 0.99^500) / (1 - 0.99) = 99.3, while the trainer bootstraps
# through the time limit (as the paper and gymnasium prescribe), so a perfect policy's value
# is 100 and early failures pull the realized returns far lower. The paper shows its
# overestimation plot on MiniGrid: set `ENV = "MiniGrid-Dynamic-Obstacles-6x6-v0"` to
# compare there, or see
# docs/REPRODUCTION.md §4, where on Dynamic-Obstacles DQN overestimates and DQNReg and
# DQNClipped underestimate, as in the paper.

# %% [markdown]
# ## Learning curves
#
# Normalized return against environment steps, smoothed over recent episodes: the line is the
# mean over seeds, the band spans the best and worst run. The bar chart shows each algorithm's
# score (mean ± std over seeds).

# %%
learning_curves(runs, window=5 if BUDGET == "ci" else 20)

# %%
scores = [{"program": name, "env": ENV, "score": r.score()}
          for name, rs in runs.items() for r in rs]
score_bars(scores)

# %% [markdown]
# **Try it.** Set `ENV = "Acrobot-v1"` or `"MiniGrid-DoorKey-5x5-v0"` to see whether the
# ranking holds elsewhere (`evorl-nb envs` lists the environments); raise `SEEDS` for tighter
# intervals; or train your own loss from notebook 1 the same way, adding it to `ALGORITHMS`.
