"""Run a search to its budget: the evolution, a backend and the run store together.

``start(out, config)`` creates ``out/run.sqlite`` and drives the search;
``resume(out)`` picks a stopped or killed run up from its store (the
evaluations that were in flight are lost, nothing else). Only this driver
writes the store: each finished candidate is one transaction, so a SIGKILL at
any moment loses no finished work and records nothing twice.

>>> import tempfile
>>> out = tempfile.mkdtemp()
>>> path = start(out + "/run", "ci", seed=0, progress=False, verbose=False)
>>> from evorl_nb.store import load_run
>>> len(load_run(path).candidates)
16
"""

from __future__ import annotations

import textwrap
import time
from pathlib import Path
from typing import Callable

from evorl_nb.backends import make_backend
from evorl_nb.evolve import (
    Evolution,
    EvolutionConfig,
    Outcome,
    ProgramEvaluator,
    Proposal,
    get_preset,
)
from evorl_nb.program import Program
from evorl_nb.store import STORE_NAME, CandidateRecord, RunStore, store_path

__all__ = ["start", "resume", "drive", "store_path", "summary", "summary_data", "STORE_NAME"]


def start(out: str | Path, config: EvolutionConfig | str = "quick", *, seed: int = 0,
          backend: str = "inprocess", workers: int | None = None, timeout: float | None = None,
          address: str | None = None, evaluator: Callable | None = None, progress: bool = True,
          verbose: bool = True, rescore: dict | None = None) -> Path:
    """Start a new search in folder ``out`` and run it to its budget; returns the store path.

    ``rescore``: a dict of :func:`evorl_nb.rescore.rescore` options (``{}`` for its
    defaults) to re-score the winners on fresh seeds once the budget is spent; None skips
    it (the command line re-scores unless ``--no-rescore``)."""
    config = get_preset(config) if isinstance(config, str) else config
    config.validate()
    path = store_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    store = RunStore.create(path, config=config.to_dict(), seed=seed)
    if rescore is not None:
        store.set_meta("rescore_at_end", dict(rescore))
    try:
        drive(store, Evolution(config, seed), backend, workers=workers, timeout=timeout,
              address=address, evaluator=evaluator, progress=progress, verbose=False)
    finally:
        store.close()
    _finish(path, backend, workers, timeout, address, progress, verbose)
    return path


def _finish(path: Path, backend: str, workers, timeout, address, progress: bool,
            verbose: bool) -> None:
    """After the search: re-score if the run asks for it and its budget is spent; summary."""
    with RunStore.open(path, readonly=True) as store:
        finished, opts = store.get_meta("finished"), store.get_meta("rescore_at_end")
    if finished and opts is not None:
        from evorl_nb.rescore import rescore

        rescore(path, backend=backend, workers=workers, timeout=timeout, address=address,
                progress=progress, **opts)
    if verbose:
        print(summary(path))
        print(next_steps(path))


def next_steps(path: str | Path) -> str:
    """What to do with a finished run, as commands (printed after a search's summary)."""
    run = Path(path).parent if Path(path).name.startswith(STORE_NAME) else Path(path)
    rows = [(f"evorl-nb show {run} --top 20", "more of the ranking (--json for scripts)"),
            (f"evorl-nb plot {run} -o {run}/run.html", "fitness and rate figures, top programs"),
            (f"evorl-nb program {run} --rank 1 -o best.json", "the best program as a file"),
            (f"evorl-nb export {run} --rank 1 -o best_loss.py", "a standalone PyTorch loss"),
            (f"evorl-nb rescore {run}", "re-train the top programs on fresh seeds"),
            ("notebooks/04_analysing_a_run.ipynb", "lineage, equations and figures in Jupyter")]
    width = max(len(cmd) for cmd, _ in rows)
    return "\n".join(["next:", *(f"  {cmd:<{width}}  {what}" for cmd, what in rows)])


def resume(out: str | Path, *, backend: str = "inprocess", workers: int | None = None,
           timeout: float | None = None, address: str | None = None,
           evaluator: Callable | None = None, candidates: int | None = None,
           progress: bool = True, verbose: bool = True) -> Path:
    """Continue a stopped or killed search from its store (optionally with a larger budget),
    with the config it stored; then the re-scoring it asked for, if not yet complete."""
    path = store_path(out)
    store = RunStore.open(path)
    try:
        config = EvolutionConfig.from_run(store)
        if candidates is not None:
            config = EvolutionConfig.from_dict({**config.to_dict(), "candidates": candidates})
            store.set_meta("candidates", candidates)
        elif store.get_meta("candidates") is not None:
            config = EvolutionConfig.from_dict({**config.to_dict(),
                                                "candidates": store.get_meta("candidates")})
        evo = Evolution(config, store.seed)
        evo.replay(store.candidates())
        if evo.done:  # nothing to train: say so rather than spin up workers
            if verbose:
                print(f"run {path} is complete: {evo.recorded} of {config.candidates} "
                      "candidates recorded (raise the budget with --candidates N)")
            if not store.get_meta("finished"):
                store.set_meta("finished", True)
        else:
            drive(store, evo, backend, workers=workers, timeout=timeout, address=address,
                  evaluator=evaluator, progress=progress, verbose=False)
    finally:
        store.close()
    _finish(path, backend, workers, timeout, address, progress, verbose)
    return path


