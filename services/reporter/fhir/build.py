"""Pure builders: database rows → FHIR R4 DiagnosticReport and Observations (fhir.resources).

One DiagnosticReport per study (id = its first finished job's id), one Observation per nodule
(id = ``<job id>-<index>``); ImagingStudy and Device are in
:mod:`services.reporter.fhir.entities`, Patient in :mod:`services.reporter.fhir.patient`.

Amendments: a new job for the same study (late instances) is the next version of the study's
one DiagnosticReport (same id, ``meta.versionId`` + 1, status ``amended``); the findings of
the analysis it replaces get a new version ``entered-in-error``
(:mod:`services.reporter.fhir.versioning`). R4 has no Device target for
``DiagnosticReport.performer``, so the model is named on every Observation
(``Observation.device``) and in the conclusion.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.observation import Observation

from services.core.db import Finding, FindingReview, Job, Study
from services.reporter.fhir import common as fc
from services.reporter.fhir import versioning


@dataclass(frozen=True)
class ReportInput:
    """Everything one DiagnosticReport is built from (rows loaded by the caller)."""

    job: Job
    study: Study
    findings: Sequence[Finding]
    # The Observations' versionId to build (None: the current one; 1: as first issued).
    observation_vid: int | None = None
    # Radiologists' reviews by finding index, oldest first (each a version of its Observation).
    reviews: Mapping[int, Sequence[FindingReview]] = field(default_factory=dict)

    @property
    def report_id(self) -> str:
        """The DiagnosticReport this job's result is a version of."""
        return self.job.report_id or self.job.id


@dataclass(frozen=True)
class Links:
    """How the report points at its subject, study, device and results.

    Served locally these are literal references (``Patient/<id>``); pushed to another server
    they are logical references by identifier plus the ids that server assigned.
    """

    subject: dict[str, Any]
    imaging_study: dict[str, Any]
    device: dict[str, Any]
    results: list[dict[str, Any]] = field(default_factory=list)


def local_links(data: ReportInput) -> Links:
    name, version = fc.model_identity(data.job.details, data.job.model_version)
    return Links(
        subject={"reference": f"Patient/{data.study.patient_key}"},
        imaging_study={"reference": f"ImagingStudy/{data.study.study_instance_uid}"},
        device={"reference": f"Device/{fc.device_id(name, version)}", "display": name},
        results=[
            {"reference": f"Observation/{fc.observation_id(data.job.id, f.index)}"}
            for f in data.findings
        ],
    )


def report_status(data: ReportInput) -> str:
    """``partial`` for a study analysed with slices missing (``Job.partial_summary``)."""
    if data.job.partial_summary:
        return "partial"
    return versioning.report_status(data.job.report_version)


def observation_state(data: ReportInput, finding: Finding) -> versioning.Version:
    """The version of ``finding``'s Observation to build (the current one unless asked)."""
    reviews = data.reviews.get(finding.index, ())
    version = versioning.observation_version(data.job, data.observation_vid, reviews)
    if version is None:
        raise ValueError(f"Observations of {data.job.id} have no version {data.observation_vid}")
    return version


def _quantity(value: float, unit: str, code: str) -> dict[str, Any]:
    return {"value": round(float(value), 3), "unit": unit, "system": fc.UCUM, "code": code}


def _component(coding: dict[str, Any], *also: dict[str, Any], **value: Any) -> dict[str, Any]:
    """A component coded ``coding`` (and the equivalent codes ``also``)."""
    return {"code": {"coding": [coding, *also], "text": coding["display"]}, **value}


def _local(code: str, display: str) -> dict[str, Any]:
    return {"system": fc.CODES_SYSTEM, "code": code, "display": display}


def lung_rads_concept(category: str) -> dict[str, Any]:
    """A Lung-RADS category: the private code, and the RadLex term where one exists."""
    coding = [{"system": fc.LUNG_RADS_SYSTEM, "code": category, "display": f"Lung-RADS {category}"}]
    radlex = fc.LUNG_RADS_RADLEX.get(category.strip().upper())
    if radlex:
        coding.append({"system": fc.RADLEX, "code": radlex, "display": f"Lung-RADS {category}"})
    return {"coding": coding, "text": f"Lung-RADS {category}"}


