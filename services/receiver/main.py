"""Receiver entry points: ``build_receiver`` (in-process, used by ``serve``) and ``run``
(the ``noduleflow receiver`` command: several SCP processes on one port, plus the study
tracker, outbox relay and the DICOMweb STOW-RS endpoint in the supervising process)."""

from __future__ import annotations

import logging

from services.core.broker import Broker
from services.core.db import Database
from services.core.outbox import Relay
from services.core.priority import yield_cpu
from services.core.retention.loop import RetentionLoop, start_retention
from services.core.settings import Settings
from services.receiver.assembly import (
    Background,
    after_recovery,
    build_scp,
    make_tracker,
    recover,
)
from services.receiver.dicomweb.server import DicomWebServer, start_dicomweb
from services.receiver.prefork import Supervisor
from services.receiver.reconcile import ReconcileReport

log = logging.getLogger(__name__)


class Receiver:
    """SCP + study tracker + outbox relay (+ STOW-RS when ``DICOMWEB_PORT`` is set) in this
    process."""

    def __init__(self, settings: Settings, db: Database, broker: Broker) -> None:
        self.settings = settings
        self.db = db
        self.relay = Relay(db, broker)
        self.tracker = make_tracker(settings, db, self.relay)
        self.scp = build_scp(settings, db, self.tracker)
        self.background = Background(self.tracker, self.relay)
        self.reconciled: ReconcileReport | None = None
        self.retention: RetentionLoop | None = None
        self.dicomweb: DicomWebServer | None = None

    @property
    def port(self) -> int:
        return self.scp.port

    def start(self) -> None:
        """Non-blocking: recovers, then starts the SCP, tracker, relay and retention threads."""
        self.reconciled = recover(self.settings, self.tracker)
        self.background.tasks = after_recovery(self.settings, self.reconciled)
        self.scp.start()
        self.background.start()
        self.retention = start_retention(self.settings, self.db)
        self.dicomweb = start_dicomweb(self.settings, self.db, self.tracker)

    def stop(self) -> None:
        if self.dicomweb is not None:
            self.dicomweb.stop()
        self.scp.stop()
        self.background.stop()
        if self.retention is not None:
            self.retention.stop()
        log.info("event=receiver_stopped")


def build_receiver(settings: Settings, db: Database, broker: Broker) -> Receiver:
    return Receiver(settings, db, broker)


def run(settings: Settings) -> None:
    """``noduleflow receiver``: blocks until SIGTERM/SIGINT."""
    yield_cpu(settings.receiver_nice, whole_process=True)  # also the SCP processes it starts
    Supervisor(settings).run()
