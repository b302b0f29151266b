from __future__ import annotations

import errno

import pytest
from sqlalchemy.exc import OperationalError

from services.worker.policy import (
    Action,
    BadMessage,
    RetryPolicy,
    StorageUnavailable,
    StudyUnusable,
    describe,
    is_transient,
)

POLICY = RetryPolicy(max_attempts=3, base_delay=1.0, factor=2.0, max_delay=5.0)


def test_bad_message_goes_to_the_dead_letter_queue_at_once() -> None:
    decision = POLICY.decide(1, BadMessage("not JSON"))
    assert decision.action is Action.DEAD_LETTER
    assert "not JSON" in decision.reason


@pytest.mark.parametrize(("skip", "action"), [(True, Action.SKIP), (False, Action.FAIL)])
def test_unusable_study_ends_the_job_without_retry(skip: bool, action: Action) -> None:
    error = StudyUnusable("corrupt-pixel-data", "PixelData is 10 bytes short", skip=skip)
    decision = POLICY.decide(1, error)
    assert decision.action is action
    assert decision.reason == "corrupt-pixel-data: PixelData is 10 bytes short"
    assert decision.delay == 0


@pytest.mark.parametrize(
    "error",
    [
        MemoryError(),
        RuntimeError("[ONNXRuntimeError] : 6 : Failed to allocate memory for requested buffer"),
        OperationalError("SELECT 1", {}, ConnectionError("server closed the connection")),
        StorageUnavailable("3 of 60 instance files not readable"),
        OSError(errno.ESTALE, "stale NFS handle"),
    ],
)
def test_transient_errors_back_off_exponentially_then_fail(error: Exception) -> None:
    assert is_transient(error)
    first, second = POLICY.decide(1, error), POLICY.decide(2, error)
    assert (first.action, second.action) == (Action.RETRY, Action.RETRY)
    assert (first.delay, second.delay) == (1.0, 2.0)
    last = POLICY.decide(3, error)
    assert last.action is Action.FAIL
    assert last.reason.startswith("gave up after 3 attempts (transient)")


def test_delay_is_capped() -> None:
    assert POLICY.delay(10) == 5.0


def test_unexpected_errors_are_retried_then_named() -> None:
    assert not is_transient(KeyError("x"))
    assert POLICY.decide(1, KeyError("x")).action is Action.RETRY
    last = POLICY.decide(3, KeyError("x"))
    assert last.action is Action.FAIL
    assert last.reason == "gave up after 3 attempts (unexpected): internal error (KeyError)"


def test_descriptions_are_short_and_generic() -> None:
    assert describe(MemoryError()) == "out of memory"
    assert describe(OperationalError("x", {}, ConnectionError())) == "database unavailable"
    assert describe(OSError(errno.EIO, "disk")) == "I/O error (EIO)"
