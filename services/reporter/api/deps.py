"""Dependencies for the routes: settings, database session, the caller and their scopes."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from services.core.broker import Broker
from services.core.db import Database
from services.core.settings import Settings
from services.reporter.api import audit_reads
from services.reporter.api.auth import Authenticator, AuthError, Principal, allows
from services.reporter.api.errors import ApiError
from services.reporter.fhir.cache import ReportCache

log = logging.getLogger(__name__)


@dataclass
class AppState:
    settings: Settings
    db: Database
    authenticator: Authenticator
    broker: Broker | None = None
    reports: ReportCache = field(default_factory=ReportCache)


# Cheap dependencies are ``async def`` so FastAPI runs them on the event loop instead of
# hopping to the thread pool for each; anything touching the database stays in threads.


async def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.noduleflow
    return state


StateDep = Annotated[AppState, Depends(get_state)]


async def get_settings(state: StateDep) -> Settings:
    return state.settings


def get_session(state: StateDep) -> Iterator[Session]:
    """One transaction per request, committed before the response is sent."""
    with state.db.session() as session:
        yield session


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session, scope="function")]


def client_host(request: Request) -> str:
    return request.client.host if request.client else ""


def authenticate(request: Request, state: AppState) -> Principal:
    """The caller, or 401 (with an audit row, so call it from a thread)."""
    try:
        return state.authenticator.authenticate(
            request.headers.get("authorization"), client_host(request)
        )
    except AuthError as exc:
        log.info("event=auth_failed path=%s reason=%s", request.url.path, exc)
        audit_reads.auth_failure(state.db, source=client_host(request), path=request.url.path)
        raise ApiError(
            401,
            "Authentication required: a valid bearer token",
            headers={"WWW-Authenticate": 'Bearer realm="noduleflow"'},
        ) from exc


async def get_principal(request: Request, state: StateDep) -> Principal:
    try:
        return state.authenticator.authenticate(
            request.headers.get("authorization"), client_host(request)
        )
    except AuthError:
        pass
    return await run_in_threadpool(authenticate, request, state)  # audits, raises 401


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def ensure_scope(request: Request, principal: Principal, *types: str, interaction: str) -> None:
    """403 (and a security audit row) unless ``principal`` may ``interaction`` all ``types``."""
    missing = [t for t in types if not allows(principal.scopes, t, interaction)]
    if missing:
        state: AppState = request.app.state.noduleflow
        audit_reads.access_denied(
            state.db,
            actor=principal.subject,
            source=client_host(request),
            path=request.url.path,
        )
        raise ApiError(403, f"Insufficient scope for {', '.join(missing)} ({interaction})")


def require(*resource_types: str, interaction: str = "r") -> Callable[..., Awaitable[Principal]]:
    """A dependency: the caller must hold ``interaction`` on every one of ``resource_types``."""

    async def check(request: Request, principal: PrincipalDep) -> Principal:
        if all(allows(principal.scopes, t, interaction) for t in resource_types):
            return principal
        await run_in_threadpool(
            ensure_scope, request, principal, *resource_types, interaction=interaction
        )  # audits, raises 403
        return principal

    return check


API_READ_TYPES = ("DiagnosticReport", "Observation", "ImagingStudy", "Patient")
ApiReaderDep = Annotated[Principal, Depends(require(*API_READ_TYPES, interaction="r"))]
