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
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% tags=["parameters"]
import os

BUDGET = os.environ.get("EVORL_BUDGET", "quick")  # the explorer's Evaluate preset; no cell trains
SEED = 0

# %% [markdown]
# # 01 · Programs as graphs
#
# Co-Reyes et al. (*Evolving Reinforcement Learning Algorithms*, ICLR 2021) search over
# **loss functions** for value-based RL. A loss is written as a small **typed computational
# graph** (a *program*): a DAG of ops over the RL inputs whose last node is the loss of one
# transition. Evolution mutates these graphs; training a DQN agent with a candidate's loss
# scores it.
#
# This notebook is about the representation only: what a program is, how to read one as a
# graph and as an equation, how to write your own, and what a mutation does. Nothing is
# trained here.

# %%
import numpy as np
import pandas as pd
import torch
from IPython.display import Math, display

from evorl_nb import Batch, Program, ProgramBuilder, ProgramError, library
from evorl_nb.ops import describe_ops
from evorl_nb.program import INPUTS
from evorl_nb.search_space import get_space, mutate_explained, random_program
from evorl_nb.viz.graph import TYPE_SHAPES, program_figure, program_widget

rng = np.random.default_rng(SEED)

# %% [markdown]
# ## The seven inputs and their types
#
# Every program reads the same seven inputs, in the authors' order. Each value has a
# **type**; ops only accept certain input types, so most random wirings are rejected before
# anything runs. For a batch of B transitions with A actions:

# %%
meaning = {
    "q": "the online Q network (the only one that gets gradients)",
    "a_t": "the action taken",
    "s_t": "the state",
    "q_targ": "the target Q network (run without gradient)",
    "s_tp1": "the next state",
    "r_t": "the reward",
    "discount": "γ·(1 − done): a program cannot tell γ and 'done' apart",
}
pd.DataFrame([{"index": i, "input": name, "type": t.label, "shape per batch": TYPE_SHAPES[t],
               "meaning": meaning[name]} for i, (name, t) in enumerate(INPUTS)]).set_index("index")

# %% [markdown]
# ## The ops
#
# Each op is one row of a table: the input types it accepts, the type it returns, and its
# meaning. The same row defines the PyTorch loss, the sympy equation and the label drawn in
# the graph, so the three cannot disagree.

# %%
ops = pd.DataFrame(describe_ops()).set_index("op")
pd.set_option("display.max_colwidth", 120)
ops[["label", "signatures", "meaning"]]

# %% [markdown]
# ## DQN as a graph
#
# DQN's loss is the squared TD error δ² with δ = Q(s_t, a_t) − Y and the target
# Y = r_t + γ·max_a Q_targ(s_{t+1}, a). As a program it is 8 op nodes after the inputs.
#
# How to read the figure: inputs on the left, the loss (black outline) on the right; every
# arrow goes left to right. The colour of a box is its value **type**. **Red** edges form the
# **gradient path**: values that depend on the online network `q`, through which the loss
# trains it. The target branch (`q_targ`, `s_tp1`) is grey: it carries no gradient. Hover
# over a node to see its index, op, types and shape.

# %%
dqn = library.get("dqn")
print(dqn)
program_figure(dqn).show()
display(Math(dqn.equation(latex=True)))

# %% [markdown]
# ## The learned losses: DQNReg and DQNClipped
#
# The paper's search found losses that beat DQN. **DQNReg** adds 0.1·Q(s_t, a_t) to δ²:
# a penalty on large Q-values that counters DQN's overestimation. It reuses the `[a]` node
# (Q(s_t, a_t)) twice, so the graph is not a tree.

# %%
dqn_reg = library.get("dqn_reg")
program_figure(dqn_reg).show()
display(Math(dqn_reg.equation(latex=True)))

# %% [markdown]
# **DQNClipped** is larger: max(Q, δ² + Y) + max(δ, γ·(max_a Q_targ)²). Note how much of the
# graph is grey: the target-network branches only shape the loss's value, not its gradient
# path.

