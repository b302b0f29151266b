"""RabbitMQ stopped while studies complete (R3): the receiver keeps accepting, the outbox
keeps every StudyReady, and all are published once the broker is back."""

from __future__ import annotations

import time
from pathlib import Path

import pika
import pytest
from sqlalchemy import select

from services.core.broker import RabbitBroker
from services.core.db import Database, Job, OutboxMessage
from services.core.messages import STUDY_READY, StudyReady
from tests.factories.dicom import write_ct_series
from tests.integration.receiver.harness import (
    receiver_settings,
    running_receiver,
    storescu,
    wait_for,
)
from tests.services import port_open, rabbitmqctl

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _outbox(db: Database) -> tuple[int, int]:
    """(outbox rows, unpublished rows)."""
    with db.session() as session:
        rows = session.scalars(select(OutboxMessage)).all()
        return len(rows), sum(1 for r in rows if r.published_at is None)


def test_broker_outage_loses_nothing(
    tmp_path: Path, db: Database, sqlite_url: str, rabbit_broker: RabbitBroker, rabbit_url: str
) -> None:
    studies = [write_ct_series(tmp_path / f"s{k}", 4) for k in range(3)]
    settings = receiver_settings(tmp_path, sqlite_url, study_idle_seconds=5.0)
    with running_receiver(settings, db, rabbit_broker) as receiver:
        stopped = rabbitmqctl("stop_app")
        assert stopped.returncode == 0, stopped.stderr
        outage_started = time.monotonic()
        try:
            for _, _, paths in studies:
                result = storescu(receiver.port, paths)
                assert result.returncode == 0, result.stderr[-2000:]  # still accepting
            assert wait_for(lambda: _outbox(db) == (3, 3), timeout=10)
        finally:
            started = rabbitmqctl("start_app")
            outage = time.monotonic() - outage_started
        assert started.returncode == 0, started.stderr
        assert outage < 30
        assert wait_for(lambda: port_open("127.0.0.1", 5672), timeout=30)
        assert wait_for(lambda: _outbox(db)[1] == 0, timeout=60)
    with db.session() as session:
        job_ids = sorted(j.id for j in session.scalars(select(Job)))
    queue = rabbit_broker.topology.queue(STUDY_READY)
    conn = pika.BlockingConnection(pika.URLParameters(rabbit_url))
    try:
        channel = conn.channel()
        received = []
        while True:
            method, _, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                break
            received.append(StudyReady.model_validate_json(body))
    finally:
        conn.close()
    # At-least-once: a message confirmed just before the outage may come twice; by job id
    # (what consumers key on) every study is there exactly once.
    assert sorted({m.job_id for m in received}) == job_ids
    assert {m.study_instance_uid for m in received} == {s for s, _, _ in studies}
    assert all(m.series[0].instances == 4 for m in received)
