"""Audit trail rows (DICOM PS3.15 A.5 event IDs); written in the caller's transaction."""

from __future__ import annotations

from sqlalchemy.orm import Session

from services.core.db import AuditEvent

INSTANCES_TRANSFERRED = "110104"
INSTANCES_ACCESSED = "110103"
BEGIN_TRANSFERRING = "110102"
STUDY_DELETED = "110105"  # DICOM Study Deleted (retention purges)
REPORT_CREATED = "110110"  # Order Record / report; we use it for report creation
FINDING_REVIEWED = "110110"  # Patient Record, action U: a radiologist accepted or rejected
QUERY = "110112"
USER_AUTHENTICATION = "110114"
SECURITY_ALERT = "110113"


def record(
    session: Session,
    event: str,
    *,
    actor: str = "",
    source: str = "",
    action: str = "R",
    object_type: str = "",
    object_id: str = "",
    outcome: str = "0",
    detail: str = "",
) -> None:
    session.add(
        AuditEvent(
            event=event,
            actor=actor[:128],
            source=source[:128],
            action=action,
            object_type=object_type,
            object_id=object_id[:128],
            outcome=outcome,
            detail=detail[:2000],
        )
    )