# %%
dqn_clipped = library.get("dqn_clipped")
program_figure(dqn_clipped).show()
display(Math(dqn_clipped.equation(latex=True)))

# %% [markdown]
# ## Simplification
#
# Evolved graphs are messy. Two things make them readable: ordinary algebra, and dropping
# additive terms **without a gradient** (they shift the loss's value but not its gradient,
# so they do not change learning). The slides' example:
#
# $$\delta^2 + 0.1\,Q + r - (\gamma\,Q_{targ} - 0.1\,Q) \;\to\; \delta^2 + 0.2\,Q$$
#
# Built op by op with `ProgramBuilder` (each op is a method that returns a node handle):

# %%
b = ProgramBuilder()
q_sa = b.SelectList(b.QValues(b.q, b.s_t), b.a_t)             # Q(s_t, a_t)
q_targ = b.MaxList(b.QValues(b.q_targ, b.s_tp1))              # max_a Q_targ(s_{t+1}, a)
y = b.Add(b.r_t, b.DotProduct(b.discount, q_targ))            # Y = r + γ·max Q_targ
delta2 = b.L2Norm(b.Subtract(q_sa, y))                        # δ²
left = b.Add(b.Add(delta2, b.MultiplyTenth(q_sa)), b.r_t)     # δ² + 0.1·Q + r
right = b.Subtract(b.DotProduct(b.discount, q_targ), b.MultiplyTenth(q_sa))  # γ·Q_targ − 0.1·Q
slides = b.build(b.Subtract(left, right), name="slides_example")

print("raw:       ", slides.equation(simplify=False))
print("simplified:", slides.equation())
display(Math(r"\text{raw: } " + slides.equation(latex=True, simplify=False)))
display(Math(r"\text{simplified: } " + slides.equation(latex=True)))

# %% [markdown]
# `r_t` and γ·max Q_targ carry no gradient of `q`, so they are dropped; the two 0.1·Q terms
# add up. The widget below shows the graph beside both forms of its equation.

# %%
program_widget(slides)

# %% [markdown]
# ## Your own loss
#
# Any typed graph that ends in a per-transition value R and has a gradient path to `q` is a
# valid loss. Here: δ² plus a penalty on the spread of the Q-values at s_t.

# %%
b = ProgramBuilder()
q_all = b.QValues(b.q, b.s_t)
q_sa = b.SelectList(q_all, b.a_t)
y = b.Add(b.r_t, b.DotProduct(b.discount, b.MaxList(b.QValues(b.q_targ, b.s_tp1))))
mine = b.build(b.Add(b.L2Norm(b.Subtract(q_sa, y)), b.MultiplyTenth(b.StdList(q_all))),
               name="mine")
program_figure(mine).show()
display(Math(mine.equation(latex=True)))

# %% [markdown]
# It is a real PyTorch loss: give it a batch and two Q networks.

# %%
torch.manual_seed(SEED)
net = torch.nn.Sequential(torch.nn.Linear(4, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))
target = torch.nn.Sequential(torch.nn.Linear(4, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))
batch = Batch(obs=torch.randn(16, 4), action=torch.randint(0, 2, (16,)), reward=torch.randn(16),
              next_obs=torch.randn(16, 4), done=torch.zeros(16))
loss = mine.loss(batch, net, target, gamma=0.99)
loss.backward()
print(f"loss = {loss.item():.4f}; gradient norm of the first layer = "
      f"{net[0].weight.grad.norm().item():.4f}")

# %% [markdown]
# ## What a type error looks like
#
# Programs are checked when they are built. The message names the node, the op, the types
# it got and the types it accepts. Adding a state to a list of Q-values:

# %%
b = ProgramBuilder()
try:
    b.build(b.Add(b.QValues(b.q, b.s_t), b.s_t))
