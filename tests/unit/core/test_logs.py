"""The one logging filter of ``setup_logging``: patient identifiers never reach a log line."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.valuerep import PersonName

from services.core.logs import setup_logging


@pytest.fixture
def log_file(tmp_path: Path) -> Iterator[Path]:
    """``setup_logging`` into a file; the process's logging is put back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    path = tmp_path / "service.log"
    setup_logging("DEBUG", service="test", log_file=path)
    try:
        yield path
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)
        logging.captureWarnings(False)


def test_library_warnings_and_person_names_are_redacted(log_file: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn('The string "DOE JOHN" is unlikely to represent a name', UserWarning)
        warnings.warn("Invalid value for VR PN: 'Robert\"); DROP'", UserWarning)
    logging.getLogger("highdicom.base").warning(
        'value of argument "patient_name" is potentially invalid: "SMITH\nANNA"'
    )
    logging.getLogger("pydicom").warning("Invalid value for VR PN: %r", "O'BRIEN KATE")
    ours = logging.getLogger("services.reporter")
    ours.info("event=probe name=%s", PersonName("ROE^JANE"))
    ours.info("event=probe named=%(name)s", {"name": PersonName("POE^EDGAR")})
    header = Dataset()
    header.PatientName = "MOE^MAX"
    ours.info("event=probe header=%s element=%s", header, header["PatientName"])
    ours.info("event=kept study=%s quoted='%s'", "1.2.3", "not a name")  # ours: left alone
    text = log_file.read_text()
    for name in ("DOE", "Robert", "DROP", "SMITH", "ANNA", "BRIEN", "JANE", "EDGAR", "MAX"):
        assert name not in text, text
    assert text.count("<redacted>") == 8
    assert "logger=py.warnings" in text  # the warnings were logged, not printed
    assert "event=kept study=1.2.3 quoted='not a name'" in text
