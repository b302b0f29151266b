"""The acceptor association's reactor: waits for work, and lets the DUL thread serve a plain
C-STORE request itself instead of handing it over.

pynetdicom (3.0) runs two threads per association. The DUL thread reads PDUs and assembles
DIMSE messages; each complete one goes on a queue, and the association's reactor thread
takes it from there and runs the service class. Per instance that hand-off is a wake-up, a
thread switch and two transfers of the interpreter lock; with several associations in one
process it is the largest cost after the fsyncs (docs/performance.md).

For *acceptor* associations, :func:`deliver` (called by the P-DATA-TF short cut of
:mod:`.fastpath`) lets the DUL thread serve the C-STORE request it has just completed, by
the steps of pynetdicom's ``Association._serve_request``, when nothing else is going on:

* the reactor is waiting for work: it holds the association's *turn* at every other moment
  (:class:`ReactorWaiter`), so the two threads never serve at once, and the reactor's own
  checks (release, abort, timeouts) never run while a request is being served;
* nothing received earlier is still queued (messages are served in order);
* the association is established and not releasing, aborting or paused by a ``send_*``
  call; the request is valid, its presentation context accepted and its SOP class one of
  the Storage Service Class, without SOP Class Common Extended Negotiation.

Anything else goes on the queue for the reactor, as before. The response is sent from the
DUL thread (:func:`services.receiver.fast.commands.send_msg` sends at once where that is
safe, else it queues the PDU for the DUL loop that resumes right after). pynetdicom aborts
the association when the service class raises, and a handler may abort it; a blocking abort
on the DUL thread would wait for that very thread to end, so there the abort is split: what
it does at once happens at once, and the waiting for the DUL to stop is left to the reactor
(:meth:`ReactorWaiter.want_abort`). Installed (and undone) only through
:func:`services.receiver.fast.install`, by way of :mod:`.wakeups`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from pynetdicom import _config
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import uid_to_service_class

#: pynetdicom's own logger for what ``Association._serve_request`` logs.
PYNETDICOM_LOG = logging.getLogger("pynetdicom.association")
#: The longest a waiting reactor sleeps before it runs pynetdicom's checks again (timers,
#: kill flags); work ends the wait at once.
MAX_WAIT = 0.05
_ATTRIBUTE = "_noduleflow_reactor"


def _wrap_put(queue: Any, put: Callable[..., None]) -> Callable[..., None]:
    original = queue.put
    queue.put = lambda item, *args, **kwargs: put(original, item, *args, **kwargs)
    return original


class ReactorWaiter:
    """Stands in for the reactor's 1 ms sleep: waits until a DIMSE message or a peer
    primitive arrives for this association (or :data:`MAX_WAIT` passes), and holds the
    association's turn whenever it is not waiting."""

    def __init__(self, assoc: Any) -> None:
        self.assoc = assoc
        self.event = threading.Event()
        self.turn = threading.Lock()
        self.closed = False  # the reactor has ended: nothing more is served
        self.capturer: int | None = None  # the thread in :func:`deliver`, when one is
        self.captured: tuple[int, Any] | None = None
        self.abort_wanted = False
        self.served = 0  # requests the DUL thread served (tests, benchmarks)
        _wrap_put(assoc.dimse.msg_queue, self._put_message)
        _wrap_put(assoc.dul.to_user_queue, self._put_primitive)

    def _put_primitive(self, original: Callable[..., None], item: Any, *a: Any, **k: Any) -> None:
        original(item, *a, **k)
        self.event.set()

    def _put_message(self, original: Callable[..., None], item: Any, *a: Any, **k: Any) -> None:
        if (
            self.capturer == threading.get_ident()
            and self.captured is None
            and self.assoc.dimse.msg_queue.empty()
            and servable(self.assoc, item)
        ):
            self.captured = item
            return
        original(item, *a, **k)
        self.event.set()

    def __call__(self, seconds: float) -> None:
        self.turn.release()
        try:
            self.event.wait(MAX_WAIT)
            self.event.clear()
        finally:
            self.turn.acquire()
        if self.abort_wanted:
            self.abort_wanted = False
            self._finish_abort()

    def _finish_abort(self) -> None:
        """The rest of pynetdicom's blocking ``Association.abort``, on the reactor thread."""
        self.assoc.kill()
        with contextlib.suppress(Exception):
            self.assoc.dul.socket._shutdown_socket()
        time.sleep(0.1)  # (as pynetdicom: lets everything shut down)

    def start(self) -> None:
        """The reactor begins: it holds the turn, and the DUL thread may serve."""
        self.turn.acquire()
        setattr(self.assoc, _ATTRIBUTE, self)

    def stop(self) -> None:
        """The reactor has ended (it holds the turn): nothing more is served."""
        self.closed = True
        self.turn.release()

    def want_abort(self, *_: Any, **__: Any) -> None:
        """``Association.abort`` while the DUL thread serves: what pynetdicom's blocking abort
        does at once happens here (A-ABORT queued for this thread's loop to send right after,
        EVT_ABORTED, the association no longer established, so no response follows); the
        rest (waiting for the DUL to stop, closing the socket) is left to the reactor, since
        this thread cannot wait for itself."""
        assoc = self.assoc
        if assoc._sent_abort or assoc.is_released:
            return
        assoc._abort_blocking(block=False)
        assoc.is_established = False
        self.abort_wanted = True
        self.event.set()


