"""The program explorer: pick a loss, read its DAG and equation, mutate it, train it.

:class:`ProgramExplorer` is an ``ipywidgets`` view in a notebook. Pick a library or evolved
program in the drop-down; its DAG (a plotly ``FigureWidget``) is drawn beside its simplified
equation. **Mutate** makes a child with the evolution's own mutation operator and says what
changed (the mutation, the equation before and after, the nodes that changed, joined or left
the loss, and whether the loss is functionally the same); **Back** returns to the parent.
**Evaluate** trains the program shown with :func:`evorl_nb.dqn.train`, plotting each episode
live, and reports the normalized score (or, for a failed run, why it failed).

Every button has a method (:meth:`~ProgramExplorer.select`, :meth:`~ProgramExplorer.mutate`,
:meth:`~ProgramExplorer.back`, :meth:`~ProgramExplorer.evaluate`), so a notebook or a test can
drive the explorer without clicking. Every mutation is drawn from one
``numpy.random.Generator`` seeded by ``seed``: the same calls replay the same session.

>>> explorer = ProgramExplorer(seed=0)
>>> explorer.select("dqn_reg").equation()
'δ^2 + 0.1*Q(s_t, a_t)'
>>> change = explorer.mutate()
>>> change.parent.name, explorer.back().name
('dqn_reg', 'dqn_reg')

The package: :mod:`~evorl_nb.viz.explorer.widget` (the widget and its layout),
:mod:`~evorl_nb.viz.explorer.changes` (what a mutation changed, as data and as the HTML
panel) and :mod:`~evorl_nb.viz.explorer.evaluation` (the training thread behind Evaluate).
"""

from evorl_nb.viz.explorer.changes import Change, HistoryEntry
from evorl_nb.viz.explorer.widget import ProgramExplorer

__all__ = ["ProgramExplorer", "Change", "HistoryEntry"]
