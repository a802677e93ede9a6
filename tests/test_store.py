"""The run store on real SQLite files: round trips, errors, readers, and SIGKILL durability."""

from __future__ import annotations

import math
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from dataclasses import asdict

import pandas as pd
import pytest

from evorl_nb.store import (
    FORMAT_VERSION,
    CandidateRecord,
    RunData,
    RunStore,
    StoreError,
    load_run,
)

CONFIG = {"envs": ["CartPole-v0", "Acrobot-v1"], "population": 300, "nested": {"a": [1, 2.5]}}


def rec(i: int, **kw) -> CandidateRecord:
    """A valid record for proposal number ``i``; ``kw`` overrides fields."""
    fields = dict(proposal=f"c{i:06d}", parent_id=None, program_json='{"nodes": []}',
                  fingerprint=f"fp{i}", status="trained", reason=None,
                  scores={"CartPole-v0": 0.5, "Acrobot-v1": 0.25}, fitness=0.75)
    fields.update(kw)
    return CandidateRecord(**fields)


@pytest.fixture
def path(tmp_path):
    return tmp_path / "runs" / "run.sqlite"


def test_create_open_round_trip(path):
    t0 = time.time()
    with RunStore.create(path, config=CONFIG, seed=7) as s:
        assert (s.config, s.seed, s.path) == (CONFIG, 7, path)
        assert t0 - 1 <= s.created_at <= time.time() + 1
        created = s.created_at
    with RunStore.open(path) as s:
        assert (s.config, s.seed, s.created_at, s.count()) == (CONFIG, 7, created, 0)
        s.config["population"] = 1  # a copy: the store is unchanged
        assert s.config == CONFIG
    conn = sqlite3.connect(path)
    meta = dict(conn.execute("SELECT key, value FROM meta"))
    assert meta["format"] == '"evorl_nb.run"' and meta["format_version"] == str(FORMAT_VERSION)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_create_refuses_existing_file(path):
    RunStore.create(path, config={}, seed=0).close()
    with pytest.raises(StoreError, match="already exists.*RunStore.open"):
        RunStore.create(path, config={}, seed=0)
    empty = path.with_name("empty.sqlite")
    empty.touch()
    RunStore.create(empty, config={}, seed=1).close()  # an empty file is fine
    assert RunStore.open(empty).seed == 1
    with pytest.raises(StoreError, match="config must be JSON"):
        RunStore.create(path.with_name("x.sqlite"), config={"f": object()}, seed=0)
    with pytest.raises(StoreError, match="seed must be an int, got '3'"):
        RunStore.create(path.with_name("y.sqlite"), config={}, seed="3")


def test_add_and_read_back_every_field(path):
    a = rec(1, fitness=math.nan, status="failed", reason="loss was NaN", steps=0)
    b = rec(2, parent_id=1, steps=12345, wall_time=3.5, mutation="replace node 4: max -> min",
            worker="pid:42", proposed_at=1700000000.25, finished_at=1700000003.75,
            scores={"CartPole-v0": 1.0, "Acrobot-v1": math.nan}, fitness=math.inf)
    with RunStore.create(path, config=CONFIG, seed=0) as s:
        assert s.add(a) == 1 and s.add(b) == 2
        assert (a.id, b.id, s.count()) == (1, 2, 2)
        assert s.has_proposal("c000002") and not s.has_proposal("c000003")
    with RunStore.open(path) as s:
        got = s.candidates()
    assert [r.id for r in got] == [1, 2]
    ga, gb = asdict(got[0]), asdict(got[1])
    assert math.isnan(ga.pop("fitness")) and math.isnan(asdict(a).pop("fitness"))
    assert ga == {k: v for k, v in asdict(a).items() if k != "fitness"}
    assert ga["parent_id"] is None and ga["mutation"] is None
    assert math.isnan(gb["scores"].pop("Acrobot-v1")) and gb["scores"] == {"CartPole-v0": 1.0}
    want = asdict(b)
    want.pop("scores"), gb.pop("scores")
    assert gb == want


