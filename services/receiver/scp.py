"""The Storage SCP: application entity, presentation contexts, server socket, handlers."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from typing import Any

from pynetdicom import AE, _config, evt
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from services.core.settings import Settings
from services.receiver import handlers
from services.receiver.fast.balance import LoadBoard
from services.receiver.handlers import Registry
from services.receiver.policy import ACCEPTED_TRANSFER_SYNTAXES, tls_context
from services.receiver.store import InstanceStore

log = logging.getLogger(__name__)

ACSE_TIMEOUT = 30.0
DIMSE_TIMEOUT = 60.0
NETWORK_TIMEOUT = 60.0


class ReceiverServer(ThreadedAssociationServer):
    """pynetdicom's threaded server, optionally on a listening socket shared by several
    processes (pre-fork): each process accepts when it can, after deferring to a sibling
    that holds fewer connections (see :mod:`services.receiver.fast.balance`)."""

    daemon_threads = True

    def __init__(
        self,
        *args: Any,
        listen_socket: socket.socket | None = None,
        board: LoadBoard | None = None,
        **kw: Any,
    ) -> None:
        self._shared = listen_socket
        self.board = board
        self._clients: list[socket.socket] = []
        self._clients_lock = threading.Lock()
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
        with self._clients_lock:
            self._clients = [c for c in self._clients if c.fileno() != -1]
            return len(self._clients)

    def publish(self, *_: Any) -> None:
        """Tell the siblings how many connections this process holds."""
        if self.board is not None:
            self.board.set(self.connections())

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        if self.board is not None:
            self.publish()
            self.board.defer()
        client, address = super().get_request()
        with contextlib.suppress(OSError):
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._clients_lock:
            self._clients.append(client)
        self.publish()
        return client, address

    def service_actions(self) -> None:
        super().service_actions()
        self.publish()


def build_ae(settings: Settings) -> AE:
    """An AE that accepts every storage SOP class (stored as received) and Verification."""
    _config.LOG_HANDLER_LEVEL = "none"
    ae = AE(ae_title=settings.ae_title)
    ae.maximum_pdu_size = settings.max_pdu_size
    ae.maximum_associations = settings.max_associations
    ae.acse_timeout = ACSE_TIMEOUT
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
        )
        if self.board is not None:  # a closed connection frees this process's slot at once
            server.bind(evt.EVT_CONN_CLOSE, server.publish)
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
