"""Start-up steps after the wait for the database are retried while it comes and goes."""

from __future__ import annotations

import errno
import threading

import pytest
from sqlalchemy.exc import OperationalError

from services.core.errors import TransientError
from services.core.startup import StartCancelled, retry_start_step


def _gone() -> OperationalError:
    return OperationalError("SELECT 1", {}, Exception("consuming input failed"))


def test_transient_database_errors_are_retried_until_the_step_succeeds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    failures = [_gone(), TransientError("busy"), _gone()]

    def step() -> str:
        if failures:
            raise failures.pop(0)
        return "done"

    caplog.set_level("INFO")
    assert retry_start_step(step, threading.Event(), name="upgrade", first=0.001) == "done"
    lines = [r.getMessage() for r in caplog.records if "start_step_failed" in r.getMessage()]
    assert len(lines) == 3 and all("step=upgrade" in line for line in lines), lines
    assert "error=Exception" in lines[0] and "error=TransientError" in lines[1]
    assert any("after_attempts=3" in r.getMessage() for r in caplog.records)


def test_other_errors_are_raised_at_once() -> None:
    calls = []

    def step() -> None:
        calls.append(1)
        raise OSError(errno.ENOSPC, "full")  # a full disk does not hold a start back

    with pytest.raises(OSError):
        retry_start_step(step, threading.Event(), name="recovery", first=0.001)
    assert calls == [1]


def test_stop_while_retrying_cancels_the_start() -> None:
    stop = threading.Event()

    def step() -> None:
        stop.set()
        raise _gone()

    with pytest.raises(StartCancelled):
        retry_start_step(step, stop, name="replica-lease", first=10.0)
