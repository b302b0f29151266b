"""Clean copies of source-image headers for the documents we derive from them.

Real data carries damage that highdicom would copy into our outputs (a broken
ReferencedStudySequence, PatientName in an odd or undeclared character set, over-long
values, malformed dates). Rather than hand raw source datasets to the builders, we copy
an allow-list of attributes, decoded to text, checked against their VR, and re-declare
the character set: ``ISO_IR 192`` (UTF-8) when any copied text is not ASCII, else none
(the default repertoire), so SpecificCharacterSet always matches what is written.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

UTF8 = "ISO_IR 192"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DIGITS = re.compile(r"^\d{8}$")
_TIME = re.compile(r"^\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?$")
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")

# Patient and General Study modules (PS3.3 C.7.1.1, C.7.2.1): keyword -> (VR, max length)
PATIENT_STUDY: dict[str, tuple[str, int]] = {
    "PatientName": ("PN", 64),
    "PatientID": ("LO", 64),
    "IssuerOfPatientID": ("LO", 64),
    "PatientBirthDate": ("DA", 8),
    "PatientSex": ("CS", 16),
    "StudyInstanceUID": ("UI", 64),
    "StudyDate": ("DA", 8),
    "StudyTime": ("TM", 16),
    "StudyID": ("SH", 16),
    "AccessionNumber": ("SH", 16),
    "ReferringPhysicianName": ("PN", 64),
    "StudyDescription": ("LO", 64),
}
# Image-level attributes the SEG and key-image builders need (geometry, pixels).
IMAGE: dict[str, tuple[str, int]] = {
    "SOPClassUID": ("UI", 64),
    "SOPInstanceUID": ("UI", 64),
    "SeriesInstanceUID": ("UI", 64),
    "FrameOfReferenceUID": ("UI", 64),
    "Modality": ("CS", 16),
    "SeriesNumber": ("IS", 12),
    "InstanceNumber": ("IS", 12),
    "Rows": ("US", 0),
    "Columns": ("US", 0),
    "PixelSpacing": ("DS", 0),
    "SliceThickness": ("DS", 0),
    "ImagePositionPatient": ("DS", 0),
    "ImageOrientationPatient": ("DS", 0),
    "PositionReferenceIndicator": ("LO", 64),
}


def clean_text(value: object, max_len: int) -> str:
    """Text without control characters or backslashes, trimmed to ``max_len``."""
    text = _CONTROL.sub(" ", str(value)).replace("\\", " ").strip()
    return text[:max_len].strip()


def clean_person_name(value: object) -> str:
    """A PN value: at most three component groups of five components, 64 chars each.

    A name without any ``^`` is a family name alone (``DOE JOHN``); it gets the trailing
    caret PS3.5 6.2.1.2 allows (``DOE JOHN^``, the same name), which also keeps highdicom
    from warning about it, a warning that would quote the name.
    """
    groups = str(value).split("=")[:3]
    cleaned = []
    for group in groups:
        parts = [clean_text(part, 64) for part in group.split("^")[:5]]
        cleaned.append("^".join(parts).rstrip("^")[:64])
    while cleaned and not cleaned[-1]:
        cleaned.pop()
    if not any("^" in group for group in cleaned):
        for i, group in enumerate(cleaned):
            if group:  # the first group with a name: it has one component
                cleaned[i] = group[:63] + "^"
                break
    return "=".join(cleaned)


def _clean_value(keyword: str, vr: str, max_len: int, value: object) -> object | None:
    """The cleaned value, or None when the source value is unusable."""
    if vr not in ("US", "IS", "DS") and isinstance(value, MultiValue | list | tuple):
        value = value[0] if len(value) else ""  # a stray backslash split a VM-1 value
    if vr == "PN":
        return clean_person_name(value)
    if vr == "UI":
        text = str(value).strip()
        return text if len(text) <= 64 and _UID.match(text) else None
    if vr == "DA":
        text = str(value).strip()
        return text if _DIGITS.match(text) else ""
    if vr == "TM":
        text = str(value).strip()
        return text if _TIME.match(text) else ""
    if vr == "CS":
        text = clean_text(value, max_len).upper()
        if keyword == "PatientSex" and text not in ("M", "F", "O"):
            return ""
        return text
    if vr in ("US", "IS", "DS"):
        if isinstance(value, MultiValue | list | tuple):
            return [float(v) for v in value] if vr == "DS" else [int(v) for v in value]
        number = str(value)
        return float(number) if vr == "DS" else int(float(number))
    return clean_text(value, max_len)


def _copy(source: Dataset, target: Dataset, allow: dict[str, tuple[str, int]]) -> None:
    for keyword, (vr, max_len) in allow.items():
        if keyword not in source:
            continue
        raw = source[keyword].value
        if raw is None or raw == "":
            setattr(target, keyword, "" if vr not in ("US", "IS", "DS") else None)
            continue
        try:
            value = _clean_value(keyword, vr, max_len, raw)
        except (TypeError, ValueError):
            value = None
        if value is not None:
            setattr(target, keyword, value)


def declare_charset(dataset: Dataset) -> Dataset:
    """Set SpecificCharacterSet to match the text actually present (UTF-8 or default)."""
    texts: Iterable[object] = (
        element.value for element in dataset if element.VR in ("PN", "LO", "SH", "LT", "ST")
    )
    if any(not str(text).isascii() for text in texts):
        dataset.SpecificCharacterSet = UTF8
    elif "SpecificCharacterSet" in dataset:
        del dataset.SpecificCharacterSet
    return dataset


def study_header(source: Dataset) -> Dataset:
    """Patient and study attributes of ``source``, cleaned, with a matching charset."""
    header = Dataset()
    _copy(source, header, PATIENT_STUDY)
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex"):
        if keyword not in header:
            setattr(header, keyword, "")
    for keyword in ("StudyDate", "StudyTime", "StudyID", "AccessionNumber"):
        if keyword not in header:
            setattr(header, keyword, "")
    if "ReferringPhysicianName" not in header:
        header.ReferringPhysicianName = ""
    return declare_charset(header)


def image_header(source: Dataset, study: Dataset | None = None) -> Dataset:
    """A clean header for one source image: study header plus image/geometry attributes.

    Never copies sequences (ReferencedStudySequence and friends) from the source.
    """
    header = Dataset()
    for element in study if study is not None else study_header(source):
        header.add(element)
    _copy(source, header, IMAGE)
    for keyword in ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID"):
        if keyword not in header:
            raise ValueError(f"source image lacks a valid {keyword}")
    return declare_charset(header)
