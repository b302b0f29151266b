from __future__ import annotations

import errno

import pytest
from sqlalchemy.exc import OperationalError

from services.core.errors import NoduleflowError, PermanentError, ResourceExhausted
from services.worker.analyze import default_analyze
from services.worker.policy import (
    Action,
    BadMessage,
    Decision,
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
        ResourceExhausted("model runtime: Failed to allocate memory for requested buffer"),
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


ORT_OOM = "[ONNXRuntimeError] : 6 : Failed to allocate memory for requested buffer"


def test_a_model_runtime_out_of_memory_is_typed_transient_at_the_seam(monkeypatch) -> None:
    def runs_out(*_args, **_kwargs):
        raise RuntimeError(ORT_OOM)

    monkeypatch.setattr("services.analysis.pipeline.analyze_files", runs_out)
    with pytest.raises(ResourceExhausted) as caught:
        default_analyze([], object())
    error = caught.value
    assert is_transient(error) and isinstance(error.__cause__, RuntimeError)
    assert [POLICY.decide(n, error).action for n in (1, 2)] == [Action.RETRY, Action.RETRY]
    last = POLICY.decide(3, error)
    assert last.reason == "gave up after 3 attempts (transient): out of memory"


def test_other_runtime_errors_cross_the_seam_unchanged(monkeypatch) -> None:
    def breaks(*_args, **_kwargs):
        raise RuntimeError("model returned shape (1, 2, 3) for a crop of …")

    monkeypatch.setattr("services.analysis.pipeline.analyze_files", breaks)
    with pytest.raises(RuntimeError) as caught:
        default_analyze([], object())
    assert not isinstance(caught.value, NoduleflowError) and not is_transient(caught.value)


def test_analysis_errors_become_study_unusable_with_their_verdict(monkeypatch) -> None:
    from services.analysis.errors import AnalysisError

    def not_ct(*_args, **_kwargs):
        raise AnalysisError("not-ct", "modality MR")

    monkeypatch.setattr("services.analysis.pipeline.analyze_files", not_ct)
    with pytest.raises(StudyUnusable) as caught:
        default_analyze([], object())
    assert isinstance(caught.value.__cause__, PermanentError)
    decision = POLICY.decide(1, caught.value)
    assert (decision.action, decision.reason) == (Action.SKIP, "not-ct: modality MR")


def test_permanent_errors_are_classified_by_type_not_by_text() -> None:
    refused = PermanentError("out of memory", code="too-big")  # the text does not matter
    assert not is_transient(refused)
    assert POLICY.decide(1, refused) == Decision(Action.FAIL, "too-big: out of memory")
    skipped = PermanentError("nothing to see", code="empty", skip=True)
    assert POLICY.decide(1, skipped).action is Action.SKIP
    assert is_transient(StorageUnavailable("x")) and isinstance(StorageUnavailable("x"), OSError)
