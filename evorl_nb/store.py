"""The crash-safe run store: one SQLite file per evolution run.

Every finished candidate is written in its own transaction (WAL journal,
``synchronous=FULL``), so a killed run -- even by SIGKILL or an OS crash -- loses
no candidate whose :meth:`RunStore.add` returned, and the file always opens.
Readers (a notebook dashboard, :func:`load_run`) may read while the run writes.

>>> import tempfile; tmp = tempfile.TemporaryDirectory(); path = f"{tmp.name}/run.sqlite"
>>> with RunStore.create(path, config={"envs": ["CartPole-v0"]}, seed=0) as store:
...     store.add(CandidateRecord("c0", None, "{}", "ab12", "trained", None, {"env": 0.9}, 0.9))
1
>>> load_run(path).best(1)["fitness"].tolist(); tmp.cleanup()
[0.9]
"""

from __future__ import annotations

import json
import math
import numbers
import os
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: no advisory file locks; one writer is up to the user there
    fcntl = None

__all__ = ["RunStore", "CandidateRecord", "StoreError", "RunLocked", "load_run", "RunData",
           "FORMAT",
           "RESCORE_COLUMNS", "STORE_NAME", "store_path",
           "FORMAT_VERSION", "STATUSES", "EVALUATED"]

FORMAT = "evorl_nb.run"
"""The ``format`` value in the ``meta`` table that marks a file as an evorl_nb run."""
FORMAT_VERSION = 1
"""The newest file-format version this code writes and reads."""
STATUSES = ("trained", "duplicate", "below_hurdle", "failed")
"""Accepted candidate statuses."""
EVALUATED = ("trained", "below_hurdle")
"""Statuses of candidates that were evaluated (trained); only these fill :meth:`RunStore.cache`."""
BUSY_TIMEOUT_S = 30.0
"""How long a connection waits for another connection's lock before failing."""
_RESERVED = ("format", "format_version", "config", "seed", "created_at")

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE candidates (
    id INTEGER PRIMARY KEY AUTOINCREMENT, proposal TEXT UNIQUE NOT NULL, parent_id INTEGER,
    program TEXT NOT NULL, fingerprint TEXT NOT NULL, status TEXT NOT NULL, reason TEXT,
    scores TEXT NOT NULL, fitness REAL, steps INTEGER, wall_time REAL, mutation TEXT,
    worker TEXT, proposed_at REAL, finished_at REAL);
CREATE INDEX candidates_fingerprint ON candidates (fingerprint);
"""
_RESCORE_SCHEMA = """
CREATE TABLE IF NOT EXISTS rescores (
    entry TEXT NOT NULL, candidate_id INTEGER, program TEXT NOT NULL, fingerprint TEXT NOT NULL,
    env TEXT NOT NULL, seed INTEGER NOT NULL, score REAL NOT NULL, failed INTEGER NOT NULL,
    reason TEXT, steps INTEGER, wall_time REAL, PRIMARY KEY (entry, env, seed))
"""
RESCORE_COLUMNS = ("entry", "candidate_id", "program", "fingerprint", "env", "seed", "score",
                   "failed", "reason", "steps", "wall_time")
"""Columns of the ``rescores`` table: one training run of a re-scored program (``entry``:
``"id:N"`` for candidate N of the run, ``"lib:NAME"`` for a library reference) on one
environment with one fresh seed; written by :mod:`evorl_nb.rescore`."""
_COLUMNS = ("id", "proposal", "parent_id", "program", "fingerprint", "status", "reason",
            "scores", "fitness", "steps", "wall_time", "mutation", "worker", "proposed_at",
            "finished_at")


STORE_NAME = "run.sqlite"
"""The store file's name inside a run folder."""


def store_path(out: str | Path) -> Path:
    """The store file of a run folder (or the file itself if ``out`` is one; for a gzipped
    ``run.sqlite.gz``, the ``run.sqlite`` beside it, which readers find packed)."""
    out = Path(out)
    if out.name.endswith(".sqlite.gz"):
        return out.with_suffix("")
    return out if out.suffix == ".sqlite" else out / STORE_NAME


