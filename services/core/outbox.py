"""Transactional outbox: a message is committed with its state change, then relayed."""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.core.backoff import Backoff
from services.core.broker import Broker, PublishError
from services.core.db import Database, OutboxMessage
from services.core.messages import StudyReady, StudyResult

log = logging.getLogger(__name__)

# SQLite has no SKIP LOCKED: relays of one process (``serve`` runs several) take turns, so
# a row is never published by two of them at once.
_SQLITE_RELAY_LOCK = threading.Lock()


def enqueue(session: Session, routing_key: str, message: StudyReady | StudyResult) -> None:
    """Add ``message`` to the outbox inside the caller's transaction."""
    session.add(
        OutboxMessage(message_id=message.job_id, routing_key=routing_key, body=message.to_json())
    )


class Relay:
    """Publishes unpublished outbox rows in order, with confirms; safe to run in several
    processes (PostgreSQL rows are claimed with SKIP LOCKED). A message may be published
    twice if a process dies between confirm and commit; consumers are idempotent by job id."""

    def __init__(
        self, db: Database, broker: Broker, *, batch: int = 100, routing_key: str | None = None
    ) -> None:
        self.db = db
        self.broker = broker
        self.batch = batch
        self.routing_key = routing_key  # relay only this kind of message when set
        self.wake = threading.Event()

    def relay_once(self, *, message_id: str | None = None) -> int:
        """Publish what is pending (only ``message_id`` when given); returns how many."""
        if self.db.is_sqlite:
            with _SQLITE_RELAY_LOCK:
                return self._relay_once(message_id)
        return self._relay_once(message_id)

    def _relay_once(self, message_id: str | None) -> int:
        published = 0
        with self.db.session() as session:
            query = (
                select(OutboxMessage)
                .where(OutboxMessage.published_at.is_(None))
                .order_by(OutboxMessage.id)
                .limit(self.batch)
            )
            if self.routing_key is not None:
                query = query.where(OutboxMessage.routing_key == self.routing_key)
            if message_id is not None:
                query = query.where(OutboxMessage.message_id == message_id)
            if not self.db.is_sqlite:
                query = query.with_for_update(skip_locked=True)
            for row in session.scalars(query):
                try:
                    self.broker.publish(row.routing_key, row.body, row.message_id)
                except PublishError as exc:
                    row.attempts += 1
                    row.last_error = str(exc)[:500]
                    log.warning("event=outbox_publish_failed id=%s error=%s", row.id, exc)
                    break
                row.published_at = datetime.now(UTC)
                published += 1
        return published

    def run(self, stop: threading.Event, interval: float = 0.5) -> None:
        backoff = Backoff(first=2 * interval, cap=15.0)  # after an error: doubling, to 15 s
        while not stop.is_set():
            try:
                self.relay_once()
                backoff.reset()
                delay = interval
            except Exception:
                log.exception("event=outbox_relay_error")
                delay = backoff.failed()
            self.wake.wait(delay)
            self.wake.clear()

    def pending(self) -> int:
        with self.db.session() as session:
            rows = session.scalars(
                select(OutboxMessage.id).where(OutboxMessage.published_at.is_(None))
            )
            return len(list(rows))
