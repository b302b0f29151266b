"""The one capped exponential backoff and the one thread-group lifecycle."""

from __future__ import annotations

import threading

from services.core.backoff import Backoff, capped_exponential
from services.core.threads import ThreadGroup


def test_capped_exponential() -> None:
    delays = [capped_exponential(n, first=1.0, cap=5.0) for n in range(0, 6)]
    assert delays == [1.0, 1.0, 2.0, 4.0, 5.0, 5.0]
    assert capped_exponential(5, first=2.0, cap=1e9, factor=3.0) == 2.0 * 3**4
    assert capped_exponential(10**9, first=1.0, cap=30.0) == 30.0  # no float overflow


def test_backoff_counts_consecutive_failures_and_resets() -> None:
    backoff = Backoff(first=0.5, cap=2.0)
    assert [backoff.failed() for _ in range(4)] == [0.5, 1.0, 2.0, 2.0]
    backoff.reset()
    assert backoff.failed() == 0.5


def test_thread_group_starts_wakes_and_joins() -> None:
    group = ThreadGroup()
    woken = threading.Event()
    ran: list[str] = []

    def sleeper(stop: threading.Event, label: str) -> None:
        ran.append(label)
        stop.wait()

    def asleep_elsewhere() -> None:
        woken.wait()

    group.on_stop(woken.set)
    group.spawn("t-sleeper", sleeper, group.stop_event, "a")
    group.spawn("t-elsewhere", asleep_elsewhere)
    assert group.alive and [t.name for t in group.threads] == ["t-sleeper", "t-elsewhere"]
    assert not group.join(timeout=0.01)
    group.stop(timeout=5)
    assert ran == ["a"] and woken.is_set()
    assert group.threads == [] and not group.alive


def test_thread_group_stop_without_wait_then_restart() -> None:
    shared = threading.Event()
    group = ThreadGroup(shared)
    group.spawn("t", shared.wait)
    group.stop(wait=False)
    assert shared.is_set() and group.join(timeout=5)
    group.restart()
    assert not shared.is_set()
    group.spawn("t2", shared.wait)
    group.stop()
    assert group.threads == []
