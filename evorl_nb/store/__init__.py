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

:mod:`~evorl_nb.store.schema` defines the file format and the errors,
:mod:`~evorl_nb.store.records` a candidate's row, :mod:`~evorl_nb.store.files` the run's
paths and writer lock, :mod:`~evorl_nb.store.runstore` the store and
:mod:`~evorl_nb.store.rundata` the pandas view.
"""

from __future__ import annotations

from evorl_nb.store.files import STORE_NAME, lock_path, store_path  # noqa: F401 - re-exported
from evorl_nb.store.records import CandidateRecord
from evorl_nb.store.rundata import RunData, load_run
from evorl_nb.store.runstore import RunStore
from evorl_nb.store.schema import (  # noqa: F401 - re-exported
    BUSY_TIMEOUT_S,
    EVALUATED,
    FORMAT,
    FORMAT_VERSION,
    RESCORE_COLUMNS,
    STATUSES,
    RunLocked,
    StoreError,
)

__all__ = ["RunStore", "CandidateRecord", "StoreError", "RunLocked", "load_run", "RunData",
           "FORMAT",
           "RESCORE_COLUMNS", "STORE_NAME", "store_path",
           "FORMAT_VERSION", "STATUSES", "EVALUATED"]
