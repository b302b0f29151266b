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


class BadMessage(ValueError):
    """The message itself is unusable (not JSON, wrong schema, unknown job)."""


class StudyUnusable(Exception):
    """A permanent property of the study: retrying cannot help (the job ends)."""

    def __init__(self, code: str, message: str, *, skip: bool) -> None:
        super().__init__(message)
        self.code = code
        self.skip = skip

    @property
    def reason(self) -> str:
        return f"{self.code}: {self}"


class StorageUnavailable(OSError):
    """Stored instances cannot be read right now (volume not mounted, file missing)."""


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


_OOM_MARKERS = ("out of memory", "failed to allocate", "cudaerrormemoryallocation", "bad_alloc")
_TRANSIENT_ERRNOS = {
    errno.EAGAIN,
    errno.EBUSY,
    errno.EIO,
    errno.ENOENT,
    errno.ENOMEM,
    errno.ENOSPC,
    errno.ESTALE,
    errno.ETIMEDOUT,
    errno.EMFILE,
}


def describe(error: BaseException) -> str:
    """A short, patient-free description of a transient error for the job's reason."""
    if isinstance(error, StorageUnavailable):
        return f"storage unavailable ({error})"
    if isinstance(error, MemoryError) or _is_out_of_memory(error):
        return "out of memory"
    if isinstance(error, OperationalError | PoolTimeoutError | DBAPIError):
        return "database unavailable"
    if isinstance(error, OSError):
        return f"I/O error ({errno.errorcode.get(error.errno or 0, 'unknown')})"
    return f"internal error ({error.__class__.__name__})"


def _is_out_of_memory(error: BaseException) -> bool:
    text = str(error).lower()
    return any(marker in text for marker in _OOM_MARKERS)


def is_db_unavailable(error: BaseException) -> bool:
    """The database cannot be reached or refused for now (connection, pool, lock, deadlock)."""
    if isinstance(error, OperationalError | PoolTimeoutError):
        return True
    return isinstance(error, DBAPIError) and bool(error.connection_invalidated)


def is_transient(error: BaseException) -> bool:
    """Errors a later attempt (here or on another worker) can plausibly get past."""
    if isinstance(error, StorageUnavailable | MemoryError | OperationalError | PoolTimeoutError):
        return True
    if isinstance(error, DBAPIError):
        return bool(error.connection_invalidated)
    if isinstance(error, OSError):
        return error.errno in _TRANSIENT_ERRNOS
    return _is_out_of_memory(error)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff ``base * factor**(attempt-1)`` capped at ``max_delay``.

    ``attempt`` is 1 for the first try. Unknown errors (bugs) are retried like transient
    ones, since another worker or a later model may succeed, but the job then fails with
    the error's class name so a person can act on it.
    """

    max_attempts: int = 3
    base_delay: float = 1.0
    factor: float = 2.0
    max_delay: float = 30.0
    # How long one attempt waits in place for the database to come back (holding its
    # message and its in-memory result) before it gives the message back.
    outage_patience: float = 300.0

    def delay(self, attempt: int) -> float:
        exponent = min(max(0, attempt - 1), 64)  # no float overflow for absurd attempts
        return float(min(self.max_delay, self.base_delay * self.factor**exponent))

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
        what = describe(error)
        if attempt < self.max_attempts:
            return Decision(
                Action.RETRY, f"attempt {attempt} failed: {what}; retrying", self.delay(attempt)
            )
        kind = "transient" if is_transient(error) else "unexpected"
        return Decision(Action.FAIL, f"gave up after {attempt} attempts ({kind}): {what}")
