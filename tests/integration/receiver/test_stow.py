"""STOW-RS into a running receiver, with the real ``dicomweb-client`` and raw HTTP.

A study stored over DICOMweb becomes one job like a C-STORE'd one; a reused SOP Instance
UID is refused, quarantined and audited as over DICOM; access needs a token allowed to
store; hostile bodies (bad boundary, huge part, wrong media types, truncated) get a 4xx
and leave nothing behind: no row, no file, no temporary file.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread
from sqlalchemy import select

from services.core import audit
from services.core.broker import InProcessBroker
from services.core.db import AuditEvent, Database, Instance, Job
from services.receiver.main import Receiver
from services.receiver.store import CONFLICTS, QUARANTINE
from tests.factories.dicom import ct_slice, write_ct_series
from tests.integration.receiver.harness import (
    counts,
    receiver_settings,
    running_receiver,
    wait_for,
)
from tests.services import free_port

pytestmark = pytest.mark.integration

STORE_TOKEN = "5d0c8e2a9f4b7e1c3a6d0f8b2e5c9a7d"
READ_TOKEN = "a3e7c1f9d5b2e8a4c6f0d3b9e7a1c5f2"
CT = "1.2.840.10008.5.1.4.1.1.2"


@pytest.fixture
def node(tmp_path: Path, sqlite_url: str) -> Iterator[tuple[Receiver, Database]]:
    db = Database(sqlite_url)
    db.upgrade()
    settings = receiver_settings(
        tmp_path,
        sqlite_url,
        dicomweb_port=free_port(),
        stow_tokens=[STORE_TOKEN],
        api_tokens=[READ_TOKEN],
        stow_max_instance_mb=1,
        stow_max_request_mb=64,
    )
    try:
        with running_receiver(settings, db, InProcessBroker()) as receiver:
            yield receiver, db
    finally:
        db.dispose()


def _url(receiver: Receiver) -> str:
    return f"http://127.0.0.1:{receiver.settings.dicomweb_port}/dicomweb"


def _client(receiver: Receiver, token: str = STORE_TOKEN) -> DICOMwebClient:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    return DICOMwebClient(_url(receiver), session=session)


def _nothing_left(receiver: Receiver, db: Database) -> None:
    """No instance row, no stored or quarantined file, no temporary file."""
    assert counts(db)[0] == 0
    root = receiver.settings.storage_dir
    assert [p for p in root.rglob("*") if p.is_file()] == []


def test_study_stored_by_dicomweb_client_becomes_one_job(
    tmp_path: Path, node: tuple[Receiver, Database]
) -> None:
    receiver, db = node
    study, _, paths = write_ct_series(tmp_path / "ct", 24)
    datasets = [dcmread(path) for path in paths]
    client = _client(receiver)
    first = client.store_instances(datasets[:10])  # two requests, as a sender might split
    second = client.store_instances(datasets[10:], study_instance_uid=study)
    assert len(first.ReferencedSOPSequence) == 10 and "FailedSOPSequence" not in first
    assert [item.ReferencedSOPInstanceUID for item in second.ReferencedSOPSequence] == [
        ds.SOPInstanceUID for ds in datasets[10:]
    ]
    assert wait_for(lambda: counts(db)[1] == 1, timeout=30)
    with db.session() as session:
        job = session.scalars(select(Job)).one()
        assert job.instance_count == 24 and job.version == 1
        rows = session.scalars(select(Instance)).all()
        assert {row.calling_aet for row in rows} == {"DICOMWEB"}
        for row in rows:  # durable at the indexed path, byte for byte what was sent
            stored = receiver.settings.storage_dir / row.path
            assert stored.stat().st_size == row.size
        transferred = session.scalars(
            select(AuditEvent).where(AuditEvent.event == audit.INSTANCES_TRANSFERRED)
        ).all()
        assert len(transferred) == 2 and all(e.actor.startswith("token-") for e in transferred)
    # the same study again: all duplicates, answered 200, no new job
    again = client.store_instances(datasets)
    assert len(again.ReferencedSOPSequence) == 24
    assert not wait_for(lambda: counts(db)[1] != 1, timeout=4)


def test_reused_uid_and_study_mismatch_fail_per_instance(
    tmp_path: Path, node: tuple[Receiver, Database]
) -> None:
    receiver, db = node
    study_a, _, paths_a = write_ct_series(tmp_path / "a", 3)
    study_b, series_b, paths_b = write_ct_series(tmp_path / "b", 2)
    client = _client(receiver)
    client.store_instances([dcmread(p) for p in paths_a])
    victim = str(dcmread(paths_a[0], stop_before_pixels=True).SOPInstanceUID)
    intruder = ct_slice(study_uid=study_b, series_uid=series_b, index=9, sop_uid=victim)
    body, content_type = _multipart([p.read_bytes() for p in paths_b] + [_encode(intruder)])
    response = _post(receiver, body, content_type)
    assert response.status_code == 202  # some stored, one failed
    reply = response.json()
    assert len(reply["00081199"]["Value"]) == 2
    (failed,) = reply["00081198"]["Value"]
    assert failed["00081155"]["Value"] == [victim]
    assert failed["00081197"]["Value"] == [0xC211]
    root = receiver.settings.storage_dir
    assert len(list((root / QUARANTINE / CONFLICTS).rglob("*.dcm"))) == 1
    with db.session() as session:
        alert = session.scalars(
            select(AuditEvent).where(AuditEvent.event == audit.SECURITY_ALERT)
        ).one()
        assert victim in alert.detail and "sop-instance-uid-conflict" in alert.detail

    # every instance of another study than the target resource's: none stored, 409
    _, _, paths_c = write_ct_series(tmp_path / "c", 2)
    body, content_type = _multipart([p.read_bytes() for p in paths_c])
    response = _post(receiver, body, content_type, study=study_a)
    assert response.status_code == 409
    assert [i["00081197"]["Value"] for i in response.json()["00081198"]["Value"]] == [
        [0xC409],
        [0xC409],
    ]
    assert counts(db)[0] == 5
    assert not list((root / ".tmp").rglob("*.part"))


def test_access_needs_a_token_allowed_to_store(
    tmp_path: Path, node: tuple[Receiver, Database]
) -> None:
    receiver, db = node
    _, _, paths = write_ct_series(tmp_path / "ct", 1)
    body, content_type = _multipart([paths[0].read_bytes()])
    assert _post(receiver, body, content_type, token=None).status_code == 401
    assert _post(receiver, body, content_type, token="x" * 40).status_code == 401
    assert _post(receiver, body, content_type, token=READ_TOKEN).status_code == 403
    _nothing_left(receiver, db)
    with db.session() as session:
        events = [e.event for e in session.scalars(select(AuditEvent))]
    assert events.count(audit.USER_AUTHENTICATION) == 2
    assert events.count(audit.SECURITY_ALERT) == 1


@pytest.mark.parametrize(
    "case",
    [
        "bad-boundary",
        "malformed-boundary",
        "wrong-request-type",
        "metadata-request-type",
        "wrong-part-type",
        "truncated",
        "no-parts",
        "not-dicom",
        "huge-part",
        "declared-too-large",
    ],
)
def test_hostile_requests_get_4xx_and_store_nothing(
    tmp_path: Path, node: tuple[Receiver, Database], case: str
) -> None:
    receiver, db = node
    _, _, paths = write_ct_series(tmp_path / "ct", 2)
    good = [p.read_bytes() for p in paths]
    body, content_type = _multipart(good)
    expected = 400
    if case == "bad-boundary":  # the header names a boundary the body never uses
        content_type = content_type.replace("nfboundary", "otherboundary")
    elif case == "malformed-boundary":
        content_type = 'multipart/related; type="application/dicom"; boundary=" "'
    elif case == "wrong-request-type":
        content_type, expected = "application/dicom", 415
    elif case == "metadata-request-type":
        content_type = content_type.replace("application/dicom", "application/dicom+json")
        expected = 415
    elif case == "wrong-part-type":
        body = body.replace(b"Content-Type: application/dicom", b"Content-Type: text/plain", 1)
        expected = 415
    elif case == "truncated":  # a complete HTTP body whose multipart body is cut short
        body = body[: len(body) // 2]
    elif case == "no-parts":
        body = b"--nfboundary--\r\n"
    elif case == "not-dicom":  # well-formed multipart, garbage inside: per-instance failure
        body, content_type = _multipart([b"\x00" * 300, b"not dicom at all"])
        expected = 409
    elif case == "huge-part":  # over STOW_MAX_INSTANCE_MB (1 MiB here), never held whole
        body, content_type = _multipart([good[0], b"\x00" * (3 << 20)])
        status = _raw_post(receiver, body, content_type)
        assert status == 413
        _nothing_left(receiver, db)
        return
    elif case == "declared-too-large":
        status = _raw_post(receiver, body[:100], content_type, declared=65 << 20)
        assert status == 413
        _nothing_left(receiver, db)
        return
    response = _post(receiver, body, content_type)
    assert response.status_code == expected, response.text
    _nothing_left(receiver, db)


def test_client_gone_mid_body_leaves_nothing(
    tmp_path: Path, node: tuple[Receiver, Database]
) -> None:
    receiver, db = node
    _, _, paths = write_ct_series(tmp_path / "ct", 3)
    body, content_type = _multipart([p.read_bytes() for p in paths])
    with socket.create_connection(("127.0.0.1", receiver.settings.dicomweb_port)) as sock:
        sock.sendall(_head(len(body), content_type) + body[: len(body) - 100])
    temp = receiver.settings.storage_dir / ".tmp"
    assert wait_for(lambda: not list(temp.rglob("*.part")), timeout=10)
    _nothing_left(receiver, db)


# ----------------------------------------------------------------------------- helpers


def _encode(ds: object) -> bytes:
    from io import BytesIO

    from pydicom.dataset import Dataset

    assert isinstance(ds, Dataset)
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _multipart(parts: list[bytes], boundary: str = "nfboundary") -> tuple[bytes, str]:
    body = b""
    for part in parts:
        body += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def _post(
    receiver: Receiver,
    body: bytes,
    content_type: str,
    *,
    study: str | None = None,
    token: str | None = STORE_TOKEN,
) -> httpx.Response:
    url = _url(receiver) + "/studies" + (f"/{study}" if study else "")
    headers = {"Content-Type": content_type, "Accept": "application/dicom+json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.post(url, content=body, headers=headers, timeout=60)


def _head(length: int, content_type: str) -> bytes:
    return (
        "POST /dicomweb/studies HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {STORE_TOKEN}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def _raw_post(
    receiver: Receiver, body: bytes, content_type: str, *, declared: int | None = None
) -> int:
    """POST over a plain socket, reading the answer while the body is still being sent (a
    refusal comes before the body ends); the HTTP status."""
    sock = socket.create_connection(("127.0.0.1", receiver.settings.dicomweb_port), timeout=30)

    def send() -> None:
        try:
            sock.sendall(_head(len(body) if declared is None else declared, content_type) + body)
        except OSError:
            pass  # the server answered and closed before reading it all

    sender = threading.Thread(target=send)
    sender.start()
    try:
        answer = sock.recv(4096)
    finally:
        sender.join(timeout=30)
        sock.close()
    return int(answer.split(b" ", 2)[1])
