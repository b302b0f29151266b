"""Study API and worklist data (JSON); every read of patient data is audited."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse

from services.core.job_listing import query_jobs
from services.reporter.api.auth import Principal
from services.reporter.api.deps import ApiReaderDep, SessionDep, SettingsDep, client_host, require
from services.reporter.api.errors import ApiError
from services.reporter.api.reviews import ReviewRequest, record_review
from services.reporter.api.routes import audited
from services.reporter.api.study_api import findings_view, key_image, study_view
from services.reporter.api.worklist import (
    MAX_LIMIT,
    MAX_QUERY,
    STATES,
    WorklistFilter,
    parse_sort,
    query_worklist,
)

router = APIRouter(prefix="/api", tags=["api"])
LungRads = Literal["0", "1", "2", "3", "4A", "4B", "4X"]
# Reviewing changes the finding's Observation: an update scope, which static API tokens
# (read-only) never hold; a JWT names the person (its ``sub``) the review is recorded for.
ReviewerDep = Annotated[Principal, Depends(require("Observation", interaction="u"))]


@router.get("/studies/{study_uid}")
def get_study(
    study_uid: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    who: ApiReaderDep,
) -> dict[str, object]:
    view = study_view(session=session, settings=settings, study_uid=study_uid[:64])
    if view is None:
        raise ApiError(404, "Study not found")
    audited.read(request, session, who, "Study", study_uid)
    return view


@router.get("/studies/{study_uid}/findings")
def get_findings(
    study_uid: str, request: Request, session: SessionDep, who: ApiReaderDep
) -> dict[str, object]:
    view = findings_view(session=session, study_uid=study_uid[:64])
    if view is None:
        raise ApiError(404, "Study not found")
    audited.read(request, session, who, "Study", study_uid)
    return view


@router.post("/studies/{study_uid}/findings/{index}/review", status_code=201)
def post_review(
    study_uid: str,
    index: int,
    body: ReviewRequest,
    request: Request,
    session: SessionDep,
    who: ReviewerDep,
) -> dict[str, object]:
    """Accept or reject finding ``index`` of the study's current analysis."""
    return record_review(
        session=session,
        study_uid=study_uid[:64],
        index=index,
        request=body,
        actor=who.subject,
        source=client_host(request),
    )


@router.get("/studies/{study_uid}/key-images/{index}.png", response_class=FileResponse)
def get_key_image(
    study_uid: str,
    index: int,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    who: ApiReaderDep,
) -> FileResponse:
    path = key_image(session=session, settings=settings, study_uid=study_uid[:64], index=index)
    if path is None:
        raise ApiError(404, "Key image not found")
    audited.read(request, session, who, "Study", study_uid)
    return FileResponse(path, media_type="image/png")


@router.get("/jobs")
def get_jobs(
    request: Request,
    session: SessionDep,
    who: ApiReaderDep,
    study: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 50,
) -> dict[str, object]:
    rows = query_jobs(session, study_uid=study, limit=limit)
    audited.search(request, session, who, "Job", request.query_params.keys(), len(rows))
    return {"jobs": rows}


@router.get("/worklist")
def get_worklist(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    who: ApiReaderDep,
    status: Annotated[str | None, Query(max_length=16)] = None,
    min_lung_rads: LungRads | None = None,
    received_from: date | None = None,
    received_to: date | None = None,
    q: Annotated[str | None, Query(max_length=MAX_QUERY)] = None,
    sort: Annotated[str | None, Query(max_length=32)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100,
    offset: Annotated[int, Query(ge=0, le=100_000)] = 0,
) -> dict[str, object]:
    if status and status not in STATES:
        raise ApiError(400, f"status must be one of {', '.join(STATES)}")
    filters = WorklistFilter(
        text=(q or "").strip(),
        sort=parse_sort(sort),
        status=status or None,
        min_lung_rads=min_lung_rads,
        received_from=received_from,
        received_to=received_to,
        limit=limit,
        offset=offset,
    )
    result = query_worklist(
        session=session, filters=filters, viewer_template=settings.viewer_url_template
    )
    audited.search(request, session, who, "Worklist", request.query_params.keys(), result["total"])
    return result
