from __future__ import annotations

import threading
import time
from pathlib import Path

from services.core.broker import InProcessBroker
from services.core.db import Database, Job
from services.core.messages import INFERENCE_QUEUE, STUDY_READY, STUDY_RESULT
from services.core.outbox import Relay
from services.core.storage import LocalStorage
from services.worker.consumer import Worker
from services.worker.faults import Faults
from services.worker.jobs import JobHandler
from services.worker.policy import RetryPolicy
from tests.factories.worker import FakeAnalyze, FakeResult, seed_job


class SlowAnalyze(FakeAnalyze):
    def __init__(self) -> None:
        super().__init__(FakeResult([]))
        self.started = threading.Event()

    def __call__(self, paths, engine, *, progress=None):  # type: ignore[no-untyped-def]
        self.started.set()
        time.sleep(0.5)
        return super().__call__(paths, engine, progress=progress)


def _state(db: Database, job_id: str) -> str:
    with db.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job.state


def test_stop_finishes_the_current_job_and_takes_no_more(
    db: Database, tmp_path: Path, inprocess_broker: InProcessBroker
) -> None:
    storage = LocalStorage(tmp_path / "storage")
    first = seed_job(db, storage, tmp_path / "a")
    second = seed_job(db, storage, tmp_path / "b")
    stop = threading.Event()
    analyze = SlowAnalyze()
    relay = Relay(db, inprocess_broker, routing_key=STUDY_RESULT)
    handler = JobHandler(
        db,
        storage,
        object(),
        relay,
        policy=RetryPolicy(),
        worker_id="t",
        stop=stop,
        analyze=analyze,
        faults=Faults(""),
    )
    worker = Worker(inprocess_broker, handler, relay, stop=stop)
    for seeded in (first, second):
        inprocess_broker.publish(STUDY_READY, seeded.message.to_json(), seeded.job_id)
    worker.start()
    assert analyze.started.wait(10)
    worker.stop(wait=True, timeout=20)
    assert not worker.alive
    assert _state(db, first.job_id) == "reporting"
    assert _state(db, second.job_id) == "queued"
    assert inprocess_broker.queue_depth(INFERENCE_QUEUE) == 1
    assert relay.pending() == 0
