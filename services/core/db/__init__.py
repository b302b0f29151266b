"""Database: SQLAlchemy 2 models, sessions and Alembic migrations."""

from services.core.db.models import (
    AssociationHold,
    AuditEvent,
    Base,
    Delivery,
    Finding,
    FindingReview,
    Instance,
    Job,
    JobState,
    OutboxMessage,
    Purge,
    RefusedInstance,
    Series,
    Study,
)
from services.core.db.session import Database, upgrade

__all__ = [
    "AssociationHold",
    "AuditEvent",
    "Base",
    "Database",
    "Delivery",
    "Finding",
    "FindingReview",
    "Instance",
    "Job",
    "JobState",
    "OutboxMessage",
    "Purge",
    "RefusedInstance",
    "Series",
    "Study",
    "upgrade",
]