def test_proposal_is_unique(path):
    with RunStore.create(path, config={}, seed=0) as s:
        s.add(rec(1))
        s.add(rec(2))
        with pytest.raises(StoreError, match=r"'c000001' is already recorded \(id 1\).*exist_ok"):
            s.add(rec(1, fitness=0.1))
        assert s.add(rec(2, fitness=0.1), exist_ok=True) == 2
        assert s.count() == 2 and s.candidates()[1].fitness == 0.75
        assert s.add(rec(3)) == 3  # ids stay contiguous after the refused adds


def test_fields_are_validated(path):
    with pytest.raises(StoreError, match="status 'done' is not one of.*'trained'"):
        rec(1, status="done")
    with pytest.raises(StoreError, match="scores must map env ids"):
        rec(1, scores={"CartPole-v0": "high"})
    with pytest.raises(StoreError, match="parent_id must be an int or None, got '3'"):
        rec(1, parent_id="3")
    with pytest.raises(StoreError, match="steps must be an int"):
        rec(1, steps=1.5)
    r = rec(1)
    r.status = "pending"  # changed after construction: add checks again
    with RunStore.create(path, config={}, seed=0) as s:
        with pytest.raises(StoreError, match="'pending'"):
            s.add(r)
        with pytest.raises(StoreError, match="add expects a CandidateRecord, got dict"):
            s.add({"proposal": "c1"})
        assert s.count() == 0


def test_cache_holds_evaluated_candidates_only(path):
    with RunStore.create(path, config={}, seed=0) as s:
        s.add(rec(1, fingerprint="A", fitness=1.5))
        s.add(rec(2, fingerprint="B", status="below_hurdle", fitness=0.1))
        s.add(rec(3, fingerprint="C", status="failed", fitness=math.nan, reason="boom"))
        s.add(rec(4, fingerprint="A", status="duplicate", fitness=1.5, steps=0))
        s.add(rec(5, fingerprint="D", fitness=math.nan))  # trained, but no fitness
        s.add(rec(6, fingerprint="A", fitness=9.0))  # a re-evaluation: the earliest wins
        cache = s.cache()
    assert set(cache) == {"A", "B", "D"}
    assert cache["A"] == 1.5 and cache["B"] == 0.1 and math.isnan(cache["D"])


def test_readonly_store_refuses_writes(path):
    with RunStore.create(path, config={}, seed=0) as s:
        s.add(rec(1))
    with RunStore.open(path, readonly=True) as ro:
        assert ro.readonly and ro.count() == 1 and ro.cache() == {"fp1": 0.75}
        with pytest.raises(StoreError, match="read-only"):
            ro.add(rec(2))
        with pytest.raises(StoreError, match="read-only"):
            ro.set_meta("finished", True)
    with RunStore.open(path) as s:
        assert s.count() == 1 and s.get_meta("finished") is None


def test_meta_and_close(path):
    s = RunStore.create(path, config={}, seed=0)
    s.set_meta("finished", True)
    s.set_meta("finished", {"at": 12.5, "why": "budget"})
    assert s.get_meta("missing", default=3) == 3
    with pytest.raises(StoreError, match="meta key 'seed' cannot be set"):
        s.set_meta("seed", 1)
    with pytest.raises(StoreError, match="meta value for 'x' must be JSON"):
        s.set_meta("x", {1, 2})
    s.close()
    s.close()
    with pytest.raises(StoreError, match="is closed"):
        s.count()
    with RunStore.open(path) as s:
        assert s.get_meta("finished") == {"at": 12.5, "why": "budget"}
    assert load_run(path).meta == {"finished": {"at": 12.5, "why": "budget"}}


def _other_app(p):
    conn = sqlite3.connect(p)
    conn.execute("CREATE TABLE notes (body TEXT)")
    conn.commit()
    conn.close()


