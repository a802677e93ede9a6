"""An experiment folder's files: CSV written by the experiments, read back by :func:`load`.

Writing and reading sit together so the folder's format is defined in one place; the
notebook, the command line and the figures (:mod:`evorl_nb.viz.experiments`) read a
folder only through :func:`load`.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

__all__ = ["write_csv", "load"]

def write_csv(path: Path, rows: list[dict]) -> None:
    """Write ``rows`` (dicts with the same keys, the header) to ``path``; no rows leave an
    empty file, which :func:`load` skips."""
    with open(path, "w", newline="") as f:
        if not rows:
            return
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def load(folder: str | Path | dict) -> dict:
    """An experiment folder's tables as pandas DataFrames (those it has of runs, summary,
    episodes, cases, table, convergence), its meta and the folder. Given what ``load``
    returned, returns it as it is (so callers can read a folder once and pass it around)."""
    import pandas as pd

    if isinstance(folder, dict):
        return folder
    folder = Path(folder)
    out: dict[str, Any] = {"meta": json.loads((folder / "meta.json").read_text()),
                           "folder": folder}
    for name in ("runs", "summary", "episodes", "cases", "table", "convergence"):
        path = folder / f"{name}.csv"
        if path.exists() and path.stat().st_size:
            out[name] = pd.read_csv(path)
    return out
