"""One association sending study after study, as a router forwarding a backlog does: each
study but the last completes on the release grace once the association goes on to the
next, not on the idle timer; a study another association still carries waits for it.

Both forms: the in-process receiver on SQLite, and ``noduleflow receiver`` (supervisor and
two SCP processes, holds booked per process) on PostgreSQL."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]
from sqlalchemy import func, select

from services.core.broker import InProcessBroker
from services.core.db import Database, Instance, Job, Series, Study
from services.receiver.completion import utc
from tests.factories.dicom import write_ct_series
from tests.integration.receiver.harness import (
    echo_ok,
    receiver_process,
    receiver_settings,
    running_receiver,
    wait_for,
)
from tests.services import free_port

pytestmark = pytest.mark.integration

IDLE = 30.0  # the idle timer must not be what completes a study here
GRACE = 0.3


@contextmanager
def _receiver(form: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[int]:
    """A running receiver's DICOM port; the database is ``request``'s."""
    if form == "sqlite":
        db = request.getfixturevalue("db")
        url = str(request.getfixturevalue("sqlite_url"))
        settings = receiver_settings(
            tmp_path, url, study_idle_seconds=IDLE, release_grace_seconds=GRACE
        )
        with running_receiver(settings, db, InProcessBroker()) as receiver:
            yield receiver.port
        return
    url = str(request.getfixturevalue("postgres_url"))
    port, log = free_port(), tmp_path / "receiver.log"
    env = {
        **os.environ,
        "NODULEFLOW_DATABASE_URL": url,
        "NODULEFLOW_STORAGE_DIR": str(tmp_path / "storage"),
        "NODULEFLOW_DICOM_PORT": str(port),
        "NODULEFLOW_RECEIVER_PROCESSES": "2",
        "NODULEFLOW_STUDY_IDLE_SECONDS": str(IDLE),
        "NODULEFLOW_RELEASE_GRACE_SECONDS": str(GRACE),
        "NODULEFLOW_MIN_FREE_DISK_MB": "16",
        "NODULEFLOW_BROKER_URL": "",
    }
    with receiver_process(env, log):
        assert wait_for(lambda: echo_ok(port), timeout=90), log.read_text()[-3000:]
        yield port
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


@pytest.fixture(params=["sqlite", "postgres"])
def form(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _database(form: str, request: pytest.FixtureRequest) -> Database:
    if form == "sqlite":
        db: Database = request.getfixturevalue("db")
        return db
    return Database(str(request.getfixturevalue("postgres_url")))


def _study(tmp_path: Path, name: str, n: int) -> tuple[str, list[Dataset]]:
    uid, _, paths = write_ct_series(tmp_path / name, n, rows=32, cols=32)
    return uid, [dcmread(p) for p in paths]


def _associate(port: int, aet: str) -> Association:
    ae = AE(ae_title=aet)
    ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="NODULEFLOW")
    assert assoc.is_established
    return assoc


def _send(assoc: Association, datasets: list[Dataset], pause: float = 0.0) -> None:
    for ds in datasets:
        assert assoc.send_c_store(ds).Status == 0x0000
        time.sleep(pause)


def _jobs(db: Database, uid: str) -> list[Job]:
    with db.session() as session:
        jobs = list(session.scalars(select(Job).join(Study).where(Study.study_instance_uid == uid)))
        session.expunge_all()
        return jobs


def _last_received(db: Database, uid: str) -> datetime:
    with db.session() as session:
        last = session.scalar(
            select(func.max(Instance.received_at))
            .join(Series)
            .join(Study)
            .where(Study.study_instance_uid == uid)
        )
    assert last is not None
    return utc(last)


def test_the_first_of_two_studies_in_a_row_completes_on_the_grace(
    form: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    first, first_slices = _study(tmp_path, "a", 12)
    second, second_slices = _study(tmp_path, "b", 16)
    db = _database(form, request)
    with _receiver(form, tmp_path, request) as port:
        assoc = _associate(port, "ROUTER")
        try:
            _send(assoc, first_slices)
            _send(assoc, second_slices[:2])  # gone on to the next study...
            assert wait_for(lambda: len(_jobs(db, first)) == 1, timeout=IDLE / 3)
            _send(assoc, second_slices[2:], pause=0.25)  # ...which it still sends
            assert _jobs(db, second) == []  # the association still holds it
        finally:
            assoc.release()
        assert wait_for(lambda: len(_jobs(db, second)) == 1, timeout=IDLE / 3)
        time.sleep(4 * GRACE)  # a second job would have been made by now
        [job] = _jobs(db, first)
        waited = (utc(job.created_at) - _last_received(db, first)).total_seconds()
        assert job.instance_count == len(first_slices)
        assert [j.instance_count for j in _jobs(db, second)] == [len(second_slices)]
    if form != "sqlite":
        db.dispose()
    assert waited < IDLE / 5, waited  # the grace and a poll, not the idle timer


def test_a_study_split_over_two_associations_waits_for_the_other(
    form: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    split, split_slices = _study(tmp_path, "a", 16)
    after, after_slices = _study(tmp_path, "b", 8)
    db = _database(form, request)
    with _receiver(form, tmp_path, request) as port:
        other = _associate(port, "MODALITY")
        router = _associate(port, "ROUTER")
        try:
            _send(other, split_slices[::2])  # half of it, and the association stays open
            _send(router, split_slices[1::2])  # the other half,
            _send(router, after_slices)  # then the next study
            router.release()
            time.sleep(10 * GRACE + 1.0)  # long past the grace
            assert _jobs(db, split) == []  # the other association still carries it
            assert len(_jobs(db, after)) == 1
        finally:
            other.release()
            router.release()
        released = time.monotonic()
        assert wait_for(lambda: len(_jobs(db, split)) == 1, timeout=IDLE / 3)
        completed = time.monotonic() - released
        time.sleep(4 * GRACE)
        assert [j.instance_count for j in _jobs(db, split)] == [len(split_slices)]
        assert len(_jobs(db, after)) == 1
    if form != "sqlite":
        db.dispose()
    assert completed < IDLE / 5, completed
