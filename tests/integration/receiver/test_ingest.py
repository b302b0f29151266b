"""A 300-slice 512×512 CT study sent by DCMTK storescu: stored completely, one StudyReady."""

from __future__ import annotations

import threading
from pathlib import Path

import pika
import pytest

from services.core.broker import Delivered, InProcessBroker, RabbitBroker, Verdict
from services.core.db import Database
from services.core.messages import INFERENCE_QUEUE, STUDY_READY, StudyReady
from services.core.outbox import Relay
from tests.integration.receiver.harness import (
    counts,
    receiver_settings,
    running_receiver,
    storescu,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _check_message(body: bytes, study: str, series: str) -> StudyReady:
    message = StudyReady.model_validate_json(body)
    assert message.study_instance_uid == study
    assert [(s.uid, s.instances) for s in message.series] == [(series, 300)]
    return message


def _send_and_complete(db: Database, port: int, paths: list[Path], storage: Path) -> None:
    result = storescu(port, paths)
    assert result.returncode == 0, result.stderr[-2000:]
    assert wait_for(lambda: counts(db)[1] == 1, timeout=30)
    assert counts(db) == (300, 1, 1)
    stored = [p for p in storage.rglob("*.dcm") if ".tmp" not in p.parts]
    assert len(stored) == 300
    assert wait_for(lambda: Relay(db, None).pending() == 0, timeout=30)  # type: ignore[arg-type]


def test_study_to_rabbitmq(
    ct_study_300: tuple[str, str, list[Path]],
    rabbit_broker: RabbitBroker,
    rabbit_url: str,
    tmp_path: Path,
    sqlite_url: str,
) -> None:
    study, series, paths = ct_study_300
    settings = receiver_settings(tmp_path, sqlite_url, study_idle_seconds=120)  # by release
    db = Database(sqlite_url)
    db.upgrade()
    with running_receiver(settings, db, rabbit_broker) as receiver:
        _send_and_complete(db, receiver.port, paths, settings.storage_dir)
    queue = rabbit_broker.topology.queue(STUDY_READY)
    conn = pika.BlockingConnection(pika.URLParameters(rabbit_url))
    try:
        channel = conn.channel()
        method, props, body = channel.basic_get(queue, auto_ack=True)
        assert method is not None, "no StudyReady in the inference queue"
        message = _check_message(body, study, series)
        assert props.message_id == message.job_id
        assert channel.basic_get(queue, auto_ack=True)[0] is None  # exactly one
    finally:
        conn.close()
    db.dispose()


def test_study_in_process_broker(
    ct_study_300: tuple[str, str, list[Path]],
    inprocess_broker: InProcessBroker,
    tmp_path: Path,
    sqlite_url: str,
) -> None:
    study, series, paths = ct_study_300
    settings = receiver_settings(tmp_path, sqlite_url, study_idle_seconds=120)  # by release
    db = Database(sqlite_url)
    db.upgrade()
    with running_receiver(settings, db, inprocess_broker) as receiver:
        _send_and_complete(db, receiver.port, paths, settings.storage_dir)
    assert inprocess_broker.queue_depth(INFERENCE_QUEUE) == 1
    seen: list[Delivered] = []
    stop = threading.Event()

    def handler(delivered: Delivered) -> Verdict:
        seen.append(delivered)
        stop.set()
        return Verdict.ACK

    inprocess_broker.consume(INFERENCE_QUEUE, handler, stop)
    [delivered] = seen
    _check_message(delivered.body, study, series)
    db.dispose()
