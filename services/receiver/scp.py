"""The Storage SCP: application entity, presentation contexts, server socket, handlers."""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
import time
import weakref
from typing import Any

from pynetdicom import AE, _config, evt
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from services.core.settings import Settings
from services.receiver import handlers
from services.receiver.admission import Admission
from services.receiver.fast.balance import LoadBoard
from services.receiver.handlers import Registry
from services.receiver.policy import ACCEPTED_TRANSFER_SYNTAXES, tls_context
from services.receiver.store import InstanceStore

log = logging.getLogger(__name__)

DIMSE_TIMEOUT = 60.0
NETWORK_TIMEOUT = 60.0
#: pynetdicom's own association count includes connections still negotiating, so it is set
#: out of reach; :class:`~services.receiver.admission.Admission` enforces the real limits.
PYNETDICOM_MAX_ASSOCIATIONS = 1_000_000
#: At most one log line per kind of refused or ended connection in this many seconds.
NOTE_INTERVAL = 10.0


def _hard_close(sock: socket.socket) -> None:
    """End a connection another thread owns: its reads return at once, and that thread
    closes the socket (never closed here, so its descriptor cannot be reused under it)."""
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)  # the TCP socket, under any TLS


class ReceiverServer(ThreadedAssociationServer):
    """pynetdicom's threaded server, optionally on a listening socket shared by several
    processes (pre-fork): each process accepts when it can, after deferring to a sibling
    that holds fewer connections (see :mod:`services.receiver.fast.balance`).

    Every connection passes :class:`~services.receiver.admission.Admission`: until its
    A-ASSOCIATE-RQ has arrived it is pending (capped, per address too, and closed after the
    ACSE timeout); only then does it take an association slot. A TLS handshake happens in
    the connection's own thread within the same deadline, never in the accepting one."""

    daemon_threads = True

    def __init__(
        self,
        *args: Any,
        listen_socket: socket.socket | None = None,
        board: LoadBoard | None = None,
        admission: Admission[socket.socket] | None = None,
        **kw: Any,
    ) -> None:
        self._shared = listen_socket
        self.board = board
        if admission is None:  # (an Admission is falsy while empty: it has a length)
            admission = Admission(
                max_associations=16, max_pending=32, max_per_peer=16, negotiation_timeout=5.0
            )
        self.admission: Admission[socket.socket] = admission
        self._sockets: weakref.WeakKeyDictionary[Any, socket.socket] = weakref.WeakKeyDictionary()
        self._notes: dict[str, tuple[int, frozenset[str]]] = {}  # kind -> count, some peers
        self._logged: dict[str, float] = {}  # kind -> when last logged
        self._notes_lock = threading.Lock()
        super().__init__(*args, **kw)

    def server_bind(self) -> None:
        if self._shared is None:
            super().server_bind()
            return
        assert self.socket is not None
        self.socket.close()
        self.socket = self._shared
        self.socket.setblocking(False)
        self.server_address = self.socket.getsockname()

    def server_activate(self) -> None:
        if self._shared is None:
            super().server_activate()

    def server_close(self) -> None:
        if self._shared is None:
            super().server_close()
        else:  # never shut the shared socket down: siblings still accept on it
            assert self.socket is not None
            self.socket.close()

    def connections(self) -> int:
        """Connections accepted by this process and not closed yet."""
        self.admission.forget(lambda sock: sock.fileno() == -1)
        return len(self.admission)

    def publish(self, *_: Any) -> None:
        """Tell the siblings how many connections this process holds."""
        if self.board is not None:
            self.board.set(self.connections())

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        if self.board is not None:
            self.publish()
            self.board.defer()
        assert self.socket is not None
        client, address = self.socket.accept()
        with contextlib.suppress(OSError):
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.ssl_context is not None:  # the handshake: in the connection's thread
            client = self.ssl_context.wrap_socket(
                client, server_side=True, do_handshake_on_connect=False
            )
        return client, address

    def verify_request(self, request: Any, client_address: Any) -> bool:
        peer = str(client_address[0])
        admitted, displaced = self.admission.admit(request, peer)
        for sock in displaced:
            _hard_close(sock)
            self._note("displaced", peer)
        if not admitted:
            self._note("refused-per-peer-limit", peer)
        self.publish()
        return admitted

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        if isinstance(request, ssl.SSLSocket) and not self._handshake(request, client_address):
            self.admission.release(request)
            self.shutdown_request(request)
            return
        super().process_request_thread(request, client_address)

    def _handshake(self, request: ssl.SSLSocket, client_address: Any) -> bool:
        try:
            request.settimeout(self.admission.negotiation_timeout)
            request.do_handshake()
            request.settimeout(None)
        except (OSError, ValueError) as exc:
            log.info(
                "event=tls_handshake_failed peer=%s reason=%s",
                client_address[0],
                exc.__class__.__name__,
            )
            return False
        return True

    # ----------------------------------------------------- association events (bound below)

    def opened(self, event: Any) -> None:
        """EVT_CONN_OPEN: remember which socket is this association's."""
        sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
        if sock is not None:
            self._sockets[event.assoc] = sock

    def requested(self, event: Any) -> None:
        """EVT_REQUESTED: the A-ASSOCIATE-RQ is in. Take an association slot, or refuse
        (rejected transient, local limit exceeded: PS3.8 9.3.4) when none is free. A request
        pynetdicom is about to reject for its AE titles takes no slot (it stays pending
        until it is closed)."""
        sock = self._sockets.get(event.assoc)
        if sock is None or not self._titles_allowed(event.assoc):
            return
        if self.admission.negotiate(sock):
            return
        acse = event.assoc.acse
        acse.send_reject(0x02, 0x03, 0x02)
        evt.trigger(event.assoc, evt.EVT_REJECTED, {})
        event.assoc.kill()

    def _titles_allowed(self, assoc: Any) -> bool:
        primitive = assoc.requestor.primitive
        called = str(getattr(primitive, "called_ae_title", "") or "").strip()
        calling = str(getattr(primitive, "calling_ae_title", "") or "").strip()
        allowed = [str(aet).strip() for aet in self.ae.require_calling_aet]
        return called == str(self.ae_title).strip() and (not allowed or calling in allowed)

    def closed(self, event: Any) -> None:
        """EVT_CONN_CLOSE: the connection's slot (pending or negotiated) is free."""
        sock = self._sockets.pop(event.assoc, None)
        if sock is not None:
            self.admission.release(sock)
        self.publish()

    # ----------------------------------------------------------------------------- upkeep

    def service_actions(self) -> None:
        super().service_actions()
        for sock in self.admission.overdue():  # pending past the ACSE timeout
            _hard_close(sock)
            self._note("negotiation-timeout", "")
        self._flush_notes()
        self.publish()

    def _note(self, kind: str, peer: str) -> None:
        """Count a refused or ended connection; :meth:`_flush_notes` logs the counts."""
        with self._notes_lock:
            count, peers = self._notes.get(kind, (0, frozenset()))
            if peer and len(peers) < 8:
                peers = peers | {peer}
            self._notes[kind] = (count + 1, peers)

    def _flush_notes(self) -> None:
        """One warning per kind at once, then at most one per :data:`NOTE_INTERVAL`, with the
        count since the last one: an attacker cannot flood the log."""
        now = time.monotonic()
        with self._notes_lock:
            due = [
                (kind, *note)
                for kind, note in self._notes.items()
                if now - self._logged.get(kind, -NOTE_INTERVAL) >= NOTE_INTERVAL
            ]
            for kind, _, _ in due:
                del self._notes[kind]
                self._logged[kind] = now
        for kind, count, peers in due:
            log.warning(
                "event=connections_ended reason=%s count=%d peers=%s pending=%d",
                kind,
                count,
                ",".join(sorted(peers)) or "-",
                self.admission.pending(),
            )


