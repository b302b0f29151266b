"""The study tracker's loop: an unreachable database is one log line per try, retried with a
growing delay; anything else is logged with its traceback, and the loop goes on either way.
The same for an association's end that cannot be recorded."""

from __future__ import annotations

import logging
import threading

import pytest
from sqlalchemy.exc import OperationalError

from services.core.db import Database
from services.receiver.associations import AssociationState, Registry
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


@pytest.mark.parametrize("unreachable", [True, False])
def test_an_association_end_not_recorded(
    db: Database, caplog: pytest.LogCaptureFixture, unreachable: bool
) -> None:
    tracker = StudyTracker(db, idle_seconds=10.0, grace_seconds=2.0)
    error = (
        OperationalError("UPDATE studies", {}, ConnectionRefusedError("refused"))
        if unreachable
        else RuntimeError("a bug")
    )

    def failing(*_: object, **__: object) -> None:
        raise error

    tracker.association_ended = failing  # type: ignore[method-assign]
    registry = Registry(db, tracker, ae_title="NODULEFLOW", allowed_aets=[])
    caplog.set_level(logging.INFO, logger="services.receiver")
    state = AssociationState("ROUTER", "127.0.0.1:1", studies={"1.2.3"})
    registry.end(state, released=True)
    lines = [r for r in caplog.records if "association_end_not_recorded" in r.getMessage()]
    assert len(lines) == 1
    if unreachable:
        assert lines[0].levelno == logging.WARNING and lines[0].exc_info is None
        assert "error=OperationalError" in lines[0].getMessage()
    else:
        assert lines[0].levelno == logging.ERROR and lines[0].exc_info is not None
    assert any("event=association_closed" in r.getMessage() for r in caplog.records)
