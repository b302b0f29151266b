from __future__ import annotations

import threading
import time

import pika
import pytest

from services.core.broker import Delivered, RabbitBroker, Verdict
from services.core.messages import INFERENCE_QUEUE, STUDY_READY

pytestmark = pytest.mark.integration


def _consume(broker: RabbitBroker, verdicts: list[Verdict], seen: list[Delivered]) -> None:
    stop = threading.Event()

    def handler(d: Delivered) -> Verdict:
        seen.append(d)
        verdict = verdicts[min(len(seen) - 1, len(verdicts) - 1)]
        if len(seen) >= len(verdicts):
            stop.set()
        return verdict

    thread = threading.Thread(target=broker.consume, args=(INFERENCE_QUEUE, handler, stop))
    thread.start()
    thread.join(timeout=30)
    stop.set()
    thread.join(timeout=10)


def test_quorum_topology_and_confirmed_publish(
    rabbit_broker: RabbitBroker, rabbit_url: str
) -> None:
    rabbit_broker.publish(STUDY_READY, '{"x": 1}', "job-1")
    assert rabbit_broker.queue_depth(INFERENCE_QUEUE) == 1
    conn = pika.BlockingConnection(pika.URLParameters(rabbit_url))
    name = rabbit_broker.topology.queue(STUDY_READY)
    # Re-declaring with other arguments fails: proves the quorum type and DLX are set.
    with pytest.raises(pika.exceptions.ChannelClosedByBroker):
        conn.channel().queue_declare(name, durable=True)
    conn.close()


def test_consume_ack_retry_and_dead_letter(rabbit_broker: RabbitBroker) -> None:
    rabbit_broker.publish(STUDY_READY, "{}", "job-2")
    seen: list[Delivered] = []
    _consume(rabbit_broker, [Verdict.RETRY, Verdict.REJECT], seen)
    assert [d.message_id for d in seen] == ["job-2", "job-2"]
    assert seen[1].redelivered
    assert rabbit_broker.queue_depth(INFERENCE_QUEUE) == 0
    deadline = time.monotonic() + 10
    while rabbit_broker.queue_depth(INFERENCE_QUEUE + ".dead") == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert rabbit_broker.queue_depth(INFERENCE_QUEUE + ".dead") == 1
