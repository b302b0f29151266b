"""Which of a worker's concurrent jobs may run now: any number together, except a job whose
earlier attempt did not finish, which runs alone.

A worker process takes ``NODULEFLOW_WORKER_CONCURRENCY`` jobs at once. When one study
crashes the process (a decoder or runtime fault), every job in it loses an attempt. The
redelivered jobs therefore run one at a time: a study that crashes the worker every time
then costs a job beside it at most the one attempt of the first crash, and ends ``failed``
on its own (docs/architecture.md, R8).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class JobGate:
    """Shared by the consumer threads of one worker process."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._running = 0
        self._alone = False  # a solo job is running
        self._solo_waiting = 0

    def _may_enter(self, solo: bool) -> bool:
        if self._alone:
            return False
        if solo:
            return self._running == 0
        return self._solo_waiting == 0  # a waiting solo job goes first

    @contextmanager
    def slot(self, *, solo: bool, stop: threading.Event, poll: float = 0.25) -> Iterator[bool]:
        """Wait for a turn; yields False (and holds nothing) when ``stop`` is set first."""
        with self._changed:
            self._solo_waiting += solo
            try:
                while not self._may_enter(solo):
                    if stop.is_set():
                        break
                    self._changed.wait(poll)
                entered = self._may_enter(solo) and not stop.is_set()
                if entered:
                    self._running += 1
                    self._alone = solo
            finally:
                self._solo_waiting -= solo
                self._changed.notify_all()
        try:
            yield entered
        finally:
            if entered:
                with self._changed:
                    self._running -= 1
                    if solo:
                        self._alone = False
                    self._changed.notify_all()

    @property
    def running(self) -> int:
        with self._changed:
            return self._running
