"""DQNClipped's case analysis: which side of each max (or min) of a loss is active.

:class:`BranchTracker` wraps a program's loss so the ``clipped_cases`` experiment can train
with it unchanged while recording, per update, the fraction of the batch that took each
side; its rows become ``cases.csv``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["BranchTracker"]


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
        value = self.program.per_transition(batch, q_net, target_net, gamma, generator=generator,
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
