"""Plotly figures and ipywidgets built from library data (programs, training records, run
stores). The figures hold no training logic; the explorer's Evaluate button calls the
library's trainer. Nothing in the library imports this package.

- :mod:`evorl_nb.viz.graph`: a program's DAG next to its simplified equation.
- :mod:`evorl_nb.viz.training`: the live Q-value overestimation plot and learning curves.
- :mod:`evorl_nb.viz.evolution`: fitness over a run, duplicate/hurdle/failure rates, lineage,
  and the live evolution dashboard.
- :mod:`evorl_nb.viz.explorer`: the program explorer (pick, mutate and see what changed,
  evaluate with live plots).
"""

from evorl_nb.viz.explorer import ProgramExplorer

__all__ = ["ProgramExplorer"]
