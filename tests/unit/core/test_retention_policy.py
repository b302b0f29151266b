"""Retention policy (services/core/retention/policy.py): what is purged, in which order."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.core.retention.policy import (
    Blocked,
    Choice,
    Reason,
    RetentionPolicy,
    StudyFacts,
    Usage,
    Watermark,
    blocked,
    choose,
)

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
GB = 10**9


def facts(n: int, *, days_ago: float, size: int = GB, **state: Any) -> StudyFacts:
    """Study ``n``, whose job finished ``days_ago`` days before NOW, with one job done."""
    finished = NOW - timedelta(days=days_ago)
    values: dict[str, Any] = {
        "study_id": n,
        "study_instance_uid": f"1.2.3.{n}",
        "last_received_at": finished - timedelta(minutes=5),
        "finished_at": finished,
        "instances": 100,
        "bytes": size,
        "jobs": 1,
        **state,
    }
    return StudyFacts(**values)


def uids(choices: list[Choice]) -> list[str]:
    return [c.study.study_instance_uid for c in choices]


# ------------------------------------------------------------------ watermarks


@pytest.mark.parametrize(
    ("text", "value", "percent"),
    [
        ("85%", 85.0, True),
        (" 12.5 % ", 12.5, True),
        ("500GB", 500e9, False),
        ("1.5TiB", 1.5 * 2**40, False),
        ("2 mib", 2 * 2**20, False),
        ("1048576", 1048576.0, False),
    ],
)
def test_watermarks_parse_sizes_and_percentages(text: str, value: float, percent: bool) -> None:
    assert Watermark.parse(text) == Watermark(value, percent)


@pytest.mark.parametrize("text", ["lots", "85 percent", "0%", "101%", "-5GB", "0", "5 PB"])
def test_malformed_watermarks_are_refused_with_the_value(text: str) -> None:
    with pytest.raises(ValueError, match="high"):
        Watermark.parse(text, name="high")


def test_empty_watermark_is_none_and_percent_is_of_capacity() -> None:
    assert Watermark.parse("  ") is None
    assert Watermark(80, percent=True).limit(1000) == 800
    assert Watermark(300, percent=False).limit(1000) == 300


def test_policy_refuses_marks_that_do_not_fit() -> None:
    with pytest.raises(ValueError, match="both be sizes or percentages"):
        RetentionPolicy(high_water=Watermark(80, True), low_water=Watermark(10**9, False))
    with pytest.raises(ValueError, match="not be above"):
        RetentionPolicy(high_water=Watermark(70, True), low_water=Watermark(80, True))
    with pytest.raises(ValueError, match="needs a high-water"):
        RetentionPolicy(low_water=Watermark(70, True))
    with pytest.raises(ValueError, match="above zero"):
        RetentionPolicy(max_age=timedelta(0))
    assert not RetentionPolicy().enabled
    assert RetentionPolicy(high_water=Watermark(80, True)).target == Watermark(72, True)


# ------------------------------------------------------------------ eligibility


@pytest.mark.parametrize(
    ("state", "why"),
    [
        ({"receiving": True}, Blocked.RECEIVING),
        ({"jobs": 0, "finished_at": None}, Blocked.RECEIVING),
        ({"jobs": 2, "jobs_open": 1}, Blocked.IN_FLIGHT),
        ({"deliveries_pending": 1}, Blocked.UNDELIVERED),
        ({"purging": True}, Blocked.PURGING),
        ({"instances": 0, "bytes": 0}, Blocked.EMPTY),
        ({}, None),
    ],
)
def test_only_finished_and_delivered_studies_may_be_purged(
    state: dict[str, Any], why: Blocked | None
) -> None:
    assert blocked(facts(1, days_ago=400, **state)) is why


# ------------------------------------------------------------------ choosing


def test_max_age_takes_every_older_finished_study_oldest_first() -> None:
    studies = [facts(1, days_ago=10), facts(2, days_ago=40), facts(3, days_ago=31)]
    plan = choose(
        studies, now=NOW, policy=RetentionPolicy(max_age=timedelta(days=30)), usage=Usage(0)
    )
    assert uids(plan.choices) == ["1.2.3.2", "1.2.3.3"]
    assert {c.reason for c in plan.choices} == {Reason.MAX_AGE}
    assert plan.choices[0].age == timedelta(days=40)


def test_high_water_purges_oldest_finished_down_to_the_low_water_target() -> None:
    studies = [facts(n, days_ago=d) for n, d in ((1, 5), (2, 9), (3, 7), (4, 1))]
    policy = RetentionPolicy(
        high_water=Watermark(3.5 * GB, False), low_water=Watermark(2 * GB, False)
    )
    plan = choose(studies, now=NOW, policy=policy, usage=Usage(4 * GB))
    assert uids(plan.choices) == ["1.2.3.2", "1.2.3.3"]  # 9 and 7 days: 4 GB -> 2 GB
    assert {c.reason for c in plan.choices} == {Reason.HIGH_WATER}
    assert plan.projected == 2 * GB and not plan.short_of_target


def test_below_the_high_water_mark_nothing_is_purged_for_space() -> None:
    policy = RetentionPolicy(high_water=Watermark(5 * GB, False), low_water=Watermark(1, False))
    plan = choose([facts(1, days_ago=900)], now=NOW, policy=policy, usage=Usage(5 * GB))
    assert plan.choices == []


def test_studies_in_flight_are_never_chosen_even_over_the_mark() -> None:
    studies = [
        facts(1, days_ago=100, receiving=True),
        facts(2, days_ago=90, jobs_open=1, jobs=2),
        facts(3, days_ago=80, deliveries_pending=2),
        facts(4, days_ago=70, purging=True),
        facts(5, days_ago=3),
    ]
    policy = RetentionPolicy(
        max_age=timedelta(days=30),
        high_water=Watermark(1 * GB, False),
        low_water=Watermark(0.5 * GB, False),
    )
    plan = choose(studies, now=NOW, policy=policy, usage=Usage(5 * GB))
    assert uids(plan.choices) == ["1.2.3.5"]
    assert plan.choices[0].reason is Reason.HIGH_WATER
    assert plan.kept == {
        Blocked.RECEIVING: 1,
        Blocked.IN_FLIGHT: 1,
        Blocked.UNDELIVERED: 1,
        Blocked.PURGING: 1,
    }
    assert plan.short_of_target  # 4 GB stay: more than the 0.5 GB target


def test_percent_marks_are_of_the_file_system_and_naive_times_are_utc() -> None:
    old = facts(1, days_ago=2, size=300)
    naive = StudyFacts(
        **{
            **old.__dict__,
            "study_id": 2,
            "study_instance_uid": "1.2.3.2",
            "finished_at": (NOW - timedelta(days=3)).replace(tzinfo=None),
        }
    )
    policy = RetentionPolicy(high_water=Watermark(80, True), low_water=Watermark(60, True))
    plan = choose([old, naive], now=NOW, policy=policy, usage=Usage(used=850, capacity=1000))
    assert uids(plan.choices) == ["1.2.3.2"]  # 850 - 300 = 550 <= 600
    assert (plan.high_water, plan.target) == (800, 600)
