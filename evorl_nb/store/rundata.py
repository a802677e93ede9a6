"""A run read into pandas: :class:`RunData` and :func:`load_run`, the read-only view that a
notebook, the figures and the command line use (safe while another process writes).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evorl_nb.store.files import store_path
from evorl_nb.store.runstore import RunStore
from evorl_nb.store.schema import _RESERVED, EVALUATED, RESCORE_COLUMNS

__all__ = ["RunData", "load_run"]


_FRAME = {  # DataFrame column -> dtype (then one float column per env: "score:<env_id>")
    "id": "int64", "parent_id": "Int64", "proposal": object, "status": object, "reason": object,
    "fitness": "float64", "steps": "int64", "wall_time": "float64", "fingerprint": object,
    "program": object, "mutation": object, "worker": object, "proposed_at": "float64",
    "finished_at": "float64",
}


@dataclass
class RunData:
    """A snapshot of a run, read by :func:`load_run`."""

    path: Path
    """The run file."""
    config: dict
    """The run's configuration."""
    seed: int
    """The run's seed."""
    created_at: float
    """Unix time at which the run was created."""
    candidates: Any
    """pandas DataFrame, one row per candidate in id order; ``score:<env_id>`` columns."""
    meta: dict = field(default_factory=dict)
    """Run-level state set with :meth:`RunStore.set_meta` (e.g. ``{"finished": True}``)."""
    rescores: Any = None
    """pandas DataFrame of re-scoring runs (:data:`RESCORE_COLUMNS`; empty if none); see
    :func:`evorl_nb.rescore.ranking` for the table ranked by re-scored mean."""

    def best(self, k: int = 10, distinct: bool = False):
        """Top ``k`` candidates by fitness (ties: lower id first), leaving out failed ones
        and ones without a fitness (NaN). ``distinct`` keeps one row per loss (fingerprint):
        its best-ranked candidate."""
        df = self.candidates
        df = df[(df["status"] != "failed") & df["fitness"].notna()]
        df = df.sort_values(["fitness", "id"], ascending=[False, True], kind="mergesort")
        if distinct:
            df = df.drop_duplicates("fingerprint")
        return df.head(k)

    def rates(self) -> dict:
        """Fractions of all candidates that were ``duplicate``, ``below_hurdle`` and
        ``failed`` (0.0 for an empty run), the ``evaluated`` count (trained or below
        the hurdle) and the ``total`` count."""
        status = self.candidates["status"]
        n = len(status)
        out = {s: float((status == s).sum()) / n if n else 0.0
               for s in ("duplicate", "below_hurdle", "failed")}
        out["evaluated"] = int(status.isin(EVALUATED).sum())
        out["total"] = n
        return out


def load_run(path: str | Path) -> RunData:
    """Read a run (its folder, its ``run.sqlite`` or a packed ``run.sqlite.gz``; read-only,
    safe while another process writes it) into a :class:`RunData`."""
    import pandas as pd

    if Path(path).is_dir() or str(path).endswith(".sqlite.gz"):
        path = store_path(path)
    with RunStore.open(path, readonly=True) as store:  # a run.sqlite.gz is read as it is
        recs = store.candidates()
        meta = {k: json.loads(v) for k, v in store._read("SELECT key, value FROM meta")
                if k not in _RESERVED}
        envs = list(dict.fromkeys(e for r in recs for e in r.scores))
        data = {c: pd.Series([getattr(r, "program_json" if c == "program" else c) for r in recs],
                             dtype=t) for c, t in _FRAME.items()}
        for env in envs:
            data[f"score:{env}"] = pd.Series([r.scores.get(env, math.nan) for r in recs],
                                             dtype="float64")
        df = pd.DataFrame(data)
        rescores = pd.DataFrame(store.rescores(), columns=list(RESCORE_COLUMNS))
        return RunData(path=Path(path), config=store.config, seed=store.seed,
                       created_at=store.created_at, candidates=df, meta=meta,
                       rescores=rescores)
