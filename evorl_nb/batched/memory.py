"""The allocator tuning of the population trainer: glibc keeps freed memory for reuse.

A batched step allocates and frees the same large tensors every step; with glibc's defaults
each of them is a fresh ``mmap`` and a page-fault storm (docs/performance.md).
"""

from __future__ import annotations

import ctypes
import os
import sys

__all__ = ["keep_freed_memory"]


_MALLOC_TUNED: bool | None = None


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse instead of handing it back to the kernel.

    A batched step allocates and frees the same large tensors every step (``[K, 64, 64]``
    weight gradients are megabytes). glibc's defaults serve large blocks with fresh ``mmap``
    calls and trim the heap top on free, so every step pays thousands of page faults
    re-mapping memory (a large share of a step; docs/performance.md). This serves every
    block from the heap (no ``mmap``) and turns heap trimming off, for the whole process;
    the price is that the process keeps its peak heap for reuse.
    :class:`~evorl_nb.batched.Population` calls it once per process;
    set the environment variable ``EVORL_NB_MALLOC=default`` to leave the allocator alone.
    Returns True if applied (Linux with glibc; elsewhere it does nothing).
    """
    global _MALLOC_TUNED
    if _MALLOC_TUNED is None:
        _MALLOC_TUNED = False
        if sys.platform.startswith("linux") and os.environ.get("EVORL_NB_MALLOC") != "default":
            try:
                libc = ctypes.CDLL("libc.so.6")
                m_trim_threshold, m_mmap_max = -1, -4  # <malloc.h>
                _MALLOC_TUNED = bool(libc.mallopt(m_trim_threshold, 2**31 - 1)
                                     and libc.mallopt(m_mmap_max, 0))
            except (OSError, AttributeError):  # not glibc (e.g. musl)
                pass
    return _MALLOC_TUNED


