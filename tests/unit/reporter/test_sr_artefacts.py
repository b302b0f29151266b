"""Artefact layout (shared with the API): paths, atomic writes, outbox-relative rows."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.core.settings import Settings
from services.core.storage import UnsafeKeyError
from services.reporter.dicom.artefacts import (
    artefact_dir,
    atomic_write,
    outbox_relative,
    resolve_outbox_path,
)


def test_layout(settings: Settings) -> None:
    folder = artefact_dir(settings, "1.2.840.1", 3)
    assert folder == settings.outbox_dir / "1.2.840.1" / "v3"


@pytest.mark.parametrize("uid", ["../../etc", "1.2/3", "", "1.2.3 ", "x" * 65])
def test_unsafe_study_uids_never_become_paths(settings: Settings, uid: str) -> None:
    with pytest.raises(UnsafeKeyError):
        artefact_dir(settings, uid, 1)


def test_versions_start_at_one(settings: Settings) -> None:
    with pytest.raises(ValueError):
        artefact_dir(settings, "1.2.3", 0)


def test_atomic_write_replaces_and_leaves_no_temporaries(tmp_path: Path) -> None:
    target = tmp_path / "a" / "sr.dcm"
    atomic_write(target, b"one")
    atomic_write(target, b"two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in target.parent.iterdir()] == ["sr.dcm"]


def test_rows_store_outbox_relative_paths(settings: Settings) -> None:
    path = artefact_dir(settings, "1.2.3", 1) / "seg.dcm"
    stored = outbox_relative(settings, path)
    assert stored == "1.2.3/v1/seg.dcm"
    assert resolve_outbox_path(settings, stored) == path.resolve()
    with pytest.raises(UnsafeKeyError):
        resolve_outbox_path(settings, "../outside.dcm")
    with pytest.raises(UnsafeKeyError):
        resolve_outbox_path(settings, "/etc/passwd")
