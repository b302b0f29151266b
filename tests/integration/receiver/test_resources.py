"""Failure statuses, never 0x0000, when storage or the database cannot take an instance
(R11, R21)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]
from sqlalchemy import create_engine, text

from services.core.broker import InProcessBroker
from services.core.db import Database
from services.receiver import statuses
from tests.factories.dicom import ct_slice
from tests.integration.receiver.harness import (
    counts,
    receiver_settings,
    running_receiver,
    storescu,
)
from tests.services import PG_ADMIN_URL, require, require_tool

pytestmark = pytest.mark.integration


def _store(port: int, n: int) -> list[int]:
    ae = AE(ae_title="PACS")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title="NODULEFLOW")
    assert assoc.is_established
    try:
        return [
            int(
                assoc.send_c_store(
                    ct_slice(study_uid="1.2.3", series_uid="1.2.3.4", index=i, rows=16, cols=16)
                ).Status
            )
            for i in range(n)
        ]
    finally:
        assoc.release()


def test_disk_below_reserve_refuses(tmp_path: Path, db: Database, sqlite_url: str) -> None:
    settings = receiver_settings(tmp_path, sqlite_url, min_free_disk_mb=1 << 40)
    with running_receiver(settings, db, InProcessBroker()) as receiver:
        assert _store(receiver.port, 2) == [statuses.OUT_OF_RESOURCES] * 2
    assert counts(db) == (0, 0, 0)
    assert not [p for p in settings.storage_dir.rglob("*") if p.is_file()]


def test_database_down_refuses(tmp_path: Path, postgres_url: str) -> None:
    db = Database(postgres_url)
    db.upgrade()
    name = postgres_url.rsplit("/", 1)[1]
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    settings = receiver_settings(tmp_path, postgres_url)
    try:
        with running_receiver(settings, db, InProcessBroker()) as receiver:
            assert _store(receiver.port, 1) == [statuses.SUCCESS]
            with admin.connect() as conn:  # this database only: others keep working
                conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
                conn.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"
                    ),
                    {"n": name},
                )
            assert _store(receiver.port, 2) == [statuses.OUT_OF_RESOURCES] * 2
            with admin.connect() as conn:
                conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
            assert _store(receiver.port, 3)[-1] == statuses.SUCCESS  # recovers by itself
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
        admin.dispose()
        db.dispose()


@contextmanager
def small_filesystem(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` at ``path`` (root only; skipped elsewhere), unmounted after."""
    path.mkdir(parents=True, exist_ok=True)
    mount = shutil.which("mount")
    mounted = mount is not None and os.geteuid() == 0
    if mounted:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
            capture_output=True,
            check=False,
        )
        mounted = done.returncode == 0
    require(mounted, "mounting a tmpfs (root)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def _send_all(port: int, datasets: list[Dataset]) -> tuple[list[int | None], bool]:
    """Statuses (None: no response) of one association, and whether it was still
    established after the last instance (it is released then)."""
    ae = AE(ae_title="PACS")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title="NODULEFLOW")
    assert assoc.is_established
    seen: list[int | None] = []
    for ds in datasets:
        status = assoc.send_c_store(ds)
        seen.append(int(status.Status) if "Status" in status else None)
        if not assoc.is_established:
            break
    alive = assoc.is_established
    if alive:
        assoc.release()
    return seen, alive


def test_full_disk_answers_out_of_resources_and_recovers(
    tmp_path: Path, db: Database, sqlite_url: str
) -> None:
    """R11: a storage volume that is truly full (ENOSPC while the data set is written, the
    free-space reserve off) refuses each instance with 0xA700, keeps the association, leaves
    no partial file behind, and stores again as soon as there is room."""
    storage = tmp_path / "storage"
    slices = [
        ct_slice(study_uid="1.2.3", series_uid="1.2.3.4", index=i, rows=256, cols=256)
        for i in range(14)  # ~130 KB each: a 1 MiB volume takes a few
    ]
    files = []
    for ds in slices:
        files.append(tmp_path / f"{ds.SOPInstanceUID}.dcm")
        ds.save_as(files[-1], enforce_file_format=True)
    settings = receiver_settings(tmp_path, sqlite_url, storage_dir=storage, min_free_disk_mb=0)
    with small_filesystem(storage, "1m"), running_receiver(settings, db, InProcessBroker()) as r:
        seen, alive = _send_all(r.port, slices[:10])
        assert alive, seen  # never aborted
        stored = seen.count(statuses.SUCCESS)
        assert 0 < stored < 10 and seen == [statuses.SUCCESS] * stored + [
            statuses.OUT_OF_RESOURCES
        ] * (10 - stored), seen
        assert not list(storage.rglob("*.part"))  # partial data sets are removed at once

        full = subprocess.run(  # a new association, still full
            [require_tool("storescu"), "-v", "-nh", "-aec", "NODULEFLOW", "127.0.0.1", str(r.port)]
            + [str(path) for path in files[10:12]],
            env={**os.environ, "TCP_NODELAY": "1"},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        output = full.stdout + full.stderr
        assert output.count("Received Store Response (Refused: OutOfResources)") == 2, output
        assert "Abort" not in output and "Releasing Association" in output, output
        assert not list(storage.rglob("*.part"))

        subprocess.run(["mount", "-o", "remount,size=16m", str(storage)], check=True)
        again = storescu(r.port, files[stored:], timeout=120)  # space is back
        assert again.returncode == 0, again.stdout + again.stderr

        assert counts(db)[0] == len(slices)
        assert not list(storage.rglob("*.part"))
