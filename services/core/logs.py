"""Structured logging: one ``key=value`` event per line, no patient identifiers.

Our own events name objects by UID or id, never by patient data (security.md, section 6).
Libraries are not as careful: highdicom's person-name warning quotes the name, pydicom's
value warnings quote the value. So :func:`setup_logging` routes library warnings into
logging (``logging.captureWarnings``) and puts one filter, :class:`PatientDataFilter`, on
the handler every record goes through:

* in records of the DICOM libraries and in captured warnings (loggers ``py.warnings``,
  ``pydicom*``, ``highdicom*``), every quoted string is replaced by ``"<redacted>"``;
* in any record, an argument that is a ``PersonName`` (or a PN data element, or a whole
  data set) is replaced by ``<redacted>``.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping
from pathlib import Path

REDACTED = "<redacted>"
#: Loggers whose messages quote values taken from data sets (``py.warnings``: warnings
#: captured by :func:`logging.captureWarnings`, from any library).
QUOTING_LOGGERS = ("py.warnings", "pydicom", "highdicom")
#: From the first quote, double or single, to the last one, across lines: a value with
#: quotes or line breaks of its own cannot end the match early (the text between goes too).
_QUOTED = re.compile(r"[\"'][\s\S]*[\"']")


def _quoting(name: str) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in QUOTING_LOGGERS)


def redact_quoted(text: str) -> str:
    """``text`` with everything from its first quote to its last one redacted."""
    return _QUOTED.sub(f'"{REDACTED}"', text)


class PatientDataFilter(logging.Filter):
    """Redacts patient identifiers in every record it sees (see the module docstring).

    Installed on the handler by :func:`setup_logging`; it changes the record itself, so
    nothing downstream sees the original either. Never drops a record."""

    def __init__(self) -> None:
        super().__init__()
        from pydicom.dataelem import DataElement
        from pydicom.dataset import Dataset
        from pydicom.valuerep import PersonName

        self._element = DataElement
        self._whole = (PersonName, Dataset)

    def _scrub(self, value: object) -> object:
        if isinstance(value, self._whole):
            return REDACTED
        if isinstance(value, self._element) and value.VR == "PN":
            return REDACTED
        return value

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, Mapping):
            record.args = {key: self._scrub(value) for key, value in record.args.items()}
        elif isinstance(record.args, tuple):
            record.args = tuple(self._scrub(value) for value in record.args)
        record.msg = self._scrub(record.msg)
        if _quoting(record.name):
            record.msg = redact_quoted(record.getMessage())
            record.args = None
        return True


def setup_logging(
    level: str = "INFO", service: str = "noduleflow", *, log_file: Path | None = None
) -> None:
    """Log to stderr, or to ``log_file`` when given; library warnings are logged too, and
    every record passes :class:`PatientDataFilter`."""
    handler: logging.Handler = (
        logging.FileHandler(log_file) if log_file is not None else logging.StreamHandler(sys.stderr)
    )
    handler.setFormatter(
        logging.Formatter(
            f"ts=%(asctime)s level=%(levelname)s service={service} logger=%(name)s %(message)s",
            "%Y-%m-%dT%H:%M:%S%z",
        )
    )
    handler.addFilter(PatientDataFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.captureWarnings(True)  # warnings.warn(...) → logger "py.warnings" → the filter
    for noisy in ("pika", "pynetdicom", "alembic", "httpx", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
