"""Request guards and response headers (pure ASGI: no buffering of streamed responses)."""

from __future__ import annotations

import json
import threading
import time

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.reporter.api.errors import outcome

MAX_BODY_BYTES = 64 * 1024  # read-only API: requests carry no meaningful body
_CSP = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


class RateLimiter:
    """Token bucket per client address (per process): ``rate``/s sustained, ``burst`` at once."""

    def __init__(self, rate: float, burst: int, max_clients: int = 10_000) -> None:
        self.rate, self.burst, self.max_clients = rate, float(burst), max_clients
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def allow(self, client: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, last = self._buckets.get(client, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            allowed = tokens >= 1.0
            self._buckets[client] = (tokens - 1.0 if allowed else tokens, now)
            if len(self._buckets) > self.max_clients:  # forget the idlest half
                for key, _ in sorted(self._buckets.items(), key=lambda kv: kv[1][1])[
                    : self.max_clients // 2
                ]:
                    del self._buckets[key]
            return allowed


_UNLIMITED = ("/healthz", "/readyz", "/metrics", "/static/")


class GuardMiddleware:
    """413 for oversized bodies, 415 for compressed bodies, 429 beyond the per-client rate;
    security headers on every answer."""

    def __init__(
        self, app: ASGIApp, *, hsts: bool = False, rate: float = 50.0, burst: int = 200
    ) -> None:
        self.app = app
        self.hsts = hsts
        self.limiter = RateLimiter(rate, burst)

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
        client = (scope.get("client") or ("", 0))[0]
        limited = self.limiter.rate > 0 and not path.startswith(_UNLIMITED)
        if limited and not self.limiter.allow(client):
            await self._refuse(
                scope, send, 429, "throttled", "Too many requests; slow down", retry_after=1
            )
            return

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

    async def _refuse(
        self,
        scope: Scope,
        send: Send,
        status: int,
        code: str,
        text: str,
        retry_after: int | None = None,
    ) -> None:
        body = json.dumps(outcome(code, text)).encode()
        headers = [
            (b"content-type", b"application/fhir+json"),
            (b"content-length", str(len(body)).encode()),
            (b"x-content-type-options", b"nosniff"),
        ]
        if retry_after is None:
            headers.append((b"connection", b"close"))
        else:
            headers.append((b"retry-after", str(retry_after).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
