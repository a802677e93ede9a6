"""The search experiments (``search``, ``scratch``): an evolution run and its tables.

:func:`run_search` runs the experiment's search into ``OUT/EXPERIMENT/run``;
:func:`write_search_tables` turns any run store into ``table.csv`` (the slides' table,
:func:`program_table`) and ``convergence.csv``, so a search run outside an experiment can
be tabulated the same way.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evorl_nb.presets import BUDGETS
from evorl_nb.reproduce.families import family
from evorl_nb.reproduce.tables import write_csv

if TYPE_CHECKING:
    from evorl_nb.reproduce.experiments import Experiment

__all__ = ["run_search", "write_search_tables", "program_table"]


def run_search(exp: Experiment, budget: str, folder: Path, env_ids, progress: bool,
               workers: int | None) -> dict:
    """Run the experiment's search into ``folder/run``; write table.csv and convergence.csv.
    ``env_ids`` None keeps the evolution preset's envs and hurdle."""
    import shutil

    from evorl_nb import runner
    from evorl_nb.evolve import get_preset

    overrides: dict[str, Any] = {"space": exp.space}
    if env_ids is not None:
        overrides.update(envs=tuple(env_ids), hurdle=None)
    if exp.algorithms:
        overrides["seed_programs"] = tuple(exp.algorithms)
    config = get_preset(BUDGETS[budget]["evolution"], **overrides)
    run_dir = folder / "run"
    if run_dir.exists():  # a new search each time: the folder holds this command's results
        shutil.rmtree(run_dir)
    backend = "inprocess" if budget == "ci" else "local"
    runner.start(run_dir, config, seed=0, backend=backend,
                 workers=None if backend == "inprocess" else (workers or os.cpu_count()),
                 progress=progress, verbose=False)
    out = write_search_tables(folder, runner.store_path(run_dir))
    return {"evolution": config.to_dict(), "backend": backend, **out}


def write_search_tables(folder: str | Path, store: str | Path) -> dict:
    """Write ``table.csv`` and ``convergence.csv`` of a search's run store into ``folder``;
    returns its rates and the store's path relative to ``folder`` (for meta.json)."""
    from evorl_nb.store import load_run

    folder = Path(folder)
    data = load_run(store)
    write_csv(folder / "table.csv", program_table(data))
    df = data.candidates
    fit = df["fitness"].where(df["status"] != "failed").astype(float)
    conv = [{"id": int(i), "status": st, "fitness": None if math.isnan(f) else float(f),
             "best_so_far": None if math.isnan(b) else float(b)}
            for i, st, f, b in zip(df["id"], df["status"], fit, fit.cummax(), strict=True)]
    write_csv(folder / "convergence.csv", conv)
    return {"rates": data.rates(), "run": str(Path(store).resolve().relative_to(folder.resolve()))}


def program_table(data, k: int = 10) -> list[dict]:
    """The slides' table for a run: its ``k`` best distinct losses with raw and simplified
    equation, score (fitness), rank among all candidates, times proposed, and family."""
    from evorl_nb.program import Program

    df = data.candidates
    rank = {int(i): r for r, i in enumerate(data.best(len(df))["id"], start=1)}
    counts = df["fingerprint"].value_counts()
    rows = []
    for _, row in data.best(k, distinct=True).iterrows():
        program = Program.from_json(row["program"])
        rows.append({"rank": rank[int(row["id"])], "id": int(row["id"]),
                     "score": float(row["fitness"]),
                     "proposed": int(counts.get(row["fingerprint"], 1)),
                     "raw": program.equation(simplify=False),
                     "simplified": program.equation(), "family": family(program)})
    return rows
