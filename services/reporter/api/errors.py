"""Every error as a FHIR OperationOutcome, with the right status and never a stack trace."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fhir.resources.R4B.operationoutcome import OperationOutcome
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.core.errors import NoduleflowError
from services.reporter.fhir.common import FHIR_MEDIA_TYPE

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 5
_HTTP_CODES = {
    400: "invalid",
    401: "login",
    403: "forbidden",
    404: "not-found",
    405: "not-supported",
    406: "not-supported",
    413: "too-costly",
    415: "not-supported",
    422: "invalid",
    429: "throttled",
    503: "transient",
}


class ApiError(NoduleflowError):
    """An error a client can act on; becomes an OperationOutcome with ``status`` (whether a
    retry can help is the client's to read from it: 503 with Retry-After, or a 4xx)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message, code=code or _HTTP_CODES.get(status, "processing"))
        self.status = status
        self.message = message
        self.headers = headers or {}


def outcome(code: str, message: str, *, severity: str = "error") -> dict[str, Any]:
    body = OperationOutcome.model_validate(
        {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": severity, "code": code, "diagnostics": message}],
        }
    )
    return body.model_dump(mode="json")


def outcome_response(
    request: Request, status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    media = FHIR_MEDIA_TYPE if request.url.path.startswith("/fhir") else "application/json"
    return JSONResponse(
        outcome(code, message), status_code=status, headers=headers, media_type=media
    )


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return outcome_response(request, exc.status, exc.code, exc.message, exc.headers)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    message = {404: "Resource or path not found", 405: "Method not allowed (read-only API)"}.get(
        status, str(exc.detail)
    )
    return outcome_response(
        request,
        status,
        _HTTP_CODES.get(status, "processing"),
        message,
        dict(exc.headers or {}),
    )


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    where = ", ".join(".".join(str(p) for p in err.get("loc", ())) for err in exc.errors()[:5])
    return outcome_response(request, 400, "invalid", f"Invalid request parameter: {where}")


async def _database_down(request: Request, exc: Exception) -> JSONResponse:
    log.warning("event=database_unavailable path=%s error=%s", request.url.path, type(exc).__name__)
    return outcome_response(
        request,
        503,
        "transient",
        "Database unavailable; retry later",
        {"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    correlation = uuid.uuid4().hex
    log.error(
        "event=unhandled_error correlation_id=%s path=%s",
        correlation,
        request.url.path,
        exc_info=exc,
    )
    return outcome_response(
        request,
        500,
        "exception",
        f"Internal error; correlation id {correlation}",
        {"X-Correlation-ID": correlation},
    )


def is_database_error(exc: BaseException) -> bool:
    if isinstance(exc, OperationalError | PoolTimeout):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


async def _dbapi_error(request: Request, exc: Exception) -> JSONResponse:
    if is_database_error(exc):
        return await _database_down(request, exc)
    return await _unexpected(request, exc)


def install(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(OperationalError, _database_down)
    app.add_exception_handler(PoolTimeout, _database_down)
    app.add_exception_handler(DBAPIError, _dbapi_error)
    app.add_exception_handler(Exception, _unexpected)
