"""What to do after a job attempt failed: a pure function of (attempt, error).

Permanent errors (the study itself is unusable) end the job at once; transient ones (database,
storage or broker unavailable, out of memory) are retried with exponential backoff until
``max_attempts``; a message that cannot be understood goes to the dead-letter queue.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from enum import Enum

from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from services.core.backoff import capped_exponential
from services.core.errors import (
    PermanentError,
    TransientError,
    is_db_unavailable,
    is_transient,
)

__all__ = [
    "Action",
    "BadMessage",
    "Decision",
    "RetryPolicy",
    "StorageUnavailable",
    "StudyUnusable",
    "describe",
    "is_db_unavailable",
    "is_transient",
]


class BadMessage(PermanentError, ValueError):
    """The message itself is unusable (not JSON, wrong schema, unknown job)."""

    code = "bad-message"


class StudyUnusable(PermanentError):
    """A permanent property of the study: retrying cannot help (the job ends)."""

    def __init__(self, code: str, message: str, *, skip: bool) -> None:
        super().__init__(message, code=code, skip=skip)

    @property
    def reason(self) -> str:
        return f"{self.code}: {self}"


class StorageUnavailable(TransientError, OSError):
    """Stored instances cannot be read right now (volume not mounted, file missing)."""

    code = "storage-unavailable"


class Action(Enum):
    RETRY = "retry"  # put the message back after ``delay`` seconds
    FAIL = "fail"  # record the job as failed with ``reason``, then acknowledge
    SKIP = "skip"  # record the job as skipped with ``reason``, then acknowledge
    DEAD_LETTER = "dead-letter"  # reject the message to the dead-letter queue


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str
    delay: float = 0.0


def describe(error: BaseException) -> str:
    """A short, patient-free description of a transient error for the job's reason."""
    if isinstance(error, StorageUnavailable):
        return f"storage unavailable ({error})"
    if isinstance(error, MemoryError):
        return "out of memory"
    if isinstance(error, OperationalError | PoolTimeoutError | DBAPIError):
        return "database unavailable"
    if isinstance(error, OSError):
        return f"I/O error ({errno.errorcode.get(error.errno or 0, 'unknown')})"
    return f"internal error ({error.__class__.__name__})"


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff ``base * factor**(attempt-1)`` capped at ``max_delay``.

    ``attempt`` is 1 for the first try. Decided by the error's type
    (:mod:`services.core.errors`): a bad message is dead-lettered, a permanent error ends
    the job (skipped or failed, as the error says), anything else is retried until
    ``max_attempts``. Unknown errors (bugs) are retried like transient ones, since another
    worker or a later model may succeed, but the job then fails with the error's class name
    so a person can act on it.
    """

    max_attempts: int = 3
    base_delay: float = 1.0
    factor: float = 2.0
    max_delay: float = 30.0
    # How long one attempt waits in place for the database to come back (holding its
    # message and its in-memory result) before it gives the message back.
    outage_patience: float = 300.0

    def delay(self, attempt: int) -> float:
        return capped_exponential(
            attempt, first=self.base_delay, cap=self.max_delay, factor=self.factor
        )

    def outage_delay(self, tries: int, waited: float) -> float | None:
        """Seconds to wait before database try ``tries + 1``; None once patience is spent."""
        if waited >= self.outage_patience:
            return None
        return min(self.delay(tries + 1), self.outage_patience - waited)

    def decide(self, attempt: int, error: BaseException) -> Decision:
        if isinstance(error, BadMessage):
            return Decision(Action.DEAD_LETTER, f"bad message: {error}")
        if isinstance(error, StudyUnusable):
            return Decision(Action.SKIP if error.skip else Action.FAIL, error.reason)
        if isinstance(error, PermanentError):
            text = str(error)
            reason = text if text.startswith(f"{error.code}:") else f"{error.code}: {text}"
            return Decision(Action.SKIP if error.skip else Action.FAIL, reason)
        what = describe(error)
        if attempt < self.max_attempts:
            return Decision(
                Action.RETRY, f"attempt {attempt} failed: {what}; retrying", self.delay(attempt)
            )
        kind = "transient" if is_transient(error) else "unexpected"
        return Decision(Action.FAIL, f"gave up after {attempt} attempts ({kind}): {what}")
