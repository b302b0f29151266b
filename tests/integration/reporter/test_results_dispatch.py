"""Several dispatchers on one PostgreSQL database: each due row is sent once (SKIP LOCKED)."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import select

from services.core.db import Database, Delivery
from services.reporter.delivery.dispatch import (
    DELIVERED,
    DeliveryPolicy,
    DeliveryTask,
    Dispatcher,
    SendOutcome,
    upsert_delivery,
)
from tests.factories.reporting import seed_bare_job

pytestmark = pytest.mark.integration


def test_two_dispatchers_send_each_row_once(postgres_url: str) -> None:
    db = Database(postgres_url)
    db.upgrade()
    job = seed_bare_job(db)
    with db.session() as session:
        for index in range(20):
            upsert_delivery(
                session,
                job_id=job,
                kind=f"key-image-{index}",
                target="PACS@127.0.0.1:104",
                path=f"x/key-{index}.dcm",
            )
    sent: list[int] = []
    workers: set[str] = set()
    lock = threading.Lock()

    def sender(task: DeliveryTask) -> SendOutcome:
        time.sleep(0.02)
        with lock:
            sent.append(task.id)
            workers.add(threading.current_thread().name)
        return SendOutcome(True, False, "0x0000", "stored")

    dispatchers = [Dispatcher(db, {"dicom": sender}, DeliveryPolicy()) for _ in range(2)]
    threads = [threading.Thread(target=d.dispatch_once) for d in dispatchers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    with db.session() as session:
        states = session.scalars(select(Delivery.state)).all()
    db.dispose()
    assert sorted(sent) == sorted(set(sent)) and len(sent) == 20
    assert set(states) == {DELIVERED}
    assert len(workers) == 2  # both took rows, none twice
