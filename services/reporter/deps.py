"""Dependencies for the routes: settings, database session, the caller and their scopes."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from services.core.broker import Broker
from services.core.db import Database
from services.core.settings import Settings
from services.reporter import audit_reads
from services.reporter.auth import Authenticator, AuthError, Principal, allows
from services.reporter.errors import ApiError
from services.reporter.fhir_cache import ReportCache

log = logging.getLogger(__name__)


@dataclass
class AppState:
    settings: Settings
    db: Database
    authenticator: Authenticator
    broker: Broker | None = None
    reports: ReportCache = field(default_factory=ReportCache)


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.noduleflow
    return state


StateDep = Annotated[AppState, Depends(get_state)]


def get_settings(state: StateDep) -> Settings:
    return state.settings


def get_session(state: StateDep) -> Iterator[Session]:
    """One transaction per request, committed before the response is sent."""
    with state.db.session() as session:
        yield session


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session, scope="function")]


def client_host(request: Request) -> str:
    return request.client.host if request.client else ""


def get_principal(request: Request, state: StateDep) -> Principal:
    try:
        return state.authenticator.authenticate(
            request.headers.get("authorization"), client_host(request)
        )
    except AuthError as exc:
        log.info("event=auth_failed path=%s reason=%s", request.url.path, exc)
        audit_reads.auth_failure(state.db, source=client_host(request), path=request.url.path)
        raise ApiError(
            401, "Authentication required: a valid bearer token",
            headers={"WWW-Authenticate": 'Bearer realm="noduleflow"'},
        ) from exc


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def ensure_scope(request: Request, principal: Principal, *types: str, interaction: str) -> None:
    """403 (and a security audit row) unless ``principal`` may ``interaction`` all ``types``."""
    missing = [t for t in types if not allows(principal.scopes, t, interaction)]
    if missing:
        audit_reads.access_denied(
            get_state(request).db, actor=principal.subject, source=client_host(request),
            path=request.url.path,
        )
        raise ApiError(403, f"Insufficient scope for {', '.join(missing)} ({interaction})")


def require(*resource_types: str, interaction: str = "r") -> Callable[..., Principal]:
    """A dependency: the caller must hold ``interaction`` on every one of ``resource_types``."""

    def check(request: Request, principal: PrincipalDep) -> Principal:
        ensure_scope(request, principal, *resource_types, interaction=interaction)
        return principal

    return check


API_READ_TYPES = ("DiagnosticReport", "Observation", "ImagingStudy", "Patient")
ApiReaderDep = Annotated[Principal, Depends(require(*API_READ_TYPES, interaction="r"))]
