"""evorl_nb: evolve reinforcement-learning loss functions as typed computational graphs.

>>> from evorl_nb import library, Batch, Program
>>> prog = library.get("dqn_reg")
>>> prog.equation()
'δ^2 + 0.1*Q(s_t, a_t)'
"""

from importlib import metadata as _metadata

from evorl_nb import library
from evorl_nb.ops import OPS, Type
from evorl_nb.program import Batch, Node, Program, ProgramBuilder, ProgramError

__all__ = ["library", "Batch", "Node", "Program", "ProgramBuilder", "ProgramError", "OPS", "Type"]
__version__ = _metadata.version("evorl_nb")  # one place: pyproject.toml
