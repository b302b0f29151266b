"""AE policy (S1, S2) and hostile UIDs (V5): refused, audited, nothing written elsewhere."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, _config
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]
from sqlalchemy import select

from services.core import audit
from services.core.broker import InProcessBroker
from services.core.db import AuditEvent, Database, Instance
from services.receiver import statuses
from services.receiver.fast.fastpath import encode_file_meta
from tests.factories.dicom import ct_slice
from tests.integration.receiver.harness import receiver_settings, running_receiver
from tests.services import require_tool

pytestmark = pytest.mark.integration


def _echoscu(port: int, aet: str, called: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_tool("echoscu"), "-aet", aet, "-aec", called, "127.0.0.1", str(port)],
        env={**os.environ, "TCP_NODELAY": "1"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _alerts(db: Database) -> list[AuditEvent]:
    with db.session() as session:
        return list(
            session.scalars(select(AuditEvent).where(AuditEvent.event == audit.SECURITY_ALERT))
        )


def test_ae_policy(tmp_path: Path, db: Database, sqlite_url: str) -> None:
    settings = receiver_settings(tmp_path, sqlite_url, allowed_aets=["PACS"])
    with running_receiver(settings, db, InProcessBroker()) as receiver:
        port = receiver.port
        assert _echoscu(port, "PACS", "NODULEFLOW").returncode == 0
        unknown = _echoscu(port, "EVIL", "NODULEFLOW")
        assert unknown.returncode != 0
        assert "Calling AE Title Not Recognized" in unknown.stdout + unknown.stderr
        wrong = _echoscu(port, "PACS", "WRONG")
        assert wrong.returncode != 0
        assert "Called AE Title Not Recognized" in wrong.stdout + wrong.stderr

        ae = AE(ae_title="EVIL")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", port, ae_title="NODULEFLOW")
        assert assoc.is_rejected
        rj = assoc.acceptor.primitive
        assert rj is not None
        assert (rj.result, rj.result_source, rj.diagnostic) == (0x01, 0x01, 0x03)
    alerts = _alerts(db)
    assert len(alerts) == 3
    assert {a.actor for a in alerts} == {"EVIL", "PACS"}
    assert any("calling-ae-title-not-recognized" in a.detail for a in alerts)
    assert any("called-ae-title-not-recognized" in a.detail for a in alerts)


def _tree(root: Path, skip: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file() and skip not in p.parents and not p.name.startswith("noduleflow.db")
    }


HOSTILE = ["../x", "1." + "2" * 63, "1.2.3.abc", "", "../../../../canary/evil", "1.2/../../x"]


def test_hostile_uids_are_refused(tmp_path: Path, db: Database, sqlite_url: str) -> None:
    canary = tmp_path / "canary"
    canary.mkdir()
    (canary / "keep.txt").write_text("canary")
    settings = receiver_settings(tmp_path / "node", sqlite_url)
    settings.storage_dir.mkdir(parents=True)
    before = _tree(tmp_path, settings.storage_dir)
    statuses_seen: list[int] = []
    with running_receiver(settings, db, InProcessBroker()) as receiver:
        ae = AE(ae_title="PACS")
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate("127.0.0.1", receiver.port, ae_title="NODULEFLOW")
        assert assoc.is_established
        for i, bad in enumerate(HOSTILE):
            for field in ("StudyInstanceUID", "SeriesInstanceUID"):
                ds = ct_slice(study_uid="1.2.3", series_uid="1.2.3.4", index=i, rows=8, cols=8)
                setattr(ds, field, bad)
                status = assoc.send_c_store(ds)
                statuses_seen.append(int(status.Status))
        assoc.release()
    assert statuses_seen == [statuses.DATASET_MISMATCH] * (2 * len(HOSTILE))
    assert _tree(tmp_path, settings.storage_dir) == before  # canary and neighbours untouched
    assert not [p for p in settings.storage_dir.rglob("*") if p.is_file()]
    with db.session() as session:
        assert session.scalars(select(Instance)).all() == []
    assert len(_alerts(db)) == len(statuses_seen)


def test_hostile_sop_instance_uids_from_storescu(
    tmp_path: Path, db: Database, sqlite_url: str
) -> None:
    """The SOP Instance UID travels in the C-STORE command too; DCMTK sends it as is."""
    files = []
    for i, bad in enumerate(["../x", "1." + "2" * 63, "1.2.3.abc", "../../../../canary/evil"]):
        ds = ct_slice(study_uid="1.2.3", series_uid="1.2.3.4", index=i, rows=8, cols=8, sop_uid=bad)
        files.append(tmp_path / f"bad{i}.dcm")
        ds.save_as(files[-1], enforce_file_format=True)
    settings = receiver_settings(tmp_path / "node", sqlite_url)
    with running_receiver(settings, db, InProcessBroker()) as receiver:
        result = subprocess.run(
            [
                require_tool("storescu"),
                "-v",
                "-nh",
                "-aec",
                "NODULEFLOW",
                "127.0.0.1",
                str(receiver.port),
                *map(str, files),
            ],
            env={**os.environ, "TCP_NODELAY": "1"},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    log = result.stdout + result.stderr
    assert log.count("Received Store Response (Error: DataSetDoesNotMatchSOPClass)") == 4, log
    assert "Success" not in log
    assert not [p for p in settings.storage_dir.rglob("*") if p.is_file()]
    assert not (tmp_path / "canary").exists() and not (tmp_path / "x").exists()


def test_unparseable_data_sets_cannot_be_understood(
    tmp_path: Path, db: Database, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bytes that are not a DICOM data set answer 0xC000 (Error: Cannot understand, PS3.4
    B.2.3), as the conformance statement says; 0xA900 (Data Set does not match SOP Class)
    stays for a parsed data set whose UIDs are missing or unsafe."""
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)  # the bytes as they are
    meta = encode_file_meta(CTImageStorage, "1.2.3.4.5.6", ExplicitVRLittleEndian)
    bodies = [
        random.Random(7).randbytes(4096),
        b"this is not a DICOM data set, just some text " * 40,
        b"\x00" * 2048,
    ]
    files = []
    for i, body in enumerate(bodies):
        files.append(tmp_path / f"junk{i}.dcm")
        files[-1].write_bytes(b"\x00" * 128 + b"DICM" + meta + body)
    no_study = ct_slice(study_uid="1.2.3", series_uid="1.2.3.4", index=0, rows=8, cols=8)
    del no_study.StudyInstanceUID  # parsed, but a UID is missing
    settings = receiver_settings(tmp_path / "node", sqlite_url)
    with running_receiver(settings, db, InProcessBroker()) as receiver:
        ae = AE(ae_title="PACS")
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", receiver.port, ae_title="NODULEFLOW")
        assert assoc.is_established
        seen = [int(assoc.send_c_store(path).Status) for path in files]
        monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", False)
        seen.append(int(assoc.send_c_store(no_study).Status))
        assoc.release()
    assert seen == [statuses.CANNOT_UNDERSTAND] * len(bodies) + [statuses.DATASET_MISMATCH]
    assert len(_alerts(db)) == 1  # only the missing UID is a security alert
    assert not [p for p in settings.storage_dir.rglob("*") if p.is_file()]