except ProgramError as e:
    print("ProgramError:", e)

# %% [markdown]
# A loss must also *train* something: one that only reads the target network is refused.

# %%
b = ProgramBuilder()
try:
    b.build(b.MaxList(b.QValues(b.q_targ, b.s_tp1)))
except ProgramError as e:
    print("ProgramError:", e)

# %% [markdown]
# ## Saving and loading
#
# A program is plain, versioned JSON (op names and input indices; nothing is evaluated
# when it is read back).

# %%
text = dqn_reg.to_json()
print(text)
loaded = Program.from_json(text)
print("round trip equal:", loaded == dqn_reg, "| same equation:",
      loaded.equation() == dqn_reg.equation())

# %% [markdown]
# ## A random program and a mutation
#
# The search starts from random programs. In the **bootstrap** space a program is 12 random
# nodes followed by DQN's 8: the random nodes start **dead** (the output does not read them;
# they are faded in the figure), so the program still computes δ².

# %%
space = get_space("bootstrap")
parent = random_program(space, rng)
print(parent.equation(), f"| {len(parent.nodes)} op nodes, "
      f"{len(parent.live()) - len(INPUTS)} live")
program_figure(parent, title="a random bootstrap program").show()

# %% [markdown]
# A mutation gives one node a new op and new inputs of the same type (or, rarely, redraws
# every node). Hitting a dead node changes nothing about the loss:

# %%
child, how = mutate_explained(parent, space, rng)
print(how.describe(), "| touched a live node:", how.index in parent.live())
print("parent:", parent.equation(), "| child:", child.equation())

# %% [markdown]
# Mutate again until a one-node change really changes the loss (the fingerprint, a hash of
# the loss's values on fixed inputs, tells functionally different programs apart):

# %%
for tries in range(1, 201):
    child, how = mutate_explained(parent, space, rng)
    if how.kind == "point" and child.fingerprint() != parent.fingerprint():
        break
print(f"after {tries} tries:", how.describe())
program_figure(parent, show_dead=False, highlight=[how.index],
               title=f"parent (live nodes; node {how.index} is the one mutated)").show()
program_figure(child, show_dead=False, highlight=[how.index],
               title=f"child (live nodes; node {how.index} after the mutation)").show()
display(Math(r"\text{parent: } " + parent.equation(latex=True)))
display(Math(r"\text{child: } " + child.equation(latex=True)))

# %% [markdown]
# Compare the two graphs: the ringed node is the mutated one (the inputs keep their rows in
# both drawings). Which nodes did it read before, and which now?
# Evolution is this step repeated thousands of times, keeping the children that train
# better agents.

# %% [markdown]
# ## The program explorer
#
# All of the above in one widget. Pick a loss in the drop-down to see its graph beside its
# equation; **Mutate** draws a child and says what changed (the mutated node, the nodes that
# joined or left the loss, the equation before and after, and whether the loss is still
# functionally the same); **Back** returns to the parent. **Evaluate** trains a DQN agent with
# the loss shown on the environment picked, at the `BUDGET` trainer preset, plotting every
# episode live; it runs in the background, so the notebook stays usable (no cell here presses
# it). Every mutation comes from one generator seeded by `SEED`: the same clicks give the same
# children. `ProgramExplorer(run_folder)` adds the best programs of an evolution run.

# %%
from evorl_nb.viz import ProgramExplorer

explorer = ProgramExplorer(seed=SEED, config=BUDGET)
explorer

# %% [markdown]
# Each button is also a method (`select`, `mutate`, `back`, `evaluate`), so code can drive
# the explorer; the widget above follows. Pick DQNReg and mutate it once:

# %%
explorer.select("dqn_reg")
change = explorer.mutate()
print(change.describe())
print("parent:", change.parent.equation(), "| child:", change.child.equation())

# %% [markdown]
# Next, notebook 02 trains DQN agents with these losses.
