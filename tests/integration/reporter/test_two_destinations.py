"""Results to two real destinations (DCMTK storescp as a VNA over plain TCP and as a PACS
over mutual DICOM TLS): a delivery row per artefact and destination, retried on its own."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy import select

from services.core.broker import Delivered
from services.core.db import Database, Delivery
from services.core.messages import STUDY_RESULT, StudyResult
from services.core.settings import Settings
from services.reporter.delivery.dispatch import DeliveryPolicy, Dispatcher
from services.reporter.delivery.senders import default_senders
from services.reporter.results import ResultConsumer
from tests.factories.pki import make_pki
from tests.factories.reporting import Sphere, nodule_series, seed_reporting_job
from tests.services import free_port, require_tool, wait_port

pytestmark = pytest.mark.integration

ARTEFACTS = {"seg", "key-image-1", "key-image-2", "sr", "kos"}


@contextmanager
def storescp(
    folder: Path, port: int, aet: str, tls: dict[str, Path] | None = None
) -> Iterator[Path]:
    """DCMTK storescp on ``port`` writing into ``folder``; with ``tls``, DICOM TLS that
    requires a client certificate signed by the PKI's CA."""
    exe = require_tool("storescp")
    folder.mkdir(parents=True, exist_ok=True)
    args = [exe, "-aet", aet, "-od", str(folder)]
    if tls is not None:
        args += ["+tls", str(tls["server.key"]), str(tls["server.pem"]), "+cf", str(tls["ca.pem"])]
    args.append(str(port))
    process = subprocess.Popen(
        args,
        env={**os.environ, "TCP_NODELAY": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        assert wait_port("127.0.0.1", port), "storescp did not start"
        yield folder
    finally:
        process.terminate()
        process.wait(10)


def received(folder: Path) -> set[str]:
    return {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in folder.iterdir()}


def rows(db: Database, job_id: str) -> list[Delivery]:
    with db.session() as session:
        return list(session.scalars(select(Delivery).where(Delivery.job_id == job_id)))


def report(db: Database, settings: Settings) -> tuple[str, Dispatcher]:
    """A finished job reported with ``settings``; returns its id and a dispatcher."""
    series = nodule_series(spheres=[Sphere((6, 20, 22), 3.5), Sphere((3, 10, 34), 2.2)])
    job_id = seed_reporting_job(db, settings.storage_dir, series)
    body = StudyResult(
        job_id=job_id, study_instance_uid=series.study_uid, status="done", findings=2
    ).to_json()
    ResultConsumer(db, settings).handle(Delivered(body.encode(), job_id, STUDY_RESULT, False))
    policy = DeliveryPolicy(base_seconds=0.0, max_attempts=5)
    return job_id, Dispatcher(db, default_senders(db, settings), policy)


def test_each_destination_gets_every_artefact_over_its_own_transport(
    tmp_path: Path, db: Database, settings: Settings
) -> None:
    pki = make_pki(tmp_path / "pki")
    vna_port, pacs_port = free_port(), free_port()
    settings = settings.model_copy(
        update={
            "pacs": f"VNA@127.0.0.1:{vna_port}, tls://PACS@127.0.0.1:{pacs_port}",
            "pacs_tls_ca": pki["ca.pem"],
            "pacs_tls_cert": pki["client.pem"],
            "pacs_tls_key": pki["client.key"],
        }
    )
    with (
        storescp(tmp_path / "vna", vna_port, "VNA") as vna,
        storescp(tmp_path / "pacs", pacs_port, "PACS", tls=pki) as pacs,
    ):
        job_id, dispatcher = report(db, settings)
        assert dispatcher.dispatch_once() == 10
    delivered = rows(db, job_id)
    targets = {f"VNA@127.0.0.1:{vna_port}", f"tls://PACS@127.0.0.1:{pacs_port}"}
    assert {(r.kind, r.target) for r in delivered} == {(k, t) for k in ARTEFACTS for t in targets}
    assert {(r.state, r.last_status, r.attempts) for r in delivered} == {("delivered", "0x0000", 1)}
    sent = {r.sop_instance_uid for r in delivered}
    assert received(vna) == sent
    assert received(pacs) == sent


def test_a_destination_that_is_down_is_retried_alone(
    tmp_path: Path, db: Database, settings: Settings
) -> None:
    vna_port, pacs_port = free_port(), free_port()
    settings = settings.model_copy(
        update={"pacs": f"PACS@127.0.0.1:{pacs_port},VNA@127.0.0.1:{vna_port}"}
    )
    with storescp(tmp_path / "pacs", pacs_port, "PACS") as pacs:
        job_id, dispatcher = report(db, settings)
        dispatcher.dispatch_once()  # the VNA is not listening yet
        by_target: dict[str, set[tuple[str, int]]] = {}
        for row in rows(db, job_id):
            by_target.setdefault(row.target.split("@")[0], set()).add((row.state, row.attempts))
        assert by_target == {"PACS": {("delivered", 1)}, "VNA": {("pending", 1)}}
        with storescp(tmp_path / "vna", vna_port, "VNA") as vna:
            assert dispatcher.dispatch_once() == 5  # only the VNA's rows
    final = rows(db, job_id)
    assert {r.state for r in final} == {"delivered"}
    assert {r.attempts for r in final if r.target.startswith("VNA")} == {2}
    assert received(vna) == received(pacs) == {r.sop_instance_uid for r in final}


def test_tls_to_a_pacs_with_an_unknown_certificate_sends_nothing(
    tmp_path: Path, db: Database, settings: Settings
) -> None:
    ours, theirs = make_pki(tmp_path / "ours"), make_pki(tmp_path / "theirs")
    port = free_port()
    settings = settings.model_copy(
        update={
            "pacs": f"tls://PACS@127.0.0.1:{port}",
            "pacs_tls_ca": ours["ca.pem"],
            "pacs_tls_cert": ours["client.pem"],
            "pacs_tls_key": ours["client.key"],
        }
    )
    with storescp(tmp_path / "pacs", port, "PACS", tls=theirs) as pacs:
        job_id, dispatcher = report(db, settings)
        dispatcher.dispatch_once()
    failed = rows(db, job_id)
    assert {(r.state, r.last_status) for r in failed} == {("pending", "no-association")}
    assert all("TLS" in r.last_error or "connection" in r.last_error for r in failed)
    assert not list(pacs.iterdir())
