"""One finished candidate as a run records it (:class:`CandidateRecord`), with the checks
that keep a bad value out of the file and a damaged row from being read as a good one.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from pathlib import Path

from evorl_nb.store.schema import _COLUMNS, STATUSES, StoreError, _loads

__all__ = ["CandidateRecord"]


@dataclass
class CandidateRecord:
    """One finished candidate, as recorded in a run (one row of ``candidates``)."""

    proposal: str
    """Unique key the evolution gave the candidate when proposing it (e.g. ``"c000123"``)."""
    parent_id: int | None
    """Store id of the parent candidate; None for the initial population."""
    program_json: str
    """The program as JSON text."""
    fingerprint: str
    """Functional-equivalence fingerprint (the cache key)."""
    status: str
    """One of ``"trained"``, ``"duplicate"``, ``"below_hurdle"``, ``"failed"``."""
    reason: str | None
    """Why it failed or was cut short (free text); None if nothing to say."""
    scores: dict[str, float]
    """Normalized training score per environment id."""
    fitness: float
    """Fitness; NaN when there is none (stored as NULL)."""
    steps: int = 0
    """Environment steps spent training it (0 for duplicates)."""
    wall_time: float = 0.0
    """Seconds spent evaluating it."""
    mutation: str | None = None
    """Text description of the mutation that made it from its parent."""
    worker: str | None = None
    """Which worker evaluated it."""
    proposed_at: float = 0.0
    """Unix time at which it was proposed."""
    finished_at: float = 0.0
    """Unix time at which its evaluation finished."""
    id: int | None = None
    """Store id (1, 2, ... in the order candidates joined); set by the store, ignored by add."""

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Raise :class:`StoreError` unless every field has a storable value."""
        p = self.proposal
        if not isinstance(p, str) or not p:
            raise StoreError(f"proposal must be a non-empty str, got {p!r}")
        if self.status not in STATUSES:
            raise StoreError(f"candidate {p!r}: status {self.status!r} is not one of {STATUSES}")
        for name, (kind, what, none_ok) in _CHECKS.items():
            v = getattr(self, name)
            if not (v is None and none_ok) and (isinstance(v, bool) or not isinstance(v, kind)):
                raise StoreError(f"candidate {p!r}: {name} must be {what}"
                                 f"{' or None' if none_ok else ''}, got {v!r}")
        if not all(isinstance(k, str) and isinstance(v, numbers.Real) and not isinstance(v, bool)
                   for k, v in self.scores.items()):
            raise StoreError(f"candidate {p!r}: scores must map env ids (str) to floats, "
                             f"got {self.scores!r}")


_S, _N, _I = (str, "a str"), (numbers.Real, "a number"), (numbers.Integral, "an int")
_CHECKS = {  # field -> (accepted type, what to say, None accepted)
    "parent_id": (*_I, True), "program_json": (*_S, False), "fingerprint": (*_S, False),
    "reason": (*_S, True), "scores": (dict, "a dict of env id -> score", False),
    "fitness": (numbers.Real, "a number (NaN if none)", True), "steps": (*_I, False),
    "wall_time": (*_N, False), "mutation": (*_S, True), "worker": (*_S, True),
    "proposed_at": (*_N, False), "finished_at": (*_N, False),
}


def _record(row: tuple, path: Path) -> CandidateRecord:
    r = dict(zip(_COLUMNS, row, strict=True))
    scores = _loads(r["scores"])
    try:
        if not isinstance(scores, dict):
            raise StoreError(f"its scores {str(r['scores'])[:60]!r} are not a JSON object")
        return CandidateRecord(  # validates every field
            proposal=r["proposal"], parent_id=r["parent_id"], program_json=r["program"],
            fingerprint=r["fingerprint"], status=r["status"], reason=r["reason"],
            scores=scores, fitness=math.nan if r["fitness"] is None else r["fitness"],
            steps=r["steps"] or 0, wall_time=r["wall_time"] or 0.0, mutation=r["mutation"],
            worker=r["worker"], proposed_at=r["proposed_at"] or 0.0,
            finished_at=r["finished_at"] or 0.0, id=r["id"])
    except StoreError as e:
        raise StoreError(f"run {str(path)!r} is damaged: candidate {r['id']}: {e}") from None
