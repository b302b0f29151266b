"""Which model session an analysis runs on while other analyses share the process's cores.

A worker runs jobs side by side (``NODULEFLOW_WORKER_CONCURRENCY``). One model session
spread over every core is fastest for a job alone, but two such jobs at once keep more
threads than cores: they wait on each other's layers and each study costs more CPU. So the
engine keeps a *lane* per job, a session of its own on its share of the cores, and an
analysis holds a lane from start to end: while one is held it runs on the whole session,
while two or more are, each on its own lane's.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Lanes:
    """``count`` lanes handed to the threads that analyse; thread-safe."""

    def __init__(self, count: int) -> None:
        if count < 0:
            raise ValueError(f"lane count must not be negative, not {count}")
        self.count = count
        self._free = list(range(count))
        self._held: dict[int, int] = {}  # thread ident -> lane
        self._lock = threading.Lock()

    @contextmanager
    def held(self) -> Iterator[int | None]:
        """Hold a lane for the calling thread while the block runs; yields its number, or
        None when every lane is taken (or the thread holds one already: a nested hold keeps
        the outer one). Without a lane the thread runs on the whole session."""
        ident = threading.get_ident()
        with self._lock:
            taken = ident not in self._held and bool(self._free)
            if taken:
                self._held[ident] = self._free.pop(0)
            lane = self._held.get(ident)
        try:
            yield lane
        finally:
            if taken:
                with self._lock:
                    self._free.append(self._held.pop(ident))
                    self._free.sort()

    def current(self) -> int | None:
        """The calling thread's lane while two or more are held; else None (run on the
        whole session: alone, a job has every core)."""
        with self._lock:
            if len(self._held) < 2:
                return None
            return self._held.get(threading.get_ident())

    @property
    def in_use(self) -> int:
        with self._lock:
            return len(self._held)
