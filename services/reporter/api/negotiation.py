"""Content negotiation for ``/fhir``: JSON only, refused alike by ``_format`` and ``Accept``.

The server speaks ``application/fhir+json``. A request that can take only something else
(``_format=xml``, ``Accept: application/fhir+xml``) gets 406 with an OperationOutcome (in
JSON, the one format we have) on every FHIR path: reads, searches, metadata and errors.
"""

from __future__ import annotations

import json
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Receive, Scope, Send

from services.reporter.api.errors import outcome

#: ``_format`` values meaning JSON (FHIR R4 §2.21.0.6 http.html#mime)
JSON_FORMATS = frozenset({"json", "application/json", "application/fhir+json", "text/json"})
#: media ranges in Accept that JSON satisfies
_JSON_RANGES = frozenset({"*/*", "application/*", "application/json", "application/fhir+json"})


def _format_refusal(value: str) -> str | None:
    media = value.split(";")[0].strip().lower()
    if media in JSON_FORMATS:
        return None
    return f"_format {value[:40]!r} is not supported; this server returns application/fhir+json"


def _accept_refusal(accept: str) -> str | None:
    """Why ``accept`` excludes JSON, or None when JSON is acceptable (or nothing is asked)."""
    if not accept.strip():
        return None
    for part in accept.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        quality = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if media.lower() in _JSON_RANGES and quality > 0:
            return None
    return f"Accept {accept[:60]!r} excludes application/fhir+json, the only format served"


def refusal(query_string: str, accept: str) -> str | None:
    """Why a FHIR request must be answered 406, or None when JSON will do (pure)."""
    for key, value in parse_qsl(query_string, keep_blank_values=True):
        if key == "_format":
            reason = _format_refusal(value)
            if reason is not None:
                return reason
    return _accept_refusal(accept)


class FhirNegotiationMiddleware:
    """406 + OperationOutcome for ``/fhir`` requests that cannot take JSON."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "") if scope["type"] == "http" else ""
        if path == "/fhir" or path.startswith("/fhir/"):
            accept = ""
            for key, value in scope["headers"]:
                if key.lower() == b"accept":
                    accept = value.decode("latin-1")
            query = scope.get("query_string", b"").decode("latin-1")
            reason = refusal(query, accept)
            if reason is not None:
                body = json.dumps(outcome("not-supported", reason)).encode()
                headers = [
                    (b"content-type", b"application/fhir+json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"vary", b"Accept"),
                ]
                await send({"type": "http.response.start", "status": 406, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)
