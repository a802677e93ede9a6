"""What a run file holds: its format markers, SQL schema and columns, and the check an
opened file must pass; also the store's errors, which every other part raises.

Apart from the code that reads and writes runs so that the on-disk format (what a format
version means) is defined in one place.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

__all__ = ["FORMAT", "FORMAT_VERSION", "STATUSES", "EVALUATED", "BUSY_TIMEOUT_S",
           "RESCORE_COLUMNS", "StoreError", "RunLocked", "check_format"]

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


class StoreError(RuntimeError):
    """A run file cannot be created, opened, read or written as asked."""


class RunLocked(StoreError):
    """Another process is writing this run (it holds the run's writer lock)."""


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


def check_format(path: Path, conn: sqlite3.Connection) -> None:
    """Raise :class:`StoreError`, naming what is wrong, unless ``conn`` holds an evorl_nb run
    this code can read (format, version, meta, tables, columns, SQLite's quick check), so a
    damaged or foreign file is refused when opened rather than half-read later."""
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
