"""Outgoing deliveries: one Delivery row per (job, kind, target), sent by a dispatcher.

Rows are committed together with the job's completion (a transactional outbox for files).
The dispatcher sends due rows through a sender per kind, records every attempt on the
row (attempts, last_status, last_error, next_attempt_at) and backs off exponentially
(pure ``DeliveryPolicy``) until the row is delivered, refused for good, or out of attempts.
With no PACS configured, the files in the outbox folder are the delivery (state
``written``). Failures are never silent: the row says why, and an error is logged.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.core import audit
from services.core.backoff import capped_exponential
from services.core.db import Database, Delivery
from services.core.errors import PermanentError

log = logging.getLogger(__name__)

PENDING, DELIVERED, FAILED, WRITTEN = "pending", "delivered", "failed", "written"
FHIR = "fhir"
HL7 = "hl7"  # ORU^R01 over MLLP; last_status is the ACK code (reporter/hl7)


@dataclass(frozen=True)
class SendOutcome:
    """What one send attempt achieved; ``retry`` matters only when not ``ok``."""

    ok: bool
    retry: bool
    status: str
    detail: str = ""


@dataclass(frozen=True)
class DeliveryPolicy:
    """When to retry a delivery: ``base * 2**(attempt-1)`` seconds, capped
    (:func:`services.core.backoff.capped_exponential`); pure."""

    base_seconds: float = 2.0
    cap_seconds: float = 600.0
    max_attempts: int = 8

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        return capped_exponential(attempt, first=self.base_seconds, cap=self.cap_seconds)

    def decide(self, attempt: int, outcome: SendOutcome) -> tuple[str, float | None]:
        """New state after ``attempt`` ended with ``outcome``, and the delay if pending."""
        if outcome.ok:
            return DELIVERED, None
        if outcome.retry and attempt < self.max_attempts:
            return PENDING, self.delay(attempt)
        return FAILED, None


@dataclass(frozen=True)
class DeliveryTask:
    """A snapshot of a due row, handed to a sender outside any database session."""

    id: int
    job_id: str
    kind: str
    target: str
    path: str
    sop_instance_uid: str
    attempts: int


Sender = Callable[[DeliveryTask], SendOutcome]


def is_dicom_kind(kind: str) -> bool:
    return kind in ("sr", "seg", "kos") or kind.startswith("key-image")


def upsert_delivery(
    session: Session,
    *,
    job_id: str,
    kind: str,
    target: str,
    path: Path | str = "",
    sop_instance_uid: str = "",
    written: bool = False,
) -> Delivery:
    """The row for (job, kind, target), created when absent; never duplicated."""
    row = session.scalar(
        select(Delivery).where(
            Delivery.job_id == job_id, Delivery.kind == kind, Delivery.target == target
        )
    )
    now = datetime.now(UTC)
    if row is None:
        row = Delivery(job_id=job_id, kind=kind, target=target[:255], next_attempt_at=now)
        session.add(row)
    row.path = str(path)[:255]
    row.sop_instance_uid = sop_instance_uid
    if written:
        row.state, row.delivered_at, row.last_status = WRITTEN, now, "written"
    return row


class Dispatcher:
    """Sends due deliveries one at a time; safe to run in several processes on PostgreSQL
    (rows claimed with SKIP LOCKED; a double send is the same SOP instance anyway)."""

    def __init__(
        self,
        db: Database,
        senders: dict[str, Sender],
        policy: DeliveryPolicy,
        *,
        poll_seconds: float = 1.0,
    ) -> None:
        self.db = db
        self.senders = senders
        self.policy = policy
        self.poll_seconds = poll_seconds
        self._wake = threading.Event()

    def wake(self) -> None:
        """Look for due rows now (called after new rows are committed)."""
        self._wake.set()

    def sender_for(self, kind: str) -> Sender | None:
        return self.senders.get("dicom" if is_dicom_kind(kind) else kind)

    def dispatch_once(self, now: datetime | None = None) -> int:
        """Send every row due at ``now``; returns how many attempts were made."""
        attempted = 0
        seen: set[int] = set()
        while True:
            with self.db.session() as session:
                query = (
                    select(Delivery)
                    .where(Delivery.state == PENDING)
                    .where(Delivery.next_attempt_at <= (now or datetime.now(UTC)))
                    .order_by(Delivery.next_attempt_at, Delivery.id)
                    .limit(1)
                )
                if seen:
                    query = query.where(Delivery.id.not_in(seen))
                if not self.db.is_sqlite:
                    query = query.with_for_update(skip_locked=True)
                row = session.scalar(query)
                if row is None:
                    return attempted
                seen.add(row.id)
                self._attempt(session, row)
                attempted += 1

    def _attempt(self, session: Session, row: Delivery) -> None:
        task = DeliveryTask(
            row.id, row.job_id, row.kind, row.target, row.path, row.sop_instance_uid, row.attempts
        )
        sender = self.sender_for(row.kind)
        if sender is None:
            outcome = SendOutcome(False, False, "no-sender", f"no sender for kind {row.kind!r}")
        else:
            try:
                outcome = sender(task)
            except Exception as exc:  # a sender bug must not kill the loop
                log.exception("event=delivery_sender_crashed id=%s kind=%s", row.id, row.kind)
                retry = not isinstance(exc, PermanentError)  # by type: bugs get retried
                outcome = SendOutcome(False, retry, "error", f"{exc.__class__.__name__}: {exc}")
        self.record(session, row, outcome)

    def record(self, session: Session, row: Delivery, outcome: SendOutcome) -> None:
        """Apply ``outcome`` of one attempt to ``row`` (state, counters, audit, logs)."""
        row.attempts += 1
        row.last_status = outcome.status[:64]
        state, delay = self.policy.decide(row.attempts, outcome)
        row.state = state
        if state == DELIVERED:
            row.delivered_at = datetime.now(UTC)
            row.last_error = "" if outcome.status == "0x0000" else outcome.detail[:2000]
            _audit_transfer(session, row)
            log.info(
                "event=delivered id=%s job=%s kind=%s status=%s attempts=%s",
                row.id,
                row.job_id,
                row.kind,
                outcome.status,
                row.attempts,
            )
        elif state == PENDING:
            row.last_error = outcome.detail[:2000]
            row.next_attempt_at = datetime.now(UTC) + timedelta(seconds=delay or 0)
            log.warning(
                "event=delivery_retry id=%s job=%s kind=%s status=%s attempt=%s "
                "retry_in=%.1f reason=%s",
                row.id,
                row.job_id,
                row.kind,
                outcome.status,
                row.attempts,
                delay or 0,
                outcome.detail,
            )
        else:
            why = "refused" if not outcome.retry else f"gave up after {row.attempts} attempts"
            row.last_error = f"{why}: {outcome.detail}"[:2000]
            _audit_transfer(session, row, failure=row.last_error)
            log.error(
                "event=delivery_failed id=%s job=%s kind=%s status=%s attempts=%s reason=%s",
                row.id,
                row.job_id,
                row.kind,
                outcome.status,
                row.attempts,
                row.last_error,
            )

    def run(self, stop: threading.Event) -> None:
        """Loop until ``stop``: send what is due, then sleep until woken or polled."""
        while not stop.is_set():
            try:
                self.dispatch_once()
            except Exception:
                log.exception("event=dispatcher_error")
            self._wake.wait(self.poll_seconds)
            self._wake.clear()


def requeue(session: Session, delivery_id: int) -> bool:
    """Manual retry of a failed delivery (operator action): pending now, attempts reset."""
    row = session.get(Delivery, delivery_id)
    if row is None or row.state not in (FAILED, PENDING):
        return False
    row.state, row.attempts = PENDING, 0
    row.next_attempt_at = datetime.now(UTC)
    return True


def pending(db: Database, job_ids: Iterable[str] | None = None) -> list[Delivery]:
    """Rows not yet delivered or failed (for tests and health checks)."""
    with db.session() as session:
        query = select(Delivery).where(Delivery.state == PENDING)
        if job_ids is not None:
            query = query.where(Delivery.job_id.in_(list(job_ids)))
        return list(session.scalars(query))


def _audit_transfer(session: Session, row: Delivery, *, failure: str = "") -> None:
    """The Instances Transferred audit event of a delivery that ended: delivered, or (with
    ``failure``, outcome 8) refused or given up."""
    audit.record(
        session,
        audit.INSTANCES_TRANSFERRED,
        actor="noduleflow-reporter",
        source=row.kind,
        action="R",
        object_type="sop-instance",
        object_id=row.sop_instance_uid or row.job_id,
        outcome="8" if failure else "0",
        detail=f"to {row.target}: {failure}" if failure else f"to {row.target}",
    )
