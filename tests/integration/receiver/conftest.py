"""Fixtures for receiver integration tests (helpers: :mod:`tests.integration.receiver.harness`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.factories.dicom import write_ct_series


@pytest.fixture(scope="session")
def ct_study_300(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, list[Path]]:
    """A 300-slice 512×512 CT series (~157 MB), written once per test session."""
    return write_ct_series(tmp_path_factory.mktemp("ct300"), 300, rows=512, cols=512)
