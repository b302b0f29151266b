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


def _worker(
    db: Database,
    storage: LocalStorage,
    broker: InProcessBroker,
    analyze: FakeAnalyze,
    *,
    concurrency: int = 1,
) -> tuple[Worker, Relay]:
    relay = Relay(db, broker, routing_key=STUDY_RESULT)
    stop = threading.Event()
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
    return Worker(broker, handler, relay, stop=stop, concurrency=concurrency), relay


def test_stop_finishes_the_current_job_and_takes_no_more(
    db: Database, tmp_path: Path, inprocess_broker: InProcessBroker
) -> None:
    storage = LocalStorage(tmp_path / "storage")
    first = seed_job(db, storage, tmp_path / "a")
    second = seed_job(db, storage, tmp_path / "b")
    analyze = SlowAnalyze()
    worker, relay = _worker(db, storage, inprocess_broker, analyze)
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


class OverlapAnalyze(FakeAnalyze):
    """Records how many analyses ran at once; each waits up to ``hold`` s for company."""

    def __init__(self, hold: float = 1.0) -> None:
        super().__init__(FakeResult([]))
        self.hold = hold
        self.lock = threading.Lock()
        self.now = 0
        self.most = 0
        self.company = threading.Event()

    def __call__(self, paths, engine, *, progress=None):  # type: ignore[no-untyped-def]
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
            if self.now > 1:
                self.company.set()
        try:
            self.company.wait(self.hold)
            return super().__call__(paths, engine, progress=progress)
        finally:
            with self.lock:
                self.now -= 1


def _run_jobs(
    db: Database,
    tmp_path: Path,
    broker: InProcessBroker,
    *,
    concurrency: int,
    tried_before: int = 0,
) -> OverlapAnalyze:
    """Two jobs through a worker; the first ``tried_before`` of them had an attempt already."""
    storage = LocalStorage(tmp_path / "storage")
    seeded = [seed_job(db, storage, tmp_path / f"s{n}") for n in range(2)]
    for job in seeded[:tried_before]:
        with db.session() as session:
            row = session.get(Job, job.job_id)
            assert row is not None
            row.attempts = 1  # as after a crash: claimed once, never finished
    analyze = OverlapAnalyze()
    worker, _ = _worker(db, storage, broker, analyze, concurrency=concurrency)
    for job in seeded:
        broker.publish(STUDY_READY, job.message.to_json(), job.job_id)
    worker.start()
    deadline = time.monotonic() + 20
    while any(_state(db, j.job_id) != "reporting" for j in seeded):
        assert time.monotonic() < deadline, [_state(db, j.job_id) for j in seeded]
        time.sleep(0.05)
    worker.stop(wait=True, timeout=20)
    return analyze


def test_two_consumers_run_two_jobs_at_once(
    db: Database, tmp_path: Path, inprocess_broker: InProcessBroker
) -> None:
    assert _run_jobs(db, tmp_path, inprocess_broker, concurrency=2).most == 2


def test_one_consumer_runs_one_job_at_a_time(
    db: Database, tmp_path: Path, inprocess_broker: InProcessBroker
) -> None:
    assert _run_jobs(db, tmp_path, inprocess_broker, concurrency=1).most == 1


def test_a_job_tried_before_runs_alone(
    db: Database, tmp_path: Path, inprocess_broker: InProcessBroker
) -> None:
    analyze = _run_jobs(db, tmp_path, inprocess_broker, concurrency=2, tried_before=1)
    assert analyze.most == 1
    assert analyze.calls == 2
