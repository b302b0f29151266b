"""When a dead receiver's association counts are due to be cleared (receiver.holds)."""

from __future__ import annotations

from services.core.db import Database
from services.receiver.holds import StaleHolds


def test_a_lease_is_cleared_only_after_missing_for_the_whole_grace(db: Database) -> None:
    now = [100.0]
    stale = StaleHolds(db, grace_seconds=5.0, clock=lambda: now[0])
    assert stale.due({7, 9}) == []  # first seen missing now
    now[0] = 103.0
    assert stale.due({7, 9}) == []
    now[0] = 105.0
    assert stale.due({7, 9}) == [7, 9]


def test_a_lease_seen_again_starts_its_grace_afresh(db: Database) -> None:
    """A database cut drops every lease until its keeper takes it again: a lease that comes
    back before the grace is over is forgotten, and a later loss counts from then."""
    now = [0.0]
    stale = StaleHolds(db, grace_seconds=5.0, clock=lambda: now[0])
    stale.due({7})
    now[0] = 4.0
    assert stale.due(set()) == []  # 7 retook its lease
    now[0] = 6.0
    assert stale.due({7}) == []  # missing again: from 6 s on
    now[0] = 10.9
    assert stale.due({7}) == []
    now[0] = 11.0
    assert stale.due({7}) == [7]