def attenuation_concept(kind: str) -> dict[str, Any]:
    """A nodule's attenuation (``kind``): the private code, then RadLex and SNOMED CT."""
    coding = [{"system": fc.NODULE_KIND_SYSTEM, "code": kind}, *fc.ATTENUATION_CODES.get(kind, ())]
    return {"coding": coding, "text": kind}


def build_observation(data: ReportInput, finding: Finding, links: Links) -> Observation:
    """One finding (nodule or mass): size, volume, attenuation, kind, Lung-RADS, confidence and
    centre (LPS mm)."""
    return Observation.model_validate(_observation(data, finding, links))


def observation_json(data: ReportInput, finding: Finding, links: Links) -> dict[str, Any]:
    """:func:`build_observation` as validated JSON (skips the model's slower re-serialisation)."""
    body = _observation(data, finding, links)
    Observation.model_validate(body)
    return body


def _observation(data: ReportInput, finding: Finding, links: Links) -> dict[str, Any]:
    mm = ("mm", "mm")
    components = [
        _component(
            {"system": fc.SNOMED, "code": "81827009", "display": "Diameter"},
            valueQuantity=_quantity(finding.diameter_mm, *mm),
        ),
        _component(
            {"system": fc.SNOMED, "code": "103339001", "display": "Long axis"},
            valueQuantity=_quantity(finding.long_axis_mm, *mm),
        ),
        _component(
            {"system": fc.SNOMED, "code": "103340004", "display": "Short axis"},
            valueQuantity=_quantity(finding.short_axis_mm, *mm),
        ),
        _component(
            {"system": fc.SNOMED, "code": "118565006", "display": "Volume"},
            valueQuantity=_quantity(finding.volume_mm3, "mm3", "mm3"),
        ),
        _component(
            {"system": fc.DCM, "code": "112031", "display": "Attenuation Coefficient"},
            valueQuantity=_quantity(finding.mean_hu, "HU", "[hnsf'U]"),
        ),
        _component(
            _local("nodule-type", "Nodule type"),
            fc.ATTENUATION_CONCEPT,
            valueCodeableConcept=attenuation_concept(finding.kind),
        ),
        _component(
            _local("lung-rads", "Lung-RADS category"),
            *fc.LUNG_RADS_CONCEPTS,
            valueCodeableConcept=lung_rads_concept(finding.lung_rads),
        ),
        _component(
            _local("confidence", "Detection confidence"),
            valueQuantity=_quantity(finding.confidence, "1", "1"),
        ),
    ]
    for axis, value in zip("xyz", finding.center_mm, strict=True):
        components.append(
            _component(
                _local(f"center-{axis}", f"Centre {axis.upper()} (patient LPS)"),
                valueQuantity=_quantity(value, *mm),
            )
        )
    state = observation_state(data, finding)
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "id": fc.observation_id(data.job.id, finding.index),
        "meta": versioning.meta(state),
        "identifier": [
            {
                "system": fc.OBSERVATION_SYSTEM,
                "value": fc.observation_id(data.job.id, finding.index),
            }
        ],
        "status": state.status,
        "category": [
            {"coding": [{"system": fc.OBS_CATEGORY, "code": "imaging", "display": "Imaging"}]}
        ],
        "code": {
            "coding": [fc.FINDING_CODES.get(finding.finding_type, fc.NODULE_CODE)],
            "text": f"Lung {finding.finding_type or 'nodule'} {finding.index}",
        },
        "subject": links.subject,
        "effectiveDateTime": fc.fhir_datetime(data.study.study_date, data.study.study_time),
        "issued": fc.instant(data.job.finished_at),
        "device": links.device,
        "bodySite": {"coding": [fc.LUNG_CODE], "text": "Lung"},
        "derivedFrom": [links.imaging_study],
        "component": components,
        "note": [review_note(state.review)] if state.review is not None else None,
    }
    return _drop_none(resource)


def review_note(review: FindingReview) -> dict[str, Any]:
    """A radiologist's decision as an Observation note: who, when, what and why."""
    text = f"{review.decision.capitalize()} by the radiologist"
    if review.comment:
        text += f": {review.comment}"
    return {"authorString": review.actor, "time": fc.instant(review.at), "text": text}