def _bumped(p):
    RunStore.create(p, config={}, seed=0).close()
    conn = sqlite3.connect(p)
    conn.execute("UPDATE meta SET value = '99' WHERE key = 'format_version'")
    conn.commit()
    conn.close()


def _wrong_format(p):
    _other_app(p)
    conn = sqlite3.connect(p)
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
    conn.execute("""INSERT INTO meta VALUES ('format', '"photos.db"')""")
    conn.commit()
    conn.close()


@pytest.mark.parametrize("make, message", [
    (None, "no run file at .*RunStore.create"),
    (lambda p: p.write_text("hello, not a database\n" * 100), "is not an evorl_nb run .not an SQL"),
    (lambda p: p.touch(), "is an empty file, not an evorl_nb run"),
    (_other_app, "is not an evorl_nb run .SQLite, but it has no meta table"),
    (_wrong_format, "is not an evorl_nb run .meta format is .*photos.db"),
    (_bumped, "has run format version 99, but this evorl_nb reads versions up to 1; upgrade"),
], ids=["missing", "text", "empty", "other-sqlite", "wrong-format", "version-99"])
@pytest.mark.parametrize("readonly", [False, True])
def test_open_errors(tmp_path, make, message, readonly):
    p = tmp_path / "thing.sqlite"
    if make:
        make(p)
    before = p.read_bytes() if p.exists() else None
    with pytest.raises(StoreError, match=message) as err:
        RunStore.open(p, readonly=readonly)
    assert str(p) in str(err.value)
    assert (p.read_bytes() if p.exists() else None) == before  # left untouched
    if make is _other_app:
        with pytest.raises(StoreError, match="is not an evorl_nb run"):
            load_run(p)


def test_load_run_frame_best_and_rates(path):
    with RunStore.create(path, config=CONFIG, seed=3) as s:
        s.add(rec(1, fitness=1.0))
        s.add(rec(2, parent_id=1, fitness=1.5, mutation="m", worker="w0"))
        s.add(rec(3, parent_id=2, status="failed", fitness=math.nan, reason="NaN loss"))
        s.add(rec(4, parent_id=1, status="duplicate", fingerprint="fp1", fitness=1.0))
        s.add(rec(5, parent_id=2, status="below_hurdle", fitness=0.2,
                  scores={"CartPole-v0": 0.2}))
        s.add(rec(6, parent_id=4, status="failed", fitness=5.0))  # failed: never "best"
    run = load_run(path)
    assert isinstance(run, RunData) and (run.config, run.seed) == (CONFIG, 3)
    df = run.candidates
    assert list(df.columns) == [
        "id", "parent_id", "proposal", "status", "reason", "fitness", "steps", "wall_time",
        "fingerprint", "program", "mutation", "worker", "proposed_at", "finished_at",
        "score:CartPole-v0", "score:Acrobot-v1"]
    assert df["id"].tolist() == [1, 2, 3, 4, 5, 6] and df["id"].dtype == "int64"
    assert str(df["parent_id"].dtype) == "Int64" and df["parent_id"].isna().tolist()[:2] == [
        True, False]
    for col in ("fitness", "wall_time", "proposed_at", "finished_at", "score:Acrobot-v1"):
        assert df[col].dtype == "float64", col
    assert df["steps"].dtype == "int64" and df["program"].iloc[0] == '{"nodes": []}'
    assert math.isnan(df["score:Acrobot-v1"].iloc[4]) and df["score:CartPole-v0"].iloc[4] == 0.2
    assert run.best(3)["id"].tolist() == [2, 1, 4]  # 1 and 4 tie at 1.0: lower id first
    assert run.best()["id"].tolist() == [2, 1, 4, 5]  # failed ones are left out
    assert run.rates() == {"duplicate": 1 / 6, "below_hurdle": 1 / 6, "failed": 2 / 6,
                           "evaluated": 3, "total": 6}


def test_load_run_of_an_empty_run(path):
    RunStore.create(path, config={}, seed=0).close()
    run = load_run(path)
    assert len(run.candidates) == 0 and str(run.candidates["parent_id"].dtype) == "Int64"
    assert run.best().empty and run.rates()["evaluated"] == 0


