"""Regularized evolution with a fake evaluator: tournament, aging, cache, hurdle, determinism,
kill -9 and resume, local worker death and hangs, and the Ray backend."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from evorl_nb import library
from evorl_nb.evolve import Evolution, ProgramEvaluator, get_preset, iterate
from evorl_nb.program import Program
from evorl_nb.runner import resume, start
from evorl_nb.store import RunStore, load_run
from fakes import FakeEvaluator, FakeStreamingEvaluator, SlowToStart, fake_fitness

TESTS = Path(__file__).parent


def small(**kw):
    base = dict(population=8, tournament=3, candidates=60, envs=("CartPole-v0",), hurdle=None,
                trainer="ci")
    base.update(kw)
    return get_preset("ci", **base)


def test_population_is_the_most_recent_candidates_and_parents_win_tournaments():
    evo = Evolution(small(tournament=8), seed=0)  # tournament = whole population
    history = []
    for prop, out in iterate(evo, FakeEvaluator()):
        if prop.parent_id is not None:
            # the parent is the fittest of the population as it stood (the whole of it here)
            best = max(members_at_ask, key=lambda m: (m.fitness, m.id))
            assert prop.parent_id == best.id
        history.append(evo.recorded)
        members_at_ask = list(evo.population)
        assert [m.id for m in evo.population] == list(range(max(1, evo.recorded - 7),
                                                              evo.recorded + 1))
    assert evo.recorded == 60 and len(evo.population) == 8


def test_tournament_samples_without_replacement():
    evo = Evolution(small(tournament=3), seed=0)
    for _ in iterate(evo, FakeEvaluator()):
        if evo.recorded == 8:
            break
    ranked = sorted(evo.population, key=lambda m: (m.fitness, m.id))
    wins = {m.id: 0 for m in ranked}
    for k in range(3000):
        wins[evo._tournament(np.random.default_rng(k)).id] += 1
    # without replacement, the two least fit can never win a 3-member tournament
    assert wins[ranked[0].id] == wins[ranked[1].id] == 0
    # the fittest wins whenever sampled: 3/8 of the time
    assert abs(wins[ranked[-1].id] / 3000 - 3 / 8) < 0.04


def test_cache_hits_skip_evaluation():
    calls = []

    def counting(program, seed):
        calls.append(program.fingerprint())
        return FakeEvaluator()(program, seed)

    evo = Evolution(small(), seed=1)
    results = list(iterate(evo, counting))
    trained = [p for p, o in results if o.status == "trained"]
    dups = [(p, o) for p, o in results if o.status == "duplicate"]
    assert len(calls) == len(trained) == len(set(calls))  # each loss trained once
    assert dups, "a bootstrapped search proposes duplicates"
    for p, o in dups:
        assert o.fitness == fake_fitness(p.program)  # the cached score of the same loss


def test_hurdle_short_circuits_in_the_search():
    # real training at the ci budget cannot reach 0.99 on CartPole: every candidate stops there
    config = small(candidates=8, population=4, envs=("CartPole-v0", "Acrobot-v1"),
                   hurdle=("CartPole-v0", 0.99))
    evo = Evolution(config, seed=0)
    results = list(iterate(evo, ProgramEvaluator.from_config(config)))
    evaluated = [o for _, o in results if o.status != "duplicate"]
    assert evaluated and all(o.status == "below_hurdle" for o in evaluated)
    assert all(list(o.scores) == ["CartPole-v0"] for o in evaluated)


def _table(path):
    df = load_run(path).candidates
    return df[["proposal", "parent_id", "status", "fitness", "program", "mutation"]]


def test_same_seed_same_search(tmp_path):
    a = start(tmp_path / "a", small(), seed=3, evaluator=FakeEvaluator(), progress=False,
              verbose=False)
    b = start(tmp_path / "b", small(), seed=3, evaluator=FakeEvaluator(), progress=False,
              verbose=False)
    c = start(tmp_path / "c", small(), seed=4, evaluator=FakeEvaluator(), progress=False,
              verbose=False)
    assert _table(a).equals(_table(b))
    assert not _table(a).equals(_table(c))
    assert len(_table(a)) == 60


def test_bootstrap_from_a_saved_run(tmp_path):
    first = start(tmp_path / "first", small(), seed=0, evaluator=FakeEvaluator(), progress=False,
                  verbose=False)
    best = load_run(first).best(8)
    second = start(tmp_path / "second", small(seed_run=str(first), candidates=20), seed=1,
                   evaluator=FakeEvaluator(), progress=False, verbose=False)
    initial = load_run(second).candidates.iloc[:8]
    assert list(initial.fingerprint) == list(best.fingerprint)
    assert (initial.status == "duplicate").sum() == 0 or initial.fitness.max() == best.fitness.max()


KILL_SCRIPT = """
import sys; sys.path.insert(0, {tests!r})
from fakes import FakeEvaluator
from evorl_nb.evolve import get_preset
from evorl_nb.runner import start
cfg = get_preset("ci", population=8, tournament=3, candidates=80, envs=("CartPole-v0",),
                 hurdle=None, trainer="ci")
