"""Responses for the FHIR routes: ``application/fhir+json`` and searchset Bundles with paging."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from fastapi import Request
from fastapi.responses import JSONResponse
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.resource import Resource

from services.core.db.models import utcnow
from services.core.settings import Settings
from services.reporter.fhir_common import FHIR_MEDIA_TYPE, instant
from services.reporter.fhir_search import Search, Spec, parse


class FhirResponse(JSONResponse):
    media_type = FHIR_MEDIA_TYPE


def resource_response(resource: Resource) -> FhirResponse:
    return FhirResponse(resource.model_dump(mode="json"))


def fhir_base(request: Request, settings: Settings) -> str:
    base = settings.public_base_url or str(request.base_url)
    return base.rstrip("/") + "/fhir"


def parse_request(request: Request, resource_type: str, spec: Spec) -> Search:
    prefer = request.headers.get("prefer", "").replace(" ", "").lower()
    lenient = "handling=lenient" in prefer
    items = list(request.query_params.multi_items())
    return parse(resource_type, spec, items, lenient=lenient)


def _link(base: str, search: Search, offset: int) -> str:
    items = [(k, v) for k, v in search.raw if k not in ("_offset", "_count")]
    items += [("_count", str(search.count)), ("_offset", str(offset))]
    return f"{base}/{search.resource_type}?{urlencode(items)}"


def searchset(
    request: Request,
    settings: Settings,
    search: Search,
    total: int,
    matches: list[Resource],
    includes: list[Resource] | None = None,
) -> FhirResponse:
    """A searchset Bundle: ``total``, self/first/next/previous links, match and include entries."""
    base = fhir_base(request, settings)
    links = [{"relation": "self", "url": _link(base, search, search.offset)},
             {"relation": "first", "url": _link(base, search, 0)}]
    if search.count and search.offset + search.count < total:
        links.append({"relation": "next", "url": _link(base, search, search.offset + search.count)})
    if search.offset > 0 and search.count:
        previous = max(search.offset - search.count, 0)
        links.append({"relation": "previous", "url": _link(base, search, previous)})
    shell = Bundle.model_validate({
        "resourceType": "Bundle", "type": "searchset", "total": total, "link": links,
        "meta": {"lastUpdated": instant(utcnow())},
    }).model_dump(mode="json")
    entries: list[dict[str, Any]] = []
    for mode, resources in (("match", matches), ("include", includes or [])):
        for resource in resources:
            body = resource.model_dump(mode="json")
            entries.append({
                "fullUrl": f"{base}/{body['resourceType']}/{body['id']}",
                "resource": body,
                "search": {"mode": mode},
            })
    if entries:
        shell["entry"] = entries
    return FhirResponse(shell)
