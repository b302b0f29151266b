"""An association that goes on to another study gives up its hold on the one before
(receiver.associations.holds_left, Registry.moved_on): the release grace then applies to
it, once no other association carries it."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from services.core.db import Database, Study
from services.receiver.associations import AssociationState, Registry, holds_left
from services.receiver.tracker import StudyTracker

A, B, C = "1.2.826.0.1.1", "1.2.826.0.1.2", "1.2.826.0.1.3"
T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def test_holds_left_is_every_other_study_held() -> None:
    assert holds_left(set(), A) == set()
    assert holds_left({A}, A) == set()  # still on its study
    assert holds_left({A}, B) == {A}
    assert holds_left({A, B}, B) == {A}
    assert holds_left({A, C}, B) == {A, C}
    held = {A, B}
    holds_left(held, B)
    assert held == {A, B}  # a pure function: the held set is not changed


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def _pending(db: Database, uid: str, *, open_associations: int, at: datetime) -> None:
    with db.session() as session:
        session.add(
            Study(
                study_instance_uid=uid,
                first_received_at=at,
                last_received_at=at,
                pending_since=at,
                open_associations=open_associations,
            )
        )


def _open(db: Database, uid: str) -> int:
    with db.session() as session:
        return int(
            session.scalar(select(Study.open_associations).where(Study.study_instance_uid == uid))
            or 0
        )


def _setup(db: Database) -> tuple[Clock, StudyTracker, Registry]:
    clock = Clock()
    tracker = StudyTracker(db, idle_seconds=10.0, grace_seconds=2.0, clock=clock)
    registry = Registry(db, tracker, ae_title="NODULEFLOW", allowed_aets=[])
    return clock, tracker, registry


def _association(*studies: str, moves_on: bool = True) -> AssociationState:
    return AssociationState("ROUTER", "127.0.0.1:1", studies=set(studies), moves_on=moves_on)


def test_the_study_left_completes_on_the_release_grace(db: Database) -> None:
    clock, tracker, registry = _setup(db)
    _pending(db, A, open_associations=1, at=T0)
    _pending(db, B, open_associations=1, at=T0)
    state = _association(A, B)  # its first instance of B was just stored
    registry.moved_on(state, B)
    assert (state.studies, state.left) == ({B}, {A})
    assert (_open(db, A), _open(db, B)) == (0, 1)
    clock.advance(1.9)
    assert tracker.complete_due() == []  # the grace is not over
    clock.advance(0.2)
    assert len(tracker.complete_due()) == 1  # A, 2.1 s after its last instance, not 10 s
    registry.end(state, released=True)  # only B's hold is left to take off
    assert (_open(db, A), _open(db, B)) == (0, 0)


def test_a_study_another_association_still_carries_waits_for_it(db: Database) -> None:
    clock, tracker, registry = _setup(db)
    _pending(db, A, open_associations=2, at=T0)  # split over two associations
    _pending(db, B, open_associations=1, at=T0)
    first, second = _association(A, B), _association(A)
    registry.moved_on(first, B)
    assert _open(db, A) == 1
    clock.advance(5.0)
    assert tracker.complete_due() == []  # the second association still sends A
    registry.end(second, released=True)
    clock.advance(2.0)
    assert len(tracker.complete_due()) == 1


def test_a_study_sent_again_is_held_again(db: Database) -> None:
    """Interleaved studies on one association: each move ends one hold, each return books
    one (the store does, for a study not in ``studies``), so the end takes off only what
    is held and no count goes below what other associations hold."""
    _, _, registry = _setup(db)
    _pending(db, A, open_associations=2, at=T0)  # this association and another one
    _pending(db, B, open_associations=1, at=T0)
    state = _association(A, B)
    registry.moved_on(state, B)
    assert _open(db, A) == 1
    state.studies.add(A)  # the association sends A again: the store books a hold
    with db.session() as session:
        session.get_one(Study, 1).open_associations += 1
    registry.moved_on(state, A)
    assert (state.studies, state.left) == ({A}, {A, B})
    assert (_open(db, A), _open(db, B)) == (2, 0)
    registry.end(state, released=False)
    assert (_open(db, A), _open(db, B)) == (1, 0)  # the other association's hold stays


class FailingTracker(StudyTracker):
    def association_moved_on(self, study_uids: Iterable[str]) -> None:
        raise ConnectionError("database away")


def test_a_move_not_booked_keeps_the_hold_for_the_end(db: Database) -> None:
    tracker = FailingTracker(db, idle_seconds=10.0, grace_seconds=2.0)
    registry = Registry(db, tracker, ae_title="NODULEFLOW", allowed_aets=[])
    _pending(db, A, open_associations=1, at=T0)
    _pending(db, B, open_associations=1, at=T0)
    state = _association(A, B)
    registry.moved_on(state, B)
    assert (state.studies, state.left) == ({A, B}, set())
    registry.end(state, released=False)
    assert (_open(db, A), _open(db, B)) == (0, 0)  # taken off once, by the end


@pytest.mark.parametrize("why", ["stow", "ended"])
def test_no_move_for_a_stow_request_or_after_the_end(db: Database, why: str) -> None:
    _, _, registry = _setup(db)
    _pending(db, A, open_associations=1, at=T0)
    _pending(db, B, open_associations=1, at=T0)
    state = _association(A, B, moves_on=why != "stow")
    if why == "ended":
        registry.end(state, released=False)
    registry.moved_on(state, B)
    assert state.left == set()
    expected = (1, 1) if why == "stow" else (0, 0)  # each hold taken off once
    assert (_open(db, A), _open(db, B)) == expected
