"""HTML shells for radiologists: the worklist and a study page (data comes from /api by JS).

The pages hold no patient data themselves, so they are served without credentials; their
scripts call the API with a bearer token that the user enters once and that stays in the
tab's sessionStorage (no cookie: nothing for a cross-site request to ride on; no URL: nothing
in logs or referrers).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates

from services.core.uids import is_valid_uid
from services.reporter.api.errors import ApiError
from services.reporter.api.worklist import STATES
from services.reporter.fhir.common import LUNG_RADS_ORDER

router = APIRouter(tags=["pages"], include_in_schema=False)
templates = Jinja2Templates(directory=Path(__file__).resolve().parent.parent / "templates")


@router.get("/")
def index() -> RedirectResponse:
    return RedirectResponse("/worklist", status_code=307)


@router.get("/worklist", response_class=HTMLResponse)
def worklist_page(request: Request) -> HTMLResponse:
    return templates.TemplateResponse(
        request, "worklist.html", {"states": STATES, "categories": LUNG_RADS_ORDER[1:]}
    )


@router.get("/studies/{study_uid}", response_class=HTMLResponse)
def study_page(request: Request, study_uid: str) -> HTMLResponse:
    if not is_valid_uid(study_uid):
        raise ApiError(404, "Study not found")
    return templates.TemplateResponse(request, "study.html", {"study_uid": study_uid})
