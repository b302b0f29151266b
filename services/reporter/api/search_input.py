"""The parameters of a FHIR search: the query string, plus the form body of a POST
``[type]/_search`` (FHIR R4 §3.1.0.1.1: ``application/x-www-form-urlencoded``)."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import parse_qsl

from fastapi import Depends, Request

from services.reporter.api.errors import ApiError
from services.reporter.fhir.search import MAX_PARAMS

FORM = "application/x-www-form-urlencoded"


async def search_items(request: Request) -> list[tuple[str, str]]:
    """Query pairs in order; for POST, the form's pairs after them. 415 for another body
    type, 400 for a body that is not UTF-8 or has too many fields."""
    items = list(request.query_params.multi_items())
    if request.method != "POST":
        return items
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != FORM:
        raise ApiError(415, f"POST _search takes {FORM}", code="not-supported")
    try:
        text = (await request.body()).decode("utf-8")
        items += parse_qsl(text, keep_blank_values=True, max_num_fields=MAX_PARAMS)
    except UnicodeDecodeError as exc:
        raise ApiError(400, "Form body is not UTF-8", code="invalid") from exc
    except ValueError as exc:
        raise ApiError(400, f"Too many form fields (at most {MAX_PARAMS})") from exc
    return items


SearchItems = Annotated[list[tuple[str, str]], Depends(search_items)]
