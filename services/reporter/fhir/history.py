"""HTTP side of versioned resources: ETag / Last-Modified / If-None-Match and the instance
``_history`` Bundle (FHIR R4 http: "vread", "history", "Managing Resource Contention")."""

from __future__ import annotations

from datetime import UTC
from email.utils import format_datetime
from urllib.parse import quote

from fastapi import Request, Response

from services.core.db.models import utcnow
from services.reporter.fhir.common import FHIR_MEDIA_TYPE, instant
from services.reporter.fhir.response import encode
from services.reporter.fhir.versioning import Version, etag, etag_matches


def not_modified(request: Request, version: Version) -> Response | None:
    """304 when the client's ``If-None-Match`` already names this version, else None."""
    if not etag_matches(request.headers.get("if-none-match"), version.vid):
        return None
    return tagged(Response(status_code=304), version)


def tagged(response: Response, version: Version) -> Response:
    """``response`` with the version's ETag and Last-Modified headers."""
    response.headers["ETag"] = etag(version.vid)
    if version.last_updated is not None:
        response.headers["Last-Modified"] = format_datetime(
            version.last_updated.replace(tzinfo=version.last_updated.tzinfo or UTC).astimezone(UTC),
            usegmt=True,
        )
    return response


def history_bundle(
    base: str, resource_type: str, resource_id: str, versions: list[tuple[Version, bytes]]
) -> bytes:
    """A ``history`` Bundle of one resource's ``versions`` (newest first), each with the
    request that made it (POST for the first, PUT after) and its response (status, ETag,
    lastModified)."""
    url = f"{resource_type}/{quote(resource_id, safe='')}"
    shell = {
        "resourceType": "Bundle",
        "meta": {"lastUpdated": instant(utcnow())},
        "type": "history",
        "total": len(versions),
        "link": [{"relation": "self", "url": f"{base}/{url}/_history"}],
    }
    entries: list[bytes] = []
    for version, body in versions:
        request = (
            {"method": "POST", "url": resource_type}
            if version.vid == 1
            else {
                "method": "PUT",
                "url": url,
            }
        )
        response = {
            "status": "201 Created" if version.vid == 1 else "200 OK",
            "etag": etag(version.vid),
            "lastModified": instant(version.last_updated),
        }
        head = encode({"fullUrl": f"{base}/{url}"})[:-1] + b',"resource":'
        tail = encode({"request": request, "response": response})[1:]
        entries.append(head + body + b"," + tail)
    payload = encode(shell)
    if entries:
        payload = payload[:-1] + b',"entry":[' + b",".join(entries) + b"]}"
    return payload


def history_response(payload: bytes) -> Response:
    return Response(payload, media_type=FHIR_MEDIA_TYPE)