def servable(assoc: Any, item: Any) -> bool:
    """Whether pynetdicom's reactor would hand ``item`` (context ID, message) to the Storage
    Service Class, with nothing to refuse, abort or pause on the way."""
    context_id, msg = item
    if not (
        isinstance(msg, C_STORE)
        and msg.is_valid_request
        and assoc.is_established
        and not assoc._kill
        and not assoc._sent_release
        and not assoc._sent_abort
        and assoc._reactor_checkpoint.is_set()
        and context_id in assoc._accepted_cx
    ):
        return False
    class_uid = msg.AffectedSOPClassUID
    if class_uid in assoc.acceptor.accepted_common_extended:
        return False
    return bool(
        _config.UNRESTRICTED_STORAGE_SERVICE
        or uid_to_service_class(str(class_uid)) is StorageServiceClass
    )


def deliver(assoc: Any, primitive: Any) -> None:
    """Pass a P-DATA primitive to DIMSE (``assoc.dimse.receive_primitive``), and when it
    completes a request the reactor is free to let go (see the module docstring), serve that
    request on this thread."""
    reactor: ReactorWaiter | None = getattr(assoc, _ATTRIBUTE, None)
    if reactor is None or not reactor.turn.acquire(blocking=False):
        assoc.dimse.receive_primitive(primitive)
        return
    try:
        if reactor.closed:
            assoc.dimse.receive_primitive(primitive)
            return
        reactor.capturer = threading.get_ident()
        try:
            assoc.dimse.receive_primitive(primitive)
        finally:
            reactor.capturer = None
        item, reactor.captured = reactor.captured, None
        if item is not None:
            _serve(reactor, *item)
    finally:
        reactor.turn.release()


def _serve(reactor: ReactorWaiter, context_id: int, msg: Any) -> None:
    """``Association._serve_request`` for a request :func:`servable` accepted."""
    assoc = reactor.assoc
    had_abort = "abort" in vars(assoc)
    abort = vars(assoc).get("abort")
    assoc.abort = reactor.want_abort  # (a handler's abort, too, must not block this thread)
    try:
        assoc.dimse.cancel_req = {}
        assoc._is_paused = True
        StorageServiceClass(assoc).SCP(msg, assoc._accepted_cx[context_id])
        assoc._is_paused = False
        assoc.dimse.cancel_req = {}
    except Exception as exc:
        PYNETDICOM_LOG.exception(exc)
        reactor.want_abort()
    finally:
        if had_abort:
            assoc.abort = abort
        else:
            del assoc.abort
        reactor.served += 1
