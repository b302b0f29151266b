"""Header of a received instance: parsed once, up to the pixel data, into a value object.

Only what the index needs is read (``specific_tags``, ``stop_before_pixels``); the object
is validated in :func:`parse_header`, so one that exists carries storage-safe UIDs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.tag import Tag

from services.core.errors import PermanentError
from services.core.uids import is_valid_uid
from services.receiver.fast.headparse import read_head
from services.receiver.relevance import not_analysed_reason

_TAGS = [
    Tag(keyword)
    for keyword in (
        "SOPClassUID",
        "SOPInstanceUID",
        "Manufacturer",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "Modality",
        "InstanceNumber",
        "SeriesNumber",
        "SeriesDescription",
        "BodyPartExamined",
        "PatientID",
        "IssuerOfPatientID",
        "PatientName",
        "PatientBirthDate",
        "PatientSex",
        "AccessionNumber",
        "StudyDate",
        "StudyTime",
        "StudyDescription",
        "ReferringPhysicianName",
        "ImagePositionPatient",
        "ImageOrientationPatient",
    )
]


class HeaderError(PermanentError, ValueError):
    """The data set cannot be indexed; ``reason`` is safe to log (no patient data)."""

    code = "invalid-header"

    def __init__(self, reason: str, *, bad_uid: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.bad_uid = bad_uid


@dataclass(frozen=True)
class InstanceHeader:
    """The indexed attributes of one composite instance (PS3.3 C.7/C.12 modules)."""

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    modality: str = ""
    instance_number: int | None = None
    series_number: int | None = None
    series_description: str = ""
    body_part: str = ""
    patient_id: str = ""
    issuer_of_patient_id: str = ""
    patient_name: str = ""
    patient_birth_date: str = ""
    patient_sex: str = ""
    accession_number: str = ""
    study_date: str = ""
    study_time: str = ""
    study_description: str = ""
    referring_physician: str = ""
    #: position along the slice normal, dot(ImagePositionPatient, row × column), in mm
    slice_position: float | None = None
    manufacturer: str = ""

    @property
    def not_analysed(self) -> str | None:
        """Why this instance never starts or changes an analysis (:mod:`.relevance`), or
        None when it counts for its study's completion."""
        return not_analysed_reason(self.sop_class_uid, self.manufacturer)


Source = Dataset | Mapping[str, Any]


def _text(ds: Source, keyword: str, limit: int) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    return str(value).strip()[:limit]