def _record(store: RunStore, prop: Proposal, out: Outcome) -> int:
    rec = CandidateRecord(
        proposal=prop.key, parent_id=prop.parent_id, program_json=prop.program.to_json(),
        fingerprint=prop.fingerprint, status=out.status, reason=out.reason, scores=out.scores,
        fitness=out.fitness, steps=out.steps, wall_time=out.wall_time, mutation=prop.mutation,
        worker=out.worker, proposed_at=prop.proposed_at, finished_at=time.time())
    return store.add(rec, exist_ok=True)


class _Stats:
    def __init__(self, evo: Evolution):
        self.start, self.evaluated, self.dup, self.hurdle, self.failed = time.time(), 0, 0, 0, 0
        self.evo = evo

    def count(self, out: Outcome) -> None:
        self.evaluated += out.status != "duplicate"
        self.dup += out.status == "duplicate"
        self.hurdle += out.status == "below_hurdle"
        self.failed += out.status == "failed"

    def postfix(self) -> dict:
        n = max(1, self.evaluated + self.dup)
        rate = self.evaluated / max(1e-9, time.time() - self.start)
        best = self.evo.best.fitness if self.evo.best else float("nan")
        return {"evals/s": f"{rate:.2f}", "dup": f"{self.dup / n:.0%}",
                "hurdle": f"{self.hurdle / max(1, self.evaluated):.0%}", "best": f"{best:.3f}"}


def drive(store: RunStore, evo: Evolution, backend: str = "inprocess", *,
          workers: int | None = None, timeout: float | None = None, address: str | None = None,
          evaluator: Callable | None = None, progress: bool = True, verbose: bool = True) -> None:
    """Run ``evo`` to its budget, training candidates on ``backend`` and recording them."""
    evaluator = evaluator or ProgramEvaluator.from_config(evo.config)
    size = max(1, int(getattr(evo.config, "width", 1)))
    be = make_backend(backend, workers, timeout, address, slots=size)
    inflight: dict[str, Proposal] = {}
    stats = _Stats(evo)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=evo.config.candidates, initial=evo.recorded, desc="candidates",
                   unit="cand", dynamic_ncols=True)

    def settle(prop: Proposal, out: Outcome) -> None:
        """Record a finished candidate, then whatever was waiting on its fingerprint."""
        rid = _record(store, prop, out)
        stats.count(out)
        for waiter in evo.tell(prop, out, rid):
            if waiter.cached is not None:
                settle(waiter, waiter.cached)
            else:  # its original failed to evaluate: train this one instead
                be.submit([waiter.key], evaluator, [waiter.program], evo.config.eval_seed)
                inflight[waiter.key] = waiter
        if bar is not None:
            bar.update(1)
            bar.set_postfix(stats.postfix(), refresh=False)

    try:
        while not evo.done:
            while (room := be.free()) > 0:
                batch, exhausted = [], False
                while len(batch) < min(size, room):  # new candidates for the free slots
                    prop = evo.ask()
                    if prop is None:
                        exhausted = True
                        break
                    if prop.cached is not None:
                        settle(prop, prop.cached)
                    elif not evo.waiting_on(prop):
                        batch.append(prop)
                if batch:
                    be.submit([p.key for p in batch], evaluator, [p.program for p in batch],
                              evo.config.eval_seed)
                    inflight.update((p.key, p) for p in batch)
                if exhausted:
                    break
            if not inflight:  # nothing to wait for and nothing more to ask: the budget is spent
                break
            for key, out in be.wait():
                settle(inflight.pop(key), out)
    finally:
        be.close()
        if bar is not None:
            bar.close()
    if evo.done:
        store.set_meta("finished", True)
    if verbose:
        print(summary(store.path))


SUMMARY_KEY = (
    "fitness: the search's score of a candidate, the sum over the run's envs of the "
    "normalized training score (0 = Rmin, 1 = Rmax), from one training seed; seen: how many "
    "candidates computed this same loss (one fingerprint, trained once); "
    "δ^2 = (Q(s_t, a_t) - Y)^2 with Y = r_t + γ*max_a(Q_targ(s_{t+1}, a)) unless the row "
    "gives another Y; <x, y> is a dot product, E_B a batch mean")
"""What the columns and the notation of :func:`summary` mean (printed under its table)."""


