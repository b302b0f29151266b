"""Code systems, identifiers and small conversions shared by the FHIR builders and search.

Resources are validated with ``fhir.resources.R4B`` models: fhir.resources 8 ships R5 by
default and R4B (4.3.0) as a subpackage, with no R4 (4.0.1) package. The resources served here
(DiagnosticReport, Observation, ImagingStudy, Patient, Device, Bundle, OperationOutcome,
CapabilityStatement) have the same structure in R4 and R4B for every element we emit, so the
server declares ``fhirVersion`` 4.0.1 (R4), which is what R4 clients such as ``fhirclient``
and R4 servers such as Medplum expect.
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from typing import Any

from services.core.contracts import JobDetails

FHIR_VERSION = "4.0.1"
FHIR_MEDIA_TYPE = "application/fhir+json"

REPORT_SYSTEM = "urn:noduleflow:report"
OBSERVATION_SYSTEM = "urn:noduleflow:observation"
DEVICE_SYSTEM = "urn:noduleflow:device"
CODES_SYSTEM = "urn:noduleflow:codes"
LUNG_RADS_SYSTEM = "urn:noduleflow:lung-rads"
NODULE_KIND_SYSTEM = "urn:noduleflow:nodule-kind"
DICOM_UID_SYSTEM = "urn:dicom:uid"
TAG_SYSTEM = "urn:noduleflow:tag"

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"

# LOINC 24627-2 "CT Chest" (the report's procedure code, as in the FHIR ServiceRequest examples).
REPORT_CODE = {"system": LOINC, "code": "24627-2", "display": "CT Chest"}
NODULE_CODE = {"system": SNOMED, "code": "27925004", "display": "Nodule"}
MASS_CODE = {"system": SNOMED, "code": "4147007", "display": "Mass"}
#: the Observation code of each ``finding_type`` (contracts.Finding)
FINDING_CODES = {"nodule": NODULE_CODE, "mass": MASS_CODE}
LUNG_CODE = {"system": SNOMED, "code": "39607008", "display": "Lung structure"}

# Standard codes beside the private ones (docs/fhir.md, "Codes", lists each with its source).
RADLEX = "http://www.radlex.org"
#: DiagnosticReport.category: HL7 v2 table 0074 "RAD" and the LOINC part "Radiology"
REPORT_CATEGORIES = (
    {"system": V2_0074, "code": "RAD", "display": "Radiology"},
    {"system": LOINC, "code": "LP29684-5", "display": "Radiology"},
)
#: the Lung-RADS assessment as a concept (the Observation component's code)
LUNG_RADS_CONCEPTS = (
    {"system": RADLEX, "code": "RID50134", "display": "Lung-RADS assessment"},
    {
        "system": SNOMED,
        "code": "1362105002",
        "display": "Lung Imaging Reporting and Data System category",
    },
)
#: each Lung-RADS category as a RadLex term (no standard code found for "S")
LUNG_RADS_RADLEX = {
    "0": "RID50135",
    "1": "RID50136",
    "2": "RID50137",
    "3": "RID50138",
    "4A": "RID50139",
    "4B": "RID50140",
    "4X": "RID50141",
}
#: nodule attenuation (our ``kind``): the RadLex solidness descriptor and its values, and
#: SNOMED CT where a code exists (none for part-solid)
ATTENUATION_CONCEPT = {"system": RADLEX, "code": "RID46010", "display": "Solidness descriptor"}
ATTENUATION_CODES: dict[str, tuple[dict[str, str], ...]] = {
    "solid": (
        {"system": RADLEX, "code": "RID5741", "display": "solid"},
        {"system": SNOMED, "code": "35702001", "display": "Solid"},
    ),
    "part-solid": ({"system": RADLEX, "code": "RID46011", "display": "partially solid"},),
    "ground-glass": (
        {"system": RADLEX, "code": "RID46016", "display": "non-solid"},
        {"system": SNOMED, "code": "1217294009", "display": "Ground glass opacity"},
    ),
}

LUNG_RADS_ORDER = ("0", "1", "2", "3", "4A", "4B", "4X")
_ID_CHARS = re.compile(r"[^A-Za-z0-9.\-]")


def lung_rads_rank(category: str | None) -> int:
    """Suspicion order of a Lung-RADS category (higher is more suspicious); -1 if unknown."""
    value = (category or "").strip().upper()
    return LUNG_RADS_ORDER.index(value) if value in LUNG_RADS_ORDER else -1


def highest_lung_rads(categories: list[str]) -> str:
    """The most suspicious category, or "1" (negative) when there are no findings."""
    ranked = [c for c in categories if lung_rads_rank(c) >= 0]
    return max(ranked, key=lung_rads_rank) if ranked else "1"


def observation_id(job_id: str, index: int) -> str:
    return f"{job_id}-{index}"


def parse_observation_id(value: str) -> tuple[str, int] | None:
    job_id, sep, index = value.rpartition("-")
    if not sep or not job_id or not index.isdigit() or len(index) > 6:
        return None
    return job_id, int(index)


def model_identity(details: dict[str, Any] | None, model_version: str = "") -> tuple[str, str]:
    """``(name, version)`` of the model that produced a job, from the columns ``details`` and
    ``model_version`` (``contracts.JobDetails.identity``: the one place with the fallbacks)."""
    model = JobDetails.parse(details).identity(model_version)
    return model.name, model.version


def device_id(name: str, version: str) -> str:
    """A readable FHIR id for a model build, e.g. ``nodule-seg-1.2.0-3f2a9c1d``."""
    digest = hashlib.sha256(f"{name}|{version}".encode()).hexdigest()[:8]
    readable = _ID_CHARS.sub("-", f"{name}-{version}")[:50]
    return f"{readable}-{digest}"


def fhir_date(dicom_date: str) -> str | None:
    """DICOM DA ``YYYYMMDD`` → FHIR date ``YYYY-MM-DD`` (None if not a valid date)."""
    if len(dicom_date) != 8 or not dicom_date.isdigit():
        return None
    try:
        datetime.strptime(dicom_date, "%Y%m%d")
    except ValueError:
        return None
    return f"{dicom_date[:4]}-{dicom_date[4:6]}-{dicom_date[6:]}"


def fhir_datetime(dicom_date: str, dicom_time: str = "", utc_offset: str = "") -> str | None:
    """DICOM DA + TM (+ offset ``+HHMM``) → FHIR dateTime.

    R4 requires a zone whenever a time is given, and DICOM TM carries none (only the optional
    TimezoneOffsetFromUTC), so without an offset the date alone is returned.
    """
    day = fhir_date(dicom_date)
    if day is None:
        return None
    digits = dicom_time.split(".")[0]
    zone = utc_offset.strip()
    if len(digits) >= 4 and digits[:6].isdigit() and len(zone) == 5 and zone[1:].isdigit():
        hh, mm, ss = digits[:2], digits[2:4], (digits[4:6] or "00")
        if zone[0] in "+-" and int(hh) < 24 and int(mm) < 60 and int(ss) < 60:
            return f"{day}T{hh}:{mm}:{ss}{zone[:3]}:{zone[3:]}"
    return day


def instant(value: datetime | None) -> str | None:
    """A timezone-aware FHIR instant (naive values are taken as UTC)."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    spec = "seconds" if value.microsecond == 0 else "milliseconds"
    return value.astimezone(UTC).isoformat(timespec=spec).replace("+00:00", "Z")


def gender(dicom_sex: str) -> str:
    return {"M": "male", "F": "female", "O": "other"}.get(dicom_sex.strip().upper(), "unknown")


def person_name(dicom_name: str) -> dict[str, Any] | None:
    """DICOM PN (``Family^Given^Middle^Prefix^Suffix``, alphabetic group) → HumanName JSON."""
    alphabetic = dicom_name.split("=")[0].strip()
    if not alphabetic:
        return None
    parts = [p.strip() for p in alphabetic.split("^")] + [""] * 5
    name: dict[str, Any] = {"use": "official", "text": " ".join(p for p in parts[:5] if p)}
    if parts[0]:
        name["family"] = parts[0]
    given = [p for p in parts[1:3] if p]
    if given:
        name["given"] = given
    if parts[3]:
        name["prefix"] = [parts[3]]
    if parts[4]:
        name["suffix"] = [parts[4]]
    return name
