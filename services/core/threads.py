"""The one thread-group lifecycle of the services: named daemon threads that share a stop
event, started together and stopped together (set the event, wake the sleepers, join).

The worker (consumer, then result relay), the reporter (consumer, dispatcher, HTTP) and the
receiver's background (tracker, relay) each hold one or more groups; a service with a single
group derives from :class:`Threaded` for its ``stop_event`` and ``threads``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TypeVarTuple

log = logging.getLogger(__name__)

Args = TypeVarTuple("Args")


class ThreadGroup:
    """Daemon threads sharing ``stop_event``; ``stop()`` sets it, calls the wakers, joins."""

    def __init__(self, stop_event: threading.Event | None = None) -> None:
        self.stop_event = stop_event or threading.Event()
        self.threads: list[threading.Thread] = []
        self._wakers: list[Callable[[], object]] = []

    def spawn(self, name: str, target: Callable[[*Args], object], *args: *Args) -> threading.Thread:
        """Start ``target(*args)`` in a daemon thread called ``name``."""
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        self.threads.append(thread)
        return thread

    def on_stop(self, wake: Callable[[], object]) -> None:
        """Call ``wake`` on stop: for threads asleep on something other than the stop event."""
        self._wakers.append(wake)

    @property
    def alive(self) -> bool:
        return any(thread.is_alive() for thread in self.threads)

    def join(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds per thread; True when all have ended."""
        for thread in self.threads:
            thread.join(timeout)
        return not self.alive

    def stop(self, *, wait: bool = True, timeout: float | None = 10.0) -> None:
        """Set the stop event and wake the sleepers; with ``wait``, join and forget the threads."""
        self.stop_event.set()
        for wake in self._wakers:
            try:
                wake()
            except Exception:
                log.warning("event=thread_group_wake_failed", exc_info=True)
        if not wait:
            return
        if not self.join(timeout):
            names = [thread.name for thread in self.threads if thread.is_alive()]
            log.warning("event=threads_still_running names=%s", ",".join(names))
        self.threads.clear()

    def restart(self) -> None:
        """Ready for another ``spawn`` round: clear the stop event and the wakers."""
        self.stop_event.clear()
        self._wakers.clear()


class Threaded:
    """A service whose threads are the one group ``self.group``: its stop event and threads."""

    group: ThreadGroup

    @property
    def stop_event(self) -> threading.Event:
        return self.group.stop_event

    @property
    def threads(self) -> list[threading.Thread]:
        return self.group.threads
