"""The CapabilityStatement: exactly what this read-only FHIR R4 server supports."""

from __future__ import annotations

from importlib import metadata
from typing import Any

from fhir.resources.R4B.capabilitystatement import CapabilityStatement

from services.reporter.fhir import common as fc
from services.reporter.fhir.patient import PATIENT_SPEC
from services.reporter.fhir.query import IMAGING_STUDY_SPEC, OBSERVATION_SPEC, REPORT_SPEC
from services.reporter.fhir.search import Spec

_DOCS = {
    "patient": "Patient/<id> or <id> (opaque Patient id)",
    "subject": "Patient/<id> or <id>",
    "identifier": "[system|]value",
    "based-on": "use based-on:identifier=<accession number> (ServiceRequest by identifier)",
    "status": "final | amended (Observation also entered-in-error: a superseded finding)",
    "date": "study date, prefixes eq ne gt ge lt le",
    "issued": "report issue time, prefixes eq ne gt ge lt le",
    "_lastUpdated": "prefixes eq ne gt ge lt le",
    "code": "http://snomed.info/sct|27925004 (nodule) or |4147007 (mass)",
    "derived-from": "ImagingStudy/<Study Instance UID>",
    "_id": "logical id",
    "patient.identifier": (
        "the subject's MRN: [system|]value (also subject:Patient.identifier, "
        "subject.identifier, patient:Patient.identifier)"
    ),
}
#: where a parameter means something else on one resource type
_TYPE_DOCS = {
    ("DiagnosticReport", "code"): "http://loinc.org|24627-2 (CT Chest), the code of every report",
    ("DiagnosticReport", "category"): (
        "http://loinc.org|LP29684-5 or http://terminology.hl7.org/CodeSystem/v2-0074|RAD"
    ),
    ("Observation", "category"): (
        "http://terminology.hl7.org/CodeSystem/observation-category|imaging"
    ),
    ("Observation", "date"): "effective date (the study date), prefixes eq ne gt ge lt le",
    ("Patient", "identifier"): "MRN: [system|]value; |value matches an MRN without a system",
}
#: parameters every search takes (rest.searchParam)
_COMMON_PARAMS = [
    ("_count", "number", "page size, at most 100; _count=0 gives the total only"),
    ("_offset", "number", "paging offset (the Bundle's next/previous links)"),
    ("_sort", "special", "per resource: see the resource's documentation; -key descends"),
    ("_summary", "token", "count (the total only) or false"),
    ("_elements", "special", "top-level elements of the matches; the rest is left out"),
    ("_total", "token", "none | estimate | accurate (always accurate)"),
    ("_format", "token", "json or application/fhir+json; anything else is 406"),
]


def _version() -> str:
    try:
        return metadata.version("noduleflow")
    except metadata.PackageNotFoundError:
        return "0"


_TYPES = {"reference": "reference", "token": "token", "date": "date"}


def _search_params(rtype: str, spec: Spec) -> list[dict[str, Any]]:
    return [
        {
            "name": name,
            "type": _TYPES[kind],
            "documentation": _TYPE_DOCS.get((rtype, name), _DOCS.get(name, name)),
        }
        for name, (kind, _mods) in spec.params.items()
    ]


def _resource(rtype: str, spec: Spec | None, *, versioned: bool = False) -> dict[str, Any]:
    """``versioned``: vread and instance ``_history`` (fhir/versioning.py), ETags."""
    read = [{"code": "read"}]
    if versioned:
        read += [{"code": "vread"}, {"code": "history-instance"}]
    entry: dict[str, Any] = {
        "type": rtype,
        "interaction": read,
        "versioning": "versioned" if versioned else "no-version",
        "readHistory": versioned,
        "updateCreate": False,
        "conditionalCreate": False,
        "conditionalUpdate": False,
        "conditionalDelete": "not-supported",
    }
    if spec is not None:
        entry["interaction"].append({"code": "search-type"})
        entry["searchParam"] = _search_params(rtype, spec)
        entry["searchInclude"] = sorted(spec.includes) or None
        entry = {k: v for k, v in entry.items() if v is not None}
    return entry


def capability_statement(base_url: str, *, auth_open: bool, date: str) -> CapabilityStatement:
    security: dict[str, Any] = {
        "cors": False,
        "description": (
            "Open read access for loopback clients (no credentials configured)."
            if auth_open
            else "Bearer token (static API token or JWT). SMART v2 style scopes "
            "system/<Type>.rs or system/*.rs; 401 without a valid token, 403 without scope."
        ),
    }
    if not auth_open:
        security["service"] = [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                        "code": "SMART-on-FHIR",
                    }
                ],
                "text": "Bearer token",
            }
        ]
    body = {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": date,
        "kind": "instance",
        "publisher": "noduleflow",
        "software": {"name": "noduleflow", "version": _version()},
        "implementation": {"description": "noduleflow lung nodule reports", "url": base_url},
        "fhirVersion": fc.FHIR_VERSION,
        "format": ["json", fc.FHIR_MEDIA_TYPE],
        "rest": [
            {
                "mode": "server",
                "documentation": (
                    "Read-only. Search by GET or by POST [type]/_search "
                    "(application/x-www-form-urlencoded). Unknown search parameters are refused "
                    "(handling=strict) unless the request sends Prefer: handling=lenient. _count "
                    "is capped at 100; paging by _offset through the Bundle's next/previous "
                    "links. JSON only: _format or Accept asking for XML is answered 406."
                ),
                "searchParam": [
                    {"name": name, "type": kind, "documentation": text}
                    for name, kind, text in _COMMON_PARAMS
                ],
                "security": security,
                "resource": [
                    _resource("DiagnosticReport", REPORT_SPEC, versioned=True),
                    _resource("Observation", OBSERVATION_SPEC, versioned=True),
                    _resource("ImagingStudy", IMAGING_STUDY_SPEC),
                    _resource("Patient", PATIENT_SPEC),
                    _resource("Device", None),
                ],
            }
        ],
    }
    return CapabilityStatement.model_validate(body)