start({out!r}, cfg, seed=5, evaluator=FakeEvaluator(sleep=0.05), progress=False, verbose=False)
"""


def test_resume_after_kill_9(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT.format(tests=str(TESTS),
                                                                       out=str(out))])
    store_file = out / "run.sqlite"
    deadline = time.time() + 60
    while time.time() < deadline:  # wait until some, not all, candidates are recorded
        if store_file.exists():
            try:
                with RunStore.open(store_file, readonly=True) as s:
                    if s.count() >= 20:
                        break
            except Exception:
                pass
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with RunStore.open(store_file, readonly=True) as s:
        before = s.count()
        recorded_before = [r.proposal for r in s.candidates()]
    assert 20 <= before < 80

    resume(out, evaluator=FakeEvaluator(), progress=False, verbose=False)
    with RunStore.open(store_file, readonly=True) as s:
        recs = s.candidates()
        assert s.get_meta("finished") is True
    proposals = [r.proposal for r in recs]
    assert len(recs) == 80 and len(set(proposals)) == 80  # nothing recorded twice
    assert proposals[:before] == recorded_before  # finished work kept as it was
    assert [r.id for r in recs] == list(range(1, 81))
    # after the resume, parents come from the population rebuilt from the store: proposal
    # number n was asked with at least n - 4 candidates recorded (a batch of 4 in flight),
    # so its parent is among the last 8 of those
    for r in recs[before:]:
        if r.parent_id is not None:
            asked = int(r.proposal[1:])
            assert r.parent_id < r.id and r.parent_id >= asked - 4 - 8 + 1


DQN_FP = library.get("dqn").fingerprint()


def tiny(**kw):
    return small(population=4, tournament=2, **kw)


def test_local_backend_retries_a_dead_worker_once(tmp_path):
    marker_dir = tmp_path / "markers"
    marker_dir.mkdir()
    # every program but the DQN seed kills its worker the first time it is trained
    crash_once = FakeEvaluator(crash_every=1, spare=(DQN_FP,), crash_once_dir=str(marker_dir))
    path = start(tmp_path / "once", tiny(candidates=10), seed=0, backend="local", workers=2,
                 evaluator=crash_once, progress=False, verbose=False)
    df = load_run(path).candidates
    assert len(df) == 10 and (df.status != "failed").all()  # each crash retried, then fine
    assert len(list(marker_dir.iterdir())) == (df.status == "trained").sum() - 1

    always = FakeEvaluator(crash_every=1, spare=(DQN_FP,))
    path = start(tmp_path / "always", tiny(candidates=8), seed=0, backend="local", workers=2,
                 evaluator=always, progress=False, verbose=False)
    df = load_run(path).candidates
    failed = df[df.status == "failed"]
    assert len(df) == 8 and len(failed) >= 1 and (df.status == "trained").sum() == 1
    assert failed.reason.str.contains("died").all() and (failed.fitness == 0).all()


def test_local_backend_times_out_a_hung_worker(tmp_path):
    hang = FakeEvaluator(hang_every=1, spare=(DQN_FP,))
    path = start(tmp_path / "hang", tiny(candidates=8), seed=0, backend="local", workers=2,
                 timeout=2, evaluator=hang, progress=False, verbose=False)
    df = load_run(path).candidates
    failed = df[df.status == "failed"]
    assert len(df) == 8 and len(failed) >= 1 and failed.reason.str.contains("hung").all()
    assert (df.status == "trained").sum() == 1  # the spared seed; the search went on


def test_local_backend_timeout_counts_from_the_start_of_the_task_not_the_spawn(tmp_path):
    # every task takes 2.5 s to reach its worker (unpickling), longer than the 1 s timeout;
    # the evaluation itself is instant, so nothing may be called hung
    slow = SlowToStart(FakeEvaluator(), delay=2.5)
    path = start(tmp_path / "slow", tiny(candidates=4), seed=0, backend="local", workers=2,
                 timeout=1, evaluator=slow, progress=False, verbose=False)
    df = load_run(path).candidates
    assert len(df) == 4 and (df.status != "failed").all(), df[["status", "reason"]]


def test_ray_backend_end_to_end_with_worker_death(tmp_path):
    ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install evorl_nb[ray]")
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True,
             runtime_env={"env_vars": {"PYTHONPATH": str(TESTS) + os.pathsep + str(TESTS.parent)}})
    try:
        marker_dir = tmp_path / "markers"
        marker_dir.mkdir()
        ev = FakeEvaluator(crash_every=1, spare=(DQN_FP,), crash_once_dir=str(marker_dir))
        path = start(tmp_path / "ray", tiny(candidates=10), seed=0, backend="ray",
                     evaluator=ev, progress=False, verbose=False)
        df = load_run(path).candidates
        assert len(df) == 10 and (df.status != "failed").all()
        assert df.worker.str.startswith("ray").any()
        assert any(marker_dir.iterdir()), "a Ray worker really died and was retried"
    finally:
        ray.shutdown()


def test_best_distinct_keeps_one_row_per_loss(tmp_path):
    path = start(tmp_path / "r", small(), seed=0, evaluator=FakeEvaluator(), progress=False,
                 verbose=False)
    data = load_run(path)
    every = data.best(len(data.candidates))
    assert every.fingerprint.duplicated().any()  # a bootstrapped run repeats losses
    distinct = data.best(5, distinct=True)
    assert len(distinct) == 5 and not distinct.fingerprint.duplicated().any()
    firsts = every.drop_duplicates("fingerprint").head(5)  # each loss's best-ranked row
    assert list(distinct.id) == list(firsts.id)


def test_local_backend_streams_candidates_through_worker_slots(tmp_path):
    """With batch > 1 and a streaming evaluator, each worker holds up to `batch`
    candidates and takes new ones as others finish (no batch barrier)."""
    ev = FakeStreamingEvaluator(sleep=0.01)
    path = start(tmp_path / "stream", tiny(candidates=24, width=3), seed=0, backend="local",
                 workers=2, evaluator=ev, progress=False, verbose=False)
    df = load_run(path).candidates
    trained = df[df.status == "trained"]
    assert len(df) == 24 and (df.status != "failed").all()
    held = trained["score:in_flight"]
    assert held.max() <= 3 and held.max() > 1  # slots were shared, never over-filled
    assert set(trained.worker) == {"local-1", "local-2"}


def test_streaming_worker_death_retries_its_candidates_alone(tmp_path):
    """A streaming worker that dies takes its co-tenants down: they are retried on a worker
    of their own (not counted against them), and only the culprit fails twice."""
    always = FakeStreamingEvaluator(crash_every=1, spare=(DQN_FP,))
    path = start(tmp_path / "always", tiny(candidates=8, width=3), seed=0, backend="local",
                 workers=2, evaluator=always, progress=False, verbose=False)
    df = load_run(path).candidates
    failed = df[df.status == "failed"]
    assert len(df) == 8 and len(failed) >= 1 and (df.status == "trained").sum() == 1
    assert failed.reason.str.contains("died").all()
    marker_dir = tmp_path / "markers"
    marker_dir.mkdir()
    once = FakeStreamingEvaluator(crash_every=1, spare=(DQN_FP,), crash_once_dir=str(marker_dir))
    path = start(tmp_path / "once", tiny(candidates=10, width=3), seed=0, backend="local",
                 workers=2, evaluator=once, progress=False, verbose=False)
    df = load_run(path).candidates
    assert len(df) == 10 and (df.status != "failed").all()


def test_a_candidates_score_does_not_depend_on_its_batch(tmp_path):
    """A real search on local streaming workers: every trained candidate scores exactly
    what it scores trained alone with the search's seed (per-agent random streams)."""
    cfg = get_preset("ci", candidates=10, width=3)
    path = start(tmp_path / "real", cfg, seed=0, backend="local", workers=2, progress=False,
                 verbose=False)
    df = load_run(path).candidates
    trained = df[df.status == "trained"]
    assert len(df) == 10 and len(trained) >= 3 and (df.status != "failed").all()
    alone = ProgramEvaluator.from_config(cfg)
    for _, row in trained.iterrows():
        solo = alone(Program.from_json(row.program), cfg.eval_seed)
        assert row.fitness == pytest.approx(solo.fitness, abs=1e-9), row.program


