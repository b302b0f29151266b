"""The chaos suite's instance invariant against a real schema (SQLite) and real files."""

from __future__ import annotations

from pathlib import Path

from services.core.db import Database
from services.core.storage import LocalStorage
from tests.chaos.invariants import check_instances
from tests.chaos.traffic import write_studies
from tests.factories.worker import store_files


def test_instance_check_holds_then_sees_a_missing_file_and_an_unindexed_ack(
    tmp_path: Path, db: Database
) -> None:
    (study,) = write_studies(tmp_path / "sent", 1, slices=4)
    storage = LocalStorage(tmp_path / "storage")
    store_files(db, storage, study.files[:3])
    study.acked.update(study.files[:3])
    check = check_instances(db, storage.root, [study])
    assert check.held, check.problems
    assert check.measured == "3/3 instances"

    next(storage.root.rglob("*.dcm")).unlink()
    study.acked.add(study.files[3])  # acknowledged, never indexed
    check = check_instances(db, storage.root, [study])
    assert not check.held
    assert check.measured == "2/4 instances"
    problems = sorted(p.split(": ", 1)[1].split(" ", 1)[0] for p in check.problems)
    assert problems == ["indexed", "no"], check.problems
