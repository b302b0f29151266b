from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import select

from services.core.broker import Delivered, InProcessBroker, Verdict
from services.core.contracts import JobDetails, ModelIdentity
from services.core.db import Database, Finding, Job, JobState, OutboxMessage, Study
from services.core.masks import unpack_mask
from services.core.messages import REPORTING_QUEUE, STUDY_READY, STUDY_RESULT, StudyResult
from services.core.outbox import Relay
from services.core.storage import LocalStorage
from services.worker import store
from services.worker.faults import Faults
from services.worker.jobs import JobHandler
from services.worker.policy import RetryPolicy, StorageUnavailable, StudyUnusable
from tests.factories.worker import FakeAnalyze, FakeFinding, FakeResult, SeededJob, seed_job
from tests.services import free_port


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "storage")


@pytest.fixture
def seeded(db: Database, storage: LocalStorage, tmp_path: Path) -> SeededJob:
    return seed_job(db, storage, tmp_path)


def details(version: str) -> JobDetails:
    return JobDetails(model=ModelIdentity(version=version))


def make_handler(
    db: Database,
    storage: LocalStorage,
    broker: InProcessBroker,
    analyze: FakeAnalyze,
    *,
    faults: str = "",
    max_attempts: int = 3,
) -> JobHandler:
    return JobHandler(
        db,
        storage,
        engine=object(),
        relay=Relay(db, broker, routing_key=STUDY_RESULT),
        policy=RetryPolicy(max_attempts=max_attempts, base_delay=0.01, outage_patience=0.1),
        worker_id="test:1",
        analyze=analyze,
        faults=Faults(faults),
        progress_interval=0.0,
    )


def job_of(db: Database, job_id: str) -> Job:
    with db.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        session.expunge(job)
        return job


def results_published(broker: InProcessBroker) -> list[StudyResult]:
    queue = broker._queues[broker.topology.queue_for(REPORTING_QUEUE)]
    return [StudyResult.model_validate_json(item.body) for item in list(queue.queue)]


def test_happy_path_commits_everything_then_publishes(
    db: Database, storage: LocalStorage, seeded: SeededJob, inprocess_broker: InProcessBroker
) -> None:
    analyze = FakeAnalyze()
    handler = make_handler(db, storage, inprocess_broker, analyze)
    assert handler(seeded.delivered()) is Verdict.ACK
    job = job_of(db, seeded.job_id)
    assert job.state == JobState.REPORTING.value
    assert (job.attempts, job.progress, job.findings_count) == (1, 1.0, 2)
    assert job.model_version == "0.1"
    assert job.details["provider"] == "CPUExecutionProvider"
    assert job.details["model"] == {"name": "nodule-seg", "version": "0.1"}
    assert job.details["sop_uids"] == ["1.2.3.1", "1.2.3.2"]
    assert job.details["geometry"]["spacing"] == [1.0, 0.7, 0.7]
    assert job.details["geometry"]["slice_dir"] == [0.0, 0.0, -1.0]
    assert job.details["series_reason"] == "only axial CT series"
    assert {
        "read",
        "assemble",
        "crop",
        "inference",
        "postprocess",
        "load",
        "total",
        "queued",
    } <= set(job.timings)
    with db.session() as session:
        findings = list(session.scalars(select(Finding).order_by(Finding.index)))
        assert [f.confidence for f in findings] == [0.9, 0.5]
        assert findings[0].mask_bbox == {"bbox": [1, 2, 3, 3, 5, 7], "shape": [2, 3, 4]}
        assert unpack_mask(findings[0].mask, (2, 3, 4)).all()
        assert findings[0].source_sop_uids == {"uids": ["1.2.3.1", "1.2.3.2"]}
        assert findings[0].center_mm == [1.0, 2.0, 3.0]
    published = results_published(inprocess_broker)
    assert [(r.job_id, r.status, r.findings) for r in published] == [(seeded.job_id, "done", 2)]


def test_redelivery_of_a_committed_job_is_not_recomputed(
    db: Database, storage: LocalStorage, seeded: SeededJob, inprocess_broker: InProcessBroker
) -> None:
    analyze = FakeAnalyze()
    handler = make_handler(db, storage, inprocess_broker, analyze)
    assert handler(seeded.delivered()) is Verdict.ACK
    assert handler(seeded.delivered(count=1)) is Verdict.ACK
    assert analyze.calls == 1
    assert store.result_messages(db, seeded.job_id) == 1
    assert len(results_published(inprocess_broker)) == 1


