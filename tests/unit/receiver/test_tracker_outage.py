"""The study tracker's loop: an unreachable database is one log line per try, retried with a
growing delay; anything else is logged with its traceback, and the loop goes on either way."""

from __future__ import annotations

import logging
import threading

import pytest
from sqlalchemy.exc import OperationalError

from services.core.db import Database
from services.receiver.tracker import StudyTracker


def _run_failing(db: Database, error: Exception, tries: int = 3) -> None:
    tracker = StudyTracker(db, idle_seconds=10.0, grace_seconds=2.0)
    stop = threading.Event()
    calls: list[int] = []

    def failing() -> None:
        calls.append(1)
        if len(calls) >= tries:
            stop.set()
        raise error

    tracker.complete_due = failing  # type: ignore[method-assign]
    tracker.run(stop, interval=0.05)  # after a failure: 0.1 s, 0.2 s, …
    assert len(calls) == tries  # retried after each failure


def test_an_unreachable_database_is_one_line_per_try(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="services.receiver.tracker")
    refused = OperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused"))
    _run_failing(db, refused)
    lines = [r for r in caplog.records if r.name == "services.receiver.tracker"]
    assert len(lines) == 3
    assert all(r.levelno == logging.WARNING and r.exc_info is None for r in lines)
    assert all("event=tracker_database_unavailable" in r.getMessage() for r in lines)
    delays = [float(r.getMessage().split("retry_in=")[1].split()[0]) for r in lines]
    assert delays == sorted(delays) and delays[-1] > delays[0]  # backing off


def test_any_other_error_keeps_its_traceback(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="services.receiver.tracker")
    _run_failing(db, RuntimeError("a bug"), tries=2)
    lines = [r for r in caplog.records if r.name == "services.receiver.tracker"]
    assert len(lines) == 2
    assert all(r.levelno == logging.ERROR and r.exc_info is not None for r in lines)
    assert all("event=tracker_error" in r.getMessage() for r in lines)
