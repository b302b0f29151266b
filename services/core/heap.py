"""Freed memory stays in the process: the analysis's large arrays reuse it.

An analysis allocates and frees volumes of hundreds of megabytes (a 300 × 512² study is
315 MB in float32). glibc's malloc serves every block over 32 MiB with its own ``mmap``
and hands it back with ``munmap`` when freed, so the next study's arrays are new pages the
kernel must zero on first touch. In a burst, beside a second analysis and the services,
that zeroing took 15 % of the worker's CPU, against 6 % for the pipeline alone, 2.8 times
as much per unit of model work (``perf``; ``docs/performance.md``, "Freed memory kept in
the worker"). With the memory kept, an analysis alone ran some 11 % faster and a burst
ended 13 % sooner.

:func:`keep_freed_memory` tells glibc, before the process starts its threads, to take large
blocks from its heap too (``M_MMAP_MAX`` 0), to use one arena for all threads (``M_ARENA_MAX``
1: a block freed by one job's thread is reused by the next job's) and never to give the
heap's free top back (``M_TRIM_THRESHOLD`` at its largest). The process's resident memory
then stays at its peak, as a long-running worker's would after its first busy hour.
``NODULEFLOW_WORKER_KEEP_MEMORY=false`` leaves malloc as it is. Where the C library is not
glibc (``mallopt`` missing or refusing), nothing changes and the caller is told.
"""

from __future__ import annotations

import ctypes
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from services.core.settings import Settings

log = logging.getLogger(__name__)

# glibc's <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
#: mallopt takes an int: the largest threshold it can be told
NEVER_TRIM = 2**31 - 1

SETTINGS = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, NEVER_TRIM))


def keep_freed_memory() -> bool:
    """Set glibc's malloc to keep and reuse freed memory; whether every setting took.

    Call it before the process starts threads: an arena a thread already has stays its own.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        log.info("event=heap_unchanged reason=no_mallopt")
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    refused = [param for param, value in SETTINGS if mallopt(param, value) != 1]
    if refused:
        log.info("event=heap_unchanged reason=mallopt_refused params=%s", refused)
        return False
    log.info("event=heap_keeps_freed_memory")
    return True


def configure(settings: Settings) -> bool:
    """:func:`keep_freed_memory` unless ``WORKER_KEEP_MEMORY`` is off: what the worker,
    ``serve`` and the benchmarks' pipeline alone call first, before any thread starts.
    Whether freed memory is now kept."""
    return settings.worker_keep_memory and keep_freed_memory()
