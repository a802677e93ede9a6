"""Re-score a search's winners on fresh seeds, beside DQN and DQNReg.

A search scores every candidate with one training seed (``eval_seed``), so the top of
its table is partly luck. :func:`rescore` trains the top-k distinct programs of a run,
and the reference losses (DQN, DQNReg), on ``seeds`` seeds the search never used, on
every fitness environment (no hurdle: each environment gets a score), with the
population trainer on the search's own trainer settings. Every training run is one row
of the run store's ``rescores`` table, written as it finishes, so a killed re-scoring
resumes where it stopped. :func:`ranking` ranks the programs by their re-scored mean
fitness with a 95% confidence interval, and marks those that beat DQN outside the noise
(the 95% interval of the per-seed difference, same seeds, excludes 0).

>>> import tempfile
>>> from evorl_nb.runner import start
>>> out = tempfile.mkdtemp()
>>> path = start(out + "/run", "ci", seed=0, progress=False, verbose=False)
>>> table = rescore(path, top=2, seeds=2, references=("dqn",), progress=False)
>>> sorted(table["entry"])[-1]
'lib:dqn'
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from evorl_nb import library
from evorl_nb.envs import get_spec
from evorl_nb.evolve import EvolutionConfig, ProgramEvaluator
from evorl_nb.program import Program
from evorl_nb.stats import ci95, paired_ci95
from evorl_nb.store import RunStore, load_run, store_path

__all__ = ["rescore", "ranking", "ranked_program", "REFERENCES", "FIRST_SEED", "DEFAULT_TOP", "DEFAULT_SEEDS"]

REFERENCES = ("dqn", "dqn_reg")
"""Library losses re-scored beside a run's programs: the baseline and the paper's find."""
FIRST_SEED = 1000
"""The first re-scoring seed (a search trains every candidate with its ``eval_seed``, 0 by
default; seeds from here on are fresh)."""
DEFAULT_TOP = 20
"""Distinct programs re-scored by default."""
DEFAULT_SEEDS = 5
"""Fresh seeds per program by default."""


def _entries(store: RunStore, top: int, references: Sequence[str]) -> list[dict]:
    """What to re-score: the run's top distinct programs, then the library references."""
    data = load_run(store.path)
    best = data.best(top, distinct=True)
    entries = [{"entry": f"id:{int(r.id)}", "candidate_id": int(r.id), "program": r.program,
                "fingerprint": r.fingerprint} for r in best.itertuples()]
    for e in entries:  # a damaged program is refused before anything is written
        Program.from_record(e["program"], f"run {store.path}, candidate {e['candidate_id']}")
    for name in references:
        prog = library.get(name)
        entries.append({"entry": f"lib:{name}", "candidate_id": None,
                        "program": prog.to_json(), "fingerprint": prog.fingerprint()})
    return entries


def rescore(run: str | Path, *, top: int = DEFAULT_TOP, seeds: int = DEFAULT_SEEDS,
            references: Sequence[str] = REFERENCES, first_seed: int = FIRST_SEED,
            backend: str = "inprocess", workers: int | None = None,
            timeout: float | None = None, address: str | None = None,
            progress: bool = True):
    """Train the top ``top`` distinct programs of ``run`` and the ``references`` on
    ``seeds`` fresh seeds (from ``first_seed``) on every fitness env; record each run in
    the store (skipping those already there: resumable); return :func:`ranking`."""
    for name, v in (("top", top), ("seeds", seeds)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"rescore: {name} must be a positive integer, got {v!r}")
    path = store_path(run)
    store = RunStore.open(path)
    try:
        config = EvolutionConfig.from_run(store)
        if first_seed <= config.eval_seed < first_seed + seeds:
            raise ValueError(f"rescore: seeds {first_seed}..{first_seed + seeds - 1} include "
                             f"the search's eval_seed {config.eval_seed}; pick another first_seed")
        envs = tuple(get_spec(e).env_id for e in config.envs)  # the ids scores are keyed by
        evaluator = ProgramEvaluator(envs, None, config.trainer, config.window)
        entries = _entries(store, top, references)
        store.set_meta("rescore", {"top": top, "seeds": seeds, "first_seed": first_seed,
                                   "references": list(references)})
        done: dict[tuple[str, int], set[str]] = {}
        for r in store.rescores():
            done.setdefault((r["entry"], r["seed"]), set()).add(r["env"])
        have = {k for k, got in done.items() if got >= set(envs)}
        todo = [(e, s) for s in range(first_seed, first_seed + seeds) for e in entries
                if (e["entry"], s) not in have]
        if todo:
            _train(store, todo, evaluator, config.width, backend, workers, timeout, address,
                   progress, len(entries) * seeds)
    finally:
        store.close()
    return ranking(path)


