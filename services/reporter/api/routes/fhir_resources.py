"""FHIR Observation and ImagingStudy (read, search), Device (read), metadata."""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response

from services.core.db.models import utcnow
from services.reporter.api.auth import Principal
from services.reporter.api.deps import SessionDep, SettingsDep, StateDep, require
from services.reporter.api.errors import ApiError
from services.reporter.api.routes import audited
from services.reporter.api.search_input import SearchItems
from services.reporter.fhir import repo
from services.reporter.fhir.build import (
    ReportInput,
    local_links,
    observation_json,
    observation_state,
)
from services.reporter.fhir.capability import capability_statement
from services.reporter.fhir.entities import build_device, build_imaging_study
from services.reporter.fhir.history import not_modified, tagged
from services.reporter.fhir.query import (
    IMAGING_STUDY_SPEC,
    OBSERVATION_SPEC,
    imaging_study_statement,
    observation_statement,
)
from services.reporter.fhir.response import (
    FhirResponse,
    encode,
    entry,
    fhir_base,
    parse_request,
    resource_response,
)

router = APIRouter(prefix="/fhir", tags=["fhir"])


ObservationReader = Annotated[Principal, Depends(require("Observation", interaction="r"))]
ObservationSearcher = Annotated[Principal, Depends(require("Observation", interaction="s"))]
StudyReader = Annotated[Principal, Depends(require("ImagingStudy", interaction="r"))]
StudySearcher = Annotated[Principal, Depends(require("ImagingStudy", interaction="s"))]
DeviceReader = Annotated[Principal, Depends(require("Device", interaction="r"))]


@lru_cache(maxsize=16)
def _capability(base: str, auth_open: bool, day: str) -> bytes:
    statement = capability_statement(base, auth_open=auth_open, date=day)
    return encode(statement.model_dump(mode="json"))


@router.get("/metadata", response_class=FhirResponse)
def metadata(settings: SettingsDep, state: StateDep) -> Response:
    body = _capability(fhir_base(settings), state.authenticator.open, utcnow().date().isoformat())
    return resource_response(body)


@router.get("/Observation", response_class=FhirResponse)
@router.post("/Observation/_search", response_class=FhirResponse)
def search_observations(
    request: Request,
    items: SearchItems,
    session: SessionDep,
    settings: SettingsDep,
    state: StateDep,
    who: ObservationSearcher,
) -> Response:
    search = parse_request(request, "Observation", OBSERVATION_SPEC, items)
    page, count = observation_statement(search, settings.mrn_system)
    total = int(session.scalar(count) or 0)
    rows = list(session.execute(page)) if search.count else []
    inputs = repo.report_inputs(session=session, rows=[(job, study) for _, job, study in rows])
    matches = [
        state.reports.observations(data)[finding.index - 1]
        if _indexed(data)
        else entry(observation_json(data, finding, local_links(data)))
        for data, (finding, _, _) in zip(inputs, rows, strict=True)
    ]
    return audited.searchset(request, session, settings, who, search, total, matches)


def _indexed(data: ReportInput) -> bool:
    """Findings numbered 1..n, so the cached list can be indexed by ``Finding.index``."""
    return [f.index for f in data.findings] == list(range(1, len(data.findings) + 1))


@router.get("/Observation/{observation_id}", response_class=FhirResponse)
def read_observation(
    observation_id: str,
    request: Request,
    session: SessionDep,
    state: StateDep,
    who: ObservationReader,
) -> Response:
    found = repo.get_observation(session=session, observation_id=observation_id[:80])
    if found is None:
        raise ApiError(404, f"Observation/{observation_id[:80]} not found")
    data, finding = found
    audited.read(request, session, who, "Observation", observation_id)
    version = observation_state(data, finding)
    unchanged = not_modified(request, version)
    if unchanged is not None:
        return unchanged
    if _indexed(data):
        body = state.reports.observations(data)[finding.index - 1][2]
        return tagged(resource_response(body), version)
    return tagged(resource_response(observation_json(data, finding, local_links(data))), version)


@router.get("/ImagingStudy", response_class=FhirResponse)
@router.post("/ImagingStudy/_search", response_class=FhirResponse)
def search_imaging_studies(
    request: Request,
    items: SearchItems,
    session: SessionDep,
    settings: SettingsDep,
    who: StudySearcher,
) -> Response:
    search = parse_request(request, "ImagingStudy", IMAGING_STUDY_SPEC, items)
    page, count = imaging_study_statement(search)
    total = int(session.scalar(count) or 0)
    studies = list(session.scalars(page)) if search.count else []
    series = repo.series_infos(session=session, study_ids=[s.id for s in studies])
    matches = [
        entry(build_imaging_study(s, series.get(s.id, [])).model_dump(mode="json")) for s in studies
    ]
    return audited.searchset(request, session, settings, who, search, total, matches)


@router.get("/ImagingStudy/{study_uid}", response_class=FhirResponse)
def read_imaging_study(
    study_uid: str, request: Request, session: SessionDep, who: StudyReader
) -> Response:
    study = repo.get_study(session=session, study_uid=study_uid[:64])
    if study is None:
        raise ApiError(404, "ImagingStudy not found")
    series = repo.series_infos(session=session, study_ids=[study.id])
    audited.read(request, session, who, "ImagingStudy", study.study_instance_uid)
    return resource_response(build_imaging_study(study, series.get(study.id, [])))


@router.get("/Device/{device_id}", response_class=FhirResponse)
def read_device(device_id: str, session: SessionDep, who: DeviceReader) -> Response:
    found = repo.get_device(session=session, device_id=device_id[:128])
    if found is None:
        raise ApiError(404, "Device not found")
    return resource_response(build_device(*found))
