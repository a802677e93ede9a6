"""evorl_nb: evolve reinforcement-learning loss functions as typed computational graphs.

>>> from evorl_nb import library, Batch, Program
>>> prog = library.get("dqn_reg")
>>> prog.equation()
'δ^2 + 0.1*Q(s_t, a_t)'

The public API, importable from here (the training and search names load their modules,
and torch, on first use, so ``import evorl_nb`` stays fast):

* programs: ``library``, ``Program``, ``ProgramBuilder``, ``Batch``, ``Node``,
  ``ProgramError``, ``OPS``, ``Type``, ``torch_source``
* training: ``train``, ``DQNConfig``, ``get_config``, ``train_population``,
  ``Population``, ``evaluate_batch``, ``get_spec``, ``make_env``
* searching: ``Evolution``, ``EvolutionConfig``, ``get_preset``, ``start``, ``resume``,
  ``load_run``
"""

from importlib import import_module as _import_module
from importlib import metadata as _metadata

from evorl_nb import library
from evorl_nb.ops import OPS, Type
from evorl_nb.program import Batch, Node, Program, ProgramBuilder, ProgramError

_LAZY = {
    "torch_source": "evorl_nb.export",
    "train": "evorl_nb.dqn",
    "DQNConfig": "evorl_nb.presets",
    "get_config": "evorl_nb.presets",
    "train_population": "evorl_nb.batched",
    "Population": "evorl_nb.batched",
    "evaluate_batch": "evorl_nb.evaluate",
    "get_spec": "evorl_nb.envs",
    "make_env": "evorl_nb.envs",
    "Evolution": "evorl_nb.evolve",
    "EvolutionConfig": "evorl_nb.presets",
    "get_preset": "evorl_nb.presets",
    "start": "evorl_nb.runner",
    "resume": "evorl_nb.runner",
    "load_run": "evorl_nb.store",
}

__all__ = ["library", "Batch", "Node", "Program", "ProgramBuilder", "ProgramError", "OPS", "Type",
           *_LAZY]
__version__ = _metadata.version("evorl_nb")  # one place: pyproject.toml


def __getattr__(name: str):
    """The training and search names of the public API, imported on first use."""
    if name in _LAZY:
        value = getattr(_import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'evorl_nb' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
