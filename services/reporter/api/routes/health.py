"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from services.core.messages import INFERENCE_QUEUE
from services.reporter.api.auth import is_loopback
from services.reporter.api.deps import StateDep, authenticate
from services.reporter.api.errors import RETRY_AFTER_SECONDS

router = APIRouter(tags=["health"])
log = logging.getLogger(__name__)


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is alive and serving."""
    return {"status": "ok"}


@router.get("/readyz")
def readyz(state: StateDep) -> JSONResponse:
    """Database (and broker, when one is wired in) reachable; 503 otherwise."""
    checks: dict[str, str] = {}
    try:
        with state.db.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"unavailable: {type(exc).__name__}"
    if state.broker is not None:
        try:
            state.broker.queue_depth(INFERENCE_QUEUE)
            checks["broker"] = "ok"
        except Exception as exc:
            checks["broker"] = f"unavailable: {type(exc).__name__}"
    ready = all(v == "ok" for v in checks.values())
    if not ready:
        log.warning("event=not_ready checks=%s", ",".join(f"{k}:{v}" for k, v in checks.items()))
    return JSONResponse(
        {"status": "ready" if ready else "unavailable", "checks": checks},
        status_code=200 if ready else 503,
        headers=None if ready else {"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


@router.get("/metrics")
def metrics(request: Request, state: StateDep) -> Response:
    """Public on a loopback API_HOST; any valid credential otherwise."""
    if not is_loopback(state.settings.api_host):
        authenticate(request, state)
    return Response(generate_latest(request.app.state.metrics), media_type=CONTENT_TYPE_LATEST)
