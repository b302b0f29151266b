"""A SOP Instance UID already stored under another study, series, patient or SOP class is
refused by the store: nothing stored moves, the incoming bytes go to quarantine, a log line
and an audit row say so. Re-sends into the same study stay as they were."""

from __future__ import annotations

import dataclasses
import os
import threading
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import MRImageStorage, generate_uid
from sqlalchemy import func, select

from services.core.db import Database, Study
from services.core.storage import instance_key
from services.receiver import store as store_module
from services.receiver.index import parse_header
from services.receiver.reconcile import reconcile
from services.receiver.store import (
    CONFLICTS,
    QUARANTINE,
    InstanceConflict,
    InstanceStore,
    Outcome,
    Received,
)
from tests.unit.receiver.storesetup import (
    SERIES_A,
    SERIES_B,
    STUDY_A,
    STUDY_B,
    Interleaved,
    Setup,
    make_slice,
    received_of,
    sha_of,
)


def _assert_a_untouched(setup: Setup, rows: dict[str, Any], files: dict[str, str]) -> None:
    assert setup.rows() == rows
    assert setup.files() == files  # byte-identical, none moved or removed
    study = setup.study(STUDY_A)
    assert study is not None and study.revision == 0


def test_other_study_is_refused_and_quarantined(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    sops = setup.study_a()
    rows, files = setup.rows(), setup.files()
    caplog.set_level("INFO")

    intruder = make_slice(STUDY_B, SERIES_B, 0, sops[1], PatientID="OTHER-PATIENT-42")
    received = received_of(setup.storage, intruder)
    with pytest.raises(InstanceConflict) as info:
        setup.store.store(received, opens_study=True)

    conflict = info.value
    assert conflict.reason == "other-study" and conflict.refused
    assert (conflict.stored_study, conflict.study) == (STUDY_A, STUDY_B)
    assert conflict.offending_elements == [0x00080018, 0x0020000D]
    assert len(conflict.comment) <= 64
    _assert_a_untouched(setup, rows, files)
    assert setup.study(STUDY_B) is None  # nothing indexed for B
    assert not received.temp.exists()
    [kept] = setup.quarantined()
    assert str(kept.relative_to(setup.root)) == conflict.quarantined
    assert kept.relative_to(setup.root / QUARANTINE / CONFLICTS).parts[:2] == (STUDY_B, SERIES_B)
    assert sha_of(kept) == received.sha256  # what was sent is kept, byte for byte

    [alert] = setup.alerts()
    assert alert.object_id == sops[1] and alert.outcome == "8"
    assert alert.actor == "MODALITY" and alert.source == "10.0.0.9:4242"
    assert "reason=other-study" in alert.detail and f"stored_study={STUDY_A}" in alert.detail
    line = next(r.getMessage() for r in caplog.records if "event=instance_conflict" in r.message)
    assert f"sop={sops[1]}" in line and f"stored_study={STUDY_A}" in line
    for secret in ("OTHER-PATIENT-42", "TEST-001", "Test^Patient"):
        assert secret not in caplog.text and secret not in alert.detail


@pytest.mark.parametrize(
    "attrs,reason",
    [
        ({"SeriesInstanceUID": "1.2.826.0.1.3680043.10.77.1.9"}, "other-series"),
        ({"PatientID": "SOMEONE-ELSE"}, "other-patient"),
        ({"SOPClassUID": MRImageStorage}, "other-sop-class"),
    ],
)
def test_same_study_but_other_series_patient_or_class_is_refused(
    setup: Setup, attrs: dict[str, str], reason: str
) -> None:
    sops = setup.study_a()
    rows, files = setup.rows(), setup.files()
    ds = make_slice(STUDY_A, SERIES_A, 2, sops[2], **attrs)
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    with pytest.raises(InstanceConflict) as info:
        setup.send(ds)
    assert info.value.reason == reason
    _assert_a_untouched(setup, rows, files)
    assert len(setup.quarantined()) == 1 and len(setup.alerts()) == 1


def test_resend_into_the_same_study_is_unchanged(setup: Setup) -> None:
    sops = setup.study_a()
    assert setup.send(make_slice(STUDY_A, SERIES_A, 0, sops[0])) is Outcome.DUPLICATE
    changed = make_slice(STUDY_A, SERIES_A, 0, sops[0], WindowCenter=40)
    assert setup.send(changed) is Outcome.REPLACED
    study = setup.study(STUDY_A)
    assert study is not None and study.revision == 1
    row = setup.rows()[sops[0]]
    assert row[:3] == (STUDY_A, SERIES_A, instance_key(STUDY_A, SERIES_A, sops[0]))
    assert sha_of(setup.root / row[2]) == row[3]
    assert len(setup.rows()) == 4 and not setup.quarantined() and not setup.alerts()


def test_series_of_another_study_is_refused(setup: Setup) -> None:
    setup.study_a()
    rows, files = setup.rows(), setup.files()
    with pytest.raises(InstanceConflict) as info:
        setup.send(make_slice(STUDY_B, SERIES_A, 9, generate_uid()))
    assert info.value.reason == "series-in-other-study"
    assert info.value.offending_elements == [0x0020000E, 0x0020000D]
    _assert_a_untouched(setup, rows, files)
    assert setup.study(STUDY_B) is None and len(setup.quarantined()) == 1


def test_a_sibling_committing_the_uid_first_wins(setup: Setup) -> None:
    """The race the pre-check cannot see: both read "no row"; the index transaction's unique
    constraint orders them and the loser refuses, with its own file quarantined."""
    sop = generate_uid()
    late = Interleaved(setup.db, setup.storage, min_free_bytes=0)
    late.sibling = lambda: setup.send(make_slice(STUDY_A, SERIES_A, 0, sop))
    with pytest.raises(InstanceConflict) as info:
        setup.send(make_slice(STUDY_B, SERIES_B, 0, sop), store=late)
    assert info.value.reason == "other-study"
    rows = setup.rows()
    assert list(rows) == [sop] and rows[sop][:2] == (STUDY_A, SERIES_A)
    assert setup.files() == {rows[sop][2]: rows[sop][3]}  # B's path is empty again
    assert len(setup.quarantined()) == 1 and len(setup.alerts()) == 1
    assert setup.study(STUDY_B) is None


def test_a_sibling_creating_the_series_first_wins(setup: Setup) -> None:
    late = Interleaved(setup.db, setup.storage, min_free_bytes=0)
    late.sibling = lambda: setup.send(make_slice(STUDY_A, SERIES_A, 0, generate_uid()))
    with pytest.raises(InstanceConflict) as info:
        setup.send(make_slice(STUDY_B, SERIES_A, 1, generate_uid()), store=late)
    assert info.value.reason == "series-in-other-study"
    assert len(setup.rows()) == 1 and len(setup.files()) == 1
    assert setup.study(STUDY_B) is None and len(setup.quarantined()) == 1
    # The rolled-back study row's id was not cached: B is stored normally afterwards.
    assert (
        setup.send(make_slice(STUDY_B, SERIES_B, 0, generate_uid()), store=late) is Outcome.STORED
    )
    assert setup.rows()[next(iter(setup.rows()))][0] == STUDY_A


def test_the_stored_file_handed_in_again_is_a_duplicate_and_stays(setup: Setup) -> None:
    """What start-up reconciliation does when a sibling receiver commits the row of a file
    the scan saw without one (found by the chaos suite): the store is handed the stored file
    itself. It is a duplicate; the file is not a temporary copy to remove."""
    sop = generate_uid()
    assert setup.send(make_slice(STUDY_A, SERIES_A, 0, sop)) is Outcome.STORED
    path = setup.root / setup.rows()[sop][2]
    data = path.read_bytes()
    found = Received(path, len(data), sha_of(path), "", parse_header(path))
    assert setup.store.store(found, opens_study=False) is Outcome.DUPLICATE
    assert path.is_file() and sha_of(path) == setup.rows()[sop][3]
    # a re-sent copy (its own temporary file) is still cleaned up
    again = received_of(setup.storage, make_slice(STUDY_A, SERIES_A, 0, sop))
    assert setup.store.store(again, opens_study=True) is Outcome.DUPLICATE
    assert not again.temp.exists() and path.is_file()


def test_a_new_instance_never_replaces_a_file_at_its_path(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file already at a new instance's path is a sibling's until its row shows up (then
    the store decides against that row), or an unindexed leftover after the wait."""
    monkeypatch.setattr(store_module, "OCCUPIED_WAIT_SECONDS", 0.2)
    sop = generate_uid()
    key = instance_key(STUDY_A, SERIES_A, sop)
    leftover = setup.root / key
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"left by a killed attempt")
    assert setup.send(make_slice(STUDY_A, SERIES_A, 0, sop)) is Outcome.STORED
    assert setup.rows()[sop][3] == sha_of(leftover)

    # The sibling's row appears while we wait: decided against it (here: a conflict).
    sop2 = generate_uid()
    sibling_file = setup.root / instance_key(STUDY_A, SERIES_A, sop2)
    ours = received_of(setup.storage, make_slice(STUDY_A, SERIES_A, 1, sop2, PatientID="X-2"))
    first = received_of(setup.storage, make_slice(STUDY_A, SERIES_A, 1, sop2))
    os.replace(first.temp, sibling_file)  # the sibling's file is in place, its row not yet
    first = dataclasses.replace(first, temp=sibling_file)
    timer = threading.Timer(0.05, lambda: setup.store.store(first, opens_study=True))
    timer.start()
    with pytest.raises(InstanceConflict) as info:
        setup.store.store(ours, opens_study=True)
    timer.join()
    assert info.value.reason == "other-patient"
    assert sha_of(sibling_file) == first.sha256 == setup.rows()[sop2][3]


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_concurrent_associations_one_uid_many_studies(
    database: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Threads store one SOP Instance UID into different studies at once: exactly one is
    stored, every other one refused; the stored file is the winner's, intact."""
    url = (
        f"sqlite:///{tmp_path / 'race.db'}"
        if database == "sqlite"
        else str(request.getfixturevalue("postgres_url"))
    )
    db = Database(url)
    db.upgrade()
    try:
        setup = Setup(db, tmp_path / "storage")
        stores = [InstanceStore(db, setup.storage, min_free_bytes=0) for _ in range(6)]
        sop = generate_uid()
        studies = [f"1.2.826.0.1.3680043.10.78.{i}" for i in range(len(stores))]
        received = [
            received_of(setup.storage, make_slice(study, f"{study}.1", 0, sop)) for study in studies
        ]
        barrier = threading.Barrier(len(stores))
        results: list[object] = [None] * len(stores)

        def run(i: int) -> None:
            barrier.wait()
            try:
                results[i] = stores[i].store(received[i], opens_study=True)
            except Exception as exc:
                results[i] = exc

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(stores))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        winners = [i for i, r in enumerate(results) if r is Outcome.STORED]
        assert len(winners) == 1, results
        assert all(isinstance(r, InstanceConflict) for r in results if r is not Outcome.STORED)
        rows = setup.rows()
        assert list(rows) == [sop] and rows[sop][0] == studies[winners[0]]
        assert setup.files() == {rows[sop][2]: received[winners[0]].sha256}
        assert len(setup.quarantined()) == len(stores) - 1
        with db.session() as session:
            assert session.scalar(select(func.count(Study.id))) == 1
    finally:
        db.dispose()


def test_reconcile_never_repoints_a_row(setup: Setup) -> None:
    """A file under study B whose SOP Instance UID is indexed in study A (left by an older
    receiver, or put there by hand) is quarantined at start-up; A keeps its instance."""
    sops = setup.study_a()
    rows, files = setup.rows(), setup.files()
    stray = setup.root / instance_key(STUDY_B, SERIES_B, sops[0])
    stray.parent.mkdir(parents=True)
    make_slice(STUDY_B, SERIES_B, 0, sops[0]).save_as(stray, enforce_file_format=True)
    stray_sha = sha_of(stray)

    report = reconcile(setup.store, margin_seconds=0)
    assert report.quarantined == 1 and report.indexed == 0 and report.failed == 0
    _assert_a_untouched(setup, rows, files)
    assert not stray.exists() and [sha_of(p) for p in setup.quarantined()] == [stray_sha]
    assert setup.study(STUDY_B) is None and len(setup.alerts()) == 1