def build_ae(settings: Settings) -> AE:
    """An AE that accepts every storage SOP class (stored as received) and Verification."""
    _config.LOG_HANDLER_LEVEL = "none"
    ae = AE(ae_title=settings.ae_title)
    ae.maximum_pdu_size = settings.max_pdu_size
    ae.maximum_associations = PYNETDICOM_MAX_ASSOCIATIONS  # see ReceiverServer/Admission
    ae.acse_timeout = settings.acse_timeout_seconds
    ae.dimse_timeout = DIMSE_TIMEOUT
    ae.network_timeout = NETWORK_TIMEOUT
    ae.require_called_aet = True
    ae.require_calling_aet = list(settings.allowed_aets)
    ae.add_supported_context(Verification)
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(str(context.abstract_syntax), ACCEPTED_TRANSFER_SYNTAXES)
    return ae


def event_handlers(store: InstanceStore, registry: Registry) -> list[Any]:
    return [
        (evt.EVT_C_ECHO, handlers.handle_echo),
        (evt.EVT_C_STORE, handlers.handle_store, [store, registry]),
        (evt.EVT_ACCEPTED, handlers.handle_accepted, [registry]),
        (evt.EVT_RELEASED, handlers.handle_released, [registry]),
        (evt.EVT_ABORTED, handlers.handle_aborted, [registry]),
        (evt.EVT_CONN_CLOSE, handlers.handle_conn_close, [registry]),
        (evt.EVT_REJECTED, handlers.handle_rejected, [registry]),
    ]


