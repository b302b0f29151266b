"""The STOW-RS endpoint's uvicorn server, run in a thread of the process that owns storage
(the supervisor of ``noduleflow receiver``, or ``serve``'s receiver); off while
``DICOMWEB_PORT`` is 0."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import uvicorn

from services.core.auth import Authenticator
from services.core.db import Database
from services.core.settings import Settings
from services.core.storage import LocalStorage
from services.receiver.associations import Registry
from services.receiver.dicomweb.app import StowService, create_app
from services.receiver.fast import tempfiles
from services.receiver.store import InstanceStore
from services.receiver.tracker import StudyTracker

log = logging.getLogger(__name__)

#: Requests served at once by one receiver (more wait for a 503 from uvicorn).
MAX_CONCURRENT_REQUESTS = 32


def spool_folder(storage: LocalStorage, port: int) -> Path:
    """Temporary files of STOW-RS requests, one folder per host and port (same file system
    as storage, so a part's final move is a rename)."""
    folder = storage.tmp / f"stow-{port}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def build_service(settings: Settings, db: Database, tracker: StudyTracker) -> StowService:
    """The STOW-RS service; raises RuntimeError when access control is unsafe for its host."""
    storage = LocalStorage(settings.storage_dir)
    folder = spool_folder(storage, settings.dicomweb_port)
    tempfiles.clean(folder)  # requests cut by a killed process: never answered, never stored
    return StowService(
        db=db,
        store=InstanceStore(
            db, storage, min_free_bytes=settings.min_free_disk_mb << 20, holder=tracker.holder
        ),
        registry=Registry(
            db, tracker, ae_title=settings.ae_title, allowed_aets=list(settings.allowed_aets)
        ),
        authenticator=Authenticator(settings, host=settings.dicomweb_host),
        folder=folder,
        max_part_bytes=settings.stow_max_instance_mb << 20,
        max_request_bytes=settings.stow_max_request_mb << 20,
    )


class DicomWebServer:
    """``start`` returns once the port accepts connections; ``stop`` waits for requests in
    flight (bounded by uvicorn's graceful shutdown)."""

    def __init__(self, settings: Settings, service: StowService) -> None:
        config = uvicorn.Config(
            create_app(service),
            host=settings.dicomweb_host,
            port=settings.dicomweb_port,
            log_config=None,
            access_log=False,
            server_header=False,
            date_header=True,
            limit_concurrency=MAX_CONCURRENT_REQUESTS,
            timeout_graceful_shutdown=30,
        )
        self.server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 30.0) -> None:
        self._thread = threading.Thread(
            target=self.server.run, name="noduleflow-dicomweb", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the DICOMweb server did not start (port in use?)")
            time.sleep(0.05)
        config = self.server.config
        log.info("event=dicomweb_listening host=%s port=%s", config.host, config.port)

    def stop(self) -> None:
        if self._thread is None:
            return
        self.server.should_exit = True
        self._thread.join(timeout=40)
        self._thread = None


def start_dicomweb(
    settings: Settings, db: Database, tracker: StudyTracker
) -> DicomWebServer | None:
    """The STOW-RS server, started; None while ``DICOMWEB_PORT`` is 0."""
    if not settings.dicomweb_port:
        return None
    server = DicomWebServer(settings, build_service(settings, db, tracker))
    server.start()
    return server
