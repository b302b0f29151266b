"""The one exception hierarchy of noduleflow: every error we raise says whether a retry can help.

* :class:`PermanentError`: retrying the same input cannot help. ``skip`` is the verdict for a
  job: ``True`` → the job ends ``skipped`` (the input is merely unsuitable, e.g. not a chest
  CT), ``False`` → it ends ``failed`` (the input is broken, or the code refuses it).
* :class:`TransientError`: a later attempt (here or in another process) can plausibly succeed:
  storage, database or broker unavailable, out of memory.

Both carry ``code``, a stable machine-readable reason (``not-ct``, ``storage-unavailable``…);
``str(error)`` is one line a person can act on and never carries patient identifiers.

Retry policies (``worker.policy``, ``reporter.results``, ``reporter.delivery``) classify by
these types. Errors from libraries (SQLAlchemy, ``OSError``, ``MemoryError``) are classified
by type where they enter (:func:`is_transient`); nothing classifies by the text of a message.
"""

from __future__ import annotations

import errno

from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError


class NoduleflowError(Exception):
    """Base of every exception noduleflow raises on purpose."""

    #: stable machine-readable reason; subclasses set their own default
    code: str = "error"

    def __init__(self, message: str = "", *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class PermanentError(NoduleflowError):
    """Retrying cannot help; ``skip`` tells a job to end ``skipped`` rather than ``failed``."""

    code = "permanent"
    skip: bool = False

    def __init__(
        self, message: str = "", *, code: str | None = None, skip: bool | None = None
    ) -> None:
        super().__init__(message, code=code)
        if skip is not None:
            self.skip = skip

    @property
    def verdict(self) -> str:
        """The final job state this error leads to: ``skipped`` or ``failed``."""
        return "skipped" if self.skip else "failed"


class TransientError(NoduleflowError):
    """A later attempt can plausibly succeed (the resource it needs is away for now)."""

    code = "transient"


class ResourceExhausted(TransientError, MemoryError):
    """Out of (GPU or host) memory; another attempt, maybe on another worker, may fit."""

    code = "out-of-memory"


#: errno values of OSErrors that a later attempt can get past (NFS hiccups, full disks…)
TRANSIENT_ERRNOS = frozenset(
    {
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
)


def is_db_unavailable(error: BaseException) -> bool:
    """The database cannot be reached or refused for now (connection, pool, lock, deadlock)."""
    if isinstance(error, OperationalError | PoolTimeoutError):
        return True
    return isinstance(error, DBAPIError) and bool(error.connection_invalidated)


def is_transient(error: BaseException) -> bool:
    """Whether a later attempt can plausibly get past ``error``, decided by its type.

    Ours say so by their class; of the library errors, database unavailability, memory
    exhaustion and OSErrors with a transient ``errno`` count as transient.
    """
    if isinstance(error, PermanentError):
        return False
    if isinstance(error, TransientError | MemoryError):
        return True
    if is_db_unavailable(error):
        return True
    if isinstance(error, OSError):
        return error.errno in TRANSIENT_ERRNOS
    return False
