"""Request guards and response headers (pure ASGI: no buffering of streamed responses)."""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.reporter.errors import outcome

MAX_BODY_BYTES = 64 * 1024  # read-only API: requests carry no meaningful body
_CSP = ("default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


class GuardMiddleware:
    """413 for oversized bodies, 415 for compressed bodies; security headers on every answer."""

    def __init__(self, app: ASGIApp, *, hsts: bool = False) -> None:
        self.app = app
        self.hsts = hsts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        length = headers.get("content-length", "0")
        if not length.isdigit() or int(length) > MAX_BODY_BYTES:
            await self._refuse(scope, send, 413, "too-costly", "Request body too large")
            return
        if headers.get("content-encoding", "identity").lower() != "identity":
            await self._refuse(scope, send, 415, "not-supported", "Compressed bodies refused")
            return
        path: str = scope.get("path", "")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                out = MutableHeaders(scope=message)
                out["X-Content-Type-Options"] = "nosniff"
                out["Referrer-Policy"] = "no-referrer"
                out["X-Frame-Options"] = "DENY"
                if not path.startswith("/static/"):
                    out["Cache-Control"] = "no-store"
                if out.get("content-type", "").startswith("text/html"):
                    out["Content-Security-Policy"] = _CSP
                if self.hsts:
                    out["Strict-Transport-Security"] = "max-age=31536000"
            await send(message)

        await self.app(scope, receive, send_with_headers)

    async def _refuse(self, scope: Scope, send: Send, status: int, code: str, text: str) -> None:
        import json

        body = json.dumps(outcome(code, text)).encode()
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", b"application/fhir+json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"), (b"x-content-type-options", b"nosniff")]})
        await send({"type": "http.response.body", "body": body})
