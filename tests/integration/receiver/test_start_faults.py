"""``noduleflow receiver`` started into the faults of the chaos suite: a full storage volume
(it starts, answers C-ECHO and 0xA700, leaves no partial watermark and writes it once there
is room) and a database that goes away again right after the wait for it (the start-up step
is retried instead of the process exiting)."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import threading
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]
from sqlalchemy.engine import make_url

from services.core.db import Database
from services.core.storage import LocalStorage
from services.receiver import statuses
from services.receiver.reconcile import WATERMARK, read_watermark, reconcile
from services.receiver.store import InstanceStore
from tests.factories.dicom import write_ct_series
from tests.integration.receiver.harness import echo_ok, receiver_process, wait_for
from tests.integration.receiver.test_resources import small_filesystem
from tests.integration.worker.proxy import CuttableProxy
from tests.services import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _env(url: str, storage: Path, port: int, **more: str) -> dict[str, str]:
    return {
        **os.environ,
        "NODULEFLOW_DATABASE_URL": url,
        "NODULEFLOW_STORAGE_DIR": str(storage),
        "NODULEFLOW_DICOM_PORT": str(port),
        "NODULEFLOW_RECEIVER_PROCESSES": "1",
        "NODULEFLOW_BROKER_URL": "",
        **more,
    }


def _fill(path: Path) -> None:
    """Write zeros to ``path`` until the volume is full."""
    block = b"\0" * (64 << 10)
    with open(path, "wb", buffering=0) as ballast:
        while True:
            try:
                ballast.write(block)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                break
        with contextlib.suppress(OSError):
            while True:
                ballast.write(b"\0" * 512)


def test_receiver_started_on_a_full_volume_starts_and_writes_its_watermark_later(
    tmp_path: Path, postgres_url: str
) -> None:
    study, series, paths = write_ct_series(tmp_path / "ct", 4, rows=64, cols=64)
    storage = tmp_path / "storage"
    db = Database(postgres_url)
    db.upgrade()
    with small_filesystem(storage, "4m"):
        # Stored and indexed before (a reconciliation wrote its watermark), then the disk filled.
        store = InstanceStore(db, LocalStorage(storage), min_free_bytes=0)
        for path in paths[:3]:
            target = storage / study / series / f"{dcmread(path).SOPInstanceUID}.dcm"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(path.read_bytes())
        assert reconcile(store, margin_seconds=0).indexed == 3
        (storage / WATERMARK).unlink()  # the scan must write it at the next start
        _fill(storage / "ballast")
        port = free_port()
        log = tmp_path / "receiver.log"
        env = _env(postgres_url, storage, port, NODULEFLOW_MIN_FREE_DISK_MB="0")
        with receiver_process(env, log) as proc:
            assert wait_for(lambda: echo_ok(port), timeout=90), log.read_text()[-3000:]
            assert proc.poll() is None
            ae = AE(ae_title="PACS")
            ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
            assoc = ae.associate("127.0.0.1", port, ae_title="NODULEFLOW")
            assert assoc.is_established
            status = assoc.send_c_store(dcmread(paths[3]))
            assoc.release()
            assert status.Status == statuses.OUT_OF_RESOURCES
            assert "event=watermark_not_written" in log.read_text()
            assert not list(storage.glob(f"{WATERMARK}*"))  # no .reconciled.<pid>.part left
            (storage / "ballast").unlink()  # room again: the watermark follows
            assert wait_for(lambda: read_watermark(storage) is not None, timeout=60), (
                log.read_text()[-3000:]
            )
            assert "event=watermark_written" in log.read_text()
            assert not list(storage.glob(f"{WATERMARK}.*.part"))
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]
    db.dispose()


class TripwireProxy(CuttableProxy):
    """A database link that is cut (every connection dropped, new ones refused) for
    ``outage`` seconds the first time a client sends ``trigger``: the database goes away
    again right after the service's wait for it succeeded."""

    def __init__(self, target: tuple[str, int], trigger: bytes, outage: float) -> None:
        self.trigger = trigger
        self.outage = outage
        self.tripped = threading.Event()
        super().__init__(target)

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                if self.trigger in data and not self.tripped.is_set():
                    self.tripped.set()
                    self.cut()
                    threading.Timer(self.outage, self.restore).start()
                    return
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                self._drop(sock)


@pytest.mark.parametrize("trigger", [b"alembic_version", b"pg_try_advisory_lock"])
def test_database_gone_again_after_the_wait_is_waited_out(
    trigger: bytes, tmp_path: Path, postgres_url: str
) -> None:
    real = make_url(postgres_url)
    proxy = TripwireProxy((real.host or "127.0.0.1", real.port or 5432), trigger, outage=3.0)
    url = real.set(port=proxy.port).render_as_string(hide_password=False)
    port = free_port()
    log = tmp_path / "receiver.log"
    try:
        with receiver_process(_env(url, tmp_path / "storage", port), log) as proc:
            assert wait_for(proxy.tripped.is_set, timeout=60), log.read_text()[-3000:]
            started = time.monotonic()
            assert wait_for(lambda: echo_ok(port), timeout=60), log.read_text()[-3000:]
            assert time.monotonic() - started >= 2.0  # it did wait the outage out
            assert proc.poll() is None
        text = log.read_text()
        assert "event=start_step_failed" in text and "event=start_step_done" in text, text
        assert "Traceback" not in text, text[-3000:]
    finally:
        proxy.close()


def test_reporter_waits_out_a_database_gone_again_before_its_upgrade(
    tmp_path: Path, postgres_url: str, rabbit_url: str, rabbit_prefix: str
) -> None:
    """The reporter's schema upgrade, the step right after its wait, likewise."""
    from tests.integration.core.test_database_wait import STARTED, _service
    from tests.integration.core.test_database_wait import _env as service_env

    real = make_url(postgres_url)
    proxy = TripwireProxy((real.host or "127.0.0.1", real.port or 5432), b"alembic_version", 3.0)
    url = real.set(port=proxy.port).render_as_string(hide_password=False)
    log = tmp_path / "reporter.log"
    try:
        env = service_env(tmp_path, url, rabbit_url, rabbit_prefix)
        with _service("reporter", env, log) as proc:
            assert wait_for(proxy.tripped.is_set, timeout=60), log.read_text()[-3000:]
            assert wait_for(lambda: STARTED["reporter"] in log.read_text(), timeout=90), (
                log.read_text()[-3000:]
            )
            assert proc.poll() is None
        text = log.read_text()
        assert "event=start_step_failed step=schema-upgrade" in text, text[-3000:]
        assert "Traceback" not in text, text[-3000:]
    finally:
        proxy.close()
