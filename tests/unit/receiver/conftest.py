"""Fixtures of the receiver's unit tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from services.core.db import Database
from tests.unit.receiver.storesetup import Setup


@pytest.fixture
def setup(database_url: str, tmp_path: Path) -> Iterator[Setup]:
    """On both back ends: PostgreSQL's indexing takes a path of its own (one statement)."""
    db = Database(database_url)
    db.upgrade()
    yield Setup(db, tmp_path / "storage")
    db.dispose()
