"""Indexing as an association sends a study: the first instance opens the study, the rest
(on PostgreSQL one statement each, :meth:`InstanceStore._index_at_once`) add their rows and
touch the study just as the two-statement transaction does, on both back ends."""

from __future__ import annotations

import time
from datetime import datetime

import pytest
from pydicom.uid import ComprehensiveSRStorage, generate_uid

from services.receiver.store import InstanceConflict, InstanceStore, Outcome
from tests.unit.receiver.storesetup import (
    SERIES_A,
    SERIES_B,
    STUDY_A,
    STUDY_B,
    Interleaved,
    Setup,
    make_slice,
)


def _times(setup: Setup, uid: str) -> tuple[datetime, datetime | None, int, int]:
    study = setup.study(uid)
    assert study is not None
    return study.last_received_at, study.pending_since, study.open_associations, study.revision


def test_a_study_as_one_association_sends_it(setup: Setup) -> None:
    sops = [str(generate_uid()) for _ in range(5)]
    assert setup.send(make_slice(STUDY_A, SERIES_A, 0, sops[0])) is Outcome.STORED
    first_seen, pending, opened, revision = _times(setup, STUDY_A)
    assert pending is not None and (opened, revision) == (1, 0)
    for i, sop in enumerate(sops[1:], start=1):
        time.sleep(0.01)
        assert setup.send(make_slice(STUDY_A, SERIES_A, i, sop), opens=False) is Outcome.STORED
        last, still_pending, *counts = _times(setup, STUDY_A)
        assert last > first_seen and still_pending == pending  # touched, pending kept
        assert counts == [1, 0]  # nothing opened or replaced
        first_seen = last
    rows = setup.rows()
    assert sorted(rows) == sorted(sops)
    assert all(row[:2] == (STUDY_A, SERIES_A) for row in rows.values())
    assert setup.files() == {row[2]: row[3] for row in rows.values()}
    # a re-send of the same bytes changes nothing, a new version counts as a revision
    assert setup.send(make_slice(STUDY_A, SERIES_A, 2, sops[2]), opens=False) is Outcome.DUPLICATE
    changed = make_slice(STUDY_A, SERIES_A, 2, sops[2], WindowCenter=40)
    assert setup.send(changed, opens=False) is Outcome.REPLACED
    assert _times(setup, STUDY_A)[2:] == (1, 1)


def test_an_instance_never_analysed_leaves_its_study_as_it_was(setup: Setup) -> None:
    setup.send(make_slice(STUDY_A, SERIES_A, 0, str(generate_uid())))
    before = _times(setup, STUDY_A)
    report = make_slice(
        STUDY_A, SERIES_A, 1, str(generate_uid()), SOPClassUID=ComprehensiveSRStorage
    )
    report.file_meta.MediaStorageSOPClassUID = ComprehensiveSRStorage
    time.sleep(0.01)
    assert setup.send(report, opens=False) is Outcome.STORED
    assert str(report.SOPInstanceUID) in setup.rows()
    assert _times(setup, STUDY_A) == before


def test_a_failed_index_statement_changes_no_study(setup: Setup) -> None:
    """A sibling commits the SOP Instance UID into study A while this store indexes it into
    study B, which it knows already: the insert fails on the unique constraint, the instance
    is refused, and study B is not touched by the statement that failed."""
    late = Interleaved(setup.db, setup.storage, min_free_bytes=0)
    assert setup.send(make_slice(STUDY_B, SERIES_B, 0, str(generate_uid())), store=late) is (
        Outcome.STORED
    )
    before = _times(setup, STUDY_B)
    sop = str(generate_uid())
    late.sibling = lambda: setup.send(make_slice(STUDY_A, SERIES_A, 0, sop))
    time.sleep(0.01)
    with pytest.raises(InstanceConflict) as info:
        setup.send(make_slice(STUDY_B, SERIES_B, 1, sop), store=late, opens=False)
    assert info.value.reason == "other-study"
    assert _times(setup, STUDY_B) == before
    rows = setup.rows()
    assert rows[sop][:2] == (STUDY_A, SERIES_A) and len(rows) == 2
    assert len(setup.quarantined()) == 1
    # the store goes on: its next instance of B is indexed
    assert (
        setup.send(make_slice(STUDY_B, SERIES_B, 2, str(generate_uid())), store=late, opens=False)
        is Outcome.STORED
    )


def test_a_store_that_has_not_seen_the_study_indexes_it_in_full(setup: Setup) -> None:
    """A second receiver process takes over a study mid-way, without opening it: it learns the
    study's and series' ids in its own transaction, and touches the study as the first did."""
    setup.send(make_slice(STUDY_A, SERIES_A, 0, str(generate_uid())))
    before = _times(setup, STUDY_A)
    other = InstanceStore(setup.db, setup.storage, min_free_bytes=0)
    for i in (1, 2):
        time.sleep(0.01)
        assert (
            setup.send(
                make_slice(STUDY_A, SERIES_A, i, str(generate_uid())), store=other, opens=False
            )
            is Outcome.STORED
        )
    after = _times(setup, STUDY_A)
    assert after[0] > before[0] and after[1:] == before[1:]
    assert len(setup.rows()) == 3