def conclusion(data: ReportInput) -> str:
    """The report's conclusion in plain words."""
    name, version = fc.model_identity(data.job.details, data.job.model_version)
    tail = f"Automated analysis by {name} {version}; to be confirmed by a radiologist."
    if data.job.partial_summary:
        tail = f"{data.job.partial_summary} {tail}"
    if (data.job.report_version or 1) > 1:
        tail += (
            f" Amended (version {data.job.report_version}): new images arrived for this study;"
            " the findings of the earlier version no longer apply."
        )
    findings = list(data.findings)
    if not findings:
        return f"No lung nodules detected. Lung-RADS 1. {tail}"
    largest = max(findings, key=lambda f: f.diameter_mm)
    category = fc.highest_lung_rads([f.lung_rads for f in findings])
    masses = sum(1 for f in findings if f.finding_type == "mass")
    nodules = len(findings) - masses
    counted = [f"{nodules} lung nodule{'s' if nodules > 1 else ''}"] if nodules else []
    if masses:
        counted.append(f"{masses} lung mass{'es' if masses > 1 else ''}")
    return (
        f"{' and '.join(counted)} detected; largest {largest.diameter_mm:.1f} mm "
        f"({_type(largest)}). Highest Lung-RADS category {category}. {tail}"
    )


def _type(finding: Finding) -> str:
    """``solid``, or ``mass, solid`` for a mass."""
    return f"mass, {finding.kind}" if finding.finding_type == "mass" else finding.kind


def _narrative(data: ReportInput, text: str) -> dict[str, str]:
    rows = "".join(
        f"<tr><td>{f.index}</td><td>{f.diameter_mm:.1f} mm</td><td>{html.escape(_type(f))}</td>"
        f"<td>{html.escape(f.lung_rads)}</td></tr>"
        for f in data.findings
    )
    table = (
        f"<table><tr><th>#</th><th>Diameter</th><th>Type</th><th>Lung-RADS</th></tr>{rows}</table>"
        if rows
        else ""
    )
    div = f'<div xmlns="http://www.w3.org/1999/xhtml"><p>{html.escape(text)}</p>{table}</div>'
    return {"status": "generated", "div": div}


def build_report(data: ReportInput, links: Links) -> DiagnosticReport:
    return DiagnosticReport.model_validate(_report(data, links))


def report_json(data: ReportInput, links: Links) -> dict[str, Any]:
    """:func:`build_report` as validated JSON (skips the model's slower re-serialisation)."""
    body = _report(data, links)
    DiagnosticReport.model_validate(body)
    return body


def _report(data: ReportInput, links: Links) -> dict[str, Any]:
    text = conclusion(data)
    category = fc.highest_lung_rads([f.lung_rads for f in data.findings])
    identifiers: list[dict[str, Any]] = [{"system": fc.REPORT_SYSTEM, "value": data.report_id}]
    based_on: list[dict[str, Any]] = []
    if data.study.accession_number:
        accession = {
            "type": {"coding": [{"system": fc.V2_0203, "code": "ACSN"}], "text": "Accession ID"},
            "value": data.study.accession_number,
        }
        identifiers.append(accession)
        based_on.append({"type": "ServiceRequest", "identifier": accession})
    resource: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "id": data.report_id,
        "meta": versioning.meta(versioning.report_version(data.job)),
        "text": _narrative(data, text),
        "identifier": identifiers,
        "basedOn": based_on or None,
        "status": report_status(data),
        "category": [{"coding": [dict(c) for c in fc.REPORT_CATEGORIES]}],
        "code": {"coding": [fc.REPORT_CODE], "text": "CT chest: lung nodule analysis"},
        "subject": links.subject,
        "effectiveDateTime": fc.fhir_datetime(data.study.study_date, data.study.study_time),
        "issued": fc.instant(data.job.finished_at),
        "imagingStudy": [links.imaging_study],
        "result": links.results or None,
        "conclusion": text,
        "conclusionCode": [lung_rads_concept(category)],
    }
    return _drop_none(resource)


def _drop_none(resource: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in resource.items() if value is not None}
