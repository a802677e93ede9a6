"""Where a run's files are and who may write them: the store path of a run folder, a
gzipped store unpacked for reading, and the one-writer lock beside the store.

Kept apart from the SQLite code: these rules are about files and processes, not tables.
"""

from __future__ import annotations

import os
from pathlib import Path

from evorl_nb.store.schema import RunLocked, StoreError

try:
    import fcntl
except ImportError:  # Windows: no advisory file locks; one writer is up to the user there
    fcntl = None

__all__ = ["STORE_NAME", "store_path", "lock_path"]

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