def test_inprocess_backend_streams_deterministically(tmp_path):
    """The notebook default streams too (batch > 1): slots shared, never over-filled, and
    two runs with the same seed record the same candidates in the same order."""
    ev = FakeStreamingEvaluator()
    runs = []
    for name in ("a", "b"):
        path = start(tmp_path / name, tiny(candidates=20, width=3), seed=1, evaluator=ev,
                     progress=False, verbose=False)
        runs.append(load_run(path).candidates)
    a, b = runs
    held = a.loc[a.status == "trained", "score:in_flight"]
    assert held.max() == 3 and (a.loc[a.status == "trained", "worker"] == "main").all()
    assert list(a.proposal) == list(b.proposal) and list(a.fitness) == list(b.fitness)


def test_resume_of_a_complete_run_says_so_and_writes_nothing(tmp_path, capsys):
    path = start(tmp_path / "done", tiny(candidates=6), seed=0, evaluator=FakeEvaluator(),
                 progress=False, verbose=False)
    before = path.read_bytes()
    resume(path.parent, evaluator=FakeEvaluator(), progress=False, verbose=True)
    out = capsys.readouterr().out
    assert "is complete: 6 of 6 candidates recorded" in out
    assert path.read_bytes() == before
    assert len(load_run(path.parent).candidates) == 6  # load_run takes the folder too
