"""Which received instances can start an analysis: the loop guard of the receiver (pure).

A PACS that routes everything it stores sends noduleflow's own results (Comprehensive 3D
SR, SEG, Key Object Selection, Secondary Capture key images) back to it, and scanners send
dose reports, presentation states and screenshots with their CT. The analysis never uses
any of these (it reads CT Image Storage only, :mod:`services.analysis.series`). They are
stored and acknowledged like every instance, so nothing acknowledged is lost, but they do
not touch their study's completion: they never make a study pending, never move its idle
timer, never count as an association carrying it, never bump its revision, and are not
listed in a job's ``StudyReady``. Without this, every result that came back made its study
"new" again and started an amendment, whose results came back in turn.

An instance is *not analysed* when

* its Manufacturer (0008,0070) is exactly :data:`~services.core.identity.MANUFACTURER`
  (case and surrounding spaces aside): something noduleflow made, whatever its class; or
* its SOP Class belongs to a family of :data:`NOT_ANALYSED_FAMILIES`: the non-image
  classes (SR and KOS, SEG and registrations, presentation states, waveforms, encapsulated
  documents, radiotherapy objects, ...) and Secondary Capture (PS3.4 B.5, PS3.6 A.1).

Every other class, other images included (MR, PET, ...), is analysed as before: a study of
those alone gets a job that ends ``skipped`` with a reason a person can act on.
"""

from __future__ import annotations

from services.core.identity import MANUFACTURER

#: the reason for an instance that noduleflow made (by its Manufacturer)
OWN_RESULT = "own-result"

_STORAGE = "1.2.840.10008.5.1.4.1.1"
#: (SOP Class UID prefix, reason): a class is in a family when its UID is the prefix or
#: starts with the prefix and a dot (PS3.6 Table A-1; pynetdicom's storage classes)
NOT_ANALYSED_FAMILIES: tuple[tuple[str, str], ...] = (
    (f"{_STORAGE}.7", "secondary-capture"),  # SC and the multi-frame SC classes
    (f"{_STORAGE}.88", "structured-report"),  # every SR, Key Object Selection, dose SRs
    (f"{_STORAGE}.66", "segmentation-or-registration"),  # raw data, registration, SEG
    (f"{_STORAGE}.11", "presentation-state"),
    (f"{_STORAGE}.9", "waveform"),  # ECG, audio, ... and waveform presentation states
    (f"{_STORAGE}.104", "encapsulated-document"),  # PDF, CDA, STL, OBJ, MTL
    (f"{_STORAGE}.481", "radiotherapy"),
    ("1.2.840.10008.5.1.4.34", "radiotherapy"),  # second-generation RT instructions
    (f"{_STORAGE}.4.2", "spectroscopy"),  # MR Spectroscopy
    (f"{_STORAGE}.67", "value-mapping"),  # Real World Value Mapping
    (f"{_STORAGE}.68", "surface-scan"),
    (f"{_STORAGE}.78", "measurements"),  # ophthalmic measurements
    (f"{_STORAGE}.79", "measurements"),
    (f"{_STORAGE}.80", "measurements"),
    (f"{_STORAGE}.90", "content-assessment"),
    (f"{_STORAGE}.91", "annotation"),  # microscopy bulk annotations
    (f"{_STORAGE}.131", "structured-display"),
    (f"{_STORAGE}.200", "protocol"),  # performed procedure protocols
)


def _in_family(sop_class_uid: str, prefix: str) -> bool:
    return sop_class_uid == prefix or sop_class_uid.startswith(prefix + ".")


def class_family(sop_class_uid: str) -> str | None:
    """The reason of the not-analysed family ``sop_class_uid`` belongs to, or None."""
    uid = sop_class_uid.strip()
    for prefix, reason in NOT_ANALYSED_FAMILIES:
        if _in_family(uid, prefix):
            return reason
    return None


def is_own_manufacturer(manufacturer: str) -> bool:
    """True when Manufacturer (0008,0070) names noduleflow itself (exactly, ignoring case
    and surrounding spaces; ``noduleflow-phantom`` is not us)."""
    return manufacturer.strip().lower() == MANUFACTURER


def not_analysed_reason(sop_class_uid: str, manufacturer: str = "") -> str | None:
    """Why an instance never starts or changes an analysis (``own-result`` or its class
    family), or None when it may be analysed and so counts for its study's completion."""
    if is_own_manufacturer(manufacturer):
        return OWN_RESULT
    return class_family(sop_class_uid)
