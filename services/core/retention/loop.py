"""Retention inside the process that owns storage (the receiver): the policy from settings,
and a thread that purges every ``RETENTION_INTERVAL_SECONDS``."""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from services.core.backoff import Backoff
from services.core.db import Database
from services.core.retention.policy import RetentionPolicy, Watermark
from services.core.retention.purge import Purger
from services.core.settings import Settings
from services.core.threads import Threaded, ThreadGroup

log = logging.getLogger(__name__)


def policy_from_settings(settings: Settings) -> RetentionPolicy:
    """The retention policy the settings describe; ``ValueError`` naming the setting when
    the marks do not fit together."""
    days = settings.retention_max_age_days
    try:
        return RetentionPolicy(
            max_age=timedelta(days=days) if days > 0 else None,
            high_water=Watermark.parse(settings.retention_high_water),
            low_water=Watermark.parse(settings.retention_low_water),
        )
    except ValueError as exc:
        raise ValueError(
            f"NODULEFLOW_RETENTION_HIGH_WATER / NODULEFLOW_RETENTION_LOW_WATER: {exc}"
        ) from None


def make_purger(settings: Settings, db: Database) -> Purger:
    return Purger(db, storage_dir=settings.storage_dir, outbox_dir=settings.outbox_dir)


class RetentionLoop(Threaded):
    """Runs :meth:`Purger.run_once` every ``interval`` seconds on a thread of its own;
    errors (database away, a full disk) are logged and retried with backoff."""

    def __init__(self, purger: Purger, policy: RetentionPolicy, *, interval: float) -> None:
        self.purger = purger
        self.policy = policy
        self.interval = interval
        self.group = ThreadGroup()

    def run(self, stop: threading.Event) -> None:
        backoff = Backoff(first=min(self.interval, 5.0), cap=self.interval)
        while not stop.is_set():
            try:
                self.purger.run_once(self.policy, stop)
                backoff.reset()
                delay = self.interval
            except Exception:
                log.exception("event=retention_error")
                delay = backoff.failed()
            stop.wait(delay)

    def start(self) -> None:
        self.group.restart()
        self.group.spawn("noduleflow-retention", self.run, self.stop_event)

    def stop(self) -> None:
        self.group.stop(timeout=30)


def start_retention(settings: Settings, db: Database) -> RetentionLoop | None:
    """Start the loop when an age or a high-water mark is set; None when retention is off."""
    policy = policy_from_settings(settings)
    if not policy.enabled:
        log.info("event=retention_off")
        return None
    loop = RetentionLoop(
        make_purger(settings, db), policy, interval=settings.retention_interval_seconds
    )
    loop.start()
    log.info(
        "event=retention_started max_age_days=%s high_water=%s target=%s interval=%s",
        settings.retention_max_age_days or "-",
        policy.high_water or "-",
        policy.target or "-",
        settings.retention_interval_seconds,
    )
    return loop
