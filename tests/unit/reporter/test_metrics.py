"""The metrics the alert rules use (deploy/prometheus): queue age, dead letters, finished
jobs, receiver refusals and storage, computed at scrape time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fastapi.testclient import TestClient

from services.core import audit
from services.core.broker import Delivered, InProcessBroker
from services.core.db import Database
from services.core.settings import Settings
from services.reporter.api.app import create_app
from services.reporter.api.metrics import refusal_kind
from tests.factories.api import make_job, make_study


def test_refusal_kinds_come_from_receiver_audit_rows_only() -> None:
    assert refusal_kind(audit.SECURITY_ALERT, "", "association rejected: aet") == "association"
    assert refusal_kind(audit.SECURITY_ALERT, "instance", "refused: bad uid") == "instance"
    assert refusal_kind(audit.INSTANCES_TRANSFERRED, "study", "failed=3") == "transfer"
    # the API's scope refusals and the reporter's failed deliveries are not the receiver's
    assert refusal_kind(audit.SECURITY_ALERT, "", "insufficient scope path=/x") is None
    assert refusal_kind(audit.INSTANCES_TRANSFERRED, "sop-instance", "to PACS: 0xA700") is None


def _value(text: str, sample: str) -> float:
    line = next(line for line in text.splitlines() if line.startswith(sample + " "))
    return float(line.split()[-1])


def test_alerting_metrics_are_exported(
    db: Database, settings: Settings, inprocess_broker: InProcessBroker
) -> None:
    settings.storage_dir.mkdir(parents=True)
    now = datetime.now(UTC)
    with db.session() as session:
        waiting = make_study(session, received_at=now - timedelta(minutes=20))
        make_job(session, waiting, state="queued")
        make_job(session, make_study(session), state="failed")
        make_job(session, make_study(session), state="done")
        for detail, kind in (
            ("association rejected: calling AE not allowed", audit.SECURITY_ALERT),
            ("refused: sop-instance-uid-conflict", audit.SECURITY_ALERT),
            ("insufficient scope path=/fhir", audit.SECURITY_ALERT),
        ):
            audit.record(session, kind, outcome="4", detail=detail)
        audit.record(
            session, audit.INSTANCES_TRANSFERRED, object_type="study", outcome="4", detail="x"
        )
        audit.record(session, audit.INSTANCES_TRANSFERRED, object_type="study", outcome="0")
    inprocess_broker.dead[inprocess_broker.topology.queue_for("noduleflow.reporting")].append(
        Delivered(b"{}", "m1", "study.result", False, 0)
    )
    with TestClient(create_app(settings, db, inprocess_broker), client=("127.0.0.1", 1)) as c:
        text = c.get("/metrics").text
    assert 19 * 60 < _value(text, "noduleflow_oldest_queued_job_seconds") < 22 * 60
    assert _value(text, 'noduleflow_jobs_finished_total{state="failed"}') == 1
    assert _value(text, 'noduleflow_jobs_finished_total{state="done"}') == 1
    assert _value(text, 'noduleflow_receiver_refusals{kind="association"}') == 1
    assert _value(text, 'noduleflow_receiver_refusals{kind="instance"}') == 1
    assert _value(text, 'noduleflow_receiver_refusals{kind="transfer"}') == 1
    assert _value(text, 'noduleflow_dead_letters{queue="noduleflow.reporting"}') == 1
    assert _value(text, 'noduleflow_dead_letters{queue="noduleflow.inference"}') == 0
    free = _value(text, "noduleflow_storage_free_bytes")
    assert 0 < free <= _value(text, "noduleflow_storage_capacity_bytes")
