"""Responses for the FHIR routes: ``application/fhir+json`` and searchset Bundles with paging.

Resources travel as encoded JSON (``bytes``) from the report cache into the Bundle, so a page
of cached reports is assembled without re-encoding them.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from fhir.resources.R4B.resource import Resource

from services.core.db.models import utcnow
from services.core.settings import Settings
from services.reporter.fhir.common import FHIR_MEDIA_TYPE, instant
from services.reporter.fhir.search import Search, Spec, parse
from services.reporter.fhir.subset import subset


class FhirResponse(JSONResponse):
    media_type = FHIR_MEDIA_TYPE


def encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def resource_response(resource: Resource | dict[str, Any] | bytes) -> Response:
    if isinstance(resource, bytes):
        return Response(resource, media_type=FHIR_MEDIA_TYPE)
    body = resource if isinstance(resource, dict) else resource.model_dump(mode="json")
    return FhirResponse(body)


def fhir_base(settings: Settings) -> str:
    """Absolute base of every FHIR link and ``fullUrl``: ``PUBLIC_BASE_URL``, else the
    configured ``http://API_HOST:API_PORT``. Never the request's Host header, which the
    client chooses (a forged one would plant its own URLs in our Bundles)."""
    return settings.base_url.rstrip("/") + "/fhir"


def parse_request(
    request: Request, resource_type: str, spec: Spec, items: list[tuple[str, str]] | None = None
) -> Search:
    """Parse the search in ``items`` (default: the query string; a POST ``_search`` passes
    its query and form parameters, :mod:`services.reporter.api.search_input`)."""
    prefer = request.headers.get("prefer", "").replace(" ", "").lower()
    lenient = "handling=lenient" in prefer
    if items is None:
        items = list(request.query_params.multi_items())
    return parse(resource_type, spec, items, lenient=lenient)


def _link(base: str, search: Search, offset: int) -> str:
    items = [(k, v) for k, v in search.raw if k not in ("_offset", "_count")]
    items += [("_count", str(search.count)), ("_offset", str(offset))]
    return f"{base}/{search.resource_type}?{urlencode(items)}"


def searchset(
    settings: Settings,
    search: Search,
    total: int,
    matches: list[tuple[str, str, bytes]],
    includes: list[tuple[str, str, bytes]] | None = None,
) -> Response:
    """A searchset Bundle: ``total``, self/first/next/previous links, match and include entries.

    ``matches``/``includes`` are ``(resource type, id, encoded resource)``.
    """
    base = fhir_base(settings)
    links = [
        {"relation": "self", "url": _link(base, search, search.offset)},
        {"relation": "first", "url": _link(base, search, 0)},
    ]
    if search.count and search.offset + search.count < total:
        links.append({"relation": "next", "url": _link(base, search, search.offset + search.count)})
    if search.offset > 0 and search.count:
        previous = max(search.offset - search.count, 0)
        links.append({"relation": "previous", "url": _link(base, search, previous)})
    # The shell's shape is fixed (checked against fhir.resources' Bundle in the tests); the
    # entries are validated resources from the builders.
    shell = {
        "resourceType": "Bundle",
        "meta": {"lastUpdated": instant(utcnow())},
        "type": "searchset",
        "total": total,
        "link": links,
    }
    if search.elements:  # _elements: matches only, each tagged SUBSETTED
        matches = [(rtype, rid, subset(body, search.elements)) for rtype, rid, body in matches]
    entries: list[bytes] = []
    for mode, resources in (("match", matches), ("include", includes or [])):
        tail = b',"search":{"mode":"' + mode.encode() + b'"}}'
        for rtype, rid, body in resources:
            head = encode({"fullUrl": f"{base}/{rtype}/{rid}"})[:-1] + b',"resource":'
            entries.append(head + body + tail)
    payload = encode(shell)
    if entries:
        payload = payload[:-1] + b',"entry":[' + b",".join(entries) + b"]}"
    return Response(payload, media_type=FHIR_MEDIA_TYPE)


def entry(body: dict[str, Any]) -> tuple[str, str, bytes]:
    return body["resourceType"], body["id"], encode(body)
