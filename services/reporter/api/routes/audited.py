"""The audit rows of the API's reads and searches, written as the caller ``who`` from the
request's client host (see :mod:`services.reporter.api.audit_reads`), and the end of every
FHIR search: its audit row, then the searchset Bundle."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypedDict

from fastapi import Request, Response
from sqlalchemy.orm import Session

from services.core.settings import Settings
from services.reporter.api import audit_reads
from services.reporter.api.auth import Principal
from services.reporter.api.deps import client_host
from services.reporter.fhir.response import searchset as bundle
from services.reporter.fhir.search import Search

Entries = list[tuple[str, str, bytes]]


class Caller(TypedDict):
    """Who asked (the principal's subject) and from where (the client host)."""

    actor: str
    source: str


def _caller(request: Request, who: Principal) -> Caller:
    return Caller(actor=who.subject, source=client_host(request))


def read(request: Request, session: Session, who: Principal, resource_type: str, ids: str) -> None:
    """Audit ``who``'s read of ``resource_type`` ``ids``."""
    audit_reads.read(session, **_caller(request, who), resource_type=resource_type, ids=ids)


def search(
    request: Request,
    session: Session,
    who: Principal,
    resource_type: str,
    params: Iterable[str],
    total: int | None,
) -> None:
    """Audit ``who``'s search of ``resource_type`` by ``params`` (names), ``total`` hits."""
    audit_reads.search(
        session, **_caller(request, who), resource_type=resource_type, params=params, total=total
    )


def searchset(
    request: Request,
    session: Session,
    settings: Settings,
    who: Principal,
    query: Search,
    total: int,
    matches: Entries,
    includes: Entries | None = None,
) -> Response:
    """Audit the FHIR search ``query`` and answer it with a searchset Bundle of
    ``matches`` and ``includes`` (:func:`services.reporter.fhir.response.searchset`)."""
    search(request, session, who, query.resource_type, query.names, total)
    return bundle(settings, query, total, matches, includes)