def test_crash_after_commit_publishes_the_committed_result_once(
    db: Database, storage: LocalStorage, seeded: SeededJob, inprocess_broker: InProcessBroker
) -> None:
    analyze = FakeAnalyze()
    handler = make_handler(db, storage, inprocess_broker, analyze)
    claim = store.claim(db, seeded.job_id, seeded.study_uid, [], max_attempts=3, worker="w")
    assert isinstance(claim, store.Claim)
    store.commit_result(db, claim, [], details=details("0.1"), timings={})
    assert results_published(inprocess_broker) == []  # "died" before the relay ran
    assert handler(seeded.delivered(count=1)) is Verdict.ACK
    assert analyze.calls == 0
    assert [r.status for r in results_published(inprocess_broker)] == ["done"]


def test_older_attempt_cannot_commit_after_a_takeover(db: Database, seeded: SeededJob) -> None:
    first = store.claim(db, seeded.job_id, seeded.study_uid, [], max_attempts=5, worker="a")
    second = store.claim(db, seeded.job_id, seeded.study_uid, [], max_attempts=5, worker="b")
    assert isinstance(first, store.Claim) and isinstance(second, store.Claim)
    assert (first.attempt, second.attempt) == (1, 2)
    assert not store.progress(db, first, 0.5)
    with pytest.raises(store.ClaimLost):
        store.commit_result(
            db,
            first,
            [
                Finding(
                    index=1,
                    center_x=0,
                    center_y=0,
                    center_z=0,
                    diameter_mm=1,
                    long_axis_mm=1,
                    short_axis_mm=1,
                    volume_mm3=1,
                    mean_hu=0,
                    kind="solid",
                    confidence=1,
                    lung_rads="2",
                )
            ],
            details=details("x"),
            timings={},
        )
    store.commit_result(db, second, [], details=details("x"), timings={})
    with db.session() as session:
        assert session.scalar(select(Finding.id)) is None
    assert store.result_messages(db, seeded.job_id) == 1


def test_second_study_result_row_is_refused_by_the_database(
    db: Database, seeded: SeededJob
) -> None:
    from sqlalchemy.exc import IntegrityError

    from services.core.outbox import enqueue

    message = StudyResult(job_id=seeded.job_id, study_instance_uid=seeded.study_uid, status="done")
    with db.session() as session:
        enqueue(session, STUDY_RESULT, message)
    with pytest.raises(IntegrityError), db.session() as session:
        enqueue(session, STUDY_RESULT, message)


@pytest.mark.parametrize(("skip", "state"), [(True, JobState.SKIPPED), (False, JobState.FAILED)])
def test_unusable_study_ends_the_job_and_is_acked(
    db: Database,
    storage: LocalStorage,
    seeded: SeededJob,
    inprocess_broker: InProcessBroker,
    skip: bool,
    state: JobState,
) -> None:
    error = StudyUnusable("not-ct" if skip else "corrupt-pixel-data", "details", skip=skip)
    handler = make_handler(db, storage, inprocess_broker, FakeAnalyze(error=error))
    assert handler(seeded.delivered()) is Verdict.ACK
    job = job_of(db, seeded.job_id)
    assert job.state == state.value
    assert job.reason == error.reason
    assert job.finished_at is not None
    assert [(r.status, r.reason) for r in results_published(inprocess_broker)] == [
        (state.value, error.reason)
    ]


def test_transient_error_retries_then_fails_with_reason(
    db: Database, storage: LocalStorage, seeded: SeededJob, inprocess_broker: InProcessBroker
) -> None:
    analyze = FakeAnalyze(error=MemoryError())
    handler = make_handler(db, storage, inprocess_broker, analyze, max_attempts=2)
    assert handler(seeded.delivered()) is Verdict.RETRY
    job = job_of(db, seeded.job_id)
    assert (job.state, job.reason) == ("queued", "attempt 1 failed: out of memory; retrying")
    assert results_published(inprocess_broker) == []
    assert handler(seeded.delivered(count=1)) is Verdict.ACK
    job = job_of(db, seeded.job_id)
    assert job.state == JobState.FAILED.value
    assert job.reason == "gave up after 2 attempts (transient): out of memory"
    assert [r.status for r in results_published(inprocess_broker)] == ["failed"]


