"""Per-association book-keeping: what each association carried, its end, its audit rows.

A STOW-RS request is booked as an association too (:meth:`Registry.end`), so it reaches
the study tracker and the audit trail the same way.

An association that goes on from one study to another gives up its hold on the first
(:func:`holds_left`, :meth:`Registry.moved_on`): a router forwarding a backlog sends study
after study on one association, and without this each study but the last would wait for
the idle time instead of the release grace. The study still waits for every other
association carrying it, and comes back into the association's hold if it sends more of
it. STOW-RS requests are no releases, so they keep their holds to their end."""

from __future__ import annotations

import logging
import threading
from collections.abc import Set
from dataclasses import dataclass, field
from typing import Any

from services.core import audit
from services.core.db import Database, RefusedInstance
from services.core.errors import is_db_unavailable
from services.receiver.tracker import StudyTracker

log = logging.getLogger("services.receiver")


def holds_left(held: Set[str], study_uid: str) -> set[str]:
    """The studies an association stops carrying when it stores an instance of
    ``study_uid`` that the analysis may use: every other study it holds. A DICOM sender
    sends a study's instances together; one that goes on to the next study has sent what
    it had of the previous one (PACS routers and modalities work through their queues
    study by study). Empty when the association stays on its study."""
    if not held or (len(held) == 1 and study_uid in held):
        return set()
    return set(held) - {study_uid}


@dataclass
class AssociationState:
    calling_aet: str
    peer: str
    #: studies this association carries (holds an association count on)
    studies: set[str] = field(default_factory=set)
    stored: int = 0
    duplicates: int = 0
    failed: int = 0
    bytes: int = 0
    released: bool = False
    finished: bool = False
    #: instances refused for want of resources (0xA700): SOP Instance UID -> (study, position)
    refused: dict[str, tuple[str, float | None]] = field(default_factory=dict)
    #: studies this association only re-sent (duplicates): its release completes them too
    resent: set[str] = field(default_factory=set)
    #: who the audit trail names, when not the calling AE (a STOW-RS caller's subject)
    actor: str = ""
    #: studies of instances stored that the analysis never uses (.relevance): audited with
    #: the transfer, but this association does not carry them (``studies``)
    kept: set[str] = field(default_factory=set)
    not_analysed: int = 0  # of ``stored``
    #: a move to another study ends the hold on the previous one (DICOM associations;
    #: not STOW-RS requests, whose end is no release either)
    moves_on: bool = False
    #: studies whose hold ended when the association went on to another (:func:`holds_left`)
    left: set[str] = field(default_factory=set)
    #: orders a move-on against the end, so a hold is taken off once
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)


