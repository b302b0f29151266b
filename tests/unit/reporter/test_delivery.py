"""Delivery outbox: retry policy (pure) and the dispatcher's bookkeeping on real rows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from services.core.db import AuditEvent, Database, Delivery
from services.reporter.delivery.dispatch import (
    DELIVERED,
    FAILED,
    PENDING,
    WRITTEN,
    DeliveryPolicy,
    DeliveryTask,
    Dispatcher,
    SendOutcome,
    requeue,
    upsert_delivery,
)
from tests.factories.reporting import seed_bare_job

OK = SendOutcome(True, False, "0x0000", "stored")
BUSY = SendOutcome(False, True, "0xA700", "refused: out of resources")
BROKEN = SendOutcome(False, False, "0xC000", "failed: cannot understand")


def test_backoff_doubles_and_is_capped() -> None:
    policy = DeliveryPolicy(base_seconds=2, cap_seconds=30, max_attempts=10)
    assert [policy.delay(n) for n in range(1, 7)] == [2, 4, 8, 16, 30, 30]


@pytest.mark.parametrize(
    ("attempt", "outcome", "state"),
    [
        (1, OK, DELIVERED),
        (1, BUSY, PENDING),
        (2, BUSY, PENDING),
        (3, BUSY, FAILED),  # out of attempts
        (1, BROKEN, FAILED),  # permanent: no blind retry
    ],
)
def test_policy_decides_state(attempt: int, outcome: SendOutcome, state: str) -> None:
    decided, delay = DeliveryPolicy(base_seconds=1, max_attempts=3).decide(attempt, outcome)
    assert decided == state
    assert (delay is not None) == (state == PENDING)


class ScriptedSender:
    """Answers with the given outcomes in turn and records what it was asked to send."""

    def __init__(self, *outcomes: SendOutcome) -> None:
        self.outcomes = list(outcomes)
        self.calls: list[DeliveryTask] = []

    def __call__(self, task: DeliveryTask) -> SendOutcome:
        self.calls.append(task)
        return self.outcomes.pop(0)


def add_row(db: Database, job_id: str, kind: str = "sr", target: str = "PACS@h:1") -> int:
    with db.session() as session:
        row = upsert_delivery(
            session,
            job_id=job_id,
            kind=kind,
            target=target,
            path="/x/sr.dcm",
            sop_instance_uid="1.2.3",
        )
        session.flush()
        return row.id


def row_of(db: Database, row_id: int) -> Delivery:
    with db.session() as session:
        row = session.get(Delivery, row_id)
        assert row is not None
        return row


def later(seconds: float) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)


def test_retry_then_delivered(db: Database) -> None:
    job = seed_bare_job(db)
    row_id = add_row(db, job)
    sender = ScriptedSender(BUSY, OK)
    dispatcher = Dispatcher(db, {"dicom": sender}, DeliveryPolicy(base_seconds=60, max_attempts=5))
    assert dispatcher.dispatch_once() == 1
    row = row_of(db, row_id)
    assert (row.state, row.attempts, row.last_status) == (PENDING, 1, "0xA700")
    assert "out of resources" in row.last_error
    assert dispatcher.dispatch_once() == 0  # not due yet: backing off
    assert dispatcher.dispatch_once(now=later(61)) == 1
    row = row_of(db, row_id)
    assert (row.state, row.attempts, row.last_error) == (DELIVERED, 2, "")
    assert row.delivered_at is not None
    assert sender.calls[0].path == "/x/sr.dcm"


def test_permanent_failure_is_not_retried_and_is_audited(db: Database) -> None:
    job = seed_bare_job(db)
    row_id = add_row(db, job)
    sender = ScriptedSender(BROKEN)
    dispatcher = Dispatcher(db, {"dicom": sender}, DeliveryPolicy(base_seconds=0, max_attempts=5))
    dispatcher.dispatch_once()
    assert dispatcher.dispatch_once(now=later(3600)) == 0
    row = row_of(db, row_id)
    assert (row.state, row.attempts) == (FAILED, 1)
    assert row.last_error.startswith("refused: failed: cannot understand")
    with db.session() as session:
        audits = session.scalars(select(AuditEvent).where(AuditEvent.outcome == "8")).all()
        assert len(audits) == 1 and audits[0].event == "110104"


def test_gives_up_after_max_attempts(db: Database) -> None:
    job = seed_bare_job(db)
    row_id = add_row(db, job)
    sender = ScriptedSender(BUSY, BUSY, BUSY)
    dispatcher = Dispatcher(db, {"dicom": sender}, DeliveryPolicy(base_seconds=0, max_attempts=3))
    for _ in range(5):
        dispatcher.dispatch_once(now=later(1))
    row = row_of(db, row_id)
    assert (row.state, row.attempts) == (FAILED, 3)
    assert row.last_error.startswith("gave up after 3 attempts")
    assert len(sender.calls) == 3


def test_sender_per_kind_and_crash_is_contained(db: Database) -> None:
    job = seed_bare_job(db)
    dicom_id = add_row(db, job, "key-image-1")
    fhir_id = add_row(db, job, "fhir", "http://fhir.example/fhir")
    other_id = add_row(db, job, "mystery")

    def crash(task: DeliveryTask) -> SendOutcome:
        raise RuntimeError("boom")

    dicom = ScriptedSender(OK)
    dispatcher = Dispatcher(db, {"dicom": dicom, "fhir": crash}, DeliveryPolicy(max_attempts=3))
    assert dispatcher.dispatch_once() == 3
    assert row_of(db, dicom_id).state == DELIVERED
    fhir = row_of(db, fhir_id)
    assert (fhir.state, fhir.last_status) == (PENDING, "error")
    assert "boom" in fhir.last_error
    assert row_of(db, other_id).state == FAILED


def test_upsert_never_duplicates_and_written_rows_are_not_sent(db: Database) -> None:
    job = seed_bare_job(db)
    with db.session() as session:
        for _ in range(3):
            upsert_delivery(
                session,
                job_id=job,
                kind="sr",
                target="/outbox/x/v1",
                path="/outbox/x/v1/sr.dcm",
                written=True,
            )
            session.flush()
    with db.session() as session:
        rows = session.scalars(select(Delivery)).all()
        assert len(rows) == 1 and rows[0].state == WRITTEN
    sender = ScriptedSender()
    assert Dispatcher(db, {"dicom": sender}, DeliveryPolicy()).dispatch_once() == 0


def test_failed_row_can_be_requeued_by_hand(db: Database) -> None:
    job = seed_bare_job(db)
    row_id = add_row(db, job)
    dispatcher = Dispatcher(db, {"dicom": ScriptedSender(BROKEN, OK)}, DeliveryPolicy())
    dispatcher.dispatch_once()
    assert row_of(db, row_id).state == FAILED
    with db.session() as session:
        assert requeue(session, row_id)
    dispatcher.dispatch_once()
    row = row_of(db, row_id)
    assert (row.state, row.attempts) == (DELIVERED, 1)
    with db.session() as session:
        assert not requeue(session, row_id)  # delivered rows stay delivered