def _unpacked(packed: Path) -> Path:
    """A gzipped run store (``run.sqlite.gz``: how large finished runs are committed, about
    14x smaller) decompressed once into the user's cache, keyed by its path, size and
    modification time; readers open that copy."""
    import gzip
    import hashlib
    import shutil
    import tempfile

    st = packed.stat()
    key = hashlib.sha1(f"{packed.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    folder = base / "evorl_nb" / "runs"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        folder = Path(tempfile.gettempdir()) / f"evorl_nb-runs-{os.getuid()}"
        folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{key[:16]}.sqlite"
    if not target.exists():
        part = folder / f"{key[:16]}.{os.getpid()}.part"
        try:
            with gzip.open(packed, "rb") as src, open(part, "wb") as dst:
                shutil.copyfileobj(src, dst)
            os.replace(part, target)  # atomic: a reader never sees half a file
        except (OSError, EOFError) as e:
            part.unlink(missing_ok=True)
            raise StoreError(f"cannot decompress run {str(packed)!r}: {e}") from None
    return target


def lock_path(path: str | Path) -> Path:
    """The writer-lock file beside a run's store (``run.sqlite.lock``)."""
    return Path(f"{path}.lock")


class _WriterLock:
    """An exclusive OS lock (flock) held by the one process writing a run. The kernel drops
    it when the process exits, however it exits, so a kill -9 leaves no stale lock; the file
    stays, holding the writer's pid while it is locked."""

    def __init__(self, path: Path):
        self.file = None
        if fcntl is None:
            return
        try:
            f = open(lock_path(path), "a+")
        except OSError as e:
            raise StoreError(f"cannot write run {str(path)!r}: {e}") from None
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            pid = f.read().strip() or "unknown"
            f.close()
            raise RunLocked(f"run {str(path.parent)!r} is being written by pid {pid} (another "
                            "evolve, resume or rescore); wait for it to end, or stop it, then "
                            "try again. Reading it (show, load_run) is fine meanwhile.") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        self.file = f

    def release(self) -> None:
        if self.file is not None:
            self.file.truncate(0)
            self.file.close()  # closing the descriptor releases the flock
            self.file = None


class StoreError(RuntimeError):
    """A run file cannot be created, opened, read or written as asked."""


class RunLocked(StoreError):
    """Another process is writing this run (it holds the run's writer lock)."""


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


def _json(value: Any, what: str) -> str:
    try:
        return json.dumps(value)
    except (TypeError, ValueError) as e:
        raise StoreError(f"{what} must be JSON-serializable (dict, list, str, number, bool, "
                         f"None): {e}") from None


def _loads(text: Any) -> Any:
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return None


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


class RunStore:
    """One run's SQLite file: run settings plus every finished candidate (thread-safe)."""

    def __init__(self, path: Path, conn: sqlite3.Connection, readonly: bool,
                 writer: _WriterLock | None = None):
        """Internal: use :meth:`create` or :meth:`open`."""
        self._writer = writer
        self.path = path
        """Path of the run file."""
        self.readonly = readonly
        """True if opened with ``readonly=True`` (writes raise :class:`StoreError`)."""
        self._conn: sqlite3.Connection | None = conn
        self._lock = threading.RLock()
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        self._config_text = meta["config"]
        self.seed: int = json.loads(meta["seed"])
        """The run's seed."""
        self.created_at: float = json.loads(meta["created_at"])
        """Unix time at which the run was created."""

    @property
    def config(self) -> dict:
        """The run's configuration (a fresh copy; JSON round-trip, so tuples come back as lists)."""
        return json.loads(self._config_text)

    # --- making and opening ------------------------------------------------------------
    @staticmethod
    def _connect(target: str, uri: bool = False) -> sqlite3.Connection:
        conn = sqlite3.connect(target, uri=uri, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                               check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        return conn

    @classmethod
    def create(cls, path: str | Path, config: dict, seed: int) -> RunStore:
        """Create a run file at ``path`` (and its folders); StoreError if it exists, non-empty."""
        path = Path(path)
        if not isinstance(config, dict):
            raise StoreError(f"config must be a dict, got {type(config).__name__}")
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
            raise StoreError(f"seed must be an int, got {seed!r}")
        seed = int(seed)
        config_text = _json(config, "config")
        for p in (path, Path(f"{path}-wal"), Path(f"{path}-journal")):
            if p.is_dir() or p.exists() and p.stat().st_size > 0:
                raise StoreError(f"cannot create run {str(path)!r}: {str(p)!r} already exists; "
                                 "resume it with RunStore.open(path) or choose a new path")
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = _WriterLock(path)
        try:
            conn = cls._connect(str(path))
        except BaseException:
            writer.release()
            raise
        try:
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("BEGIN IMMEDIATE")  # all or nothing: a killed create leaves no half-run
            if conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
                raise StoreError(f"cannot create run {str(path)!r}: another process created "
                                 "it first; open it with RunStore.open(path)")
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    conn.execute(stmt)
            meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "seed": seed,
                    "created_at": time.time()}
            rows = [(k, json.dumps(v)) for k, v in meta.items()] + [("config", config_text)]
            conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", rows)
            conn.execute("COMMIT")
            conn.execute("PRAGMA journal_mode = WAL")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            conn.close()
            writer.release()
            raise
        return cls(path, conn, readonly=False, writer=writer)

    @classmethod
    def open(cls, path: str | Path, readonly: bool = False) -> RunStore:
        """Open an existing run (for reading only if ``readonly``); StoreError if the file is
        missing, empty, not an evorl_nb run, or of a newer format version; RunLocked when
        opening to write a run another process is writing (one writer per run, any readers)."""
        path = Path(path)
        packed = Path(f"{path}.gz")
        if not path.exists() and packed.is_file():  # a committed, compressed run
            if not readonly:
                raise StoreError(f"run {str(path)!r} is stored compressed; `gunzip -k "
                                 f"{packed}` to resume or re-score it (reading works as is)")
            path = _unpacked(packed)
        if not path.exists():
            raise StoreError(f"no run file at {str(path)!r}; start a run with `evorl-nb evolve "
                             "--out FOLDER` (or RunStore.create(path, config, seed))")
        if not path.is_file():
            raise StoreError(f"{str(path)!r} is not a file; give the path of a run's .sqlite file")
        if path.stat().st_size == 0:
            raise StoreError(f"{str(path)!r} is an empty file, not an evorl_nb run "
                             "(an interrupted create? RunStore.create can reuse it)")
        writer = None
        if readonly:
            conn = cls._connect(path.resolve().as_uri() + "?mode=ro", uri=True)
        else:
            writer = _WriterLock(path)  # RunLocked if another process writes this run
            try:
                conn = cls._connect(str(path))
            except BaseException:
                writer.release()
                raise
        try:
            cls._check_format(path, conn)
            if not readonly:
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = FULL")
            return cls(path, conn, readonly=readonly, writer=writer)
        except BaseException:
            conn.close()
            if writer is not None:
                writer.release()
            raise

    @staticmethod
    def _check_format(path: Path, conn: sqlite3.Connection) -> None:
        not_run = f"{str(path)!r} is not an evorl_nb run"
        try:
            has_meta = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' "
                                    "AND name = 'meta'").fetchone()
            rows = dict(conn.execute("SELECT key, value FROM meta").fetchall()) if has_meta else {}
        except sqlite3.DatabaseError as e:
            if "not a database" in str(e) or "encrypted" in str(e):
                raise StoreError(f"{not_run} (not an SQLite database)") from None
            raise StoreError(f"run {str(path)!r} is damaged or not readable: {e}") from None
        if not has_meta:
            raise StoreError(f"{not_run} (SQLite, but it has no meta table)")

        value = {k: _loads(v) for k, v in rows.items()}.get
        if value("format") != FORMAT:
            raw = rows.get("format")
            got = (f"{raw!r}, not JSON-encoded" if raw is not None and _loads(raw) is None
                   else repr(value("format")))
            raise StoreError(f"{not_run} (meta format is {got}; an evorl_nb run stores "
                             f"{json.dumps(FORMAT)!r})")
        version = value("format_version")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise StoreError(f"{not_run} (format_version {rows.get('format_version')!r} is not "
                             "a positive integer)")
        if version > FORMAT_VERSION:
            raise StoreError(f"{str(path)!r} has run format version {version}, but this evorl_nb "
                             f"reads versions up to {FORMAT_VERSION}; upgrade evorl_nb")
        missing = [k for k in ("config", "seed", "created_at") if k not in rows]
        if missing:
            raise StoreError(f"{not_run} (meta lacks {', '.join(missing)})")
        damaged = f"run {str(path)!r} is damaged"
        if not isinstance(value("config"), dict):
            raise StoreError(f"{damaged}: its config is not a JSON object "
                             f"({str(rows['config'])[:60]!r})")
        seed = value("seed")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise StoreError(f"{damaged}: its seed is not an integer ({rows['seed']!r})")
        if not isinstance(value("created_at"), (int, float)):
            raise StoreError(f"{damaged}: created_at is not a number ({rows['created_at']!r})")
        try:
            tables = {name: {c[1] for c in conn.execute(f"PRAGMA table_info({name})")}
                      for name in ("candidates", "rescores")}
            for name, columns in (("candidates", _COLUMNS), ("rescores", RESCORE_COLUMNS)):
                if not tables[name] and name == "rescores":
                    continue  # made by the first re-scoring
                lacking = [c for c in columns if c not in tables[name]]
                if lacking:
                    what = (f"it has no {name} table" if not tables[name] else
                            f"its {name} table lacks column(s) {', '.join(lacking)}")
                    raise StoreError(f"{damaged}: {what}")
            check = [r[0] for r in conn.execute("PRAGMA quick_check(5)")]
        except sqlite3.DatabaseError as e:
            raise StoreError(f"{damaged}: {e}") from None
        if check != ["ok"]:
            raise StoreError(f"{damaged} (SQLite quick_check: {'; '.join(check)[:300]}); "
                             "restore it from a copy, or start a new run")

    # --- helpers -----------------------------------------------------------------------
    def _db(self, write: bool = False) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"run store {str(self.path)!r} is closed; reopen it with "
                             "RunStore.open(path)")
        if write and self.readonly:
            raise StoreError(f"run store {str(self.path)!r} is open read-only; open it with "
                             "RunStore.open(path) to write")
        return self._conn

    def _write(self, fn):
        with self._lock:
            conn = self._db(write=True)
            try:
                conn.execute("BEGIN IMMEDIATE")
                out = fn(conn)
                conn.execute("COMMIT")
                return out
            except sqlite3.OperationalError as e:  # disk full, read-only medium, I/O error
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise StoreError(f"cannot write run {str(self.path)!r}: {e}; what was recorded "
                                 "before is kept (resume once it can be written)") from None
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def _read(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            try:
                return self._db().execute(sql, args).fetchall()
            except sqlite3.DatabaseError as e:  # a page damaged after the open-time check
                raise StoreError(f"run {str(self.path)!r} is damaged or unreadable: {e}") from None

    # --- candidates --------------------------------------------------------------------
    def add(self, rec: CandidateRecord, exist_ok: bool = False) -> int:
        """Record one finished candidate in one transaction; return its id (also set on ``rec``).

        StoreError if ``rec.proposal`` is already recorded, unless ``exist_ok``: then its id."""
        if not isinstance(rec, CandidateRecord):
            raise StoreError(f"add expects a CandidateRecord, got {type(rec).__name__}")
        rec.validate()
        fitness = None if rec.fitness is None or math.isnan(rec.fitness) else float(rec.fitness)
        parent = None if rec.parent_id is None else int(rec.parent_id)
        scores = _json({k: float(v) for k, v in rec.scores.items()}, "scores")
        row = (rec.proposal, parent, rec.program_json, rec.fingerprint, rec.status, rec.reason,
               scores, fitness, int(rec.steps), float(rec.wall_time), rec.mutation, rec.worker,
               float(rec.proposed_at), float(rec.finished_at))

        def insert(conn):
            old = conn.execute("SELECT id FROM candidates WHERE proposal = ?",
                               (rec.proposal,)).fetchone()
            if old is not None:
                if exist_ok:
                    return old[0]
                raise StoreError(f"proposal {rec.proposal!r} is already recorded (id {old[0]}) "
                                 f"in {str(self.path)!r}; pass exist_ok=True to get its id")
            cur = conn.execute(f"INSERT INTO candidates ({', '.join(_COLUMNS[1:])}) "
                               f"VALUES ({', '.join('?' * len(row))})", row)
            return cur.lastrowid

        rec.id = self._write(insert)
        return rec.id

    def candidates(self) -> list[CandidateRecord]:
        """All recorded candidates, in id order."""
        rows = self._read(f"SELECT {', '.join(_COLUMNS)} FROM candidates ORDER BY id")
        return [_record(r, self.path) for r in rows]

    def count(self) -> int:
        """Number of recorded candidates."""
        return self._read("SELECT count(*) FROM candidates")[0][0]

    def has_proposal(self, key: str) -> bool:
        """Whether a candidate with proposal key ``key`` is recorded."""
        return bool(self._read("SELECT 1 FROM candidates WHERE proposal = ?", (key,)))

    def cache(self) -> dict[str, float]:
        """Fingerprint -> fitness of evaluated candidates (status "trained" or "below_hurdle").

        Failed ones are not cached; duplicates neither, as they only repeat the fitness of
        an earlier candidate with their fingerprint. The earliest evaluation of one wins."""
        rows = self._read("SELECT fingerprint, fitness FROM candidates WHERE status IN "
                          "(?, ?) ORDER BY id DESC", EVALUATED)
        return {fp: math.nan if f is None else f for fp, f in rows}

    # --- re-scores -----------------------------------------------------------------------
    def add_rescores(self, rows: list[dict]) -> None:
        """Record training runs of re-scored programs (dicts with :data:`RESCORE_COLUMNS`)
        in one transaction; a row already there (same entry, env, seed) is replaced."""
        values = [tuple(r.get(c) for c in RESCORE_COLUMNS) for r in rows]

        def insert(conn):
            conn.execute(_RESCORE_SCHEMA)
            conn.executemany(f"INSERT OR REPLACE INTO rescores ({', '.join(RESCORE_COLUMNS)}) "
                             f"VALUES ({', '.join('?' * len(RESCORE_COLUMNS))})", values)

        self._write(insert)

    def rescores(self) -> list[dict]:
        """Every recorded re-scoring run (see :data:`RESCORE_COLUMNS`); [] if none."""
        if not self._read("SELECT 1 FROM sqlite_master WHERE type = 'table' AND "
                          "name = 'rescores'"):
            return []
        rows = self._read(f"SELECT {', '.join(RESCORE_COLUMNS)} FROM rescores "
                          "ORDER BY entry, env, seed")
        return [dict(zip(RESCORE_COLUMNS, r, strict=True)) for r in rows]

    # --- run-level state ---------------------------------------------------------------
    def set_meta(self, key: str, value: Any) -> None:
        """Store small run-level state ``value`` (JSON-able) under ``key`` (e.g. "finished")."""
        if not isinstance(key, str) or key in _RESERVED:
            raise StoreError(f"meta key {key!r} cannot be set: use a str other than {_RESERVED}")
        text = _json(value, f"meta value for {key!r}")
        self._write(lambda conn: conn.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, text)))

    def get_meta(self, key: str, default: Any = None) -> Any:
        """The run-level value stored under ``key``, or ``default`` if there is none."""
        rows = self._read("SELECT value FROM meta WHERE key = ?", (key,))
        return json.loads(rows[0][0]) if rows else default

    # --- closing -----------------------------------------------------------------------
    def close(self) -> None:
        """Close the file (idempotent); later calls raise :class:`StoreError`."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            if self._writer is not None:
                self._writer.release()
                self._writer = None

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()



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
    """Read a run (its folder or its ``run.sqlite``; read-only, safe while another process
    writes it) into a :class:`RunData`."""
    import pandas as pd

    if Path(path).is_dir():
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
