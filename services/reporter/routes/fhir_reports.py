"""FHIR DiagnosticReport: read and search (with ``_include=DiagnosticReport:result``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fhir.resources.R4B.resource import Resource

from services.reporter import audit_reads, fhir_repo
from services.reporter.auth import Principal
from services.reporter.deps import SessionDep, SettingsDep, client_host, ensure_scope, require
from services.reporter.errors import ApiError
from services.reporter.fhir_build import build_observation, build_report, local_links
from services.reporter.fhir_query import REPORT_SPEC, report_statement
from services.reporter.fhir_response import (
    FhirResponse,
    parse_request,
    resource_response,
    searchset,
)

router = APIRouter(prefix="/fhir/DiagnosticReport", tags=["fhir"])
TYPE = "DiagnosticReport"


@router.get("", response_class=FhirResponse)
def search_reports(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    principal: Annotated[Principal, Depends(require(TYPE, interaction="s"))],
) -> FhirResponse:
    search = parse_request(request, TYPE, REPORT_SPEC)
    include_results = "DiagnosticReport:result" in search.include
    if include_results:
        ensure_scope(request, principal, "Observation", interaction="r")
    page, count = report_statement(search)
    total = int(session.scalar(count) or 0)
    rows = [(job, study) for job, study in session.execute(page)] if search.count else []
    inputs = fhir_repo.report_inputs(session=session, rows=rows)
    matches: list[Resource] = []
    includes: list[Resource] = []
    for data in inputs:
        links = local_links(data)
        matches.append(build_report(data, links))
        if include_results:
            includes.extend(build_observation(data, f, links) for f in data.findings)
    audit_reads.search(session, actor=principal.subject, source=client_host(request),
                       resource_type=TYPE, params=search.names, total=total)
    return searchset(request, settings, search, total, matches, includes)


@router.get("/{report_id}", response_class=FhirResponse)
def read_report(
    report_id: str,
    request: Request,
    session: SessionDep,
    principal: Annotated[Principal, Depends(require(TYPE, interaction="r"))],
) -> FhirResponse:
    data = fhir_repo.get_report(session=session, report_id=report_id[:64])
    if data is None:
        raise ApiError(404, f"{TYPE}/{report_id[:64]} not found")
    audit_reads.read(session, actor=principal.subject, source=client_host(request),
                     resource_type=TYPE, ids=data.job.id)
    return resource_response(build_report(data, local_links(data)))