def _train(store: RunStore, todo: list[tuple[dict, int]], evaluator, slots: int,
           backend: str, workers, timeout, address, progress: bool, total: int) -> None:
    from evorl_nb.backends import make_backend

    be = make_backend(backend, workers, timeout, address, slots=max(1, slots))
    pending = {f"{e['entry']}@{s}": (e, s) for e, s in todo}
    queue = list(pending)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=total - len(todo), desc="re-scoring", unit="run",
                   dynamic_ncols=True)
    try:
        while pending:
            while queue and be.free() > 0:
                room = be.free()
                # one task per seed: a backend task carries one seed
                seed = pending[queue[0]][1]
                keys = [k for k in queue if pending[k][1] == seed][:room]
                be.submit(keys, evaluator, [Program.from_json(pending[k][0]["program"])
                                            for k in keys], seed)
                taken = set(keys)
                queue = [k for k in queue if k not in taken]
            for key, out in be.wait():
                entry, seed = pending.pop(key)
                rows = []
                for env_id in evaluator.envs:
                    score = out.scores.get(env_id)
                    rows.append({**entry, "env": env_id, "seed": seed,
                                 "score": float(score if score is not None else 0.0),
                                 "failed": int(out.status == "failed" or score is None),
                                 "reason": out.reason, "steps": out.steps,
                                 "wall_time": out.wall_time})
                store.add_rescores(rows)
                if bar is not None:
                    bar.update(1)
    finally:
        be.close()
        if bar is not None:
            bar.close()


def ranking(run: str | Path):
    """The re-scored programs ranked by mean fitness (the sum of their env scores) over
    the fresh seeds: one row per entry with ``mean``, ``ci95`` (half-width), per-env
    means (``score:<env>``), ``vs_dqn`` (mean paired difference to DQN) and its
    ``vs_dqn_ci95``, ``beats_dqn`` (True when that difference is above 0 outside its
    interval), the search's ``fitness`` and the ``equation``. Empty if nothing was
    re-scored."""
    import pandas as pd

    data = load_run(store_path(run))
    df = data.rescores
    cols = ["rank", "entry", "candidate_id", "mean", "ci95", "vs_dqn", "vs_dqn_ci95",
            "beats_dqn", "seeds", "fitness", "equation", "fingerprint", "program"]
    if df is None or df.empty:
        return pd.DataFrame(columns=cols)
    per_seed = df.pivot_table(index=["entry", "seed"], columns="env", values="score",
                              aggfunc="first")
    complete = per_seed.dropna()
    fitness = complete.sum(axis=1)
    dqn = fitness.xs("lib:dqn", level="entry") if "lib:dqn" in fitness.index.get_level_values(
        "entry") else None
    info = df.drop_duplicates("entry").set_index("entry")
    search_fitness = data.candidates.set_index("id")["fitness"]
    rows = []
    for entry, f in fitness.groupby(level="entry"):
        f = f.droplevel("entry")
        mean, half = ci95(f.to_numpy())
        row: dict[str, Any] = {"entry": entry, "mean": mean, "ci95": half, "seeds": len(f)}
        for env in per_seed.columns:
            row[f"score:{env}"] = float(complete.loc[entry][env].mean())
        if dqn is not None and entry != "lib:dqn":
            common = f.index.intersection(dqn.index)
            d, dh = paired_ci95(f[common].to_numpy(), dqn[common].to_numpy())
            row.update(vs_dqn=d, vs_dqn_ci95=dh, beats_dqn=bool(len(common) > 1 and d - dh > 0))
        else:
            row.update(vs_dqn=np.nan, vs_dqn_ci95=np.nan, beats_dqn=False)
        cid = info.loc[entry, "candidate_id"]
        cid = None if cid is None or (isinstance(cid, float) and np.isnan(cid)) else int(cid)
        row["candidate_id"] = cid
        row["fitness"] = float(search_fitness.get(cid, np.nan)) if cid is not None else np.nan
        program = info.loc[entry, "program"]
        row["program"], row["fingerprint"] = program, info.loc[entry, "fingerprint"]
        row["equation"] = _equation(program, entry)
        rows.append(row)
    out = pd.DataFrame(rows).sort_values(["mean", "entry"], ascending=[False, True],
                                         kind="mergesort")
    out.insert(0, "rank", range(1, len(out) + 1))
    envs = [c for c in out.columns if c.startswith("score:")]
    return out[cols[:-2] + envs + cols[-2:]].reset_index(drop=True)


def ranked_program(run: str | Path, rank: int = 1) -> tuple[Program, str]:
    """The run's ``rank``-th best searched program (1 = best) and a line saying where it
    ranks: by re-scored mean over fresh seeds where the run was re-scored (the search's own
    fitness is one noisy draw), else by search fitness, one program per distinct loss."""
    if rank < 1:
        raise ValueError(f"--rank counts from 1, got {rank}")
    table = ranking(run)
    found = table[~table["entry"].str.startswith("lib:")] if not table.empty else table
    if not found.empty:
        if rank > len(found):
            raise ValueError(f"the run's re-scored ranking has {len(found)} searched "
                             f"programs; rank {rank} is not among them")
        row = found.iloc[rank - 1]
        how = (f"rank {rank} by re-scored mean ({row['mean']:.3f} ± {row['ci95']:.3f} over "
               f"{int(row['seeds'])} fresh seeds), candidate {row['entry']}")
        return Program.from_record(row["program"], f"run {run}, {row['entry']}"), how
    best = load_run(store_path(run)).best(rank, distinct=True)
    if len(best) < rank:
        raise ValueError(f"the run has {len(best)} distinct scored programs; rank {rank} "
                         "is not among them")
    row = best.iloc[rank - 1]
    how = (f"rank {rank} by search fitness ({row['fitness']:.3f}; not re-scored), "
           f"candidate id:{int(row['id'])}")
    return Program.from_record(row["program"], f"run {run}, candidate {int(row['id'])}"), how


def _equation(program_json: str, entry: str) -> str:
    try:
        return Program.from_json(program_json).equation()
    except Exception as e:  # a display problem must not hide the numbers
        return f"({entry}: equation unavailable: {type(e).__name__})"
