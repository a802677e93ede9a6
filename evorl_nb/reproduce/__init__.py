"""The paper's experiments at a chosen budget: ``evorl-nb reproduce EXPERIMENT --budget B``.

Each experiment trains the hand-designed and learned losses with the population trainer
(every algorithm x seed of one environment is one batch) and writes small files to
``OUT/EXPERIMENT/`` (by default ``docs/results/reproduce/BUDGET/EXPERIMENT/``):

* ``runs.csv``: one row per (algorithm, env, seed): normalized scores over all episodes
  (the paper's) and the last 50, failure, steps, episodes;
* ``summary.csv``: per (algorithm, env): mean and 95% confidence interval (Student t over
  seeds) of both scores;
* ``episodes.csv``: the training episodes (return, normalized return, the online net's
  max_a Q(s_0, a), the realized discounted return), at most :data:`EPISODE_ROWS` per run,
  evenly spaced and always the last (a MiniGrid run has thousands): learning curves and
  the Q-value overestimation study are drawn from it (:func:`evorl_nb.viz.experiments.figures`);
* ``meta.json``: the command, budget, trainer settings, seeds, versions and wall time.

The ``clipped_cases`` experiment also writes ``cases.csv`` (which side of each of
DQNClipped's max ops won, per training-step bin; :class:`BranchTracker`), and the search
experiments (``search``: bootstrapped from DQN; ``scratch``: from scratch) write the run
store ``run/runs.sqlite``, ``table.csv`` (the slides' table: raw and simplified equation,
score, rank, family) and ``convergence.csv`` instead of the training tables.
:func:`evorl_nb.viz.experiments.save_figures` exports every figure as PNG (kaleido, through
Chromium); this package draws nothing (figures live in ``evorl_nb.viz``).

Budgets: ``ci`` (seconds, for the test suite), ``quick`` (the ``quick`` trainer and
evolution preset, 5 seeds: this machine's scale), ``long`` (the quick network for the
paper's step budgets and exploration schedule, 3 seeds) and ``paper`` (the paper's
trainer, evolution preset and budgets, 5 seeds).

>>> sorted(EXPERIMENTS)
['clipped_cases', 'generalization', 'overestimation', 'scratch', 'search', 'training']

:mod:`~evorl_nb.reproduce.experiments` defines the experiments and runs one (:func:`run`),
:mod:`~evorl_nb.reproduce.training` trains the losses and writes the training tables,
:mod:`~evorl_nb.reproduce.search` runs a search and writes its tables,
:mod:`~evorl_nb.reproduce.tracking` records DQNClipped's cases,
:mod:`~evorl_nb.reproduce.families` names a found program's family,
:mod:`~evorl_nb.reproduce.tables` writes and reads the CSV files and
:mod:`~evorl_nb.reproduce.analysis` computes the statistics drawn from them.
"""

from __future__ import annotations

from evorl_nb.presets import BUDGETS
from evorl_nb.reproduce.analysis import case_summary, overestimation_bias
from evorl_nb.reproduce.experiments import (  # noqa: F401 - re-exported
    ALGORITHMS,
    EXPERIMENTS,
    RESULTS,
    Experiment,
    run,
    trainer_config,
)
from evorl_nb.reproduce.families import family
from evorl_nb.reproduce.search import program_table, write_search_tables
from evorl_nb.reproduce.tables import load
from evorl_nb.reproduce.tracking import BranchTracker
from evorl_nb.reproduce.training import EPISODE_ROWS, label, loss_program, thin  # noqa: F401
from evorl_nb.stats import ci95

__all__ = ["EXPERIMENTS", "BUDGETS", "Experiment", "BranchTracker", "run", "load",
           "overestimation_bias", "case_summary", "program_table", "family",
           "write_search_tables",
           "trainer_config", "thin", "ci95"]
