from __future__ import annotations

import time
from pathlib import Path

import pytest

from services.core.broker import InProcessBroker
from services.core.db import Database, Finding, Job
from services.core.messages import REPORTING_QUEUE, STUDY_READY
from services.core.settings import Settings
from services.core.storage import LocalStorage
from services.worker.main import build_worker, run
from tests.factories.worker import queue_job, store_files
from tests.unit.analysis.chest import FakeModel, Nodule, chest, write_volume


def test_in_process_worker_runs_the_real_pipeline(
    settings: Settings, db: Database, inprocess_broker: InProcessBroker, tmp_path: Path
) -> None:
    """The ``serve`` form: build_worker with the in-process broker, start, stop."""
    spacing = (1.25, 1.5, 1.5)
    hu = chest((52, 96, 96), spacing, [Nodule((26, 43, 28), (5, 5, 5))])
    files, _ = write_volume(hu, tmp_path / "chest", spacing=spacing)
    study_uid, series = store_files(db, LocalStorage(settings.storage_dir), files)
    seeded = queue_job(db, study_uid, series)
    worker = build_worker(settings, db, inprocess_broker, engine=FakeModel())
    worker.start()
    try:
        inprocess_broker.publish(STUDY_READY, seeded.message.to_json(), seeded.job_id)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with db.session() as session:
                job = session.get(Job, seeded.job_id)
                assert job is not None
                if job.state != "queued" and job.state != "inferring":
                    break
            time.sleep(0.1)
    finally:
        worker.stop(wait=True, timeout=30)
    assert not worker.alive
    assert (job.state, job.reason) == ("reporting", "")
    assert job.details["provider"] == "FakeProvider"
    assert job.details["instances"] == 52
    with db.session() as session:
        assert session.query(Finding).filter_by(job_id=seeded.job_id).count() == 1
    assert inprocess_broker.queue_depth(REPORTING_QUEUE) == 1


def test_standalone_worker_needs_a_broker(settings: Settings) -> None:
    with pytest.raises(SystemExit, match="BROKER_URL"):
        run(settings)


def test_unusable_model_exits_with_a_clear_error(settings: Settings, tmp_path: Path) -> None:
    broken = settings.model_copy(
        update={"broker_url": "amqp://guest:guest@127.0.0.1:1/", "model_dir": tmp_path / "none"}
    )
    with pytest.raises(SystemExit) as exited:
        run(broken)
    assert exited.value.code == 2


@pytest.mark.parametrize("keep", [True, False])
def test_the_standalone_worker_keeps_freed_memory_unless_told_not_to(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, keep: bool
) -> None:
    """``run`` asks malloc to keep freed memory first, before the database or any thread."""
    import services.core.heap as heap
    import services.worker.main as main

    seen: list[str] = []

    def kept() -> bool:
        seen.append("kept")
        return True

    def database_away(db: object) -> bool:
        seen.append("database")
        return False

    monkeypatch.setattr(heap, "keep_freed_memory", kept)
    monkeypatch.setattr(main, "wait_for_database", database_away)
    configured = settings.model_copy(
        update={"broker_url": "amqp://guest:guest@127.0.0.1:1/", "worker_keep_memory": keep}
    )
    run(configured)  # the database "never came": run returns before the broker
    assert seen == (["kept", "database"] if keep else ["database"])


@pytest.mark.parametrize(
    ("concurrency", "split", "lanes"), [(2, True, 2), (2, False, 0), (1, True, 0)]
)
def test_the_worker_gives_each_job_at_once_a_lane_unless_told_not_to(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, concurrency: int, split: bool, lanes: int
) -> None:
    """Two jobs at once on the CPU: a model session each on a share of the cores."""
    from services.worker.main import load_engine

    monkeypatch.setattr("services.analysis.engine._threads", lambda: 2)
    configured = settings.model_copy(
        update={
            "worker_concurrency": concurrency,
            "worker_split_cores": split,
            "providers": "cpu",
        }
    )
    engine = load_engine(configured)
    assert engine.lanes.count == lanes  # type: ignore[attr-defined]
