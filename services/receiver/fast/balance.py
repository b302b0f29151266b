"""Spreading connections evenly over the SCP processes that share one listening socket.

Every process of ``noduleflow receiver`` waits on the same socket, and the kernel wakes all
of them when a connection arrives; whoever calls ``accept`` first gets it. Left alone, one
process often takes a whole burst (four associations opened at once all land on the one
whose thread happened to be scheduled), and then they share one interpreter lock while its
siblings idle. So each process publishes how many connections it holds in a small shared
table (:class:`LoadBoard`, one slot per process), and a process that holds more than the
least-loaded sibling defers ``accept`` for a few milliseconds (:meth:`LoadBoard.defer`),
letting that sibling take the connection. A sibling that does not take it in time (stuck,
or restarting) only costs that short delay.
"""

from __future__ import annotations

import mmap
import os
import struct
import tempfile
import time

MAX_DEFER = 0.02
_SLOT = struct.Struct("=i")


def shared_table(slots: int) -> int:
    """A file descriptor of a zeroed table of ``slots`` counters, for children to map."""
    size = max(1, slots) * _SLOT.size
    try:
        fd = os.memfd_create("noduleflow-load", 0)  # Linux: no file on any disk
    except (AttributeError, OSError):
        with tempfile.TemporaryFile() as handle:
            fd = os.dup(handle.fileno())
    os.ftruncate(fd, size)
    return fd


class LoadBoard:
    """Connection counts of the sibling processes; this process owns slot ``index``."""

    def __init__(self, fd: int, slots: int, index: int) -> None:
        if not 0 <= index < slots:
            raise ValueError(f"slot {index} outside a table of {slots}")
        self.slots = slots
        self.index = index
        self._map = mmap.mmap(fd, slots * _SLOT.size)

    def set(self, count: int, index: int | None = None) -> None:
        slot = self.index if index is None else index
        _SLOT.pack_into(self._map, slot * _SLOT.size, count)

    def get(self, index: int) -> int:
        return int(_SLOT.unpack_from(self._map, index * _SLOT.size)[0])

    def fewest_elsewhere(self) -> int | None:
        others = [self.get(i) for i in range(self.slots) if i != self.index]
        return min(others) if others else None

    def should_defer(self) -> bool:
        fewest = self.fewest_elsewhere()
        return fewest is not None and self.get(self.index) > fewest

    def defer(self, limit: float = MAX_DEFER) -> float:
        """Wait (at most ``limit`` seconds) while a sibling holds fewer connections; the
        seconds waited."""
        start = time.monotonic()
        waited = 0.0
        while waited < limit and self.should_defer():
            time.sleep(0.001)
            waited = time.monotonic() - start
        return waited

    def close(self) -> None:
        self._map.close()
