"""Event-driven waits for pynetdicom's acceptor threads instead of 1 ms polling.

pynetdicom (3.0) runs two polling loops per association: the DUL thread sleeps 1 ms
whenever it has nothing to do, and the association reactor sleeps 1 ms between checks for
a complete DIMSE message. That costs CPU for every open association and up to a
millisecond of latency at each hand-over, per instance. Here, for *acceptor* associations
only, those sleeps become waits that end as soon as there is work: socket data or a
primitive to send (DUL), a decoded message or a peer primitive (reactor,
:class:`~services.receiver.fast.reactor.ReactorWaiter`, which also lets the DUL thread serve a
plain C-STORE itself). A 50 ms ceiling keeps pynetdicom's own timers (ARTIM, idle, kill
flags) working unchanged. Installed (and undone) only through
:func:`services.receiver.fast.install`.
"""

from __future__ import annotations

import contextlib
import os
import select
import ssl
import threading
import time as _time
from collections.abc import Callable
from typing import Any

from pynetdicom import association, dul

from services.receiver.fast.patching import Patch
from services.receiver.fast.reactor import MAX_WAIT as MAX_WAIT
from services.receiver.fast.reactor import ReactorWaiter

_local = threading.local()


class _TimeShim:
    """Stands in for the ``time`` module inside pynetdicom's ``dul``/``association``."""

    def __getattr__(self, name: str) -> Any:
        return getattr(_time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        waiter = getattr(_local, "waiter", None)
        if waiter is None:
            _time.sleep(seconds)
        else:
            waiter(seconds)


def _wrap_put(queue: Any, after: Callable[[], None]) -> None:
    original = queue.put

    def put(item: Any, *args: Any, **kwargs: Any) -> None:
        original(item, *args, **kwargs)
        after()

    queue.put = put


class _DulWaiter:
    """Waits on the peer's socket and on a pipe poked when there is something to send."""

    def __init__(self, provider: Any) -> None:
        self.provider = provider
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        os.set_blocking(self.write_fd, False)
        _wrap_put(provider.to_provider_queue, self.poke)
        original_kill = provider.kill_dul

        def kill_dul() -> None:
            original_kill()
            self.poke()

        provider.kill_dul = kill_dul

    def poke(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self.write_fd, b"x")

    def __call__(self, seconds: float) -> None:
        raw = getattr(self.provider.socket, "socket", None)
        if raw is None:
            _time.sleep(seconds)
            return
        if isinstance(raw, ssl.SSLSocket) and raw.pending():
            return
        try:
            ready, _, _ = select.select([raw, self.read_fd], [], [], MAX_WAIT)
        except (OSError, ValueError):  # socket closed under us: let pynetdicom notice
            _time.sleep(seconds)
            return
        if self.read_fd in ready:
            with contextlib.suppress(OSError):
                os.read(self.read_fd, 4096)

    def close(self) -> None:
        for fd in (self.read_fd, self.write_fd):
            with contextlib.suppress(OSError):
                os.close(fd)


_original_dul_run = dul.DULServiceProvider.run_reactor
_original_assoc_run = association.Association._run_reactor


def _dul_run(self: Any) -> None:
    if not self.assoc.is_acceptor:
        _original_dul_run(self)
        return
    waiter = _DulWaiter(self)
    _local.waiter = waiter
    try:
        _original_dul_run(self)
    finally:
        _local.waiter = None
        waiter.close()


def _assoc_run(self: Any) -> None:
    if not self.is_acceptor:
        _original_assoc_run(self)
        return
    waiter = ReactorWaiter(self)
    waiter.start()
    _local.waiter = waiter
    try:
        _original_assoc_run(self)
    finally:
        _local.waiter = None
        waiter.stop()


def patches() -> list[Patch]:
    """Acceptor threads wait for work instead of polling every millisecond."""
    return [
        Patch(dul, "time", _TimeShim()),
        Patch(association, "time", _TimeShim()),
        Patch(dul.DULServiceProvider, "run_reactor", _dul_run),
        Patch(association.Association, "_run_reactor", _assoc_run),
    ]