class Registry:
    """Per-association state, the tracker and the audit trail for association events."""

    def __init__(
        self, db: Database, tracker: StudyTracker, *, ae_title: str, allowed_aets: list[str]
    ) -> None:
        self.db = db
        self.tracker = tracker
        self.ae_title = ae_title
        self.allowed_aets = allowed_aets
        self._states: dict[int, AssociationState] = {}
        self._lock = threading.Lock()
        self._unrecorded: dict[str, tuple[str, float | None]] = {}  # refusals to write

    def open(self, assoc: Any) -> AssociationState:
        requestor = assoc.requestor
        state = AssociationState(
            calling_aet=str(requestor.ae_title).strip(),
            peer=f"{requestor.address}:{requestor.port}",
            moves_on=True,
        )
        with self._lock:
            self._states[id(assoc)] = state
        return state

    def get(self, assoc: Any) -> AssociationState:
        with self._lock:
            state = self._states.get(id(assoc))
        return state if state is not None else self.open(assoc)

    @property
    def active(self) -> int:
        with self._lock:
            return len(self._states)

    def finish(self, assoc: Any, *, released: bool) -> None:
        with self._lock:
            state = self._states.pop(id(assoc), None)
        if state is not None:
            self.end(state, released=released)

    def end(self, state: AssociationState, *, released: bool) -> None:
        """A transfer ended (an association, or a STOW-RS request): tell the tracker, record
        its refusals, log and audit it. Only the first call for a ``state`` counts."""
        with state.lock:
            if state.finished:
                return
            state.finished = True
            state.released = released
            carried = set(state.studies)
        try:
            self.tracker.association_ended(carried, released=released)
            if released:
                self.tracker.transfer_completed((state.resent | state.left) - carried)
        except Exception as exc:
            if is_db_unavailable(exc):  # an outage: one line, not a dump
                log.warning(
                    "event=association_end_not_recorded calling_aet=%s error=%s",
                    state.calling_aet,
                    exc.__class__.__name__,
                )
            else:
                log.exception(
                    "event=association_end_not_recorded calling_aet=%s", state.calling_aet
                )
        self._record_refusals(state.refused)
        log.info(
            "event=association_closed calling_aet=%s peer=%s released=%s stored=%d "
            "duplicates=%d failed=%d bytes=%d studies=%d not_analysed=%d",
            state.calling_aet,
            state.peer,
            released,
            state.stored,
            state.duplicates,
            state.failed,
            state.bytes,
            len(state.studies | state.left),
            state.not_analysed,
        )
        if state.stored or state.failed:
            self._audit(
                audit.INSTANCES_TRANSFERRED,
                actor=state.actor or state.calling_aet,
                source=state.peer,
                action="C",
                object_type="study",
                object_id=",".join(sorted(state.studies | state.left | state.kept))[:128],
                outcome="0" if not state.failed else "4",
                detail=f"stored={state.stored} duplicates={state.duplicates} "
                f"failed={state.failed} released={released} "
                f"not_analysed={state.not_analysed}",
            )

    def moved_on(self, state: AssociationState, study_uid: str) -> None:
        """``state``'s association stored an instance of ``study_uid`` that the analysis
        may use: the studies it held before end their hold as at a release
        (:func:`holds_left`). Kept in the hold if the tracker cannot book it (the next
        instance tries again; the association's end takes them off in any case)."""
        if not state.moves_on:
            return
        with state.lock:  # the end waits: a hold is taken off by one of the two
            if state.finished:
                return
            left = holds_left(state.studies, study_uid)
            if not left:
                return
            try:
                self.tracker.association_moved_on(left)
            except Exception:
                log.warning("event=association_move_not_recorded calling_aet=%s", state.calling_aet)
                return
            state.studies -= left
            state.left |= left
        log.info(
            "event=association_moved_on calling_aet=%s peer=%s studies_left=%d",
            state.calling_aet,
            state.peer,
            len(left),
        )

    def _record_refusals(self, refused: dict[str, tuple[str, float | None]]) -> None:
        """Remember refused instances, so their studies wait for a resend (.completion);
        kept for the next association's end while the database is away."""
        with self._lock:
            self._unrecorded.update(refused)
            pending, self._unrecorded = self._unrecorded, {}
        if not pending:
            return
        try:
            with self.db.session() as session:
                session.add_all(
                    RefusedInstance(
                        study_instance_uid=study,
                        sop_instance_uid=sop,
                        slice_position=position,
                        reason="out-of-resources",
                    )
                    for sop, (study, position) in pending.items()
                )
        except Exception:
            log.warning("event=refusals_not_recorded count=%d", len(pending))
            with self._lock:
                self._unrecorded = {**pending, **self._unrecorded}
            return
        log.info("event=refusals_recorded count=%d", len(pending))

    def security_alert(self, *, actor: str, source: str, detail: str) -> None:
        self._audit(audit.SECURITY_ALERT, actor=actor, source=source, outcome="4", detail=detail)

    def _audit(self, event: str, **fields: Any) -> None:
        try:
            with self.db.session() as session:
                audit.record(session, event, **fields)
        except Exception:
            log.warning("event=audit_not_written audit_event=%s", event)
