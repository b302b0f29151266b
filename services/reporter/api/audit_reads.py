"""Audit rows for API access (PS3.15 A.5 event IDs); no patient data in the detail text.

- 110110 Patient Record, action R: a read of one resource (object id = resource id).
- 110112 Query, action E: a search (detail = resource type, parameter names, hit count).
- 110114 User Authentication, outcome 4: a rejected credential.
- 110113 Security Alert, outcome 4: an authenticated caller without the needed scope.

Read and query events are committed with the request's transaction. On PostgreSQL that
transaction uses ``synchronous_commit = off``: the row is committed (visible, ordered, kept
if the API process dies) but its WAL flush is not awaited, so only a crash of the database
server itself within ~3 × ``wal_writer_delay`` could lose it. This keeps one disk flush out of
every API read. Authentication failures and security alerts are committed synchronously.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from sqlalchemy import insert, text
from sqlalchemy.orm import Session

from services.core import audit
from services.core.db import AuditEvent, Database
from services.core.db.models import utcnow

log = logging.getLogger(__name__)

PATIENT_RECORD = "110110"


def _relaxed(session: Session) -> None:
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SET LOCAL synchronous_commit TO OFF"))


def _insert(session: Session, **row: str) -> None:
    """A direct INSERT (no unit-of-work flush): the hot path of every API read."""
    _relaxed(session)
    session.execute(
        insert(AuditEvent).values(
            at=utcnow(),
            outcome="0",
            actor=row["actor"][:128],
            source=row["source"][:128],
            event=row["event"],
            action=row["action"],
            object_type=row["object_type"][:32],
            object_id=row.get("object_id", "")[:128],
            detail=row.get("detail", "")[:2000],
        )
    )


def read(session: Session, *, actor: str, source: str, resource_type: str, ids: str) -> None:
    _insert(
        session,
        event=PATIENT_RECORD,
        actor=actor,
        source=source,
        action="R",
        object_type=resource_type,
        object_id=ids,
    )


def search(
    session: Session,
    *,
    actor: str,
    source: str,
    resource_type: str,
    params: Iterable[str],
    total: int | None,
) -> None:
    names = ",".join(sorted(set(params)))[:500]
    _insert(
        session,
        event=audit.QUERY,
        actor=actor,
        source=source,
        action="E",
        object_type=resource_type,
        detail=f"params={names} total={total}",
    )


def _separate(db: Database, event: str, *, actor: str, source: str, detail: str) -> None:
    """Written in its own transaction: the request itself is being refused."""
    try:
        with db.session() as session:
            audit.record(
                session, event, actor=actor, source=source, action="E", outcome="4", detail=detail
            )
    except Exception as exc:  # the refusal must still be answered
        log.warning("event=audit_write_failed audit_event=%s error=%s", event, type(exc).__name__)


def auth_failure(db: Database, *, source: str, path: str) -> None:
    _separate(db, audit.USER_AUTHENTICATION, actor="", source=source, detail=f"path={path[:200]}")


def access_denied(db: Database, *, actor: str, source: str, path: str) -> None:
    _separate(
        db,
        audit.SECURITY_ALERT,
        actor=actor,
        source=source,
        detail=f"insufficient scope path={path[:200]}",
    )
