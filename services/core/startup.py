"""A service's start-up steps after its wait for the database (schema upgrade, replica lease,
recovery): the database can go away again between the wait and the next step, so each step
is retried while it fails for a transient reason, with ``core.backoff``, one log line per
failed attempt. Anything else (a bug, a wrong password) is raised as before."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TypeVar

from services.core.backoff import Backoff
from services.core.errors import NoduleflowError, TransientError, is_db_unavailable

log = logging.getLogger(__name__)

T = TypeVar("T")


class StartCancelled(NoduleflowError):
    """The service was told to stop while a start-up step waited to be retried."""

    code = "start-cancelled"


def retryable(error: BaseException) -> bool:
    """Worth another try at start: the database unavailable, or one of our transient errors
    (a full disk is not: a service starts with it and refuses what it cannot store)."""
    return is_db_unavailable(error) or isinstance(error, TransientError)


def retry_start_step(
    step: Callable[[], T],
    stop: threading.Event,
    *,
    name: str,
    first: float = 1.0,
    cap: float = 30.0,
) -> T:
    """``step()``, again after each :func:`retryable` failure until it succeeds; raises
    :class:`StartCancelled` when ``stop`` is set first. ``step`` must be safe to repeat."""
    backoff = Backoff(first, cap)
    while not stop.is_set():
        try:
            result = step()
        except Exception as exc:
            if not retryable(exc):
                raise
            delay = backoff.failed()
            log.warning(
                "event=start_step_failed step=%s attempt=%d retry_in=%.1fs error=%s",
                name,
                backoff.failures,
                delay,
                type(getattr(exc, "orig", None) or exc).__name__,
            )
            stop.wait(delay)
            continue
        if backoff.failures:
            log.info("event=start_step_done step=%s after_attempts=%d", name, backoff.failures)
        return result
    raise StartCancelled(f"stopped before start-up step {name} succeeded")
