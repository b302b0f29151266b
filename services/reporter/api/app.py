"""The reporter's HTTP side: FHIR R4 (read-only), study API, worklist, health and metrics.

- ``/fhir``: ``metadata``; DiagnosticReport, Observation, ImagingStudy and Patient read +
  search (GET, or POST ``_search``); Device read; DiagnosticReport and Observation vread
  and instance ``_history``, with ETags (``If-None-Match`` → 304). ``application/fhir+json``,
  searchset Bundles with ``total`` and self/first/next/previous links, an OperationOutcome
  for every error (strict parameters); another format asked for (``_format``, ``Accept``)
  is 406.
- ``/api``: ``studies/{uid}``, ``studies/{uid}/findings`` (``contracts.Finding``),
  ``studies/{uid}/key-images/{index}.png``, ``jobs``, ``worklist``.
- ``/worklist``, ``/studies/{uid}``: HTML shells; their data comes from ``/api`` with the
  bearer token the user types in (kept in sessionStorage).
- ``/healthz`` (alive), ``/readyz`` (database and broker), ``/metrics`` (Prometheus, from the
  database at scrape time; needs a token when API_HOST is not loopback).

Access: see :mod:`services.reporter.api.auth`; audit: :mod:`services.reporter.api.audit_reads`.
No ``/docs`` or OpenAPI schema is served. Run behind TLS (HSTS is sent when
``PUBLIC_BASE_URL`` is https), on the server :mod:`services.reporter.api.server` builds (no
``server`` header).
"""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from services.core.broker import Broker
from services.core.db import Database
from services.core.settings import Settings
from services.reporter.api import errors
from services.reporter.api.auth import Authenticator
from services.reporter.api.deps import AppState
from services.reporter.api.metrics import make_registry
from services.reporter.api.middleware import GuardMiddleware
from services.reporter.api.negotiation import FhirNegotiationMiddleware
from services.reporter.api.routes import (
    fhir_history,
    fhir_patients,
    fhir_reports,
    fhir_resources,
    health,
    pages,
    studies,
)

log = logging.getLogger(__name__)
_STATIC = Path(__file__).resolve().parent / "static"


def create_app(settings: Settings, db: Database, broker: Broker | None = None) -> FastAPI:
    """Build the app; raises RuntimeError when access control is unsafe for API_HOST."""
    authenticator = Authenticator(settings)
    app = FastAPI(
        title="noduleflow",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.noduleflow = AppState(
        settings=settings, db=db, authenticator=authenticator, broker=broker
    )
    app.state.metrics = make_registry(db, broker, settings.storage_dir)
    errors.install(app)
    routers = (fhir_resources, fhir_reports, fhir_history, fhir_patients, studies, health, pages)
    for module in routers:
        app.include_router(module.router)
    app.mount("/static", StaticFiles(directory=_STATIC), name="static")
    app.add_middleware(FhirNegotiationMiddleware)  # inside the guard: its headers apply
    app.add_middleware(
        GuardMiddleware,
        hsts=settings.base_url.startswith("https://"),
        rate=settings.api_rate_limit,
        burst=settings.api_rate_burst,
    )
    log.info("event=api_ready auth=%s", "open" if authenticator.open else "bearer")
    return app
