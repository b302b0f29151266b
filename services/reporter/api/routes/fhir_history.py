"""FHIR vread and instance history of DiagnosticReport and Observation
(``/{id}/_history`` and ``/{id}/_history/{vid}``; versions: fhir/versioning.py)."""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response

from services.reporter.api.auth import Principal
from services.reporter.api.deps import SessionDep, SettingsDep, StateDep, require
from services.reporter.api.errors import ApiError
from services.reporter.api.routes import audited
from services.reporter.fhir import repo, versioning
from services.reporter.fhir.build import local_links, observation_json
from services.reporter.fhir.history import history_bundle, history_response, not_modified, tagged
from services.reporter.fhir.response import FhirResponse, encode, fhir_base, resource_response

router = APIRouter(prefix="/fhir", tags=["fhir"])
ReportReader = Annotated[Principal, Depends(require("DiagnosticReport", interaction="r"))]
ObservationReader = Annotated[Principal, Depends(require("Observation", interaction="r"))]


def _vid(value: str, what: str) -> int:
    if not value.isdigit() or len(value) > 6:
        raise ApiError(404, f"{what}: no version {value[:12]!r}")
    return int(value)


@router.get("/DiagnosticReport/{report_id}/_history", response_class=FhirResponse)
def report_history(
    report_id: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    state: StateDep,
    who: ReportReader,
) -> Response:
    rid = report_id[:64]
    versions = repo.report_history(session=session, report_id=rid)
    if not versions:
        raise ApiError(404, f"DiagnosticReport/{rid} not found")
    audited.read(request, session, who, "DiagnosticReport", rid)
    bodies = [(versioning.report_version(d.job), state.reports.report(d)[2]) for d in versions]
    return history_response(history_bundle(fhir_base(settings), "DiagnosticReport", rid, bodies))


@router.get("/DiagnosticReport/{report_id}/_history/{vid}", response_class=FhirResponse)
def report_vread(
    report_id: str,
    vid: str,
    request: Request,
    session: SessionDep,
    state: StateDep,
    who: ReportReader,
) -> Response:
    rid = report_id[:64]
    data = repo.get_report_version(
        session=session, report_id=rid, vid=_vid(vid, f"DiagnosticReport/{rid}")
    )
    if data is None:
        raise ApiError(404, f"DiagnosticReport/{rid}/_history/{vid[:12]} not found")
    audited.read(request, session, who, "DiagnosticReport", rid)
    version = versioning.report_version(data.job)
    unchanged = not_modified(request, version)
    if unchanged is not None:
        return unchanged
    return tagged(resource_response(state.reports.report(data)[2]), version)


@router.get("/Observation/{observation_id}/_history", response_class=FhirResponse)
def observation_history(
    observation_id: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    who: ObservationReader,
) -> Response:
    oid = observation_id[:80]
    found = repo.get_observation(session=session, observation_id=oid)
    if found is None:
        raise ApiError(404, f"Observation/{oid} not found")
    data, finding = found
    audited.read(request, session, who, "Observation", oid)
    links = local_links(data)
    bodies = []
    reviews = data.reviews.get(finding.index, ())
    for version in reversed(versioning.observation_versions(data.job, reviews)):
        at = replace(data, observation_vid=version.vid)
        bodies.append((version, encode(observation_json(at, finding, links))))
    return history_response(history_bundle(fhir_base(settings), "Observation", oid, bodies))


@router.get("/Observation/{observation_id}/_history/{vid}", response_class=FhirResponse)
def observation_vread(
    observation_id: str,
    vid: str,
    request: Request,
    session: SessionDep,
    who: ObservationReader,
) -> Response:
    oid = observation_id[:80]
    found = repo.get_observation(
        session=session, observation_id=oid, vid=_vid(vid, f"Observation/{oid}")
    )
    if found is None:
        raise ApiError(404, f"Observation/{oid}/_history/{vid[:12]} not found")
    data, finding = found
    audited.read(request, session, who, "Observation", oid)
    reviews = data.reviews.get(finding.index, ())
    version = versioning.observation_version(data.job, data.observation_vid, reviews)
    assert version is not None  # get_observation found this version
    unchanged = not_modified(request, version)
    if unchanged is not None:
        return unchanged
    return tagged(resource_response(observation_json(data, finding, local_links(data))), version)
