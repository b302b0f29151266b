"""The store + tracker core on both database back ends (SQLite and PostgreSQL)."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from services.core.db import Database, Instance, Job, OutboxMessage, Study
from services.core.messages import StudyReady
from services.core.storage import LocalStorage
from services.receiver.index import parse_header
from services.receiver.store import InstanceStore, NoSpaceError, Outcome, Received
from services.receiver.tracker import StudyTracker
from tests.factories.dicom import ct_slice, write_ct_series

pytestmark = pytest.mark.integration


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    db = Database(database_url)
    db.upgrade()
    yield db
    db.dispose()


def _received(storage: LocalStorage, path: Path) -> Received:
    temp = storage.temp_path()
    shutil.copyfile(path, temp)
    data = temp.read_bytes()
    import hashlib

    return Received(temp, len(data), hashlib.sha256(data).hexdigest(), "PACS", parse_header(temp))


def test_store_duplicate_replace_and_completion(database: Database, tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "storage")
    store = InstanceStore(database, storage, min_free_bytes=0)
    clock = Clock()
    tracker = StudyTracker(database, idle_seconds=10, grace_seconds=1, clock=clock)
    study, series, paths = write_ct_series(tmp_path / "in", 4)

    outcomes = [store.store(_received(storage, p), opens_study=i == 0) for i, p in enumerate(paths)]
    assert outcomes == [Outcome.STORED] * 4
    assert store.store(_received(storage, paths[0]), opens_study=False) is Outcome.DUPLICATE
    assert list(storage.tmp.glob("*.part")) == []
    with database.session() as session:
        rows = session.scalars(select(Instance)).all()
        assert len(rows) == 4
        assert all(storage.path(r.path).is_file() for r in rows)
        assert rows[0].path == f"{study}/{series}/{rows[0].sop_instance_uid}.dcm"

    clock.now = datetime.now(UTC)
    assert tracker.complete_due() == []  # neither idle nor released yet
    tracker.association_ended([study], released=True)
    clock.now += timedelta(seconds=1.5)
    [job_id] = tracker.complete_due()
    assert tracker.complete_due() == []  # exactly once
    with database.session() as session:
        job = session.get(Job, job_id)
        assert job is not None and (job.version, job.state, job.instance_count) == (1, "queued", 4)
        [row] = session.scalars(select(OutboxMessage)).all()
        message = StudyReady.model_validate_json(row.body)
        assert message.job_id == job_id and message.study_instance_uid == study
        assert [(s.uid, s.instances) for s in message.series] == [(series, 4)]
        assert session.scalars(select(Study)).one().pending_since is None

    # Same SOP Instance UID, different pixels: replaced, revision bumped, a new job later.
    sop = parse_header(paths[1]).sop_instance_uid
    changed = ct_slice(study_uid=study, series_uid=series, index=1, sop_uid=sop)
    changed.save_as(tmp_path / "changed.dcm", enforce_file_format=True)
    assert store.store(_received(storage, tmp_path / "changed.dcm"), opens_study=True) is (
        Outcome.REPLACED
    )
    clock.now += timedelta(seconds=11)
    [second] = tracker.complete_due()
    with database.session() as session:
        assert session.get(Job, second).version == 2  # type: ignore[union-attr]
        assert session.scalars(select(Study)).one().revision == 1
        assert len(session.scalars(select(Instance)).all()) == 4
        stored = storage.path(
            session.scalars(select(Instance).where(Instance.sop_instance_uid == sop)).one().path
        )
    assert stored.read_bytes() == (tmp_path / "changed.dcm").read_bytes()


def test_no_space_refuses_before_writing(database: Database, tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path / "storage")
    store = InstanceStore(database, storage, min_free_bytes=1 << 62)
    _, _, [path] = write_ct_series(tmp_path / "in", 1)
    with pytest.raises(NoSpaceError):
        store.store(_received(storage, path), opens_study=True)
    assert not any(p.suffix == ".dcm" for p in storage.root.rglob("*"))
    with database.session() as session:
        assert session.scalars(select(Instance)).all() == []


def test_concurrent_trackers_complete_once(database_url: str, tmp_path: Path) -> None:
    """Several receiver processes (separate engines) race to complete the same studies."""
    dbs = [Database(database_url) for _ in range(3)]
    dbs[0].upgrade()
    storage = LocalStorage(tmp_path / "storage")
    store = InstanceStore(dbs[0], storage, min_free_bytes=0)
    for k in range(4):
        _, _, paths = write_ct_series(tmp_path / f"in{k}", 2)
        for p in paths:
            store.store(_received(storage, p), opens_study=False)
    later = datetime.now(UTC) + timedelta(seconds=60)
    trackers = [
        StudyTracker(db, idle_seconds=10, grace_seconds=1, clock=lambda: later) for db in dbs
    ]
    created: list[str] = []
    barrier = threading.Barrier(len(trackers))

    def race(tracker: StudyTracker) -> None:
        barrier.wait()
        created.extend(tracker.complete_due())

    threads = [threading.Thread(target=race, args=(t,)) for t in trackers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    with dbs[0].session() as session:
        jobs = session.scalars(select(Job)).all()
        assert len(jobs) == 4 and sorted(created) == sorted(j.id for j in jobs)
        assert len(session.scalars(select(OutboxMessage)).all()) == 4
    for db in dbs:
        db.dispose()
