"""The run store itself: :class:`RunStore`, one run's SQLite file, made, opened, written
and read (one transaction per candidate, one writer, any readers).
"""

from __future__ import annotations

import json
import math
import numbers
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from evorl_nb.store.files import _unpacked, _WriterLock
from evorl_nb.store.records import CandidateRecord, _record
from evorl_nb.store.schema import (
    _COLUMNS,
    _RESCORE_SCHEMA,
    _RESERVED,
    _SCHEMA,
    BUSY_TIMEOUT_S,
    EVALUATED,
    FORMAT,
    FORMAT_VERSION,
    RESCORE_COLUMNS,
    StoreError,
    _json,
    check_format,
)

__all__ = ["RunStore"]


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
    def _connect_writer(cls, path: Path) -> tuple[_WriterLock, sqlite3.Connection]:
        """Take the run's writer lock (RunLocked if another process holds it), then connect;
        the lock is let go again if the connection cannot be made."""
        writer = _WriterLock(path)
        try:
            return writer, cls._connect(str(path))
        except BaseException:
            writer.release()
            raise

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
        writer, conn = cls._connect_writer(path)
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
            writer, conn = cls._connect_writer(path)  # RunLocked if another process writes it
        try:
            check_format(path, conn)
            if not readonly:
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = FULL")
            return cls(path, conn, readonly=readonly, writer=writer)
        except BaseException:
            conn.close()
            if writer is not None:
                writer.release()
            raise

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
