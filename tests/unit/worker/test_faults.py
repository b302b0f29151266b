from __future__ import annotations

import time

import pytest
from sqlalchemy.exc import OperationalError

from services.worker.faults import ENV, Faults, parse
from services.worker.policy import StorageUnavailable


def test_inert_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    faults = Faults()
    assert faults.rules == []
    faults.hit("after_commit")  # nothing happens


def test_parse_rules() -> None:
    rules = parse("after_commit, mid_infer:sleep=0.5:times=2")
    assert [(r.point, r.action, r.argument, r.times) for r in rules] == [
        ("after_commit", "exit", "", None),
        ("mid_infer", "sleep", "0.5", 2),
    ]
    with pytest.raises(ValueError, match="unknown fault point"):
        parse("somewhere")
    with pytest.raises(ValueError, match="unknown fault error"):
        parse("after_claim:raise=boom")


def test_raise_and_times() -> None:
    faults = Faults(
        "before_commit:raise=db:times=1,after_claim:raise=storage,mid_infer:raise=memory"
    )
    with pytest.raises(OperationalError):
        faults.hit("before_commit")
    faults.hit("before_commit")  # fired once already
    with pytest.raises(StorageUnavailable):
        faults.hit("after_claim")
    with pytest.raises(MemoryError):
        faults.hit("mid_infer")


def test_sleep() -> None:
    started = time.monotonic()
    Faults("after_publish:sleep=0.2").hit("after_publish")
    assert time.monotonic() - started >= 0.2


def test_a_rule_for_one_job_fires_only_in_that_job() -> None:
    faults = Faults("mid_infer:raise=memory:job=poison")
    assert parse("mid_infer:job=poison")[0].job == "poison"
    faults.hit("mid_infer", "innocent")  # another job: nothing happens
    faults.hit("mid_infer")
    with pytest.raises(MemoryError):
        faults.hit("mid_infer", "poison")
