"""The inputs of every loss program: their names, types and order, and a batch of them.

A program (:mod:`evorl_nb.program`) is a graph over these seven inputs, in the authors'
order: the online network, the action, the state, the target network, the next state, the
reward and the discount. The modules that read programs (symbolic, fingerprint, export)
take their vocabulary from here, below the program class itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from evorl_nb.ops import Type

if TYPE_CHECKING:
    import torch

__all__ = ["INPUTS", "INPUT_NAMES", "N_INPUTS", "ONLINE", "ACTION", "S_T", "TARGET", "S_TP1",
           "REWARD", "DISCOUNT", "Batch"]

INPUTS: tuple[tuple[str, Type], ...] = (
    ("q", Type.PARAM),
    ("a_t", Type.Z),
    ("s_t", Type.S),
    ("q_targ", Type.PARAM),
    ("s_tp1", Type.S),
    ("r_t", Type.R),
    ("discount", Type.R),
)
"""The program inputs, in the authors' order, with their types."""
INPUT_NAMES = tuple(name for name, _ in INPUTS)
N_INPUTS = len(INPUTS)
ONLINE, ACTION, S_T, TARGET, S_TP1, REWARD, DISCOUNT = range(N_INPUTS)
"""Graph indices of the inputs, in INPUTS' order (the online and the target network, the
action, the two states, the reward and the discount)."""


class Batch(NamedTuple):
    """A batch of transitions: obs [B, ...], action [B], reward [B], next_obs [B, ...], done [B]."""

    obs: torch.Tensor
    action: torch.Tensor
    reward: torch.Tensor
    next_obs: torch.Tensor
    done: torch.Tensor
