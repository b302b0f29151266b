from __future__ import annotations

from datetime import UTC, datetime, timedelta

from services.receiver.tracker import PendingStudy, completion_reason

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def _study(
    *, last_ago: float, open_associations: int = 0, released_ago: float | None = None
) -> PendingStudy:
    return PendingStudy(
        id=1,
        study_instance_uid="1.2.3",
        pending_since=NOW - timedelta(seconds=100),
        last_received_at=(NOW - timedelta(seconds=last_ago)).replace(tzinfo=None),  # SQLite
        open_associations=open_associations,
        last_released_at=None if released_ago is None else NOW - timedelta(seconds=released_ago),
    )


def reason(study: PendingStudy) -> str | None:
    return completion_reason(study, NOW, idle_seconds=10, grace_seconds=2)


def test_idle_completes_even_with_open_association() -> None:
    assert reason(_study(last_ago=10, open_associations=1)) == "idle"
    assert reason(_study(last_ago=9.9, open_associations=1)) is None


def test_release_grace() -> None:
    assert reason(_study(last_ago=3, released_ago=2)) == "released"
    assert reason(_study(last_ago=3, released_ago=1.5)) is None  # grace not over
    assert reason(_study(last_ago=3, released_ago=2, open_associations=1)) is None


def test_release_before_later_instances_does_not_count() -> None:
    # Released at t-5, but another (aborted or still open) association sent at t-3.
    assert reason(_study(last_ago=3, released_ago=5)) is None


def test_aborted_association_waits_for_idle() -> None:
    assert reason(_study(last_ago=5)) is None  # never released: only idle completes it