def test_database_down_before_claim_retries_by_delivery_count(
    db: Database, storage: LocalStorage, seeded: SeededJob, inprocess_broker: InProcessBroker
) -> None:
    broken = Database(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/none")
    handler = make_handler(broken, storage, inprocess_broker, FakeAnalyze(), max_attempts=2)
    assert handler(seeded.delivered()) is Verdict.RETRY
    # Out of attempts and the database still down: nothing can be recorded, keep the message.
    assert handler(seeded.delivered(count=1)) is Verdict.REJECT


def test_missing_files_are_a_storage_problem(
    db: Database, storage: LocalStorage, seeded: SeededJob, inprocess_broker: InProcessBroker
) -> None:
    for path in storage.root.rglob("*.dcm"):
        path.unlink()
    analyze = FakeAnalyze()
    handler = make_handler(db, storage, inprocess_broker, analyze, max_attempts=1)
    assert handler(seeded.delivered()) is Verdict.ACK
    job = job_of(db, seeded.job_id)
    assert job.state == "failed"
    assert job.reason.startswith("gave up after 1 attempts (transient): storage unavailable")
    assert analyze.calls == 0


def test_job_crashing_the_worker_repeatedly_ends_failed(
    db: Database, storage: LocalStorage, seeded: SeededJob, inprocess_broker: InProcessBroker
) -> None:
    for _ in range(2):  # two attempts claimed, then the process "died" each time
        store.claim(db, seeded.job_id, seeded.study_uid, [], max_attempts=2, worker="w")
    analyze = FakeAnalyze()
    handler = make_handler(db, storage, inprocess_broker, analyze, max_attempts=2)
    assert handler(seeded.delivered(count=2)) is Verdict.ACK
    job = job_of(db, seeded.job_id)
    assert job.state == "failed"
    assert job.reason == "gave up after 2 attempts: the worker stopped while processing it"
    assert analyze.calls == 0


def test_superseded_job_is_skipped(
    db: Database, storage: LocalStorage, seeded: SeededJob, inprocess_broker: InProcessBroker
) -> None:
    with db.session() as session:
        study = session.scalars(select(Study)).one()
        session.add(Job(study_id=study.id, version=2, state="queued"))
    analyze = FakeAnalyze()
    handler = make_handler(db, storage, inprocess_broker, analyze)
    assert handler(seeded.delivered()) is Verdict.ACK
    job = job_of(db, seeded.job_id)
    assert job.state == "skipped"
    assert job.reason.startswith("superseded")
    assert analyze.calls == 0
    assert [r.status for r in results_published(inprocess_broker)] == ["skipped"]


@pytest.mark.parametrize(
    "body",
    [b"not json", b'{"schema": 1}', b'{"schema": 2, "job_id": "x", "study_instance_uid": "1"}'],
)
def test_unusable_messages_are_rejected(
    db: Database, storage: LocalStorage, inprocess_broker: InProcessBroker, body: bytes
) -> None:
    handler = make_handler(db, storage, inprocess_broker, FakeAnalyze())
    assert handler(Delivered(body, "x", STUDY_READY, False)) is Verdict.REJECT


def test_unknown_job_and_wrong_study_are_rejected(
    db: Database, storage: LocalStorage, seeded: SeededJob, inprocess_broker: InProcessBroker
) -> None:
    handler = make_handler(db, storage, inprocess_broker, FakeAnalyze())
    body = json.loads(seeded.message.to_json())
    unknown = dict(body, job_id="f" * 32)
    assert (
        handler(Delivered(json.dumps(unknown).encode(), "", STUDY_READY, False)) is Verdict.REJECT
    )
    other = dict(body, study_instance_uid="1.2.3.4")
    assert handler(Delivered(json.dumps(other).encode(), "", STUDY_READY, False)) is Verdict.REJECT
    assert job_of(db, seeded.job_id).state == "queued"


def test_progress_is_visible_while_inferring(
    db: Database, storage: LocalStorage, seeded: SeededJob, inprocess_broker: InProcessBroker
) -> None:
    seen: list[tuple[str, float]] = []

    class Watching(FakeAnalyze):
        def __call__(self, paths, engine, *, progress=None):  # type: ignore[no-untyped-def]
            progress("read", 1.0)
            progress("inference", 0.5)
            job = job_of(db, seeded.job_id)
            seen.append((job.state, job.progress))
            return FakeResult([FakeFinding()])

    handler = make_handler(db, storage, inprocess_broker, Watching())
    assert handler(seeded.delivered()) is Verdict.ACK
    assert seen == [("inferring", 0.625)]


def test_transient_fault_injection_at_commit(
    db: Database, storage: LocalStorage, seeded: SeededJob, inprocess_broker: InProcessBroker
) -> None:
    handler = make_handler(
        db, storage, inprocess_broker, FakeAnalyze(), faults="before_commit:raise=db:times=1"
    )
    assert handler(seeded.delivered()) is Verdict.RETRY
    assert job_of(db, seeded.job_id).reason == "attempt 1 failed: database unavailable; retrying"
    assert handler(seeded.delivered(count=1)) is Verdict.ACK
    job = job_of(db, seeded.job_id)
    assert (job.state, job.attempts) == ("reporting", 2)
    with db.session() as session:
        rows = session.scalars(
            select(OutboxMessage).where(OutboxMessage.routing_key == STUDY_RESULT)
        )
        assert len(list(rows)) == 1


def test_storage_fault_injection(
    db: Database, storage: LocalStorage, seeded: SeededJob, inprocess_broker: InProcessBroker
) -> None:
    handler = make_handler(
        db, storage, inprocess_broker, FakeAnalyze(), faults="after_claim:raise=storage"
    )
    assert handler(seeded.delivered()) is Verdict.RETRY
    assert "storage unavailable" in job_of(db, seeded.job_id).reason
    assert isinstance(StorageUnavailable("x"), OSError)


def test_mid_inference_fault_fires_at_the_first_inference_report(
    db: Database, storage: LocalStorage, seeded: SeededJob, inprocess_broker: InProcessBroker
) -> None:
    handler = make_handler(
        db, storage, inprocess_broker, FakeAnalyze(), faults="mid_infer:raise=memory:times=1"
    )
    assert handler(seeded.delivered()) is Verdict.RETRY
    assert handler(seeded.delivered(count=1)) is Verdict.ACK
    assert job_of(db, seeded.job_id).state == "reporting"


def test_pipeline_errors_are_mapped(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.analysis import pipeline
    from services.analysis.errors import AnalysisError
    from services.worker.analyze import default_analyze

    def refuse(paths, engine, *, progress=None):  # type: ignore[no-untyped-def]
        raise AnalysisError("not-ct", "series modality is MR")

    monkeypatch.setattr(pipeline, "analyze_files", refuse)
    with pytest.raises(StudyUnusable) as caught:
        default_analyze([], object())
    assert caught.value.skip
    assert caught.value.reason == "not-ct: series modality is MR"


def test_overall_progress_is_monotonic_over_stages() -> None:
    from services.worker.progress import overall_progress

    points = [
        ("read", 0.0),
        ("read", 1.0),
        ("inference", 0.1),
        ("inference", 1.0),
        ("postprocess", 1.0),
    ]
    values = [overall_progress(stage, f) for stage, f in points]
    assert values == sorted(values)
    assert values[0] == 0.0 and values[-1] == 1.0


class FlakyDatabase(Database):
    """A database whose first ``failures`` sessions fail as if the server were away."""

    def __init__(self, url: str, failures: int) -> None:
        super().__init__(url)
        self.failures = failures

    def session(self):  # type: ignore[no-untyped-def]
        from sqlalchemy.exc import OperationalError

        if self.failures > 0:
            self.failures -= 1
            raise OperationalError("SELECT 1", {}, ConnectionError("server closed the connection"))
        return super().session()


def test_short_database_outage_is_waited_out_in_place(
    db: Database, storage: LocalStorage, seeded: SeededJob, inprocess_broker: InProcessBroker
) -> None:
    flaky = FlakyDatabase(db.url, failures=2)
    analyze = FakeAnalyze()
    handler = make_handler(flaky, storage, inprocess_broker, analyze)
    handler.policy = RetryPolicy(base_delay=0.01, outage_patience=5.0)
    assert handler(seeded.delivered()) is Verdict.ACK
    job = job_of(db, seeded.job_id)
    assert (job.state, job.attempts) == ("reporting", 1)
    assert analyze.calls == 1
    flaky.dispose()


def test_policy_delay_never_overflows() -> None:
    assert RetryPolicy(max_delay=30).delay(5000) == 30
