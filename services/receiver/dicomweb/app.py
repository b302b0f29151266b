"""The receiver's DICOMweb endpoint: STOW-RS ``POST /dicomweb/studies[/{study}]`` (PS3.18
10.5), a small Starlette app served in the receiver's supervising process.

Access is the API's (:mod:`services.core.auth`): a bearer token or JWT whose scopes allow
create on ImagingStudy. The body is spooled and stored by :mod:`.stow`; the response is
sent once every instance in it is durable and indexed, or refused.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from services.core import audit
from services.core.auth import Authenticator, AuthError, Principal, allows
from services.core.db import Database
from services.core.uids import is_valid_uid
from services.receiver.associations import AssociationState, Registry
from services.receiver.dicomweb.response import (
    MEDIA_TYPE,
    UNAVAILABLE,
    http_status,
    response_json,
)
from services.receiver.dicomweb.stow import (
    STOW_AET,
    Spool,
    StowRefused,
    check_request_type,
    store_parts,
)
from services.receiver.store import InstanceStore

log = logging.getLogger("services.receiver")

#: The scope STOW-RS needs: create on ImagingStudy (SMART v2 ``c``, v1 ``write``).
RESOURCE, INTERACTION = "ImagingStudy", "c"
RETRY_AFTER_SECONDS = 30  # a 503 (every instance refused for want of resources)


@dataclass(frozen=True)
class StowService:
    """Everything a STOW-RS request needs, built once per process."""

    db: Database
    store: InstanceStore
    registry: Registry
    authenticator: Authenticator
    folder: Path  # temporary files of requests being received
    max_part_bytes: int
    max_request_bytes: int


def _audit(db: Database, event: str, *, actor: str, source: str, detail: str) -> None:
    """A refused request's audit row, in its own transaction."""
    try:
        with db.session() as session:
            audit.record(
                session, event, actor=actor, source=source, action="C", outcome="4", detail=detail
            )
    except Exception:
        log.warning("event=audit_not_written audit_event=%s", event)


def _authorize(service: StowService, authorization: str | None, host: str, peer: str) -> Principal:
    """The caller if allowed to store; :class:`StowRefused` 401/403 (audited) otherwise."""
    try:
        principal = service.authenticator.authenticate(authorization, host)
    except AuthError as exc:
        log.info("event=auth_failed path=/dicomweb reason=%s", exc)
        _audit(service.db, audit.USER_AUTHENTICATION, actor="", source=peer, detail="stow-rs")
        raise StowRefused(401, "Authentication required: a valid bearer token") from None
    if not allows(principal.scopes, RESOURCE, INTERACTION):
        _audit(
            service.db,
            audit.SECURITY_ALERT,
            actor=principal.subject,
            source=peer,
            detail="insufficient scope for stow-rs (ImagingStudy create)",
        )
        raise StowRefused(403, "Insufficient scope: storing needs ImagingStudy create")
    return principal


def _refusal(exc: StowRefused, peer: str) -> Response:
    log.warning("event=stow_refused status=%d reason=%s peer=%s", exc.status, exc.reason, peer)
    headers = {"WWW-Authenticate": 'Bearer realm="noduleflow"'} if exc.status == 401 else None
    return PlainTextResponse(exc.reason, status_code=exc.status, headers=headers)


async def store_instances(request: Request) -> Response:
    """STOW-RS Store Instances (PS3.18 10.5): 200, 202 or 409 with the DICOM JSON response;
    400/413/415 (nothing stored) for a request that is not a well-formed one."""
    service: StowService = request.app.state.stow
    host = request.client.host if request.client else ""
    peer = f"{host}:{request.client.port}" if request.client else ""
    study = request.path_params.get("study")
    spool: Spool | None = None
    try:
        principal = await run_in_threadpool(
            _authorize, service, request.headers.get("authorization"), host, peer
        )
        if study is not None and not is_valid_uid(study):
            raise StowRefused(400, "the target Study Instance UID is not a valid UID")
        boundary = check_request_type(request.headers.get("content-type"))
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) < 0):
            raise StowRefused(400, "malformed Content-Length")
        if declared is not None and int(declared) > service.max_request_bytes:
            raise StowRefused(413, "request body larger than STOW_MAX_REQUEST_MB")
        spool = Spool(service.folder, boundary, service.max_part_bytes, service.max_request_bytes)
        async for chunk in request.stream():
            spool.feed(chunk)
        parts = spool.finish()
    except StowRefused as exc:
        if spool is not None:
            spool.discard()
        return _refusal(exc, peer)
    except ClientDisconnect:  # nobody is left to answer; nothing was stored
        received = spool.received if spool is not None else 0
        if spool is not None:
            spool.discard()
        log.warning("event=stow_abandoned peer=%s received=%d", peer, received)
        return Response(status_code=400)
    except BaseException:
        if spool is not None:
            spool.discard()
        raise
    state = AssociationState(calling_aet=STOW_AET, peer=peer, actor=principal.subject)
    results = await run_in_threadpool(
        store_parts, parts, service.store, service.registry, state, study=study
    )
    status = http_status(results)
    log.info(
        "event=stow_stored status=%d instances=%d stored=%d peer=%s",
        status,
        len(results),
        sum(1 for result in results if result.stored),
        peer,
    )
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if status == UNAVAILABLE else None
    return JSONResponse(
        response_json(results), status_code=status, media_type=MEDIA_TYPE, headers=headers
    )


def create_app(service: StowService) -> Starlette:
    app = Starlette(
        routes=[
            Route("/dicomweb/studies", store_instances, methods=["POST"]),
            Route("/dicomweb/studies/{study}", store_instances, methods=["POST"]),
        ]
    )
    app.state.stow = service
    return app