def _int(ds: Source, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return None if value in (None, "") else int(value)
    except (TypeError, ValueError):
        return None


def _floats(ds: Source, keyword: str, count: int) -> list[float] | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    try:
        parts = str(value).split("\\") if isinstance(value, str) else list(value)
        numbers = [float(part) for part in parts]
    except (TypeError, ValueError):
        return None
    finite = len(numbers) == count and all(math.isfinite(n) for n in numbers)
    return numbers if finite else None


def slice_position(ds: Source) -> float | None:
    """dot(ImagePositionPatient, normal of ImageOrientationPatient) (PS3.3 C.7.6.2.1.1), or
    None when either is missing or malformed."""
    position = _floats(ds, "ImagePositionPatient", 3)
    orientation = _floats(ds, "ImageOrientationPatient", 6)
    if position is None or orientation is None:
        return None
    (a, b, c), (d, e, f) = orientation[:3], orientation[3:]
    normal = (b * f - c * e, c * d - a * f, a * e - b * d)
    length = math.sqrt(sum(n * n for n in normal))
    if length < 0.5:
        return None
    return round(sum(p * n for p, n in zip(position, normal, strict=True)) / length, 3)


def _uid(ds: Source, keyword: str) -> str:
    raw = ds.get(keyword)
    value = "" if raw is None else str(raw).rstrip("\x00 ")
    if not is_valid_uid(value):
        raise HeaderError(f"invalid {keyword}", bad_uid=True)
    return value


def _present(ds: Source, keyword: str) -> bool:
    value = ds.get(keyword)
    return value is not None and str(value).strip("\x00 ") != ""


def header_from_dataset(ds: Source, transfer_syntax_uid: str) -> InstanceHeader:
    """Build a validated header from an already-read data set.

    A data set with neither SOP Class UID nor SOP Instance UID is not a composite instance
    at all (bytes that do not decode into one: PS3.4 B.2.3 "Cannot understand"); one that
    has them but a missing or unsafe UID is a security matter (``bad_uid``)."""
    if not _present(ds, "SOPClassUID") and not _present(ds, "SOPInstanceUID"):
        raise HeaderError("not a DICOM data set")  # no SOP Class UID, no SOP Instance UID
    header = InstanceHeader(
        sop_class_uid=_uid(ds, "SOPClassUID"),
        sop_instance_uid=_uid(ds, "SOPInstanceUID"),
        study_instance_uid=_uid(ds, "StudyInstanceUID"),
        series_instance_uid=_uid(ds, "SeriesInstanceUID"),
        transfer_syntax_uid=transfer_syntax_uid,
        modality=_text(ds, "Modality", 16),
        instance_number=_int(ds, "InstanceNumber"),
        series_number=_int(ds, "SeriesNumber"),
        series_description=_text(ds, "SeriesDescription", 64),
        body_part=_text(ds, "BodyPartExamined", 16),
        patient_id=_text(ds, "PatientID", 64),
        issuer_of_patient_id=_text(ds, "IssuerOfPatientID", 64),
        patient_name=_text(ds, "PatientName", 324),
        patient_birth_date=_text(ds, "PatientBirthDate", 8),
        patient_sex=_text(ds, "PatientSex", 16),
        accession_number=_text(ds, "AccessionNumber", 64),
        study_date=_text(ds, "StudyDate", 8),
        study_time=_text(ds, "StudyTime", 16),
        study_description=_text(ds, "StudyDescription", 64),
        referring_physician=_text(ds, "ReferringPhysicianName", 324),
        slice_position=slice_position(ds),
        manufacturer=_text(ds, "Manufacturer", 64),
    )
    return header


def parse_header(
    path: Path,
    *,
    head: bytes | None = None,
    sop_class_uid: str | None = None,
    sop_instance_uid: str | None = None,
) -> InstanceHeader:
    """Read ``path`` up to the pixel data and validate it.

    Parameters
    ----------
    path
        A DICOM file (PS3.10) with its file meta information.
    head
        The first bytes of the file, when the caller has them in memory: read by
        :func:`services.receiver.headparse.read_head` without touching the file when
        it can, else the file is read with pydicom.
    sop_class_uid, sop_instance_uid
        The Affected SOP Class/Instance UIDs of the C-STORE request (PS3.7 9.1.1); when
        given, the data set must agree with them.

    Raises
    ------
    HeaderError
        Not DICOM (``bad_uid`` False), a UID that is missing or not
        ``^[0-9]+(\\.[0-9]+)*$`` of at most 64 characters (``bad_uid`` True), or a data set
        that contradicts its request (``bad_uid`` False).
    """
    values = read_head(bytes(head)) if head is not None else None
    header: InstanceHeader | None = None
    if values is not None:
        try:
            header = header_from_dataset(values, values["TransferSyntaxUID"])
        except HeaderError:
            header = None  # let pydicom have the last word before refusing
    if header is None:
        try:
            ds = dcmread(path, stop_before_pixels=True, specific_tags=_TAGS)
        except (InvalidDicomError, EOFError, OSError, ValueError, KeyError) as exc:
            raise HeaderError(f"unreadable data set: {exc.__class__.__name__}") from exc
        transfer_syntax = str(getattr(ds.file_meta, "TransferSyntaxUID", "") or "")
        try:
            header = header_from_dataset(ds, transfer_syntax)
        except HeaderError:
            raise
        except Exception as exc:  # pydicom decodes lazily: damage shows up on access
            raise HeaderError(f"unreadable data set: {exc.__class__.__name__}") from exc
    if sop_instance_uid is not None and header.sop_instance_uid != sop_instance_uid:
        raise HeaderError("SOPInstanceUID differs from the request")
    if sop_class_uid is not None and header.sop_class_uid != sop_class_uid:
        raise HeaderError("SOPClassUID differs from the request")
    return header