def summary_data(path: str | Path, k: int = 5) -> dict:
    """The run's rates, its top-k distinct programs, the seed programs' scores in the same
    run (a bootstrapped search's baseline) and its re-scored ranking, as plain data (what
    ``evorl-nb show --json`` prints)."""
    from evorl_nb import library
    from evorl_nb.store import load_run

    where = store_path(path)
    data = load_run(where)
    rates = data.rates()
    df = data.candidates
    seen = df["fingerprint"].value_counts()

    def row_dict(row, rank=None) -> dict:
        prog = Program.from_record(row["program"], f"run {where}, candidate {int(row['id'])}")
        out = {"id": int(row["id"]), "fitness": float(row["fitness"]),
               "seen": int(seen[row["fingerprint"]]), "equation": prog.equation(),
               "scores": {c[6:]: float(row[c]) for c in df.columns
                          if c.startswith("score:") and row[c] == row[c]},
               "program": row["program"]}
        return out if rank is None else {"rank": rank, **out}

    top = [row_dict(row, rank) for rank, (_, row)
           in enumerate(data.best(k, distinct=True).iterrows(), start=1)]
    seeds = []
    config = data.config
    if config.get("space") == "bootstrap" and not config.get("seed_run"):
        initial = df[df["mutation"] == "initial"]
        for name in dict.fromkeys(config.get("seed_programs") or ()):
            want = library.get(name).structural_hash() if name in library.names() else None
            for _, row in initial.iterrows():
                if want and Program.from_record(row["program"], str(where)).structural_hash() == want:
                    if row["fitness"] == row["fitness"]:
                        seeds.append({"name": name, **row_dict(row)})
                    break
    rescored = []
    if not data.rescores.empty:
        from evorl_nb.rescore import ranking

        rescored = ranking(path).to_dict("records")
    passed = int((df["status"] == "trained").sum())
    return {"run": str(where), "candidates": len(df), "trained": int(rates["evaluated"]),
            "past_hurdle": passed, "rates": {key: float(v) for key, v in rates.items()
                                             if key != "evaluated"},
            "envs": list(config.get("envs") or ()), "space": config.get("space"),
            "top": top, "seed_programs": seeds, "rescored": rescored}


def summary(path: str | Path, k: int = 5) -> str:
    """The run's rates, its top-k programs as simplified equations beside the seed
    programs' scores in the same run, what the columns mean, and the re-scored ranking."""
    d = summary_data(path, k)
    r = d["rates"]
    lines = [f"run {d['run']}: {d['candidates']} candidates, {d['trained']} trained "
             f"({d['past_hurdle']} past the hurdle), duplicates {r['duplicate']:.0%}, below "
             f"hurdle {r['below_hurdle']:.0%}, failed {r['failed']:.0%}",
             f"{'rank':>4} {'id':>6} {'fitness':>8} {'seen':>5}  equation (simplified)"]
    for row in d["top"]:
        lines.append(f"{row['rank']:>4} {row['id']:>6} {row['fitness']:>8.3f} "
                     f"{row['seen']:>5}  {row['equation']}")
    for row in d["seed_programs"]:
        lines.append(f"{'seed':>4} {row['id']:>6} {row['fitness']:>8.3f} {row['seen']:>5}  "
                     f"{row['equation']}  (the seed program {row['name']}, same run)")
    if not d["seed_programs"]:
        lines.append("      (no seed program in this run to compare with: `evorl-nb rescore "
                     "RUN` trains DQN and DQNReg beside the top programs on fresh seeds)")
    lines += textwrap.wrap(SUMMARY_KEY, 100, initial_indent="key: ", subsequent_indent="     ")
    if d["rescored"]:
        import pandas as pd

        lines += ["", *rescore_lines(pd.DataFrame(d["rescored"]), k)]
    return "\n".join(lines)


def rescore_lines(table, k: int = 5) -> list[str]:
    """A re-scored ranking (:func:`evorl_nb.rescore.ranking`) as text: the top ``k``
    programs and the references, mean fitness over fresh seeds with its 95% interval, the
    paired difference to DQN, and a ``*`` where a program beats DQN outside the noise."""
    if table.empty:
        return []
    seeds = int(table["seeds"].max())
    lines = [f"re-scored on {seeds} fresh seeds (fitness summed over the envs; mean ± 95% CI; "
             "* = beats DQN outside the noise)",
             f"{'rank':>4} {'entry':>12} {'mean':>7} {'± ci95':>7} {'vs DQN':>15} {'search':>7}"
             "  equation (simplified)"]
    ref = table["entry"].str.startswith("lib:")
    shown = ref | table.index.isin(table[~ref].head(k).index)  # keeps the rank order
    for _, r in table[shown].iterrows():
        vs = ("" if r["entry"] == "lib:dqn" or r["vs_dqn"] != r["vs_dqn"]
              else f"{r['vs_dqn']:+.3f} ± {r['vs_dqn_ci95']:.3f}")
        search = "" if r["fitness"] != r["fitness"] else f"{r['fitness']:.3f}"
        mark = "*" if r["beats_dqn"] else " "
        lines.append(f"{int(r['rank']):>4} {r['entry']:>12} {r['mean']:>7.3f} "
                     f"{r['ci95']:>7.3f} {vs:>15}{mark}{search:>7}  {r['equation']}")
    return lines

