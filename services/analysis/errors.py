"""The one exception the analysis pipeline raises for input a person must act on."""

from __future__ import annotations

from services.core.errors import PermanentError

# Codes whose job outcome is "skipped" (no suitable series) rather than "failed" (bad data).
SKIP_CODES = frozenset({"not-ct", "no-usable-series", "too-few-slices", "gantry-tilt", "not-dicom"})
FAIL_CODES = frozenset(
    {
        "inconsistent-geometry",
        "corrupt-pixel-data",
        "image-too-large",
        "unsupported-transfer-syntax",
    }
)


class AnalysisError(PermanentError):
    """Permanent, human-actionable failure of the analysis of one study.

    ``code`` is a stable machine-readable reason, ``skip`` tells the job layer whether the
    study was merely unsuitable (``True`` → job "skipped") or its data is broken (``False`` →
    job "failed"), and ``message`` is one line a person can act on. Messages never carry
    patient identifiers; they may name UIDs, counts and measurements.
    """

    def __init__(self, code: str, message: str, *, skip: bool | None = None) -> None:
        if code not in SKIP_CODES | FAIL_CODES:
            raise ValueError(f"unknown analysis error code {code!r}")
        super().__init__(
            f"{code}: {message}", code=code, skip=code in SKIP_CODES if skip is None else skip
        )
        self.message = message
