"""The reporter service: result consumer, delivery dispatcher and (optionally) HTTP.

``build_reporter`` wires the parts for in-process use (``noduleflow serve``);
``run`` is the ``noduleflow reporter`` command (distributed form).
"""

from __future__ import annotations

import importlib.util
import logging
import signal
import threading
from dataclasses import dataclass, field
from typing import Any

from services.core.broker import Broker, make_broker
from services.core.db import Database
from services.core.db.session import wait_for_database
from services.core.messages import REPORTING_QUEUE
from services.core.settings import Settings
from services.core.startup import StartCancelled, retry_start_step
from services.core.threads import Threaded, ThreadGroup
from services.reporter.delivery.dispatch import Dispatcher, Sender
from services.reporter.delivery.senders import default_senders, retry_policy
from services.reporter.dicom import tables
from services.reporter.results import ResultConsumer

log = logging.getLogger(__name__)


@dataclass
class Reporter(Threaded):
    """Consumer and dispatcher threads (plus HTTP when ``serve_http``); non-blocking."""

    settings: Settings
    db: Database
    broker: Broker
    consumer: ResultConsumer
    dispatcher: Dispatcher
    serve_http: bool = False
    group: ThreadGroup = field(default_factory=ThreadGroup)
    http_server: Any = None

    def start(self) -> None:
        tables.preload()  # before the first study, not during its report
        self.group.restart()
        self.group.on_stop(self.dispatcher.wake)
        self.group.spawn(
            "reporter-consumer",
            self.broker.consume,
            REPORTING_QUEUE,
            self.consumer.handle,
            self.stop_event,
        )
        self.group.spawn("reporter-dispatcher", self.dispatcher.run, self.stop_event)
        if self.serve_http:
            self.http_server = http_server(self.settings, self.db, self.broker)
            if self.http_server is not None:
                self.group.on_stop(self._stop_http)
                self.group.spawn("reporter-http", self.http_server.run)
        log.info(
            "event=reporter_started pacs=%s http=%s",
            self.settings.pacs or "outbox",
            self.http_server is not None,
        )

    def _stop_http(self) -> None:
        self.http_server.should_exit = True

    def stop(self, timeout: float = 15.0) -> None:
        self.group.stop(timeout=timeout)
        log.info("event=reporter_stopped")


def build_reporter(
    settings: Settings,
    db: Database,
    broker: Broker,
    *,
    serve_http: bool = False,
    senders: dict[str, Sender] | None = None,
    poll_seconds: float = 1.0,
) -> Reporter:
    """Wire a reporter on existing DB and broker; call ``.start()`` / ``.stop()``."""
    consumer = ResultConsumer(db, settings)
    dispatcher = Dispatcher(
        db,
        senders or default_senders(db, settings, consumer.rebuild),
        retry_policy(settings),
        poll_seconds=poll_seconds,
    )
    consumer.on_committed = dispatcher.wake
    return Reporter(settings, db, broker, consumer, dispatcher, serve_http=serve_http)


def http_server(settings: Settings, db: Database, broker: Broker | None) -> Any:
    """A uvicorn server for the reporter app, or None while the app is not available."""
    if importlib.util.find_spec("services.reporter.api.app") is None:
        log.warning("event=http_unavailable reason=no_app_module")
        return None
    from services.reporter.api.app import create_app
    from services.reporter.api.server import build_server

    return build_server(create_app(settings, db, broker), settings)


def run(settings: Settings) -> None:
    """``noduleflow reporter``: consumer, dispatcher and HTTP until SIGINT/SIGTERM.

    Signals are handled here (uvicorn runs in a thread and installs none), so shutdown is
    ordered: stop taking messages, finish the current one, stop HTTP, close.
    """
    db = Database(settings.database_url)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):  # (the wait below puts its own in meanwhile)
        signal.signal(sig, lambda *_: stop.set())
    try:
        if not wait_for_database(db):  # stopped while the database was away
            raise StartCancelled("stopped while waiting for the database")
        # The database may go away again between the wait and the upgrade: retried.
        retry_start_step(db.upgrade, stop, name="schema-upgrade")
    except StartCancelled:
        db.dispose()
        log.info("event=reporter_stopped")
        return
    broker = make_broker(settings.broker_url, settings.broker_prefix)
    broker.declare()
    reporter = build_reporter(settings, db, broker, serve_http=True)
    reporter.start()
    try:
        stop.wait()
    finally:
        reporter.stop()
        broker.close()
        db.dispose()
