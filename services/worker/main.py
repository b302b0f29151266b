"""``noduleflow worker``: the inference worker (one process per GPU, any number of them).

``build_worker`` wires a worker from its dependencies (``serve`` uses it in-process);
``run`` is the standalone service: one model session per process, signals, ordered shutdown.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from types import FrameType
from typing import TYPE_CHECKING

from services.core import heap
from services.core.broker import Broker, make_broker
from services.core.db import Database
from services.core.db.session import wait_for_database
from services.core.messages import STUDY_RESULT
from services.core.outbox import Relay
from services.core.settings import Settings
from services.core.storage import LocalStorage
from services.worker.consumer import Worker
from services.worker.faults import Faults
from services.worker.jobs import JobHandler
from services.worker.policy import RetryPolicy

if TYPE_CHECKING:
    from services.analysis.pipeline import ProbabilityModel

log = logging.getLogger(__name__)


def load_engine(settings: Settings) -> ProbabilityModel:
    """The process's model, with a lane for each job at once unless told not to (on a CPU
    provider: ``analysis/lanes.py``); logs which provider and model version run."""
    from services.analysis.engine import Engine

    lanes = settings.worker_concurrency if settings.worker_split_cores else 1
    engine = Engine.load(settings.model_dir, settings.providers, lanes=lanes)
    manifest = engine.manifest
    log.info(
        "event=worker_model provider=%s model=%s version=%s precision=%s",
        engine.provider,
        manifest.name,
        manifest.version,
        getattr(engine, "precision", ""),
    )
    return engine


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def build_worker(
    settings: Settings,
    db: Database,
    broker: Broker,
    engine: ProbabilityModel | None = None,
    *,
    relay: bool = True,
) -> Worker:
    """A ready-to-start worker; loads the model unless ``engine`` is given.

    ``relay=False`` leaves re-publishing of results whose first publish failed to another
    relay of the same database (the worker still publishes each result right after commit).
    """
    limit = getattr(getattr(broker, "topology", None), "delivery_limit", None)
    if limit is not None and settings.job_max_attempts >= limit:
        log.warning(
            "event=worker_attempts_exceed_delivery_limit job_max_attempts=%d delivery_limit=%d "
            "note=the broker dead-letters a crashing job before the worker can record it",
            settings.job_max_attempts,
            limit,
        )
    if engine is None:
        engine = load_engine(settings)
    stop = threading.Event()
    results_relay = Relay(db, broker, routing_key=STUDY_RESULT)
    handler = JobHandler(
        db,
        LocalStorage(settings.storage_dir),
        engine,
        results_relay,
        policy=RetryPolicy(max_attempts=settings.job_max_attempts),
        worker_id=worker_id(),
        stop=stop,
        faults=Faults(),
    )
    return Worker(
        broker,
        handler,
        results_relay if relay else None,
        stop=stop,
        concurrency=settings.worker_concurrency,
    )


def run(settings: Settings) -> None:
    """Consume until SIGTERM/SIGINT: the first finishes the jobs in hand, a second exits."""
    if not settings.broker_url:
        raise SystemExit(
            "NODULEFLOW_BROKER_URL is empty: a standalone worker needs RabbitMQ "
            "(use `noduleflow serve` for the one-process form)"
        )
    from services.analysis.engine import ModelError

    heap.configure(settings)  # before any thread of this process starts
    db = Database(settings.database_url)
    if not wait_for_database(db):  # stopped while the database was away
        db.dispose()
        log.info("event=worker_exit")
        return
    broker = make_broker(settings.broker_url, settings.broker_prefix)
    try:
        worker = build_worker(settings, db, broker)
    except ModelError as exc:
        log.error("event=worker_model_unusable model_dir=%s error=%s", settings.model_dir, exc)
        broker.close()
        db.dispose()
        raise SystemExit(2) from None
    signals = {"count": 0}

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        signals["count"] += 1
        if signals["count"] == 1:
            log.info("event=worker_signal signal=%s action=drain", signal.Signals(signum).name)
            worker.stop(wait=False)
            return
        log.warning("event=worker_signal signal=%s action=exit", signal.Signals(signum).name)
        os._exit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    worker.start()
    try:
        while not worker.join(timeout=0.5):
            pass
    finally:
        worker.stop(wait=True, timeout=30)
        broker.close()
        db.dispose()
    log.info("event=worker_exit")