def admission(settings: Settings) -> Admission[socket.socket]:
    """The connection limits of one SCP process (see :mod:`services.receiver.admission`)."""
    return Admission(
        max_associations=settings.max_associations,
        max_pending=settings.max_pending_connections,
        max_per_peer=settings.max_connections_per_peer,
        negotiation_timeout=settings.acse_timeout_seconds,
    )


class StorageSCP:
    """The listening part of the receiver: ``start`` returns once it accepts connections."""

    def __init__(
        self,
        settings: Settings,
        store: InstanceStore,
        registry: Registry,
        *,
        listen_socket: socket.socket | None = None,
        board: LoadBoard | None = None,
    ) -> None:
        self.settings = settings
        self.ae = build_ae(settings)
        self.store = store
        self.registry = registry
        self.listen_socket = listen_socket
        self.board = board
        self.server: ReceiverServer | None = None
        self._thread: threading.Thread | None = None
        if not settings.allowed_aets:
            log.warning("event=any_calling_ae_allowed hint=set NODULEFLOW_ALLOWED_AETS")

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.server_address[1])

    def start(self) -> None:
        ssl_context = tls_context(
            self.settings.dicom_tls_cert, self.settings.dicom_tls_key, self.settings.dicom_tls_ca
        )
        server: ReceiverServer = self.ae.make_server(  # type: ignore[assignment]
            (self.settings.dicom_host, self.settings.dicom_port),
            ae_title=self.settings.ae_title,
            ssl_context=ssl_context,
            evt_handlers=event_handlers(self.store, self.registry),
            server_class=ReceiverServer,
            listen_socket=self.listen_socket,
            board=self.board,
            admission=admission(self.settings),
        )
        server.bind(evt.EVT_CONN_OPEN, server.opened)
        server.bind(evt.EVT_REQUESTED, server.requested)
        server.bind(evt.EVT_CONN_CLOSE, server.closed)  # also frees the slot on the board
        self.server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="noduleflow-scp"
        )
        self._thread.daemon = True
        self._thread.start()
        self.ae._servers.append(server)
        log.info(
            "event=scp_listening aet=%s host=%s port=%s tls=%s",
            self.settings.ae_title,
            self.settings.dicom_host,
            self.port,
            ssl_context is not None,
        )

    def stop(self) -> None:
        """Stop accepting, let established associations end (bounded), abort the rest."""
        if self.server is None:
            return
        self.server.shutdown()  # stops serve_forever and closes the listening socket
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(
            a.is_established for a in self.server.active_associations
        ):
            time.sleep(0.05)
        for assoc in self.server.active_associations:
            assoc.abort()
        self.server = None
