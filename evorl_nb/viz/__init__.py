"""Plotly figures and ipywidgets built from library data (programs, training records, run
stores). Nothing here trains or evolves; nothing in the library imports this package.

- :mod:`evorl_nb.viz.graph`: a program's DAG next to its simplified equation.
- :mod:`evorl_nb.viz.training`: the live Q-value overestimation plot and learning curves.
"""
