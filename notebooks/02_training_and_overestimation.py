# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
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
# losses evolution found, DQNReg and DQNClipped.
#
# Along the way we watch, live, what the network believes the start of an episode is worth,
# `max_a Q(s_0, a)`, next to what the agent actually collected from there (the discounted
# return). The gap between the two is the *overestimation* the paper measures.
#
# **Budget.** `BUDGET` picks a trainer preset: `ci` runs in seconds (a smoke test: the agents
# barely learn), `quick` takes a few minutes on a laptop CPU (a 64-64 network, at most 50,000
# steps per run), `paper` uses the paper's exact settings (much longer). Set it here or through
# the `EVORL_BUDGET` environment variable.

# %% tags=["parameters"]
import os

BUDGET = os.environ.get("EVORL_BUDGET", "quick")  # ci | quick | paper: a preset of dqn.get_config
ENV = "CartPole-v1"
SEEDS = 1  # training runs per algorithm for the learning curves

# %%
import pandas as pd
import plotly.graph_objects as go

from evorl_nb import library
from evorl_nb.dqn import get_config, train
from evorl_nb.envs import get_spec
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
# gradient step per environment step, and a target network copied every few updates.

# %%
dqn = library.get("dqn")
print("loss:", dqn.equation())
run = train(dqn, ENV, config, seed=0, progress=True)
print(f"{len(run.episodes)} episodes, {run.steps} steps, {run.updates} gradient steps, "
      f"{run.wall_time:.1f} s, failed: {run.failed}")

# %% [markdown]
# The program's **score** on this environment is the mean normalized return over all training
# episodes, `(clip(R, Rmin, Rmax) - Rmin) / (Rmax - Rmin)`: it rewards learning fast, not only
# learning well. The authors' code used the last 50 episodes instead; both are kept.

# %%
print(f"score (all episodes): {run.score():.3f}   (last 50): {run.score(window='last50'):.3f}")

fig = go.Figure(go.Scatter(x=[e.step for e in run.episodes], y=run.returns, mode="lines+markers",
                           marker_size=4, name="return"))
fig.update_layout(title=f"DQN on {spec.env_id}: return of each training episode",
                  xaxis_title="environment steps", yaxis_title="return", template="plotly_white",
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
# return as a dashed line of the same colour. A solid line above its dashed line means the
# network thinks the start state is worth more than what the agent gets: overestimation.
#
# Run the next cell to show the (empty) figure, then the one after it: the four agents train
# one after another, and the figure fills in as each episode ends.

# %%
ALGORITHMS = {"DQN": "dqn", "DDQN": "ddqn", "DQNReg": "dqn_reg", "DQNClipped": "dqn_clipped"}
monitor = QValueMonitor(smoothing=1 if BUDGET == "ci" else 10)
monitor.figure

# %%
runs = {}
for name, program in ALGORITHMS.items():
    runs[name] = [train(library.get(program), ENV, config, seed=0,
                        callback=monitor.callback(name), progress=True)]
    print(f"{name:>11}: score {runs[name][0].score():.3f}   loss {library.get(program).equation()}")

# %% [markdown]
# `monitor.bias(name)` is the mean of `Q(s_0) - discounted return` over the episodes after
# learning started (outside the grey band): positive is overestimation, negative
# underestimation. Early in training every algorithm underestimates, because values propagate
# back slowly (with γ = 0.99 a state's value sums about 100 future rewards); the differences
# between the algorithms show once Q has caught up with the returns.

# %%
for name, bias in monitor.biases().items():
    print(f"{name:>11}: mean Q(s_0) - realized return = {bias:+8.2f}")
print("\nThe paper found that DQN overestimates, DDQN and DQNClipped underestimate, and DQNReg "
      "underestimates strongly (its 0.1*Q term pushes the values down).")
if BUDGET == "ci":
    print(f"At the {BUDGET!r} budget ({config.max_steps} steps) the agents have barely learned: "
          "these numbers mean little. Run with BUDGET = 'quick' to see the effect.")

# %% [markdown]
# ## Learning curves
#
# Normalized return against environment steps, smoothed over recent episodes. With `SEEDS > 1`
# each algorithm is trained on more seeds, and the line is the mean with a band spanning the
# best and worst run. The bar chart shows each algorithm's score (mean ± std over seeds).

# %%
for name, program in ALGORITHMS.items():
    runs[name] += [train(library.get(program), ENV, config, seed=seed, progress=True)
                   for seed in range(1, SEEDS)]
learning_curves(runs, window=5 if BUDGET == "ci" else 20)

# %%
scores = [{"program": name, "env": ENV, "score": r.score()}
          for name, rs in runs.items() for r in rs]
score_bars(scores)

# %% [markdown]
# **Try it.** Set `SEEDS = 3` for bands; set `ENV = "Acrobot-v1"` or `"MiniGrid-DoorKey-5x5-v0"`
# to see whether the ranking holds elsewhere (`evorl-nb envs` lists the environments); or train
# your own loss from notebook 1 the same way, with `callback=monitor.callback("mine")`.
