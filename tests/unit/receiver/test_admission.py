"""Connection admission of one SCP process: pending connections apart from associations."""

from __future__ import annotations

from services.receiver.admission import Admission


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(clock: Clock, **overrides: int) -> Admission[str]:
    limits = {"max_associations": 2, "max_pending": 4, "max_per_peer": 3} | overrides
    return Admission(negotiation_timeout=5.0, clock=clock, **limits)


def test_idle_connections_never_take_association_slots() -> None:
    admission = make(Clock(), max_pending=100, max_per_peer=100)
    for i in range(50):
        assert admission.admit(f"idle{i}", "10.0.0.9") == (True, [])
    assert admission.admit("pacs1", "10.0.0.1")[0] and admission.negotiate("pacs1")
    assert admission.admit("pacs2", "10.0.0.1")[0] and admission.negotiate("pacs2")
    assert admission.admit("pacs3", "10.0.0.1")[0]
    assert not admission.negotiate("pacs3")  # the association limit: negotiated ones only
    admission.release("pacs1")
    assert admission.negotiate("pacs3")
    assert admission.pending() == 50


def test_an_address_at_its_cap_gives_up_its_oldest_pending_connection() -> None:
    admission = make(Clock(), max_associations=3)
    for key in ("a1", "a2", "a3"):
        assert admission.admit(key, "10.0.0.9")[0]
    assert admission.negotiate("a2")
    assert admission.admit("a4", "10.0.0.9") == (True, ["a1"])
    assert admission.admit("a5", "10.0.0.9") == (True, ["a3"])
    assert not admission.negotiate("a1")  # displaced: no slot for it any more
    assert admission.negotiate("a4") and admission.negotiate("a5")
    # all three of its connections are working associations: a fourth is refused ...
    assert admission.admit("a6", "10.0.0.9") == (False, [])
    assert admission.admit("b1", "10.0.0.1") == (True, [])  # ... other addresses are not
    admission.release("a2")
    assert admission.admit("a6", "10.0.0.9") == (True, [])


def test_the_pending_cap_ends_the_oldest_pending_connection() -> None:
    admission = make(Clock(), max_per_peer=100)
    for i in range(4):
        assert admission.admit(f"p{i}", f"10.0.1.{i}") == (True, [])
    assert admission.admit("new", "10.0.2.1") == (True, ["p0"])
    assert admission.pending() == 4 and len(admission) == 4


def test_pending_connections_end_at_the_deadline() -> None:
    clock = Clock()
    admission = make(clock)
    admission.admit("slow", "10.0.0.9")
    admission.admit("fast", "10.0.0.8")
    assert admission.negotiate("fast")
    clock.now += 5.0
    assert admission.overdue() == []
    clock.now += 0.1
    assert admission.overdue() == ["slow"]  # the negotiated one has no deadline
    assert admission.overdue() == [] and len(admission) == 1
    admission.forget(lambda key: key == "fast")
    assert len(admission) == 0