def test_reader_sees_commits_while_writer_is_open(path):
    writer = RunStore.create(path, config={}, seed=0)
    writer.add(rec(1))
    with RunStore.open(path, readonly=True) as reader:
        assert reader.count() == 1
        for i in range(2, 6):
            writer.add(rec(i))
            assert reader.count() == i and reader.candidates()[-1].proposal == f"c{i:06d}"
            assert len(load_run(path).candidates) == i
        writer.set_meta("finished", True)
        assert reader.get_meta("finished") is True
    writer.close()


CHILD = textwrap.dedent("""
    import sys
    from evorl_nb.store import RunStore, CandidateRecord
    store = RunStore.open(sys.argv[1])
    i = 0
    while True:
        i += 1
        r = CandidateRecord(f"c{i:06d}", i - 1 or None, "{}", f"fp{i}", "trained", None,
                            {"CartPole-v0": 0.5}, 0.5, steps=i)
        print(store.add(r), flush=True)
""")


def test_sigkill_loses_no_committed_candidate(path):
    RunStore.create(path, config={"x": 1}, seed=0).close()
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        printed = [int(proc.stdout.readline()) for _ in range(30)]
        partial = load_run(path)  # a reader while the child writes
        assert len(partial.candidates) >= 30
        printed += [int(proc.stdout.readline()) for _ in range(20)]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    # read on through proc.stdout's own buffer (communicate() would skip lines readline()
    # had already buffered)
    out, err = proc.stdout.read(), proc.stderr.read()
    assert proc.returncode == -signal.SIGKILL, err
    printed += [int(line) for line in out.split()]
    assert printed == list(range(1, len(printed) + 1))
    run = load_run(path)  # read-only, on the killed writer's left-over WAL
    assert path.with_name(path.name + "-wal").exists()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    with RunStore.open(path) as s:  # as a resume would
        ids = [r.id for r in s.candidates()]
        assert s.config == {"x": 1}
        assert s.add(rec(len(ids) + 1)) == len(ids) + 1
    assert ids == list(range(1, len(ids) + 1)) and len(ids) >= len(printed)
    assert set(printed) <= set(ids)
    assert run.candidates["id"].tolist() == ids
    assert pd.api.types.is_integer_dtype(run.candidates["steps"])


def test_a_gzipped_run_is_read_as_it_is_and_refused_for_writing(tmp_path, monkeypatch):
    """How large finished runs are committed: run.sqlite.gz. Readers (load_run, show) read it
    through a cached copy; writers are told to gunzip it."""
    import gzip

    from evorl_nb.cli import main

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    folder = tmp_path / "run"
    with RunStore.create(folder / "run.sqlite", config={"envs": ["CartPole-v0"]}, seed=0) as s:
        for i in range(3):
            s.add(CandidateRecord(f"p{i:06d}", None, "{}", f"fp{i}", "trained", None,
                                  {"CartPole-v0": 0.1 * i}, 0.1 * i))
    raw = (folder / "run.sqlite").read_bytes()
    (folder / "run.sqlite.gz").write_bytes(gzip.compress(raw))
    (folder / "run.sqlite").unlink()
    assert list(load_run(folder).candidates.fitness.round(3)) == [0.0, 0.1, 0.2]
    assert len(load_run(folder / "run.sqlite").candidates) == 3  # again, from the cache
    assert len(load_run(folder / "run.sqlite.gz").candidates) == 3  # named as it is on disk
    assert len(list((tmp_path / "cache" / "evorl_nb" / "runs").glob("*.sqlite"))) == 1
    with pytest.raises(StoreError, match="stored compressed; `gunzip -k"):
        RunStore.open(folder / "run.sqlite")
    assert main(["resume", str(folder)]) == 2
    (folder / "run.sqlite.gz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(StoreError, match="cannot decompress run"):
        load_run(folder)
