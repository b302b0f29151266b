"""FHIR DiagnosticReport: read and search (GET or POST ``_search``), with
``_include=DiagnosticReport:result`` and ``_include=DiagnosticReport:subject``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response

from services.reporter.api.auth import Principal
from services.reporter.api.deps import (
    SessionDep,
    SettingsDep,
    StateDep,
    ensure_scope,
    require,
)
from services.reporter.api.errors import ApiError
from services.reporter.api.routes import audited
from services.reporter.api.search_input import SearchItems
from services.reporter.fhir import patient, repo, versioning
from services.reporter.fhir.build import ReportInput
from services.reporter.fhir.history import not_modified, tagged
from services.reporter.fhir.query import REPORT_SPEC, report_statement
from services.reporter.fhir.response import (
    FhirResponse,
    parse_request,
    resource_response,
)

router = APIRouter(prefix="/fhir/DiagnosticReport", tags=["fhir"])
TYPE = "DiagnosticReport"


@router.get("", response_class=FhirResponse)
@router.post("/_search", response_class=FhirResponse)
def search_reports(
    request: Request,
    items: SearchItems,
    session: SessionDep,
    settings: SettingsDep,
    state: StateDep,
    principal: Annotated[Principal, Depends(require(TYPE, interaction="s"))],
) -> Response:
    search = parse_request(request, TYPE, REPORT_SPEC, items)
    include_results = "DiagnosticReport:result" in search.include
    if include_results:
        ensure_scope(request, principal, "Observation", interaction="r")
    include_subjects = "DiagnosticReport:subject" in search.include
    if include_subjects:
        ensure_scope(request, principal, "Patient", interaction="r")
    page, count = report_statement(search, settings.mrn_system)
    total = int(session.scalar(count) or 0)
    found = session.execute(page).all() if search.count else []
    inputs = [ReportInput(job=job, study=study, findings=[]) for job, study in found]
    cached = {} if include_results else {d.job.id: state.reports.cached_report(d) for d in inputs}
    misses = [d for d in inputs if cached.get(d.job.id) is None]
    complete = {d.job.id: d for d in repo.attach_findings(session=session, inputs=misses)}
    matches: list[tuple[str, str, bytes]] = []
    includes: list[tuple[str, str, bytes]] = []
    for data in inputs:
        hit = cached.get(data.job.id)
        if hit is not None:  # findings not needed: a cached report already names its results
            matches.append(hit)
            continue
        full = complete[data.job.id]
        matches.append(state.reports.report(full))
        if include_results:
            includes.extend(state.reports.observations(full))
    if include_subjects:
        keys = [d.study.patient_key for d in inputs]
        includes += patient.patient_entries(
            session=session, keys=keys, default_system=settings.mrn_system
        )
    return audited.searchset(
        request, session, settings, principal, search, total, matches, includes
    )


@router.get("/{report_id}", response_class=FhirResponse)
def read_report(
    report_id: str,
    request: Request,
    session: SessionDep,
    state: StateDep,
    principal: Annotated[Principal, Depends(require(TYPE, interaction="r"))],
) -> Response:
    data = repo.get_report(session=session, report_id=report_id[:64])
    if data is None:
        raise ApiError(404, f"{TYPE}/{report_id[:64]} not found")
    audited.read(request, session, principal, TYPE, data.report_id)
    version = versioning.report_version(data.job)
    unchanged = not_modified(request, version)
    if unchanged is not None:
        return unchanged
    return tagged(resource_response(state.reports.report(data)[2]), version)
