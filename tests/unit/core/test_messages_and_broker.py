from __future__ import annotations

import threading

import pytest
from pydantic import ValidationError

from services.core.broker import Delivered, InProcessBroker, Verdict
from services.core.messages import (
    INFERENCE_QUEUE,
    STUDY_READY,
    SeriesRef,
    StudyReady,
    StudyResult,
)
from services.core.outbox import Relay, enqueue


def test_messages_round_trip_with_schema_field() -> None:
    msg = StudyReady(
        job_id="j1", study_instance_uid="1.2", series=[SeriesRef(uid="1.3", instances=4)]
    )
    data = msg.to_json()
    assert '"schema":1' in data
    assert StudyReady.model_validate_json(data) == msg
    with pytest.raises(ValidationError):
        StudyResult.model_validate_json(
            '{"schema": 2, "job_id": "j", "study_instance_uid": "1", "status": "done"}'
        )


def test_inprocess_broker_retries_then_dead_letters(inprocess_broker: InProcessBroker) -> None:
    seen: list[Delivered] = []
    stop = threading.Event()

    def handler(d: Delivered) -> Verdict:
        seen.append(d)
        if len(seen) >= inprocess_broker.topology.delivery_limit:
            stop.set()
        return Verdict.RETRY

    inprocess_broker.publish(STUDY_READY, "{}", "m1")
    inprocess_broker.consume(INFERENCE_QUEUE, handler, stop)
    assert len(seen) == inprocess_broker.topology.delivery_limit
    assert seen[1].redelivered
    assert len(inprocess_broker.dead[INFERENCE_QUEUE]) == 1


def test_outbox_relay_publishes_once(db, inprocess_broker: InProcessBroker) -> None:
    msg = StudyReady(job_id="j1", study_instance_uid="1.2", series=[])
    with db.session() as session:
        enqueue(session, STUDY_READY, msg)
    relay = Relay(db, inprocess_broker)
    assert relay.pending() == 1
    assert relay.relay_once() == 1
    assert relay.relay_once() == 0
    assert inprocess_broker.queue_depth(INFERENCE_QUEUE) == 1
