"""``noduleflow serve``: receiver, worker and reporter in one process.

Embedded defaults (SQLite, local storage, in-process broker) on one machine; the same code
with RabbitMQ and PostgreSQL when their URLs are set. This module wires the three services
together; it is the only place that imports more than one of them.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from services.core import heap
from services.core.broker import Broker, make_broker
from services.core.db import Database
from services.core.priority import yield_cpu
from services.core.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Node:
    """The running services of one ``serve`` process."""

    settings: Settings
    db: Database
    broker: Broker
    parts: list[Any] = field(default_factory=list)
    http: Any = None
    http_thread: threading.Thread | None = None

    def stop(self) -> None:
        if self.http is not None:
            self.http.should_exit = True
        if self.http_thread is not None:
            self.http_thread.join(timeout=10)
        for part in reversed(self.parts):
            try:
                part.stop()
            except Exception:
                log.exception("event=stop_failed part=%s", type(part).__name__)
        self.broker.close()
        self.db.dispose()


def _start_http(node: Node) -> None:
    from services.reporter.api.app import create_app
    from services.reporter.api.server import build_server

    server = build_server(create_app(node.settings, node.db, node.broker), node.settings)
    thread = threading.Thread(target=server.run, name="noduleflow-http", daemon=True)
    thread.start()
    node.http, node.http_thread = server, thread


def start(settings: Settings, *, http: bool = True, yield_nice: int = 0) -> Node:
    """Start every service of the node; returns once all are listening.

    With ``yield_nice`` the calling thread drops to that nice value once the worker, the
    reporter and HTTP are running, so the receiver's threads and SCP processes inherit it
    and theirs keep the caller's (core/priority.py). It stays lowered: ``noduleflow
    serve`` passes it, a test that embeds a node does not.
    """
    from services.receiver.main import build_receiver
    from services.reporter.main import build_reporter
    from services.worker.main import build_worker

    settings.storage_dir.mkdir(parents=True, exist_ok=True)
    settings.outbox_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.database_url)
    db.upgrade()
    broker = make_broker(settings.broker_url, settings.broker_prefix)
    broker.declare()
    node = Node(settings=settings, db=db, broker=broker)
    try:
        for build in (build_worker, build_reporter):
            part = build(settings, db, broker)
            part.start()
            node.parts.append(part)
        if http:
            _start_http(node)
        if yield_nice:  # one process: only the threads started from here on
            yield_cpu(yield_nice, whole_process=False)
        receiver = build_receiver(settings, db, broker)
        receiver.start()
        node.parts.append(receiver)
    except BaseException:
        node.stop()
        raise
    log.info(
        "event=serve_started dicom=%s@%s:%s api=%s broker=%s",
        settings.ae_title,
        settings.dicom_host,
        settings.dicom_port,
        settings.base_url,
        "rabbitmq" if settings.broker_url else "in-process",
    )
    return node


@contextmanager
def running(settings: Settings, *, http: bool = True, yield_nice: int = 0) -> Iterator[Node]:
    node = start(settings, http=http, yield_nice=yield_nice)
    try:
        yield node
    finally:
        node.stop()


def run(settings: Settings) -> None:
    """Serve until SIGINT/SIGTERM."""
    heap.configure(settings)  # before any thread of this process starts
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with running(settings, yield_nice=settings.receiver_nice):
        stop.wait()
    log.info("event=serve_stopped")
